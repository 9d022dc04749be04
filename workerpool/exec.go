package workerpool

import (
	"cmp"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/shmring/shmring/events"
)

// Exit statuses that the pool itself gives, beside an action's own.
const (
	// StatusUnknownAction: the worker has no action of that name (as a
	// shell says of a command it cannot find).
	StatusUnknownAction = 127
	// StatusPanic: the action panicked; the worker recovered.
	StatusPanic = 2
)

// DefaultExecTimeout is ExecOptions.Timeout's default.
const DefaultExecTimeout = 10 * time.Second

// ExecOptions configure Exec.
type ExecOptions struct {
	// MinWorkers is how many workers must report an exit status for the
	// exec to be complete (default 0: as many as the master expects).
	// Each ack names the worker's master; once one has, Exec also waits
	// for that master's list of expected workers, so the result does not
	// depend on which answer came first. Without a master on the bus,
	// Exec finishes as soon as this many have exited and every worker that
	// acknowledged has, or at Timeout.
	MinWorkers int
	// Timeout is how long Exec waits for the answers (default 10s). It is
	// also each worker's deadline for the action (its ctx).
	Timeout time.Duration
	// OnAck, OnOutput and OnExit, if set, are called as the answers arrive,
	// on Exec's goroutine, as in Consul's exec.
	OnAck    func(w WorkerID)
	OnOutput func(w WorkerID, data []byte)
	OnExit   func(w WorkerID, status int, errMsg string)
}

// WorkerID names one worker process.
type WorkerID struct {
	Index int
	PID   int
}

// String names the worker as messages do: "worker 2 (pid 4242)".
func (w WorkerID) String() string { return fmt.Sprintf("worker %d (pid %d)", w.Index, w.PID) }

// WorkerResult is what one worker answered.
type WorkerResult struct {
	WorkerID
	Acked  bool   // it took the request
	Exited bool   // it reported an exit status
	Status int    // the exit status, once Exited
	Error  string `json:",omitempty"` // the action's error, if any
	Output []byte // everything it wrote, in order
}

// ExecResult is the summary of one Exec.
type ExecResult struct {
	ID     string // the request's id
	Action string
	Seq    uint64 // the request event's sequence number
	// Expected lists the workers the master said were ready when it saw
	// the request; nil when no master answered.
	Expected []WorkerID
	// Master is the pid of the master that the workers' acks name, or 0
	// if no ack named one.
	Master int
	// Workers lists every worker that answered, by index then pid.
	Workers []WorkerResult
	// Missing lists expected workers, and workers that acknowledged, that
	// reported no exit status before Exec gave up.
	Missing []WorkerID
	// Elapsed is how long Exec waited.
	Elapsed time.Duration
}

// Exited returns how many workers reported an exit status.
func (r *ExecResult) Exited() int {
	n := 0
	for _, w := range r.Workers {
		if w.Exited {
			n++
		}
	}
	return n
}

// Failed returns the workers whose action exited with a non-zero status.
func (r *ExecResult) Failed() []WorkerResult {
	var out []WorkerResult
	for _, w := range r.Workers {
		if w.Exited && w.Status != 0 {
			out = append(out, w)
		}
	}
	return out
}

// execRequest is the payload of EventExec.
type execRequest struct {
	ID      string
	Action  string
	Args    []string      `json:",omitempty"`
	Timeout time.Duration `json:",omitempty"`
	From    int           // the requesting process
}

// execExpect is the payload of EventExpect.
type execExpect struct {
	ID      string
	Workers []WorkerID
}

// execReply is the payload of EventAck, EventOutput and EventExit.
type execReply struct {
	ID string
	WorkerID
	Master int    `json:",omitempty"` // ack: the worker's master, whose expect Exec then waits for
	Data   []byte `json:",omitempty"` // output
	Status int    `json:",omitempty"` // exit
	Error  string `json:",omitempty"` // exit
}

func publishJSON(bus *events.Bus, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = bus.Publish(Source, name, b)
	return err
}

func newID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
}

