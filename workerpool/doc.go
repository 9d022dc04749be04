// Package workerpool runs a prefork server: a master process that starts N
// worker processes (the same binary, re-executed), hands them its listening
// sockets as inherited file descriptors, keeps them running, and shares one
// event bus (package events) with them.
//
// One call serves both sides. In the master, Run listens, opens the bus,
// starts the workers and supervises them until it is told to stop; in a
// worker (recognised by the environment the master set), Run opens the same
// bus and calls Config.Main instead:
//
//	err := workerpool.Run(ctx, workerpool.Config{
//		Workers: 4,
//		Listen:  []string{"127.0.0.1:8080"},
//		Bus:     events.Options{Path: "/dev/shm/app.events"},
//		Main: func(ctx context.Context, w *workerpool.Worker) error {
//			srv := &http.Server{Handler: mux}
//			go func() { <-ctx.Done(); srv.Shutdown(context.Background()) }()
//			if err := srv.Serve(w.Listeners[0]); err != http.ErrServerClosed {
//				return err
//			}
//			return nil
//		},
//	})
//
// The master restarts a worker that exits or dies (after a backoff when it
// keeps crashing), stops everything on SIGTERM or SIGINT (a cancelled
// context, then SIGKILL after Config.Grace), and replaces the workers one at a
// time on SIGHUP. The listening sockets stay open in the master for its whole
// life, so a worker that is replaced never takes the kernel's accept queue
// with it.
//
// Exec asks every worker to run a named Action, in the manner of Consul's
// exec: per worker an ack, its output and its exit status, then a summary
// naming the workers that did not answer. Requests and replies are events on
// the bus under the source "workerpool"; DESIGN.md lists them. A bus file
// serves one pool: Exec would gather the answers of every pool's workers on
// it.
package workerpool
