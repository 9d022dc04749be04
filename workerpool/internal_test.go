package workerpool

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
)

func TestBackoff(t *testing.T) {
	cfg := Config{BackoffMin: 100 * time.Millisecond, BackoffMax: time.Second}
	for _, c := range []struct {
		crashes int
		want    time.Duration
	}{
		{0, 0}, {1, 0}, // a first exit after a healthy run: at once
		{2, 100 * time.Millisecond},
		{3, 200 * time.Millisecond},
		{4, 400 * time.Millisecond},
		{5, 800 * time.Millisecond},
		{6, time.Second},
		{60, time.Second},
	} {
		assert.Equal(t, c.want, cfg.backoff(c.crashes), "after %d quick exits in a row", c.crashes)
	}
}

// With ReusePort, a second socket can bind the address the pool holds (a
// new master during an upgrade); without it, it cannot.
func TestListenReusePort(t *testing.T) {
	ln, f, err := listen("127.0.0.1:0", true)
	require.NoError(t, err)
	defer ln.Close()
	defer f.Close()
	v, err := unix.GetsockoptInt(int(f.Fd()), unix.SOL_SOCKET, unix.SO_REUSEPORT)
	require.NoError(t, err)
	assert.Equal(t, 1, v, "SO_REUSEPORT is set on the shared socket")
	ln2, f2, err := listen(ln.Addr().String(), true)
	require.NoError(t, err, "a second SO_REUSEPORT socket binds the same address")
	ln2.Close()
	f2.Close()

	plain, pf, err := listen("127.0.0.1:0", false)
	require.NoError(t, err)
	defer plain.Close()
	defer pf.Close()
	_, _, err = listen(plain.Addr().String(), false)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "listen "+plain.Addr().String())
	var opErr *net.OpError
	assert.ErrorAs(t, err, &opErr, "the net error is wrapped")
}

// Starting a worker must leave the shared socket non-blocking: O_NONBLOCK
// is a flag of the open file description that the master and every worker
// share, and an idle worker whose Accept blocks in the kernel cannot be
// stopped by closing its listener.
func TestStartingWorkerKeepsSocketNonBlocking(t *testing.T) {
	ln, f, err := listen("127.0.0.1:0", false)
	require.NoError(t, err)
	defer ln.Close()
	defer f.Close()
	flags := func() int {
		rc, err := ln.(*net.TCPListener).SyscallConn()
		require.NoError(t, err)
		var fl int
		var ferr error
		require.NoError(t, rc.Control(func(fd uintptr) { fl, ferr = unix.FcntlInt(fd, unix.F_GETFL, 0) }))
		require.NoError(t, ferr)
		return fl
	}
	require.NotZero(t, flags()&unix.O_NONBLOCK, "the listener starts non-blocking")
	cmd := exec.Command("/bin/true")
	cmd.ExtraFiles = []*os.File{f} // as spawnLocked hands it over
	require.NoError(t, cmd.Start())
	require.NoError(t, cmd.Wait())
	assert.NotZero(t, flags()&unix.O_NONBLOCK, "the shared socket is still non-blocking after a worker started")
	fdFlags, err := unix.FcntlInt(f.Fd(), unix.F_GETFD, 0)
	require.NoError(t, err)
	assert.NotZero(t, fdFlags&unix.FD_CLOEXEC, "the master's copy is close-on-exec (exec.Cmd dups it for the child)")
}

func TestWorkerEnv(t *testing.T) {
	start := uint64(42)
	for _, kv := range childEnv(3, 7, 2, "/dev/shm/x.events", &start) {
		k, v, _ := cutEnv(kv)
		if len(k) > len("SHMRING_WORKERPOOL_") && k[:len("SHMRING_WORKERPOOL_")] == "SHMRING_WORKERPOOL_" {
			t.Setenv(k, v)
		}
	}
	require.True(t, IsWorker())
	env, err := readWorkerEnv()
	require.NoError(t, err)
	assert.Equal(t, workerEnv{index: 3, gen: 7, listeners: 2, ring: "/dev/shm/x.events", start: 42, resume: true}, env)
	assert.False(t, IsWorker(), "the variables are gone once read: a worker's own children are not workers")

	t.Setenv(envWorker, "x:1")
	t.Setenv(envListeners, "1")
	t.Setenv(envRing, "/r")
	_, err = readWorkerEnv()
	require.Error(t, err)
	assert.Contains(t, err.Error(), "malformed")
	os.Unsetenv(envWorker)
}