// Exec asks every worker on bus to run the action name with args, and
// gathers their answers: an ack, output, an exit status. It returns when
// every worker the master expects (and every worker that acknowledged) has
// exited and at least opts.MinWorkers have, or when opts.Timeout passes, or
// ctx ends.
//
// The error wraps ErrIncomplete when workers are missing or fewer than
// MinWorkers exited, naming them, and ErrFailed when an action exited with a
// non-zero status; the result is complete either way. A bus that fails, or
// a request that cannot be posted, gives an error and a nil result.
//
// bus may be the master's (Master.Exec), a worker's, or any process's on the
// same file, an observer's included (shmctl exec). Exec registers a handler
// and waits for it: do not call it from a handler of the same bus.
func Exec(ctx context.Context, bus *events.Bus, name string, args []string, opts ExecOptions) (*ExecResult, error) {
	if name == "" {
		return nil, fmt.Errorf("%w: exec: empty action name", ErrConfig)
	}
	if opts.MinWorkers < 0 || opts.Timeout < 0 {
		return nil, fmt.Errorf("%w: exec %s: negative MinWorkers or Timeout", ErrConfig, name)
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultExecTimeout
	}
	begin := time.Now()
	q := newEventQueue()
	reg := bus.Register(q.push, Source, EventExpect, EventAck, EventOutput, EventExit)
	defer reg.Unregister()

	req := execRequest{ID: newID(), Action: name, Args: args, Timeout: opts.Timeout, From: os.Getpid()}
	b, err := json.Marshal(req)
	if err != nil {
		return nil, fmt.Errorf("workerpool: exec %s: %w", name, err)
	}
	seq, err := bus.Publish(Source, EventExec, b)
	if err != nil {
		return nil, fmt.Errorf("workerpool: exec %s: post request: %w", name, err)
	}
	g := &gather{id: req.ID, opts: &opts, byID: map[WorkerID]*WorkerResult{}}

	timeout := time.NewTimer(opts.Timeout)
	defer timeout.Stop()
	var tick <-chan time.Time
	if bus.Options().Mode == events.Manual {
		t := time.NewTicker(10 * time.Millisecond) // nobody else polls this bus
		defer t.Stop()
		tick = t.C
	}
	var stopErr error
wait:
	for !g.complete() {
		select {
		case <-q.ready:
			for _, e := range q.take() {
				g.apply(e)
			}
		case <-tick:
			if _, err := bus.Poll(); err != nil {
				stopErr = err
				break wait
			}
		case <-timeout.C:
			break wait
		case <-ctx.Done():
			stopErr = ctx.Err()
			break wait
		case <-bus.Done():
			return nil, fmt.Errorf("workerpool: exec %s: bus stopped: %w", name, bus.Err())
		}
	}
	res := g.result(name, seq, time.Since(begin))
	return res, errors.Join(stopErr, res.err(opts.MinWorkers))
}

// err says what is wrong with a finished exec, or nil.
func (r *ExecResult) err(minWorkers int) error {
	var errs []error
	exited := r.Exited()
	// Without the master's list nobody knows whom to wait for: only
	// MinWorkers answers make such an exec complete.
	unknown := r.Expected == nil && (minWorkers == 0 || exited < minWorkers || r.Master != 0)
	if len(r.Missing) > 0 || exited < minWorkers || unknown {
		msg := fmt.Sprintf("%d workers exited", exited)
		if r.Expected != nil {
			msg += fmt.Sprintf(" of %d expected", len(r.Expected))
		} else if r.Master != 0 {
			msg += fmt.Sprintf(" (the master, pid %d, did not say whom to expect)", r.Master)
		} else {
			msg += " (no master answered, so none were expected)"
		}
		if minWorkers > 0 {
			msg += fmt.Sprintf(", at least %d required", minWorkers)
		}
		if len(r.Missing) > 0 {
			var names []string
			for _, w := range r.Missing {
				names = append(names, w.String())
			}
			msg += "; no answer from " + strings.Join(names, ", ")
		}
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrIncomplete, r.Action, msg))
	}
	if failed := r.Failed(); len(failed) > 0 {
		var names []string
		for _, w := range failed {
			names = append(names, fmt.Sprintf("%v: status %d", w.WorkerID, w.Status))
		}
		errs = append(errs, fmt.Errorf("%w: %s: %s", ErrFailed, r.Action, strings.Join(names, ", ")))
	}
	return errors.Join(errs...)
}

