package workerpool

import (
	"cmp"
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"slices"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
)

// Master is the supervising process of a pool, as Config.Started sees it.
// Its methods may be called from any goroutine.
type Master struct {
	cfg    Config
	log    *slog.Logger
	bus    *events.Bus
	exe    string
	lns    []net.Listener
	lnFile []*os.File // descriptors handed to every worker
	// deathR is every worker's fd 3; deathW, held only here, closes with
	// the master, which the workers read as end of file.
	deathR, deathW *os.File

	reload chan struct{} // a pending reload request (capacity 1: requests coalesce)
	quit   chan struct{} // closed when the master starts stopping
	reaped sync.WaitGroup

	mu       sync.Mutex
	stopping bool
	slots    []*slot
	children map[int]*child // every live worker process, by pid
	stats    Stats
}

// slot is one worker index and the process that currently fills it.
type slot struct {
	index   int
	gen     int
	crashes int         // quick exits in a row
	cur     *child      // nil while a restart is pending
	timer   *time.Timer // the pending restart
}

// child is one worker process.
type child struct {
	WorkerID
	gen       int
	cmd       *exec.Cmd
	started   time.Time
	ready     chan struct{} // closed when its "ready" event arrives
	isReady   bool
	done      chan struct{} // closed when it has been reaped
	retiring  bool          // being replaced (reload): no longer expected to answer exec requests
	stopAsked bool          // sent SIGTERM or SIGKILL on purpose: its exit is expected
}

// Stats are a master's counters.
type Stats struct {
	Started     uint64 // worker processes started
	StartErrors uint64 // worker processes that could not be started
	Exited      uint64 // workers that exited or died when nobody asked them to
	Restarts    uint64 // workers started to replace one that exited
	Reloads     uint64 // rolling replacements finished
	ReloadsFail uint64 // rolling replacements abandoned: a new worker failed before it was ready
	Killed      uint64 // workers killed because they outlived the grace period
	PostErrors  uint64 // spawned, exited, reloaded and expect events that could not be posted (logged)
}

// WorkerInfo describes a live worker process.
type WorkerInfo struct {
	WorkerID
	Generation int
	Ready      bool // its "ready" event has arrived
	Retiring   bool // being replaced
	Started    time.Time
}

// exitedMsg is the payload of EventExited.
type exitedMsg struct {
	WorkerID
	Generation int
	Status     string        // as the os package words it: "exit status 1", "signal: killed"
	Uptime     time.Duration // how long it ran
	Crashes    int           // quick exits in a row, this one included
	Backoff    time.Duration // the delay before its replacement starts
	Resume     *uint64       `json:",omitempty"` // where the replacement resumes reading, if known
}

// spawnedMsg is the payload of EventSpawned.
type spawnedMsg struct {
	WorkerID
	Generation int
	Reason     string // "start", "restart" or "reload"
}

// reloadedMsg is the payload of EventReloaded.
type reloadedMsg struct {
	Workers  int           // workers replaced
	Duration time.Duration // from the first start to the last old worker's exit
	Aborted  bool          `json:",omitempty"` // a new worker exited before it was ready
}

func runMaster(ctx context.Context, cfg Config) error {
	// Signals first: a SIGTERM that arrives while workers start must stop
	// them, not kill the master and orphan them.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)

	m, err := newMaster(cfg)
	if err != nil {
		return err
	}
	defer m.release()
	m.mu.Lock()
	for _, s := range m.slots {
		m.spawnLocked(s, "start", nil)
	}
	m.mu.Unlock()
	go m.reloader()
	if cfg.Started != nil {
		cfg.Started(m)
	}
	var busErr error
wait:
	for {
		select {
		case <-ctx.Done():
			m.log.Info("workerpool: stopping", "reason", context.Cause(ctx))
			break wait
		case sig := <-sigs:
			if sig == syscall.SIGHUP {
				m.log.Info("workerpool: SIGHUP: replacing workers one at a time")
				m.Reload()
				continue
			}
			m.log.Info("workerpool: stopping", "signal", sig.String())
			break wait
		case <-m.bus.Done():
			busErr = fmt.Errorf("workerpool: master's bus stopped: %w", m.bus.Err())
			m.log.Error("workerpool: stopping", "err", busErr)
			break wait
		}
	}
	m.stop()
	return busErr
}