func cutEnv(kv string) (k, v string, ok bool) {
	for i := range kv {
		if kv[i] == '=' {
			return kv[:i], kv[i+1:], true
		}
	}
	return kv, "", false
}

// A request that reaches a worker once it has begun waiting for its
// actions is skipped and counted, never started: an action started after
// wait returned would never post its exit. Under -race, requests handled
// while wait runs also check that the two are ordered.
func TestExecWorkerSkipsRequestsOnceStopping(t *testing.T) {
	bus, err := events.Open(events.Options{Path: filepath.Join(t.TempDir(), "w.events"), Mode: events.Manual})
	require.NoError(t, err)
	defer bus.Close()
	var started atomic.Int64
	x := &execWorker{
		ctx: context.Background(), bus: bus, log: slog.New(slog.NewTextHandler(io.Discard, nil)),
		actions: map[string]Action{"run": func(context.Context, []string, io.Writer) error {
			started.Add(1)
			return nil
		}},
	}
	w := &Worker{exec: x}
	request := func(seq uint64) *events.Event {
		b, err := json.Marshal(execRequest{ID: fmt.Sprintf("r%d", seq), Action: "run"})
		require.NoError(t, err)
		return &events.Event{Source: Source, Name: EventExec, Data: b, Seq: seq}
	}

	// Requests handled while wait runs: each is either run and waited for,
	// or skipped.
	const n = 200
	evs := make([]*events.Event, n)
	for i := range evs {
		evs[i] = request(uint64(i + 1))
	}
	handled := make(chan struct{})
	go func() {
		defer close(handled)
		for _, e := range evs {
			x.handle(e)
		}
	}()
	x.wait()
	<-handled
	st := w.Stats()
	assert.Equal(t, uint64(n), st.ExecRun+st.ExecSkipped, "every request was run or skipped")

	// Once wait has returned, nothing starts.
	before := started.Load()
	x.handle(request(n + 1))
	st2 := w.Stats()
	assert.Equal(t, st.ExecSkipped+1, st2.ExecSkipped, "the late request is counted as skipped")
	assert.Equal(t, st.ExecRun, st2.ExecRun, "and not run")
	assert.Equal(t, before, started.Load(), "no action started after wait returned")
}

// With MinWorkers, an exec whose acks name a master waits for that
// master's expect even when enough exits came first; without a master it
// finishes on the exits alone.
func TestGatherWaitsForKnownMastersExpect(t *testing.T) {
	ev := func(name string, v any) *events.Event {
		b, err := json.Marshal(v)
		require.NoError(t, err)
		return &events.Event{Source: Source, Name: name, Data: b}
	}
	w0, w1 := WorkerID{Index: 0, PID: 10}, WorkerID{Index: 1, PID: 11}

	g := &gather{id: "x", opts: &ExecOptions{MinWorkers: 1}, byID: map[WorkerID]*WorkerResult{}}
	g.apply(ev(EventAck, execReply{ID: "x", WorkerID: w0, Master: 9}))
	g.apply(ev(EventExit, execReply{ID: "x", WorkerID: w0}))
	assert.False(t, g.complete(), "the acks named master 9: its expect is awaited")
	g.apply(ev(EventExpect, execExpect{ID: "x", Workers: []WorkerID{w0, w1}}))
	assert.False(t, g.complete(), "the master expects worker 1 too")
	g.apply(ev(EventAck, execReply{ID: "x", WorkerID: w1, Master: 9}))
	g.apply(ev(EventExit, execReply{ID: "x", WorkerID: w1}))
	assert.True(t, g.complete())
	res := g.result("a", 1, 0)
	assert.Equal(t, 9, res.Master)
	assert.NoError(t, res.err(1))

	// The master never answers: at the timeout the result says so.
	g = &gather{id: "y", opts: &ExecOptions{MinWorkers: 1}, byID: map[WorkerID]*WorkerResult{}}
	g.apply(ev(EventAck, execReply{ID: "y", WorkerID: w0, Master: 9}))
	g.apply(ev(EventExit, execReply{ID: "y", WorkerID: w0}))
	err := g.result("a", 1, 0).err(1)
	require.ErrorIs(t, err, ErrIncomplete)
	assert.Contains(t, err.Error(), "pid 9")

	// No master on the bus: MinWorkers exits are enough.
	g = &gather{id: "z", opts: &ExecOptions{MinWorkers: 1}, byID: map[WorkerID]*WorkerResult{}}
	g.apply(ev(EventAck, execReply{ID: "z", WorkerID: w0}))
	g.apply(ev(EventExit, execReply{ID: "z", WorkerID: w0}))
	assert.True(t, g.complete())
	assert.NoError(t, g.result("a", 1, 0).err(1))
}

