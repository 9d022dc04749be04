package workerpool

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
)

// Run runs the pool. In the master it listens on cfg.Listen, opens the bus,
// starts cfg.Workers workers and supervises them until ctx ends or the
// process gets SIGTERM or SIGINT; SIGHUP replaces the workers one at a time
// (see Master.Reload). It returns nil after such a stop, or the error that
// kept it from starting: ErrConfig for a bad cfg, a listen error naming the
// address, the bus's open error naming the path.
//
// In a worker (IsWorker), Run opens the master's bus, registers cfg.Actions,
// announces the worker with a "ready" event and calls cfg.Main, whose context
// is cancelled when the master asks the worker to stop (SIGTERM) or dies.
// It returns when Main has returned, with Main's error; the program should
// then exit. A worker ignores SIGINT and SIGHUP, which a terminal sends to
// the whole process group: the master decides.
func Run(ctx context.Context, cfg Config) error {
	if err := cfg.setDefaults(); err != nil {
		return err
	}
	if IsWorker() {
		env, err := readWorkerEnv()
		if err != nil {
			return err
		}
		return runWorker(ctx, cfg, env)
	}
	return runMaster(ctx, cfg)
}

// readyMsg is the payload of EventReady.
type readyMsg struct {
	Index      int
	PID        int
	Generation int
	// Start is the sequence the worker's bus started reading at.
	Start   uint64
	Actions []string `json:",omitempty"`
}

func runWorker(ctx context.Context, cfg Config, env workerEnv) error {
	log := cfg.Logger.With("worker", env.index, "pid", os.Getpid())
	workerIndex.Store(int64(env.index))
	signal.Ignore(syscall.SIGINT, syscall.SIGHUP)
	ctx, stopSignals := signal.NotifyContext(ctx, syscall.SIGTERM)
	defer stopSignals()
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	masterGone := make(chan struct{})
	// The inherited descriptors are not for this process's own children.
	unix.CloseOnExec(fdMaster)
	go watchMaster(os.NewFile(fdMaster, "workerpool-master"), func() {
		close(masterGone)
		cancel(ErrMasterGone)
	})

	lns, err := inheritListeners(env.listeners)
	if err != nil {
		return err
	}
	defer closeAll(lns)

	// The master started this process: it is the parent, until it dies.
	ex := &execWorker{ctx: ctx, actions: cfg.Actions, index: env.index, pid: os.Getpid(), master: os.Getppid(), log: log}
	w := &Worker{Index: env.index, Generation: env.gen, Listeners: lns, Logger: log, exec: ex}
	opts := cfg.Bus
	opts.Path = env.ring
	opts.MustExist = true // the master created it
	if opts.Mode == events.Manual {
		opts.Mode = events.Wake // the pool's handlers must run unprompted
	}
	if env.resume && opts.StartAt == events.Latest {
		opts.StartAt = events.AtSeq(env.start)
	}
	userSetup := opts.Setup
	start := opts.StartAt
	opts.Setup = func(b *events.Bus) {
		// Requests before the ring's head at open were posted before this
		// process joined: a bus that starts at Oldest or resumes a dead
		// worker's cursor replays them, and they are not for it.
		ex.bus, ex.opened, ex.start = b, joinedAt(b, start), b.Cursor()
		// The program's handlers first: one of them may take a snapshot at
		// an exec request (see ExecSeq) before the action starts.
		if userSetup != nil {
			userSetup(b)
		}
		b.Register(ex.handle, Source, EventExec)
	}
	bus, err := events.Open(opts)
	if err != nil {
		return fmt.Errorf("workerpool: worker %d: open bus: %w", env.index, err)
	}
	w.Bus = bus
	defer bus.Close()
	defer ex.wait()
	defer catchUp(bus, catchUpMax)

	ready := readyMsg{Index: env.index, PID: os.Getpid(), Generation: env.gen, Start: ex.start, Actions: ex.names()}
	if err := publishJSON(bus, EventReady, ready); err != nil {
		return fmt.Errorf("workerpool: worker %d: announce: %w", env.index, err)
	}
	log.Debug("workerpool: worker ready", "generation", env.gen, "start", ex.start)

	mainDone := make(chan error, 1)
	go func() { mainDone <- cfg.Main(ctx, w) }()
	select {
	case err := <-mainDone:
		if cause := context.Cause(ctx); errors.Is(cause, ErrMasterGone) {
			return errors.Join(err, ErrMasterGone)
		}
		return err
	case <-masterGone:
	}
	// Nobody will kill this worker if Main hangs: give it the grace period.
	log.Warn("workerpool: master is gone; stopping", "grace", cfg.Grace)
	select {
	case err := <-mainDone:
		return errors.Join(err, ErrMasterGone)
	case <-time.After(cfg.Grace):
		return fmt.Errorf("%w; Main did not return within %v", ErrMasterGone, cfg.Grace)
	}
}

