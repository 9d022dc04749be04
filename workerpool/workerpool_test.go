package workerpool_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/internal/proc"
	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/workerpool"
)

// Multi-process tests. The test binary re-executes itself as a master (role
// "pool"), which re-executes itself again as its workers: the same role
// function calls workerpool.Run in both, as a real program's main does.
// Master and workers share the child's stdout, where they print one line
// per fact the test needs ("master PID ADDR", "worker INDEX PID GEN",
// "master-exit STATS"). The test process opens the same ring as an
// observer to post events, watch the pool's events and run Exec.

func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{"pool": rolePool})
}

// waitLong bounds every wait for a condition. The machine is slow and
// shared; nothing relies on it for correctness, it only turns a hang into a
// failure.
const waitLong = 60 * time.Second

// poolArgs is the pool child's argument, as JSON.
type poolArgs struct {
	Ring         string
	Workers      int
	Listen       bool
	Grace        time.Duration
	BackoffMin   time.Duration
	BackoffMax   time.Duration
	MinUptime    time.Duration
	Hang         []int         // workers that ignore their context when told to stop
	Crash        bool          // every worker's Main fails at once
	Work         time.Duration // how long each HTTP request takes to serve
	ReadyTimeout time.Duration
	// HangSetup names a file: while it exists, a starting worker's bus
	// Setup prints "setup-hang PID" and blocks, so it never gets ready.
	HangSetup string
}

// dump is the answer of the "dump" action: the "test" events this worker
// handled, where its bus started reading, and what it lost.
type dump struct {
	PID   int
	Start uint64
	Lost  uint64
	Seqs  []uint64
	Data  []string
	Exec  workerpool.WorkerStats
	// MasterFdCloexec: the inherited pipe from the master (fd 3) is
	// close-on-exec, so the worker's own children do not hold it.
	MasterFdCloexec bool
}

// Per worker process: the "test" events it handled.
var (
	seenMu    sync.Mutex
	seenSeqs  []uint64
	seenData  []string
	startSeq  uint64
	workerBus atomic.Pointer[events.Bus]
	worker    atomic.Pointer[workerpool.Worker]
)

func rolePool(args []string) error {
	var a poolArgs
	if err := json.Unmarshal([]byte(args[0]), &a); err != nil {
		return err
	}
	hang := map[int]bool{}
	for _, i := range a.Hang {
		hang[i] = true
	}
	var master *workerpool.Master
	cfg := workerpool.Config{
		Workers:      a.Workers,
		Grace:        a.Grace,
		BackoffMin:   a.BackoffMin,
		BackoffMax:   a.BackoffMax,
		MinUptime:    a.MinUptime,
		ReadyTimeout: a.ReadyTimeout,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Bus: events.Options{
			Path: a.Ring,
			Setup: func(b *events.Bus) {
				if a.HangSetup != "" {
					if _, err := os.Stat(a.HangSetup); err == nil {
						fmt.Printf("setup-hang %d\n", os.Getpid())
						select {} // never ready: the master kills it at ReadyTimeout
					}
				}
				startSeq = b.Cursor()
				workerBus.Store(b)
				b.Register(func(e *events.Event) {
					seenMu.Lock()
					seenSeqs = append(seenSeqs, e.Seq)
					seenData = append(seenData, string(e.Data))
					seenMu.Unlock()
				}, "test")
			},
		},
		Actions: map[string]workerpool.Action{
			"ping": func(_ context.Context, _ []string, out io.Writer) error {
				_, err := fmt.Fprintf(out, "pong %d", os.Getpid())
				return err
			},
			"echo": func(_ context.Context, args []string, out io.Writer) error {
				_, err := fmt.Fprint(out, strings.Join(args, " "))
				return err
			},
			"fail": func(_ context.Context, _ []string, out io.Writer) error {
				fmt.Fprint(out, "about to fail")
				return exitCode(3)
			},
			"dump": func(_ context.Context, _ []string, out io.Writer) error {
				seenMu.Lock()
				d := dump{PID: os.Getpid(), Start: startSeq, Seqs: slices.Clone(seenSeqs), Data: slices.Clone(seenData)}
				seenMu.Unlock()
				d.Lost = workerBus.Load().Stats().Lost
				if fl, err := unix.FcntlInt(3, unix.F_GETFD, 0); err == nil {
					d.MasterFdCloexec = fl&unix.FD_CLOEXEC != 0
				}
				if w := worker.Load(); w != nil {
					d.Exec = w.Stats()
				}
				return json.NewEncoder(out).Encode(d)
			},
		},
		Main: func(ctx context.Context, w *workerpool.Worker) error {
			worker.Store(w)
			fmt.Printf("worker %d %d %d\n", w.Index, os.Getpid(), w.Generation)
			if a.Crash {
				return errors.New("crashing on purpose")
			}
			if len(w.Listeners) == 0 {
				<-ctx.Done()
				if hang[w.Index] {
					select {} // a worker that will not stop: the master must kill it
				}
				return nil
			}
			srv := &http.Server{Handler: http.HandlerFunc(func(rw http.ResponseWriter, _ *http.Request) {
				time.Sleep(a.Work) // the request's work, so that some are in flight at a stop
				fmt.Fprintf(rw, "%d %d", w.Index, os.Getpid())
			})}
			if hang[w.Index] {
				go srv.Serve(w.Listeners[0])
				<-ctx.Done()
				select {} // a worker that will not stop: the master must kill it
			}
			return workerpool.ServeHTTP(ctx, srv, w.Listeners...)
		},
		Started: func(m *workerpool.Master) {
			master = m
			addr := "-"
			if len(m.Addrs()) > 0 {
				addr = m.Addrs()[0].String()
			}
			fmt.Printf("master %d %s\n", os.Getpid(), addr)
		},
	}
	if a.Listen {
		cfg.Listen = []string{"127.0.0.1:0"}
	}
	err := workerpool.Run(context.Background(), cfg)
	if master != nil {
		b, _ := json.Marshal(master.Stats())
		fmt.Printf("master-exit %s\n", b)
	}
	return err
}