func newMaster(cfg Config) (_ *Master, err error) {
	m := &Master{
		cfg: cfg, log: cfg.Logger,
		reload: make(chan struct{}, 1), quit: make(chan struct{}),
		children: map[int]*child{},
	}
	defer func() {
		if err != nil {
			m.release()
		}
	}()
	if m.exe, err = os.Executable(); err != nil {
		return nil, fmt.Errorf("workerpool: find own executable: %w", err)
	}
	for _, addr := range cfg.Listen {
		ln, f, err := listen(addr, cfg.ReusePort)
		if err != nil {
			return nil, err
		}
		m.lns, m.lnFile = append(m.lns, ln), append(m.lnFile, f)
	}
	if m.deathR, m.deathW, err = os.Pipe(); err != nil {
		return nil, fmt.Errorf("workerpool: pipe: %w", err)
	}
	opts := cfg.Bus
	// The master watches: it posts, takes no reader slot and never runs a
	// unique event. Its handlers must run unprompted.
	opts.Observe, opts.Setup = true, m.setup
	if opts.Mode == events.Manual {
		opts.Mode = events.Wake
	}
	if m.bus, err = events.Open(opts); err != nil {
		return nil, fmt.Errorf("workerpool: open bus: %w", err)
	}
	// Every worker takes a slot in the ring's reader registry, and a
	// reload runs one more process while it replaces a worker: beyond
	// that, workers would fail to open the bus and be restarted forever.
	if slots := int(m.bus.Ring().Region().Geometry().ReaderSlots); cfg.Workers+1 > slots {
		return nil, fmt.Errorf("%w: Workers (%d) needs %d reader slots (one more for a reload); the ring %s has %d",
			ErrConfig, cfg.Workers, cfg.Workers+1, m.bus.Path(), slots)
	}
	for i := range cfg.Workers {
		m.slots = append(m.slots, &slot{index: i})
	}
	return m, nil
}

// listen opens one of the shared sockets, and the descriptor workers inherit.
func listen(addr string, reusePort bool) (net.Listener, *os.File, error) {
	lc := net.ListenConfig{}
	if reusePort {
		lc.Control = func(_, _ string, c syscall.RawConn) error {
			var serr error
			if err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_REUSEPORT, 1)
			}); err != nil {
				return err
			}
			return serr
		}
	}
	ln, err := lc.Listen(context.Background(), "tcp", addr)
	if err != nil {
		return nil, nil, fmt.Errorf("workerpool: listen %s: %w", addr, err)
	}
	f, err := inheritable(ln.(*net.TCPListener))
	if err != nil {
		ln.Close()
		return nil, nil, fmt.Errorf("workerpool: listen %s: descriptor for workers: %w", addr, err)
	}
	return ln, f, nil
}

// inheritable returns a duplicate of ln's descriptor to hand to workers.
//
// Not TCPListener.File: its *os.File switches the socket to blocking mode
// when exec.Cmd.Start calls its Fd method, and O_NONBLOCK belongs to the
// open file description that the master and every worker share. An idle
// worker's Accept would then sit in a blocking accept(2) that closing its
// listener does not interrupt, so it would outlive the grace period on
// every reload and stop. os.NewFile on a descriptor that is already
// non-blocking leaves it so, and Fd does not change it.
func inheritable(ln *net.TCPListener) (*os.File, error) {
	rc, err := ln.SyscallConn()
	if err != nil {
		return nil, err
	}
	dup, derr := -1, error(nil)
	if err := rc.Control(func(fd uintptr) {
		dup, derr = unix.FcntlInt(fd, unix.F_DUPFD_CLOEXEC, 0)
	}); err != nil {
		return nil, err
	}
	if derr != nil {
		return nil, fmt.Errorf("dup: %w", derr)
	}
	return os.NewFile(uintptr(dup), "workerpool-listener"), nil
}

// release closes what newMaster opened.
func (m *Master) release() {
	if m.bus != nil {
		m.bus.Close()
	}
	closeAll(m.lns)
	closeAll(m.lnFile)
	for _, f := range []*os.File{m.deathR, m.deathW} {
		if f != nil {
			f.Close()
		}
	}
}

// setup registers the master's handlers before its bus polls.
func (m *Master) setup(b *events.Bus) {
	b.Register(m.onReady, Source, EventReady)
	b.Register(func(e *events.Event) { m.onExec(b, e) }, Source, EventExec)
}