// gather folds the replies to one request.
type gather struct {
	id       string
	opts     *ExecOptions
	expected []WorkerID // nil until the master answers
	master   int        // the master an ack named, 0 until one does
	byID     map[WorkerID]*WorkerResult
}

func (g *gather) worker(id WorkerID) *WorkerResult {
	w := g.byID[id]
	if w == nil {
		w = &WorkerResult{WorkerID: id}
		g.byID[id] = w
	}
	return w
}

func (g *gather) apply(e *events.Event) {
	if e.Name == EventExpect {
		var x execExpect
		if e.JSON(&x) == nil && x.ID == g.id && g.expected == nil {
			g.expected = append([]WorkerID{}, x.Workers...)
		}
		return
	}
	var r execReply
	if e.JSON(&r) != nil || r.ID != g.id {
		return
	}
	w := g.worker(r.WorkerID)
	switch e.Name {
	case EventAck:
		w.Acked = true
		if r.Master != 0 && g.master == 0 {
			g.master = r.Master
		}
		if g.opts.OnAck != nil {
			g.opts.OnAck(r.WorkerID)
		}
	case EventOutput:
		w.Output = append(w.Output, r.Data...)
		if g.opts.OnOutput != nil {
			g.opts.OnOutput(r.WorkerID, r.Data)
		}
	case EventExit:
		w.Exited, w.Status, w.Error = true, r.Status, r.Error
		if g.opts.OnExit != nil {
			g.opts.OnExit(r.WorkerID, r.Status, r.Error)
		}
	}
}

// complete reports whether there is nothing more to wait for.
func (g *gather) complete() bool {
	exited := 0
	for _, w := range g.byID {
		if w.Acked && !w.Exited {
			return false
		}
		if w.Exited {
			exited++
		}
	}
	if exited < g.opts.MinWorkers {
		return false
	}
	if g.expected == nil {
		// A master exists (an ack named it): its expect is on its way,
		// and finishing without it would make the result depend on
		// whether it came before the last exit.
		return g.opts.MinWorkers > 0 && g.master == 0
	}
	for _, id := range g.expected {
		if w := g.byID[id]; w == nil || !w.Exited {
			return false
		}
	}
	return true
}

func (g *gather) result(action string, seq uint64, elapsed time.Duration) *ExecResult {
	res := &ExecResult{ID: g.id, Action: action, Seq: seq, Expected: g.expected, Master: g.master, Elapsed: elapsed}
	missing := map[WorkerID]bool{}
	for _, id := range g.expected {
		if w := g.byID[id]; w == nil || !w.Exited {
			missing[id] = true
		}
	}
	for id, w := range g.byID {
		res.Workers = append(res.Workers, *w)
		if w.Acked && !w.Exited {
			missing[id] = true
		}
	}
	for id := range missing {
		res.Missing = append(res.Missing, id)
	}
	byIndex := func(a, b WorkerID) int { return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.PID, b.PID)) }
	slices.SortFunc(res.Workers, func(a, b WorkerResult) int { return byIndex(a.WorkerID, b.WorkerID) })
	slices.SortFunc(res.Missing, byIndex)
	return res
}

// eventQueue hands events from a bus handler to a waiting goroutine without
// ever dropping one (a Subscribe channel would drop when full).
type eventQueue struct {
	mu    sync.Mutex
	evs   []*events.Event
	ready chan struct{} // has a token while evs is not empty
}

func newEventQueue() *eventQueue { return &eventQueue{ready: make(chan struct{}, 1)} }

func (q *eventQueue) push(e *events.Event) {
	q.mu.Lock()
	q.evs = append(q.evs, e.Clone())
	q.mu.Unlock()
	select {
	case q.ready <- struct{}{}:
	default:
	}
}

func (q *eventQueue) take() []*events.Event {
	q.mu.Lock()
	defer q.mu.Unlock()
	evs := q.evs
	q.evs = nil
	return evs
}