type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit code %d", int(e)) }
func (e exitCode) ExitCode() int { return int(e) }

// ---------------------------------------------------------------------------
// The test side.

// pool is a running master child and the test's view of its bus.
type pool struct {
	p     *testproc.Proc
	pid   int
	addr  string
	bus   *events.Bus
	watch *watcher
}

func startPool(t *testing.T, a poolArgs) *pool {
	t.Helper()
	if a.Ring == "" {
		a.Ring = filepath.Join(t.TempDir(), "pool.events")
	}
	// The test's bus creates the ring first, so that it sees every event
	// the pool posts.
	bus, err := events.Open(events.Options{Path: a.Ring, Observe: true})
	require.NoError(t, err)
	t.Cleanup(func() { bus.Close() })
	w := newWatcher(bus)

	b, err := json.Marshal(a)
	require.NoError(t, err)
	p := testproc.Start(t, "pool", string(b))
	line, err := p.Expect("master ", waitLong)
	require.NoError(t, err)
	f := strings.Fields(line)
	require.Len(t, f, 3, "master line: %q", line)
	pid, err := strconv.Atoi(f[1])
	require.NoError(t, err)
	pl := &pool{p: p, pid: pid, addr: f[2], bus: bus, watch: w}
	// Whatever happens, no worker outlives the test: a master that is
	// SIGKILLed cannot stop its workers, so SIGTERM it first.
	t.Cleanup(func() {
		_ = syscall.Kill(pid, syscall.SIGTERM)
		_ = p.Wait(waitLong)
	})
	return pl
}

// exec runs Exec from the test process.
func (pl *pool) exec(t *testing.T, name string, args []string, opts workerpool.ExecOptions) (*workerpool.ExecResult, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), waitLong)
	defer cancel()
	return workerpool.Exec(ctx, pl.bus, name, args, opts)
}

// waitReady waits until the master expects n workers and all of them answer
// a ping, and returns them.
func (pl *pool) waitReady(t *testing.T, n int) []workerpool.WorkerID {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		res, err := pl.exec(t, "ping", nil, workerpool.ExecOptions{Timeout: 5 * time.Second})
		if err == nil && len(res.Expected) == n && res.Exited() == n {
			return res.Expected
		}
		if time.Now().After(deadline) {
			t.Fatalf("the pool did not have %d ready workers within %v: last exec: %+v, %v", n, waitLong, res, err)
		}
		if _, err := pl.watch.next(workerpool.EventReady, nil, 2*time.Second); err != nil {
			continue // no news: ask again
		}
	}
}