func (m *Master) onReady(e *events.Event) {
	var r readyMsg
	if err := e.JSON(&r); err != nil {
		m.log.Warn("workerpool: malformed ready event skipped", "seq", e.Seq, "err", err)
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if c := m.children[r.PID]; c != nil && !c.isReady {
		c.isReady = true
		close(c.ready)
		m.log.Info("workerpool: worker ready", "worker", c.Index, "pid", c.PID, "generation", c.gen, "start", r.Start)
	}
}

// onExec answers a request with the workers that will see it: those whose
// "ready" came before it, hence whose bus reads it, and that are not being
// replaced. A worker asked to stop later still handles the request: it
// reads the bus up to where it was when it began to stop (catchUp).
func (m *Master) onExec(b *events.Bus, e *events.Event) {
	var req execRequest
	if err := e.JSON(&req); err != nil || req.ID == "" {
		return // the workers log it
	}
	m.mu.Lock()
	x := execExpect{ID: req.ID, Workers: []WorkerID{}}
	for _, c := range m.children {
		if c.isReady && !c.retiring {
			x.Workers = append(x.Workers, c.WorkerID)
		}
	}
	m.mu.Unlock()
	slices.SortFunc(x.Workers, func(a, b WorkerID) int { return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.PID, b.PID)) })
	if err := publishJSON(b, EventExpect, x); err != nil {
		m.mu.Lock()
		m.stats.PostErrors++
		m.mu.Unlock()
		m.log.Warn("workerpool: exec: expect not posted", "id", req.ID, "err", err)
	}
}

// post posts one of the master's events, counting and logging a failure.
func (m *Master) post(name string, v any) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.postLocked(name, v)
}

// postLocked is post for a caller that holds m.mu.
func (m *Master) postLocked(name string, v any) {
	if err := publishJSON(m.bus, name, v); err != nil {
		m.stats.PostErrors++
		m.log.Warn("workerpool: event not posted", "event", name, "err", err)
	}
}

// spawnLocked starts a worker process for s. start, if set, is where its
// bus resumes reading. A process that cannot be started counts as a crash.
func (m *Master) spawnLocked(s *slot, reason string, start *uint64) *child {
	s.gen++
	cmd := exec.Command(m.exe, os.Args[1:]...)
	cmd.Env = childEnv(s.index, s.gen, len(m.lnFile), m.bus.Path(), start)
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	cmd.ExtraFiles = append([]*os.File{m.deathR}, m.lnFile...)
	if err := cmd.Start(); err != nil {
		m.stats.StartErrors++
		s.crashes++
		delay := max(m.cfg.backoff(s.crashes), m.cfg.BackoffMin)
		m.log.Error("workerpool: cannot start worker", "worker", s.index, "err", err, "retry_in", delay)
		s.timer = time.AfterFunc(delay, func() { m.restart(s, nil) })
		return nil
	}
	c := &child{
		WorkerID: WorkerID{Index: s.index, PID: cmd.Process.Pid}, gen: s.gen, cmd: cmd,
		started: time.Now(), ready: make(chan struct{}), done: make(chan struct{}),
	}
	s.cur = c
	m.children[c.PID] = c
	m.stats.Started++
	m.reaped.Add(1)
	go m.reap(c)
	m.log.Info("workerpool: worker started", "worker", s.index, "pid", c.PID, "generation", s.gen, "reason", reason)
	m.postLocked(EventSpawned, spawnedMsg{WorkerID: c.WorkerID, Generation: s.gen, Reason: reason})
	return c
}

// restart fills s again after a backoff, unless something else did.
func (m *Master) restart(s *slot, start *uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.stopping || s.cur != nil {
		return
	}
	s.timer = nil
	if m.spawnLocked(s, "restart", start) != nil {
		m.stats.Restarts++
	}
}

// reap waits for c to exit and, unless its exit was asked for, counts and
// posts it and schedules its replacement. A worker that exits while a
// reload replaces it is counted and posted too; the reload fills its slot
// (or, if the new worker fails, keep does).
func (m *Master) reap(c *child) {
	defer m.reaped.Done()
	_ = c.cmd.Wait()
	m.mu.Lock()
	defer m.mu.Unlock()
	delete(m.children, c.PID)
	close(c.done)
	s := m.slots[c.Index]
	if m.stopping || c.stopAsked {
		m.log.Info("workerpool: worker exited", "worker", c.Index, "pid", c.PID, "status", c.cmd.ProcessState.String())
		return
	}
	uptime := time.Since(c.started)
	if s.cur != c {
		m.stats.Exited++
		msg := exitedMsg{WorkerID: c.WorkerID, Generation: c.gen, Status: c.cmd.ProcessState.String(), Uptime: uptime}
		m.log.Warn("workerpool: worker exited unexpectedly while being replaced", "worker", c.Index, "pid", c.PID,
			"status", msg.Status, "uptime", uptime)
		m.postLocked(EventExited, msg)
		return
	}
	s.cur = nil
	if uptime < m.cfg.MinUptime {
		s.crashes++
	} else {
		s.crashes = 1
	}
	delay := m.cfg.backoff(s.crashes)
	start := m.resumeAt(c.PID)
	m.stats.Exited++
	msg := exitedMsg{
		WorkerID: c.WorkerID, Generation: c.gen, Status: c.cmd.ProcessState.String(),
		Uptime: uptime, Crashes: s.crashes, Backoff: delay, Resume: start,
	}
	m.log.Warn("workerpool: worker exited unexpectedly; restarting", "worker", c.Index, "pid", c.PID,
		"status", msg.Status, "uptime", uptime, "crashes_in_a_row", s.crashes, "restart_in", delay)
	m.postLocked(EventExited, msg)
	s.timer = time.AfterFunc(delay, func() { m.restart(s, start) })
}