// A request posted after a worker's bus placed its reader at Latest, but
// before its Setup ran, is read live: it is run, not counted as replayed
// and skipped. (The ring's head read in Setup was taken as the start of the
// live requests, and under load a request from another process fell in
// between now and then.) A bus that starts at Oldest still skips the
// requests posted before it opened.
func TestRequestPostedWhileWorkerBusOpensIsRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "w.events")
	poster, err := events.Open(events.Options{Path: path, Observe: true, Mode: events.Manual})
	require.NoError(t, err)
	defer poster.Close()
	post := func(id string) {
		t.Helper()
		b, err := json.Marshal(execRequest{ID: id, Action: "run"})
		require.NoError(t, err)
		_, err = poster.Publish(Source, EventExec, b)
		require.NoError(t, err)
	}
	post("before-open")

	for _, c := range []struct {
		name  string
		start events.StartAt
	}{{"latest", events.Latest}, {"oldest", events.Oldest}} {
		t.Run(c.name, func(t *testing.T) {
			var mu sync.Mutex
			var ran []string
			x := &execWorker{
				ctx: context.Background(), log: slog.New(slog.NewTextHandler(io.Discard, nil)),
				actions: map[string]Action{"run": func(ctx context.Context, _ []string, _ io.Writer) error {
					return nil
				}},
			}
			window := "window-" + c.name
			bus, err := events.Open(events.Options{Path: path, Mode: events.Manual, StartAt: c.start, Setup: func(b *events.Bus) {
				// Another process posts once this bus's reader is placed,
				// before the worker's Setup reads anything.
				post(window)
				x.bus, x.opened = b, joinedAt(b, c.start)
				b.Register(func(e *events.Event) {
					var req execRequest
					if e.JSON(&req) == nil {
						mu.Lock()
						ran = append(ran, req.ID)
						mu.Unlock()
					}
					x.handle(e)
				}, Source, EventExec)
			}})
			require.NoError(t, err)
			defer bus.Close()
			_, err = bus.Poll()
			require.NoError(t, err)
			x.wait()
			st := (&Worker{exec: x}).Stats()
			mu.Lock()
			defer mu.Unlock()
			switch c.start {
			case events.Latest:
				assert.Equal(t, []string{window}, ran, "a bus at Latest reads the request posted as it opened")
				assert.Equal(t, uint64(1), st.ExecRun, "and runs it")
				assert.Zero(t, st.ExecReplayed, "a bus at Latest replays nothing")
			default:
				assert.Contains(t, ran, "before-open", "a bus at Oldest reads the requests posted before it opened")
				assert.Positive(t, st.ExecReplayed, "and skips them as replayed")
				assert.Equal(t, uint64(len(ran)), st.ExecRun+st.ExecReplayed, "every request read was run or skipped")
			}
		})
	}
}