// stop sends SIGTERM to the master and returns its stats once it has exited.
func (pl *pool) stop(t *testing.T) workerpool.Stats {
	t.Helper()
	require.NoError(t, syscall.Kill(pl.pid, syscall.SIGTERM))
	require.NoError(t, pl.p.Wait(waitLong), "the master exits 0 after SIGTERM")
	t.Logf("pool's stderr:\n%s", pl.p.Stderr())
	line, err := pl.p.Expect("master-exit ", time.Second)
	require.NoError(t, err)
	var st workerpool.Stats
	require.NoError(t, json.Unmarshal([]byte(strings.TrimPrefix(line, "master-exit ")), &st))
	return st
}

// workerLines returns every "worker INDEX PID GEN" line printed so far.
func (pl *pool) workerLines(t *testing.T) (pids map[int]int) {
	pids = map[int]int{}
	for _, l := range pl.p.Lines() {
		f := strings.Fields(l)
		if len(f) == 4 && f[0] == "worker" {
			idx, _ := strconv.Atoi(f[1])
			pid, _ := strconv.Atoi(f[2])
			pids[pid] = idx
		}
	}
	return pids
}

// watcher keeps every event the pool posts, for tests to wait on.
type watcher struct {
	mu      sync.Mutex
	evs     []*events.Event
	pos     map[string]int
	changed chan struct{}
}

func newWatcher(bus *events.Bus) *watcher {
	w := &watcher{pos: map[string]int{}, changed: make(chan struct{})}
	bus.Register(func(e *events.Event) {
		w.mu.Lock()
		w.evs = append(w.evs, e.Clone())
		close(w.changed)
		w.changed = make(chan struct{})
		w.mu.Unlock()
	}, workerpool.Source, workerpool.EventReady, workerpool.EventExited, workerpool.EventSpawned, workerpool.EventReloaded)
	return w
}

// next waits for the next event called name (after the last one next
// returned for that name) that match accepts, decoding it into v.
func (w *watcher) next(name string, match func(e *events.Event) bool, timeout time.Duration) (*events.Event, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		w.mu.Lock()
		for ; w.pos[name] < len(w.evs); w.pos[name]++ {
			if e := w.evs[w.pos[name]]; e.Name == name && (match == nil || match(e)) {
				w.pos[name]++
				w.mu.Unlock()
				return e, nil
			}
		}
		changed := w.changed
		w.mu.Unlock()
		select {
		case <-changed:
		case <-deadline.C:
			return nil, fmt.Errorf("no %q event within %v", name, timeout)
		}
	}
}

// exitedMsg mirrors the fields of the "exited" event the tests read.
type exitedMsg struct {
	Index, PID int
	Status     string
	Crashes    int
	Backoff    time.Duration
	Resume     *uint64
}

type readyMsg struct {
	Index, PID, Generation int
	Start                  uint64
}

// reloadedMsg mirrors the fields of the "reloaded" event the tests read.
type reloadedMsg struct {
	Workers  int
	Duration time.Duration
	Aborted  bool
}

// reload sends the master SIGHUP and returns its "reloaded" event, which
// must not say the reload was abandoned.
func (pl *pool) reload(t *testing.T) reloadedMsg {
	t.Helper()
	require.NoError(t, syscall.Kill(pl.pid, syscall.SIGHUP))
	e, err := pl.watch.next(workerpool.EventReloaded, nil, 2*waitLong)
	require.NoError(t, err)
	var rl reloadedMsg
	require.NoError(t, e.JSON(&rl))
	require.False(t, rl.Aborted)
	return rl
}

func publishTest(t *testing.T, bus *events.Bus, from, n int) []uint64 {
	t.Helper()
	seqs := make([]uint64, n)
	for i := range n {
		seq, err := bus.Publish("test", "n", []byte(strconv.Itoa(from+i)))
		require.NoError(t, err)
		seqs[i] = seq
	}
	return seqs
}

func dumps(t *testing.T, res *workerpool.ExecResult) map[int]dump {
	t.Helper()
	out := map[int]dump{}
	for _, w := range res.Workers {
		var d dump
		require.NoError(t, json.Unmarshal(w.Output, &d), "dump of %v: %q", w.WorkerID, w.Output)
		out[w.Index] = d
	}
	return out
}

// ---------------------------------------------------------------------------