// joinedAt returns, for a worker's bus b in its Setup (nothing read yet)
// that started reading at start, the first sequence it reads live: exec
// requests before it were posted before this process joined, and only a
// bus that starts at Oldest or resumes a dead worker's cursor replays them.
//
// A bus that starts at Latest replays nothing: its cursor is the ring's
// head when its reader was placed. Other processes may post between that
// moment and Setup, so the head read in Setup can be later; taking it
// would count requests the worker reads live as replayed, and skip them.
// For the other starts the head in Setup is the nearest bound there is; a
// request posted in between is not expected of this process (it is not
// ready yet), so skipping it is harmless.
func joinedAt(b *events.Bus, start events.StartAt) uint64 {
	if start == events.Latest {
		return b.Cursor()
	}
	return b.Ring().Next()
}

// catchUpMax bounds how long a stopping worker reads the bus to catch up.
const catchUpMax = time.Second

// catchUp handles the events posted before the worker began to stop, for
// at most limit: the master lists this worker in the expect of every
// request it handled before it asked the worker to stop, and the worker
// must not close its bus before it has seen them. The actions it starts
// get a cancelled context; they still answer.
func catchUp(bus *events.Bus, limit time.Duration) {
	target := bus.Ring().Next()
	deadline := time.Now().Add(limit)
	for bus.Cursor() < target && time.Now().Before(deadline) {
		if _, err := bus.Poll(); err != nil {
			return
		}
		if bus.Cursor() < target {
			time.Sleep(time.Millisecond) // the poller is busy, or an entry is pending
		}
	}
}

// workerIndex is this process's worker index, -1 outside a worker.
var workerIndex atomic.Int64

func init() { workerIndex.Store(-1) }

// Index returns this process's worker index while Run runs it as a worker,
// and -1 otherwise. Handlers registered in Config.Bus.Setup, which run
// before Main, can use it.
func Index() int { return int(workerIndex.Load()) }

type execSeqKey struct{}

// ExecSeq returns, in an Action, the sequence number of the exec request it
// runs for. Every worker handles the request at that point of the one order
// of events, so a handler of the request (Source, EventExec) that
// takes a snapshot keyed by e.Seq gives the action a view taken at the same
// point in every worker. Handlers registered in Config.Bus.Setup run before
// the pool's, which starts the action.
func ExecSeq(ctx context.Context) (uint64, bool) {
	seq, ok := ctx.Value(execSeqKey{}).(uint64)
	return seq, ok
}

// watchMaster calls gone when f, the read end of the master's pipe, reaches
// end of file: the master, the only holder of the write end, has exited.
func watchMaster(f *os.File, gone func()) {
	if f != nil {
		_, _ = io.Copy(io.Discard, f)
		f.Close()
	}
	gone()
}

func inheritListeners(n int) ([]net.Listener, error) {
	lns := make([]net.Listener, 0, n)
	for i := range n {
		f := os.NewFile(uintptr(fdListeners+i), fmt.Sprintf("workerpool-listener-%d", i))
		if f == nil {
			closeAll(lns)
			return nil, fmt.Errorf("workerpool: worker: listener %d: descriptor %d is not open", i, fdListeners+i)
		}
		unix.CloseOnExec(fdListeners + i)
		ln, err := net.FileListener(f) // dups the descriptor
		f.Close()
		if err != nil {
			closeAll(lns)
			return nil, fmt.Errorf("workerpool: worker: listener %d (fd %d): %w", i, fdListeners+i, err)
		}
		lns = append(lns, ln)
	}
	return lns, nil
}

func closeAll[T io.Closer](cs []T) {
	for _, c := range cs {
		c.Close()
	}
}

// execWorker answers exec requests in a worker.
type execWorker struct {
	ctx     context.Context
	bus     *events.Bus
	opened  uint64 // the first sequence the bus reads live (joinedAt): earlier requests are not for this process
	start   uint64 // where the bus started reading
	actions map[string]Action
	index   int
	pid     int
	master  int // the master's pid, named in each ack
	log     *slog.Logger

	// mu orders running.Add in handle against wait: once closing is set,
	// no action starts, so none can start after wait has returned.
	mu      sync.Mutex
	closing bool
	running sync.WaitGroup

	runs, replayed, skipped, malformed, postErrors atomic.Uint64
}

// WorkerStats are a worker's exec counters.
type WorkerStats struct {
	ExecRun       uint64 // requests acknowledged and run (unknown actions included)
	ExecReplayed  uint64 // requests posted before this worker joined, replayed by its bus and skipped
	ExecSkipped   uint64 // requests that arrived once the worker was stopping: not acknowledged, not run (logged)
	ExecMalformed uint64 // exec events that did not decode (skipped, logged)
	PostErrors    uint64 // acks, outputs and exits that could not be posted (logged)
}

