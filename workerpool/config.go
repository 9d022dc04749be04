package workerpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"runtime"
	"time"

	"github.com/shmring/shmring/events"
)

// Source is the event source of everything the pool posts on the bus.
const Source = "workerpool"

// Names of the events the pool posts under Source. Each carries a JSON
// object; DESIGN.md describes the fields.
const (
	EventReady    = "ready"    // a worker's bus is open and its actions registered (worker)
	EventExited   = "exited"   // a worker exited when nobody asked it to (master)
	EventSpawned  = "spawned"  // a worker process was started (master)
	EventReloaded = "reloaded" // a rolling replacement of every worker finished (master)
	EventExec     = "exec"     // a request to run an action (Exec)
	EventExpect   = "expect"   // the workers the master expects to answer a request (master)
	EventAck      = "ack"      // a worker took a request (worker)
	EventOutput   = "output"   // a chunk of an action's output (worker)
	EventExit     = "exit"     // an action finished, with its status (worker)
)

// Defaults for the zero Config fields.
const (
	DefaultGrace      = 10 * time.Second
	DefaultBackoffMin = 100 * time.Millisecond
	DefaultBackoffMax = 10 * time.Second
	DefaultMinUptime  = 5 * time.Second
	DefaultReady      = 30 * time.Second
)

var (
	// ErrConfig: a Config field is out of range or missing.
	ErrConfig = errors.New("workerpool: invalid config")
	// ErrIncomplete: Exec gave up before every expected worker answered,
	// or fewer than ExecOptions.MinWorkers did.
	ErrIncomplete = errors.New("workerpool: exec incomplete")
	// ErrFailed: at least one worker's action exited with a non-zero status.
	ErrFailed = errors.New("workerpool: exec failed on a worker")
	// ErrMasterGone: a worker's master died; the worker stopped.
	ErrMasterGone = errors.New("workerpool: master process is gone")
)

// Action is a named job a worker runs for Exec. It writes its output to out
// (each Write becomes one or more "output" events) and returns nil for exit
// status 0; an error with an ExitCode() int method sets the status, any other
// error gives 1. ctx ends when the request's timeout passes or the worker
// stops.
type Action func(ctx context.Context, args []string, out io.Writer) error

// Config configures Run. The zero value of every field but Bus.Path and Main
// takes its default.
type Config struct {
	// Workers is the number of worker processes (default runtime.NumCPU()).
	// Each takes a slot in the ring's reader registry and a reload needs one
	// more, so Run refuses more than the ring's reader slots less one (63
	// with the default geometry) with ErrConfig.
	Workers int
	// Listen lists TCP addresses ("host:port"; port 0 picks one) that the
	// master listens on; every worker accepts on the same sockets, in this
	// order, as Worker.Listeners.
	Listen []string
	// ReusePort sets SO_REUSEPORT on the master's sockets, so that another
	// process (a new master during an upgrade) may bind the same addresses.
	// The workers share the master's sockets either way.
	ReusePort bool
	// Bus is the event bus every process opens. Path is required (a worker
	// opens the master's path, whatever its own Config says). Bus.Setup
	// runs in each worker, not in the master, before the pool registers
	// its own handlers. Mode Manual is taken as Wake: the pool's handlers
	// must run unprompted. A worker restarted after a crash resumes at the
	// dead one's cursor when StartAt is Latest (the default); set Oldest to
	// replay whatever the ring still holds instead, to rebuild state kept
	// in memory.
	Bus events.Options
	// Main is the worker's body. It runs in each worker process and should
	// return soon after ctx is cancelled (on stop and on reload: finish the
	// connections in hand, accept no more). A worker whose Main returns
	// while ctx is live is restarted like a crashed one.
	Main func(ctx context.Context, w *Worker) error
	// Actions are the jobs workers run for Exec, by name.
	Actions map[string]Action
	// Grace is how long a worker has to exit after its context is cancelled
	// before it is killed (default 10s).
	Grace time.Duration
	// BackoffMin and BackoffMax bound the delay before restarting a worker
	// that keeps crashing: BackoffMin after the second quick exit in a row,
	// doubling up to BackoffMax (defaults 100ms and 10s). A worker's first
	// exit after a healthy run is restarted at once.
	BackoffMin, BackoffMax time.Duration
	// MinUptime is how long a worker must run for its exit not to count as
	// a crash in a row (default 5s).
	MinUptime time.Duration
	// ReadyTimeout is how long a reload waits for a new worker's "ready"
	// event before it kills that worker and abandons the reload, keeping
	// the old workers (default 30s).
	ReadyTimeout time.Duration
	// Logger receives the master's and the workers' logs (default
	// slog.Default()).
	Logger *slog.Logger
	// Started, if set, is called in the master once it listens and has
	// started the workers (they may not be ready yet).
	Started func(m *Master)
}

// Worker is what a worker's Main gets.
type Worker struct {
	// Index is the worker's slot, 0..Workers-1; a replacement keeps it.
	Index int
	// Generation counts the processes started for this slot, from 1.
	Generation int
	// Listeners are the master's sockets, in Config.Listen order.
	Listeners []net.Listener
	// Bus is this worker's bus, open until Main returns.
	Bus *events.Bus
	// Logger is Config.Logger with the worker's index and pid.
	Logger *slog.Logger

	exec *execWorker
}

func (c *Config) setDefaults() error {
	switch {
	case c.Workers < 0:
		return fmt.Errorf("%w: Workers is negative (%d)", ErrConfig, c.Workers)
	case c.Workers == 0:
		c.Workers = runtime.NumCPU()
	}
	if c.Main == nil {
		return fmt.Errorf("%w: Main is nil", ErrConfig)
	}
	if c.Bus.Path == "" {
		return fmt.Errorf("%w: Bus.Path is empty", ErrConfig)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Grace", &c.Grace, DefaultGrace},
		{"BackoffMin", &c.BackoffMin, DefaultBackoffMin},
		{"BackoffMax", &c.BackoffMax, DefaultBackoffMax},
		{"MinUptime", &c.MinUptime, DefaultMinUptime},
		{"ReadyTimeout", &c.ReadyTimeout, DefaultReady},
	} {
		if *d.v < 0 {
			return fmt.Errorf("%w: %s is negative (%v)", ErrConfig, d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if c.BackoffMax < c.BackoffMin {
		return fmt.Errorf("%w: BackoffMax (%v) is below BackoffMin (%v)", ErrConfig, c.BackoffMax, c.BackoffMin)
	}
	for name, a := range c.Actions {
		if name == "" || a == nil {
			return fmt.Errorf("%w: action %q has an empty name or a nil func", ErrConfig, name)
		}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	return nil
}

// backoff returns the delay before restart after crashes quick exits in a
// row (1 for a first exit after a healthy run).
func (c *Config) backoff(crashes int) time.Duration {
	if crashes <= 1 {
		return 0
	}
	d := c.BackoffMin
	for i := 2; i < crashes && d < c.BackoffMax; i++ {
		d *= 2
	}
	return min(d, c.BackoffMax)
}
