// Command prefork-demo is a prefork HTTP server on workerpool: a master and N
// worker processes that accept on one socket and keep an in-memory cache
// each, kept in agreement through the shared event bus.
//
//	prefork-demo --addr 127.0.0.1:8080 --workers 4
//	curl -X POST 'http://127.0.0.1:8080/purge?key=users'   # one worker refreshes, all apply
//	curl 'http://127.0.0.1:8080/cache?key=users'
//	curl 'http://127.0.0.1:8080/stats'                      # every worker's counters, via exec
//	kill -HUP <master pid>                                  # replace the workers one at a time
//
// SIGTERM or Ctrl-C stops it and removes the ring it created.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/workerpool"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

// run runs the master or, when started by one, a worker; it returns the exit
// code: 0, 1 on failure, 2 on a usage error.
func run(args []string, stdout, stderr io.Writer) int {
	fl := flag.NewFlagSet("prefork-demo", flag.ContinueOnError)
	fl.SetOutput(stderr)
	addr := fl.String("addr", "127.0.0.1:8080", "address to listen on (port 0 picks one, printed at start)")
	workers := fl.Int("workers", runtime.NumCPU(), "worker processes (0: one per CPU)")
	ringPath := fl.String("ring", "", "event ring file (default: prefork-demo-PID.events under /dev/shm or the temp dir, removed on exit)")
	if err := fl.Parse(args); err != nil {
		return 2
	}
	if fl.NArg() > 0 {
		fmt.Fprintf(stderr, "prefork-demo: unexpected arguments %q\n", fl.Args())
		return 2
	}
	logger := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: slog.LevelInfo}))
	path, created := *ringPath, false
	if !workerpool.IsWorker() {
		if path == "" {
			path = filepath.Join(ringDir(), fmt.Sprintf("prefork-demo-%d.events", os.Getpid()))
		}
		if _, err := os.Lstat(path); errors.Is(err, fs.ErrNotExist) {
			created = true
		}
	} else if path == "" {
		path = "set-by-the-master" // a worker opens the master's ring
	}
	d := &demo{}
	err := workerpool.Run(context.Background(), workerpool.Config{
		Workers: *workers,
		Listen:  []string{*addr},
		Logger:  logger,
		Bus: events.Options{
			Path:    path,
			Timeout: purgeCoalesce,
			// A new worker (reload, restart) rebuilds its cache from the
			// "set" events still in the ring; unique refreshes and exec
			// requests it replays are not run again.
			StartAt: events.Oldest,
			Logger:  logger,
			Setup:   d.setup,
		},
		Actions: map[string]workerpool.Action{"stats": d.statsAction},
		Main:    d.main,
		Started: func(m *workerpool.Master) {
			fmt.Fprintf(stdout, "prefork-demo: master pid %d, listening on http://%s, %d workers, ring %s\n",
				os.Getpid(), m.Addrs()[0], m.Slots(), m.Bus().Path())
		},
	})
	if created {
		if rmErr := os.Remove(path); rmErr != nil && !errors.Is(rmErr, fs.ErrNotExist) {
			logger.Warn("prefork-demo: ring not removed", "path", path, "err", rmErr)
		}
	}
	if err != nil {
		fmt.Fprintf(stderr, "prefork-demo: %v\n", err)
		if errors.Is(err, workerpool.ErrConfig) {
			return 2
		}
		return 1
	}
	return 0
}

// purgeCoalesce is the unique events' timeout: purges of one key closer
// together than this run one refresh.
const purgeCoalesce = time.Second

func ringDir() string {
	if st, err := os.Stat("/dev/shm"); err == nil && st.IsDir() {
		return "/dev/shm"
	}
	return os.TempDir()
}