// Every worker handles every event posted after it is ready, in the one
// order the ring gives them.
func TestWorkersSeeSameEventsInSameOrder(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 3})
	pl.waitReady(t, 3)
	posted := publishTest(t, pl.bus, 0, 300)

	res, err := pl.exec(t, "dump", nil, workerpool.ExecOptions{MinWorkers: 3})
	require.NoError(t, err)
	ds := dumps(t, res)
	require.Len(t, ds, 3)
	for idx, d := range ds {
		// Before the posts, workers saw nothing of source "test".
		assert.Equal(t, posted, d.Seqs, "worker %d handled every event, in ring order", idx)
		for i, data := range d.Data {
			assert.Equal(t, strconv.Itoa(i), data, "worker %d, event %d", idx, i)
		}
		assert.Zero(t, d.Lost, "worker %d lost nothing", idx)
		assert.True(t, d.MasterFdCloexec, "worker %d's inherited fd 3 is close-on-exec", idx)
		assert.Positive(t, d.Exec.ExecRun, "worker %d counts the requests it ran", idx)
		assert.Zero(t, d.Exec.ExecMalformed+d.Exec.PostErrors+d.Exec.ExecReplayed+d.Exec.ExecSkipped, "worker %d skipped nothing", idx)
	}
	st := pl.stop(t)
	assert.Zero(t, st.Exited, "no worker exited unasked")
	assert.Zero(t, st.Killed, "every worker stopped within the grace period")
}

// A SIGKILLed worker is restarted; its replacement resumes reading where the
// dead one left off, so the events posted while the slot was empty reach it.
func TestKilledWorkerComesBackAndCatchesUp(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 2})
	ids := pl.waitReady(t, 2)
	a := publishTest(t, pl.bus, 0, 50)
	res, err := pl.exec(t, "dump", nil, workerpool.ExecOptions{MinWorkers: 2})
	require.NoError(t, err)
	require.Equal(t, a, dumps(t, res)[1].Seqs, "worker 1 handled batch A before it is killed")

	victim := ids[1]
	require.Equal(t, 1, victim.Index)
	require.NoError(t, syscall.Kill(victim.PID, syscall.SIGKILL))
	e, err := pl.watch.next(workerpool.EventExited, func(e *events.Event) bool { return e.PID == pl.pid }, waitLong)
	require.NoError(t, err, "the master posts an exited event")
	var ex exitedMsg
	require.NoError(t, e.JSON(&ex))
	assert.Equal(t, victim.PID, ex.PID)
	assert.Equal(t, 1, ex.Index)
	assert.Equal(t, "signal: killed", ex.Status)
	require.NotNil(t, ex.Resume, "the master found the dead worker's cursor in the reader registry")
	assert.LessOrEqual(t, *ex.Resume, a[len(a)-1]+1+100, "sanity: the cursor is near batch A")

	b := publishTest(t, pl.bus, 50, 50) // posted while worker 1 is dead or starting
	e, err = pl.watch.next(workerpool.EventReady, func(e *events.Event) bool {
		var r readyMsg
		return e.JSON(&r) == nil && r.Index == 1 && r.PID != victim.PID
	}, waitLong)
	require.NoError(t, err, "a replacement for worker 1 announces itself")
	var rd readyMsg
	require.NoError(t, e.JSON(&rd))
	c := publishTest(t, pl.bus, 100, 50)

	res, err = pl.exec(t, "dump", nil, workerpool.ExecOptions{MinWorkers: 2})
	require.NoError(t, err)
	ds := dumps(t, res)
	d1 := ds[1]
	require.Equal(t, rd.PID, d1.PID, "worker 1 is the replacement")
	assert.Equal(t, *ex.Resume, d1.Start, "the replacement started reading at the dead worker's cursor")
	assert.LessOrEqual(t, d1.Start, b[0], "so it starts before batch B, posted after the kill")
	var after []uint64
	for _, s := range d1.Seqs {
		if s >= b[0] {
			after = append(after, s)
		}
	}
	assert.Equal(t, append(slices.Clone(b), c...), after, "the replacement handled batches B and C, in order")
	assert.Zero(t, d1.Lost, "nothing had left the ring")
	t.Logf("the replacement resumed at %d; it replayed and skipped %d exec requests meant for the dead worker", d1.Start, d1.Exec.ExecReplayed)
	assert.Equal(t, append(append(slices.Clone(a), b...), c...), ds[0].Seqs, "worker 0 saw all three batches")

	st := pl.stop(t)
	assert.Equal(t, uint64(1), st.Exited)
	assert.Equal(t, uint64(1), st.Restarts)
}