// scheduleLocked schedules a restart of the empty slot s after a backoff,
// unless one is pending or the master is stopping.
func (m *Master) scheduleLocked(s *slot) {
	if m.stopping || s.cur != nil || s.timer != nil {
		return
	}
	s.crashes++
	delay := max(m.cfg.backoff(s.crashes), m.cfg.BackoffMin)
	m.log.Warn("workerpool: slot empty after a failed reload step; restarting", "worker", s.index, "restart_in", delay)
	s.timer = time.AfterFunc(delay, func() { m.restart(s, nil) })
}

// resumeAt returns the cursor that the dead process pid last published in
// the ring's reader registry, so that its replacement neither misses the
// events posted meanwhile nor re-runs many, or nil if it left none.
func (m *Master) resumeAt(pid int) *uint64 {
	for _, r := range m.bus.Ring().Readers() {
		if r.PID == pid && !r.Alive {
			cur := r.Cursor
			return &cur
		}
	}
	return nil
}

// Reload replaces every worker, one at a time: it starts the new process,
// waits for its "ready" event, then asks the old one to stop and waits for
// it to exit (killing it after the grace period). The sockets stay open in
// the master throughout, so connections wait in the kernel's queue for
// whichever worker accepts next. A Reload asked for during one runs after
// it; more coalesce. SIGHUP calls Reload.
func (m *Master) Reload() {
	select {
	case m.reload <- struct{}{}:
	default:
	}
}

func (m *Master) reloader() {
	for {
		select {
		case <-m.quit:
			return
		case <-m.reload:
			m.roll()
		}
	}
}

func (m *Master) roll() {
	begin := time.Now()
	replaced := 0
	for i := range m.slots {
		ok, stopped := m.replace(m.slots[i])
		if stopped {
			return
		}
		if !ok {
			m.log.Error("workerpool: reload abandoned: a new worker failed before it was ready; the old workers that still run stay", "worker", i)
			m.finishRoll(replaced, begin, true)
			return
		}
		replaced++
	}
	m.finishRoll(replaced, begin, false)
}

func (m *Master) finishRoll(replaced int, begin time.Time, aborted bool) {
	d := time.Since(begin)
	m.mu.Lock()
	if aborted {
		m.stats.ReloadsFail++
	} else {
		m.stats.Reloads++
	}
	m.mu.Unlock()
	if !aborted {
		m.log.Info("workerpool: reload done", "workers", replaced, "took", d)
	}
	m.post(EventReloaded, reloadedMsg{Workers: replaced, Duration: d, Aborted: aborted})
}

// replace puts a new process in s and retires the old one. ok is false if
// the new process exited before it was ready (the old one then stays);
// stopped is true if the master began to stop meanwhile.
func (m *Master) replace(s *slot) (ok, stopped bool) {
	m.mu.Lock()
	if m.stopping {
		m.mu.Unlock()
		return false, true
	}
	old := s.cur
	if s.timer != nil {
		s.timer.Stop() // a restart was pending: this start is it
		s.timer = nil
	}
	if old != nil {
		old.retiring = true
	}
	nc := m.spawnLocked(s, "reload", nil)
	m.mu.Unlock()
	if nc == nil {
		return m.keep(s, nil, old), false
	}
	notReady := time.NewTimer(m.cfg.ReadyTimeout)
	defer notReady.Stop()
	select {
	case <-nc.ready:
	case <-nc.done:
		return m.keep(s, nc, old), false
	case <-notReady.C:
		m.log.Error("workerpool: new worker not ready in time; killing it", "worker", s.index, "pid", nc.PID, "ready_timeout", m.cfg.ReadyTimeout)
		m.mu.Lock()
		nc.retiring, nc.stopAsked = true, true
		m.mu.Unlock()
		_ = nc.cmd.Process.Signal(syscall.SIGKILL)
		<-nc.done
		return m.keep(s, nc, old), false
	case <-m.quit:
		return false, true
	}
	if old != nil {
		if stopped := m.stopChild(old); stopped {
			return false, true
		}
	}
	return true, false
}