// Stats returns the worker's exec counters.
func (w *Worker) Stats() WorkerStats {
	x := w.exec
	return WorkerStats{
		ExecRun: x.runs.Load(), ExecReplayed: x.replayed.Load(), ExecSkipped: x.skipped.Load(),
		ExecMalformed: x.malformed.Load(), PostErrors: x.postErrors.Load(),
	}
}

func (x *execWorker) names() []string {
	var names []string
	for n := range x.actions {
		names = append(names, n)
	}
	return names
}

// wait stops taking requests and waits for the actions still running;
// their context is the worker's, cancelled by now.
func (x *execWorker) wait() {
	x.mu.Lock()
	x.closing = true
	x.mu.Unlock()
	x.running.Wait()
}

// handle runs on the bus's poller: it acknowledges a request and starts its
// action on a goroutine of its own.
func (x *execWorker) handle(e *events.Event) {
	var req execRequest
	if err := e.JSON(&req); err != nil || req.ID == "" {
		x.malformed.Add(1)
		x.log.Warn("workerpool: malformed exec request skipped", "seq", e.Seq, "from", e.PID, "err", err)
		return
	}
	if e.Seq < x.opened {
		// Replayed to a replacement resuming a dead worker's cursor: the
		// request was for the dead one, and the master did not count on
		// this process.
		x.replayed.Add(1)
		x.log.Debug("workerpool: exec request from before this worker skipped", "id", req.ID, "seq", e.Seq)
		return
	}
	x.mu.Lock()
	if x.closing {
		x.mu.Unlock()
		// The worker is on its way out: an ack now would promise an exit
		// status that nobody would post.
		x.skipped.Add(1)
		x.log.Warn("workerpool: exec request arrived while stopping; skipped", "id", req.ID, "seq", e.Seq)
		return
	}
	x.running.Add(1)
	x.mu.Unlock()
	id := WorkerID{Index: x.index, PID: x.pid}
	x.runs.Add(1)
	if err := publishJSON(x.bus, EventAck, execReply{ID: req.ID, WorkerID: id, Master: x.master}); err != nil {
		x.postErrors.Add(1)
		x.log.Warn("workerpool: exec ack not posted", "id", req.ID, "err", err)
	}
	seq := e.Seq // e is the bus's only until this handler returns
	go func() {
		defer x.running.Done()
		x.run(req, seq, id)
	}()
}

func (x *execWorker) run(req execRequest, seq uint64, id WorkerID) {
	status, msg := 0, ""
	action, ok := x.actions[req.Action]
	if !ok {
		status, msg = StatusUnknownAction, fmt.Sprintf("unknown action %q", req.Action)
	} else {
		ctx, cancel := context.WithValue(x.ctx, execSeqKey{}, seq), context.CancelFunc(func() {})
		if req.Timeout > 0 {
			ctx, cancel = context.WithTimeout(ctx, req.Timeout)
		}
		out := &outputWriter{bus: x.bus, id: req.ID, worker: id}
		status, msg = runAction(ctx, action, req.Args, out)
		cancel()
		if out.err != nil {
			x.postErrors.Add(1)
			x.log.Warn("workerpool: exec output not posted", "id", req.ID, "err", out.err)
		}
	}
	rep := execReply{ID: req.ID, WorkerID: id, Status: status, Error: msg}
	if err := publishJSON(x.bus, EventExit, rep); err != nil {
		x.postErrors.Add(1)
		x.log.Warn("workerpool: exec exit not posted", "id", req.ID, "err", err)
	}
}

// runAction runs a, turning its error or panic into an exit status.
func runAction(ctx context.Context, a Action, args []string, out io.Writer) (status int, msg string) {
	defer func() {
		if p := recover(); p != nil {
			status, msg = StatusPanic, fmt.Sprintf("panic: %v", p)
		}
	}()
	err := a(ctx, args, out)
	if err == nil {
		return 0, ""
	}
	var coded interface{ ExitCode() int }
	if errors.As(err, &coded) && coded.ExitCode() > 0 {
		return coded.ExitCode(), err.Error()
	}
	return 1, err.Error()
}

// outputWriter posts each Write as "output" events, in chunks that fit.
type outputWriter struct {
	bus    *events.Bus
	id     string
	worker WorkerID
	mu     sync.Mutex
	err    error // the first failed post
}

// maxOutputChunk bounds one output event's data (before base64).
const maxOutputChunk = 32 << 10

// Write posts p as one or more "output" events; after a failed post it
// fails at once.
func (w *outputWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.err != nil {
		return 0, w.err
	}
	// base64 makes 4 bytes of 3; leave room for the JSON around it.
	chunk := min(maxOutputChunk, (w.bus.MaxData(Source, EventOutput, "")-512)*3/4)
	n := 0
	for n < len(p) {
		c := p[n:min(len(p), n+chunk)]
		if err := publishJSON(w.bus, EventOutput, execReply{ID: w.id, WorkerID: w.worker, Data: c}); err != nil {
			w.err = err
			return n, err
		}
		n += len(c)
	}
	return n, nil
}