// SIGHUP replaces every worker one at a time while clients keep sending
// requests on new connections: every request gets a 200, and both the old
// and the new workers answered some.
func TestReloadUnderLoadLosesNoRequest(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 2, Listen: true, Work: time.Millisecond})
	old := pl.waitReady(t, 2)

	var ok, failed atomic.Int64
	var mu sync.Mutex
	var failures []string
	answered := map[string]int{} // pid -> requests
	stop := make(chan struct{})
	var clients sync.WaitGroup
	// A new connection per request: each one goes through the accept queue
	// that a reload must never close.
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}, Timeout: waitLong}
	for range 4 {
		clients.Add(1)
		go func() {
			defer clients.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				resp, err := client.Get("http://" + pl.addr + "/")
				if err != nil {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, err.Error())
					mu.Unlock()
					continue
				}
				body, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != http.StatusOK {
					failed.Add(1)
					mu.Lock()
					failures = append(failures, fmt.Sprintf("status %d, %v", resp.StatusCode, err))
					mu.Unlock()
					continue
				}
				ok.Add(1)
				if f := strings.Fields(string(body)); len(f) == 2 {
					mu.Lock()
					answered[f[1]]++
					mu.Unlock()
				}
			}
		}()
	}
	defer func() {
		close(stop)
		clients.Wait()
	}()
	waitCount := func(target int64, what string) {
		deadline := time.Now().Add(waitLong)
		for ok.Load()+failed.Load() < target {
			require.True(t, time.Now().Before(deadline), "%s: only %d requests within %v", what, ok.Load()+failed.Load(), waitLong)
			time.Sleep(5 * time.Millisecond) // polling a counter, not waiting for an outcome
		}
	}
	waitCount(100, "before the reload")
	before := ok.Load()
	begin := time.Now()
	rl := pl.reload(t)
	took := time.Since(begin)
	during := ok.Load() - before
	assert.Equal(t, 2, rl.Workers)
	waitCount(ok.Load()+failed.Load()+100, "after the reload")
	close(stop)
	clients.Wait()
	stop = make(chan struct{})

	mu.Lock()
	assert.Zero(t, failed.Load(), "no request failed: %v", failures)
	var oldAnswered, newAnswered int
	for _, id := range old {
		oldAnswered += answered[strconv.Itoa(id.PID)]
	}
	for pid, n := range answered {
		if !slices.ContainsFunc(old, func(id workerpool.WorkerID) bool { return strconv.Itoa(id.PID) == pid }) {
			newAnswered += n
		}
	}
	mu.Unlock()
	assert.Positive(t, oldAnswered, "the old workers served requests")
	assert.Positive(t, newAnswered, "the new workers served requests")
	t.Logf("reload of %d workers: %v in the master (%v seen by the test); %d requests served during it, %d in all, %d failed",
		rl.Workers, rl.Duration, took.Round(time.Millisecond), during, ok.Load(), failed.Load())

	st := pl.stop(t)
	assert.Equal(t, uint64(1), st.Reloads)
	assert.Zero(t, st.Exited, "no worker exited unasked")
	assert.Zero(t, st.Killed, "the old workers finished within the grace period")
}

// Execs keep completing through reloads: the master does not expect a
// worker it is replacing, and a worker asked to stop answers the requests
// posted before. (Before, retiring workers were expected, and one whose bus
// had closed was named missing, a few times in a thousand under -race.)
func TestExecDuringReloadIsComplete(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 2, Grace: stopGrace})
	pl.waitReady(t, 2)
	reloaded := make(chan struct{})
	go func() {
		defer close(reloaded)
		for range 2 {
			if err := syscall.Kill(pl.pid, syscall.SIGHUP); err != nil {
				return
			}
			if _, err := pl.watch.next(workerpool.EventReloaded, nil, 2*waitLong); err != nil {
				return
			}
		}
	}()
	execs := 0
	for done := false; !done; execs++ {
		select {
		case <-reloaded:
			done = true
		default:
		}
		res, err := pl.exec(t, "ping", nil, workerpool.ExecOptions{Timeout: waitLong})
		require.NoError(t, err, "exec %d during the reloads", execs)
		require.NotNil(t, res.Expected)
		for _, id := range res.Expected {
			assert.True(t, slices.ContainsFunc(res.Workers, func(w workerpool.WorkerResult) bool { return w.WorkerID == id && w.Exited }),
				"expected %v answered", id)
		}
	}
	t.Logf("%d execs during two reloads, all complete", execs)
	st := pl.stop(t)
	assert.Equal(t, uint64(2), st.Reloads)
}