// keep puts old back in s after its replacement nc failed (nc is nil if
// it could not be started), if old still runs. If old is gone too, it
// empties s and makes sure a restart is scheduled. It returns false, for
// replace's ok.
func (m *Master) keep(s *slot, nc, old *child) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	oldGone := old == nil
	if old != nil {
		select {
		case <-old.done:
			oldGone = true // reap counted and posted its exit
		default:
		}
	}
	if oldGone {
		// nc is dead (replace waited for it) or was never started.
		if s.cur != nil && (s.cur == nc || s.cur == old) {
			s.cur = nil
		}
		m.scheduleLocked(s)
		return false
	}
	old.retiring = false
	if s.cur == nil || s.cur == nc {
		if s.timer != nil {
			s.timer.Stop()
			s.timer = nil
		}
		s.cur = old
	}
	return false
}

// stopChild asks c to stop (SIGTERM: its Main's context is cancelled),
// waits for it for the grace period, then kills it. It reports whether the
// master began to stop meanwhile (the stop then takes c over).
func (m *Master) stopChild(c *child) (stopped bool) {
	m.mu.Lock()
	c.stopAsked = true
	m.mu.Unlock()
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	grace := time.NewTimer(m.cfg.Grace)
	defer grace.Stop()
	select {
	case <-c.done:
		return false
	case <-m.quit:
		return true
	case <-grace.C:
	}
	m.kill(c)
	<-c.done
	return false
}

func (m *Master) kill(c *child) {
	select {
	case <-c.done:
		return
	default:
	}
	m.log.Warn("workerpool: worker outlived the grace period; killing it", "worker", c.Index, "pid", c.PID, "grace", m.cfg.Grace)
	m.mu.Lock()
	m.stats.Killed++
	m.mu.Unlock()
	_ = c.cmd.Process.Signal(syscall.SIGKILL)
}

// stop asks every worker to stop, waits for the grace period, kills those
// left and reaps them all.
func (m *Master) stop() {
	m.mu.Lock()
	m.stopping = true
	close(m.quit)
	var kids []*child
	for _, c := range m.children {
		kids = append(kids, c)
	}
	for _, s := range m.slots {
		if s.timer != nil {
			s.timer.Stop()
		}
	}
	m.mu.Unlock()
	for _, c := range kids {
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
	}
	grace := time.NewTimer(m.cfg.Grace)
	defer grace.Stop()
	for _, c := range kids {
		select {
		case <-c.done:
			continue
		case <-grace.C:
		}
		for _, c := range kids {
			m.kill(c)
		}
		break
	}
	m.reaped.Wait()
	m.log.Info("workerpool: stopped", "workers", len(kids))
}

// Addrs returns the addresses the pool listens on, in Config.Listen order
// (with the ports the system chose for port 0).
func (m *Master) Addrs() []net.Addr {
	out := make([]net.Addr, len(m.lns))
	for i, ln := range m.lns {
		out[i] = ln.Addr()
	}
	return out
}

// Slots returns the number of worker slots: Config.Workers, with its
// default applied.
func (m *Master) Slots() int { return len(m.slots) }

// Bus returns the master's bus, an observer: it posts, and never runs a
// unique event.
func (m *Master) Bus() *events.Bus { return m.bus }

// Exec is Exec on the master's bus.
func (m *Master) Exec(ctx context.Context, name string, args []string, opts ExecOptions) (*ExecResult, error) {
	return Exec(ctx, m.bus, name, args, opts)
}

// Workers lists the live worker processes, by index then pid.
func (m *Master) Workers() []WorkerInfo {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []WorkerInfo
	for _, c := range m.children {
		out = append(out, WorkerInfo{WorkerID: c.WorkerID, Generation: c.gen, Ready: c.isReady, Retiring: c.retiring, Started: c.started})
	}
	slices.SortFunc(out, func(a, b WorkerInfo) int { return cmp.Or(cmp.Compare(a.Index, b.Index), cmp.Compare(a.PID, b.PID)) })
	return out
}

// Stats returns the master's counters.
func (m *Master) Stats() Stats {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.stats
}
