package workerpool_test

import (
	"context"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"time"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/workerpool"
)

// A prefork HTTP server: the master listens and starts four workers (this
// program again); each serves the shared socket and answers the "version"
// action. SIGHUP replaces the workers one at a time, SIGTERM stops them.
// (It starts processes, so it is compiled, not run.)
func ExampleRun() {
	err := workerpool.Run(context.Background(), workerpool.Config{
		Workers: 4,
		Listen:  []string{"127.0.0.1:8080"},
		Bus:     events.Options{Path: "/dev/shm/app.events"},
		Actions: map[string]workerpool.Action{
			"version": func(_ context.Context, _ []string, out io.Writer) error {
				_, err := fmt.Fprintln(out, "v1.2.3")
				return err
			},
		},
		Main: func(ctx context.Context, w *workerpool.Worker) error {
			w.Bus.Register(func(e *events.Event) {
				w.Logger.Info("purge", "key", string(e.Data))
			}, "cache", "purge")
			srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
				fmt.Fprintf(rw, "worker %d, pid %d\n", w.Index, os.Getpid())
			})}
			return workerpool.ServeHTTP(ctx, srv, w.Listeners...) // drains on stop and reload
		},
		Started: func(m *workerpool.Master) {
			log.Printf("listening on %v", m.Addrs()[0])
		},
	})
	if err != nil {
		log.Fatal(err)
	}
}

// Exec from any process on the bus: ask every worker to run an action.
func ExampleExec() {
	bus, err := events.Open(events.Options{Path: "/dev/shm/app.events", Observe: true, MustExist: true})
	if err != nil {
		log.Fatal(err)
	}
	defer bus.Close()
	res, err := workerpool.Exec(context.Background(), bus, "version", nil, workerpool.ExecOptions{
		MinWorkers: 4,
		Timeout:    5 * time.Second,
		OnExit: func(w workerpool.WorkerID, status int, _ string) {
			fmt.Printf("%v: exit %d\n", w, status)
		},
	})
	if res == nil {
		log.Fatal(err) // the request could not be posted
	}
	if err != nil {
		log.Print(err) // ErrIncomplete names res.Missing; ErrFailed the non-zero statuses
	}
	for _, w := range res.Workers {
		fmt.Printf("%v: %s", w.WorkerID, w.Output)
	}
}