// A reload step whose new worker is not ready in time, while the old
// worker dies meanwhile, leaves the slot empty only until a restart fills
// it; the old worker's exit is counted and posted.
func TestFailedReloadStepWithDeadOldWorkerRefillsSlot(t *testing.T) {
	hang := filepath.Join(t.TempDir(), "hang")
	pl := startPool(t, poolArgs{Workers: 1, ReadyTimeout: 3 * time.Second, HangSetup: hang, BackoffMin: 10 * time.Millisecond})
	old := pl.waitReady(t, 1)[0]

	require.NoError(t, os.WriteFile(hang, nil, 0o600))
	require.NoError(t, syscall.Kill(pl.pid, syscall.SIGHUP))
	line, err := pl.p.Expect("setup-hang ", waitLong)
	require.NoError(t, err, "the reload's new worker hangs before it is ready")
	hung, err := strconv.Atoi(strings.Fields(line)[1])
	require.NoError(t, err)
	require.NoError(t, os.Remove(hang)) // the next worker starts normally
	require.NoError(t, syscall.Kill(old.PID, syscall.SIGKILL))

	e, err := pl.watch.next(workerpool.EventExited, func(e *events.Event) bool {
		var ex exitedMsg
		return e.JSON(&ex) == nil && ex.PID == old.PID
	}, waitLong)
	require.NoError(t, err, "the old worker's exit is posted")
	var ex exitedMsg
	require.NoError(t, e.JSON(&ex))
	assert.Equal(t, "signal: killed", ex.Status)

	_, err = pl.watch.next(workerpool.EventReloaded, nil, waitLong)
	require.NoError(t, err, "the reload ends (abandoned)")
	_, err = pl.watch.next(workerpool.EventReady, func(e *events.Event) bool {
		var r readyMsg
		return e.JSON(&r) == nil && r.Index == 0 && r.PID != old.PID && r.PID != hung
	}, waitLong)
	require.NoError(t, err, "a new worker fills the slot")
	pl.waitReady(t, 1)

	st := pl.stop(t)
	assert.Equal(t, uint64(1), st.ReloadsFail)
	assert.Equal(t, uint64(1), st.Exited, "the old worker's death is counted")
	assert.Zero(t, st.PostErrors)
}

// stopGrace is the grace period of the stop test. Under the race detector
// every process sleeps 1s at exit (its atexit_sleep_ms), so the honest
// workers need more than that.
const stopGrace = 5 * time.Second

// SIGTERM stops the pool: workers that honour their context exit, one that
// does not is killed after the grace period, and no worker process is left.
func TestStopKillsLaggardsAndLeavesNoOrphans(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 3, Listen: true, Hang: []int{2}, Grace: stopGrace})
	ids := pl.waitReady(t, 3)
	starts := map[int]uint64{}
	for _, id := range ids {
		st, err := proc.StartTime(id.PID)
		require.NoError(t, err)
		starts[id.PID] = st
	}
	begin := time.Now()
	st := pl.stop(t)
	t.Logf("stopped in %v (grace %v)", time.Since(begin).Round(time.Millisecond), stopGrace)
	assert.Equal(t, uint64(1), st.Killed, "only the worker that ignores its context is killed")
	assert.Zero(t, st.Exited, "exits during a stop are not crashes")
	for pid, start := range starts {
		assert.False(t, proc.Alive(pid, uint32(start)), "worker pid %d is gone", pid)
	}
	assert.Len(t, pl.workerLines(t), 3, "no worker was started beyond the first three")
}

// Idle workers, blocked in Accept on the shared socket, stop at once on a
// reload and on a stop: none outlives the grace period. (A socket switched
// to blocking mode by starting a worker left them in accept(2), and every
// reload and stop waited for the grace period and killed them.)
func TestIdlePoolReloadsAndStopsWithoutKills(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 4, Listen: true, Grace: stopGrace})
	pl.waitReady(t, 4)
	for i := range 2 {
		rl := pl.reload(t)
		t.Logf("reload %d of 4 idle workers took %v", i+1, rl.Duration)
	}
	begin := time.Now()
	st := pl.stop(t)
	t.Logf("stop of 4 idle workers took %v", time.Since(begin).Round(time.Millisecond))
	assert.Equal(t, uint64(2), st.Reloads)
	assert.Zero(t, st.Killed, "every idle worker stopped within the grace period")
	assert.Zero(t, st.Exited, "no worker exited unasked")
}

// Exec reports per worker, and names a worker that does not answer (one
// stopped with SIGSTOP) once its timeout passes.
func TestExecReportsWorkerThatDoesNotAnswer(t *testing.T) {
	pl := startPool(t, poolArgs{Workers: 3})
	ids := pl.waitReady(t, 3)

	res, err := pl.exec(t, "echo", []string{"a", "b c"}, workerpool.ExecOptions{MinWorkers: 3})
	require.NoError(t, err)
	require.Len(t, res.Workers, 3)
	for _, w := range res.Workers {
		assert.True(t, w.Acked && w.Exited, "%v acked and exited", w.WorkerID)
		assert.Equal(t, "a b c", string(w.Output))
		assert.Zero(t, w.Status)
	}

	var acks, exits int
	res, err = pl.exec(t, "fail", nil, workerpool.ExecOptions{
		OnAck:  func(workerpool.WorkerID) { acks++ },
		OnExit: func(workerpool.WorkerID, int, string) { exits++ },
	})
	require.ErrorIs(t, err, workerpool.ErrFailed)
	assert.NotErrorIs(t, err, workerpool.ErrIncomplete)
	assert.Equal(t, 3, acks)
	assert.Equal(t, 3, exits)
	for _, w := range res.Workers {
		assert.Equal(t, 3, w.Status, "the action's ExitCode")
		assert.Equal(t, "about to fail", string(w.Output))
	}

	res, err = pl.exec(t, "no-such-action", nil, workerpool.ExecOptions{})
	require.ErrorIs(t, err, workerpool.ErrFailed)
	for _, w := range res.Workers {
		assert.Equal(t, workerpool.StatusUnknownAction, w.Status)
		assert.Contains(t, w.Error, "unknown action")
	}

	silent := ids[1]
	require.NoError(t, syscall.Kill(silent.PID, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(silent.PID, syscall.SIGCONT) })
	// SIGSTOP takes effect asynchronously: a thread still running could
	// answer the next request.
	testproc.WaitStopped(t, silent.PID, waitLong)
	// The exec waits its whole timeout for the silent worker; the others
	// and the master's expect must come within it. On a slow machine a
	// timeout can pass before they do: ask again, with a longer one.
	deadline := time.Now().Add(waitLong)
	for timeout := 2 * time.Second; ; timeout = min(2*timeout, waitLong/4) {
		res, err = pl.exec(t, "ping", nil, workerpool.ExecOptions{Timeout: timeout})
		require.ErrorIs(t, err, workerpool.ErrIncomplete)
		if res.Expected != nil && res.Exited() == len(ids)-1 || time.Now().After(deadline) {
			break
		}
		t.Logf("within %v, only %d workers answered (expected: %v); asking again", timeout, res.Exited(), res.Expected)
	}
	assert.Contains(t, err.Error(), silent.String(), "the error names the silent worker")
	assert.Equal(t, ids, res.Expected, "the master expected all three")
	assert.Equal(t, []workerpool.WorkerID{silent}, res.Missing)
	assert.Equal(t, 2, res.Exited())
	for _, w := range res.Workers {
		assert.NotEqual(t, silent, w.WorkerID)
		assert.Equal(t, fmt.Sprintf("pong %d", w.PID), string(w.Output))
	}

	_, err = pl.exec(t, "ping", nil, workerpool.ExecOptions{MinWorkers: 3, Timeout: 2 * time.Second})
	require.ErrorIs(t, err, workerpool.ErrIncomplete)
	assert.Contains(t, err.Error(), "at least 3 required")

	require.NoError(t, syscall.Kill(silent.PID, syscall.SIGCONT))
	pl.stop(t)
}

// A worker that keeps failing at once is restarted after a delay that
// doubles from BackoffMin up to BackoffMax; the master says so in each
// "exited" event.
func TestCrashLoopBacksOff(t *testing.T) {
	pl := startPool(t, poolArgs{
		Workers: 1, Crash: true, MinUptime: time.Hour,
		BackoffMin: 20 * time.Millisecond, BackoffMax: 80 * time.Millisecond,
	})
	want := []time.Duration{0, 20 * time.Millisecond, 40 * time.Millisecond, 80 * time.Millisecond, 80 * time.Millisecond, 80 * time.Millisecond}
	for i, backoff := range want {
		e, err := pl.watch.next(workerpool.EventExited, nil, waitLong)
		require.NoError(t, err, "exit %d", i+1)
		var ex exitedMsg
		require.NoError(t, e.JSON(&ex))
		assert.Equal(t, "exit status 1", ex.Status)
		assert.Equal(t, i+1, ex.Crashes, "quick exits in a row")
		assert.Equal(t, backoff, ex.Backoff, "delay before restart %d", i+1)
	}
	st := pl.stop(t)
	assert.GreaterOrEqual(t, st.Exited, uint64(len(want)))
	assert.GreaterOrEqual(t, st.Restarts, uint64(len(want)-1), "the last restart may still be pending at the stop")
}

// Run refuses bad configurations before it starts anything, with errors
// that say what is wrong.
func TestRunErrors(t *testing.T) {
	dir := t.TempDir()
	notRing := filepath.Join(dir, "not-a-ring")
	require.NoError(t, os.WriteFile(notRing, []byte(strings.Repeat("garbage ", 1024)), 0o600))
	ring := filepath.Join(dir, "ok.events")
	main := func(context.Context, *workerpool.Worker) error { return nil }
	cases := []struct {
		name   string
		cfg    workerpool.Config
		is     error
		reason string
	}{
		{"negative workers", workerpool.Config{Workers: -1, Main: main, Bus: events.Options{Path: ring}}, workerpool.ErrConfig, "Workers is negative"},
		{"no main", workerpool.Config{Bus: events.Options{Path: ring}}, workerpool.ErrConfig, "Main is nil"},
		{"no ring", workerpool.Config{Main: main}, workerpool.ErrConfig, "Bus.Path is empty"},
		{"backoff bounds", workerpool.Config{Main: main, Bus: events.Options{Path: ring}, BackoffMin: time.Second, BackoffMax: time.Millisecond}, workerpool.ErrConfig, "BackoffMax"},
		{"nil action", workerpool.Config{Main: main, Bus: events.Options{Path: ring}, Actions: map[string]workerpool.Action{"x": nil}}, workerpool.ErrConfig, `action "x"`},
		{"more workers than reader slots", workerpool.Config{Workers: 64, Main: main, Bus: events.Options{Path: filepath.Join(dir, "slots.events")}}, workerpool.ErrConfig, "Workers (64) needs 65 reader slots"},
		{"bad port", workerpool.Config{Main: main, Bus: events.Options{Path: ring}, Listen: []string{"127.0.0.1:99999"}}, nil, "listen 127.0.0.1:99999"},
		{"bad address", workerpool.Config{Main: main, Bus: events.Options{Path: ring}, Listen: []string{"nowhere"}}, nil, "listen nowhere"},
		{"ring dir missing", workerpool.Config{Main: main, Bus: events.Options{Path: filepath.Join(dir, "no", "such.events")}}, os.ErrNotExist, "open bus"},
		{"not a ring", workerpool.Config{Main: main, Bus: events.Options{Path: notRing}}, events.ErrNotRing, notRing},
		{"bad bus options", workerpool.Config{Main: main, Bus: events.Options{Path: ring, Size: -1}}, events.ErrOptions, "open bus"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			err := workerpool.Run(context.Background(), c.cfg)
			require.Error(t, err)
			if c.is != nil {
				assert.ErrorIs(t, err, c.is)
			}
			assert.Contains(t, err.Error(), c.reason)
		})
	}
}

// Without a master on the bus nobody says whom to expect: Exec waits for
// its timeout and says so. It polls a Manual bus itself.
func TestExecWithoutMaster(t *testing.T) {
	bus, err := events.Open(events.Options{Path: filepath.Join(t.TempDir(), "lone.events"), Mode: events.Manual})
	require.NoError(t, err)
	defer bus.Close()
	res, err := workerpool.Exec(context.Background(), bus, "ping", nil, workerpool.ExecOptions{Timeout: 200 * time.Millisecond})
	require.ErrorIs(t, err, workerpool.ErrIncomplete)
	assert.Contains(t, err.Error(), "no master answered")
	assert.Nil(t, res.Expected)
	assert.Empty(t, res.Workers)

	_, err = workerpool.Exec(context.Background(), bus, "", nil, workerpool.ExecOptions{})
	require.ErrorIs(t, err, workerpool.ErrConfig)
	require.NoError(t, bus.Close())
	_, err = workerpool.Exec(context.Background(), bus, "ping", nil, workerpool.ExecOptions{})
	require.ErrorIs(t, err, events.ErrClosed)
}
