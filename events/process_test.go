package events_test

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/internal/proc"
	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// Multi-process tests of the bus. The test binary re-executes itself as
// children (internal/testproc). The main role, "bus", opens a bus and follows
// commands, one per line on stdin ("<id> <verb> <args>"), answering each with
// one line on stdout ("r<id> ok <payload>" or "r<id> err <message>"). Its
// handlers record what they see; the parent fetches the records as JSON and
// compares what the processes saw.
//
// A command written to several children in a row reaches them within
// microseconds of each other, as a closed stdin would: that is the barrier
// the concurrent tests use.

func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		"bus":     roleBus,
		"claimer": roleClaimer,
		"locker":  roleLocker,
	})
}

// waitLong bounds every wait for a child. The machine is slow and shared;
// nothing relies on it for correctness, it only turns a hang into a failure.
const waitLong = 30 * time.Second

// busConfig is the bus child's argument, as JSON.
type busConfig struct {
	Path         string
	Mode         events.Mode
	Timeout      time.Duration
	Interval     time.Duration
	WaitInterval time.Duration
	WaitMax      time.Duration
	Start        string // "" latest, "oldest", or a sequence number
}

// evRec is one handler call as a child records it.
type evRec struct {
	Seq    uint64
	Source string
	Name   string
	Data   string
	Unique string `json:",omitempty"`
	PID    int
	Local  bool   `json:",omitempty"`
	Res    string `json:",omitempty"` // what the handler's own call returned, if it made one
}

// childStats is the answer to "stats": the counters and the positions they
// describe.
type childStats struct {
	events.Stats
	Cursor uint64
	Next   uint64
}

// genData is the payload of event i of process pid: both numbers, then a
// hash-derived tail of a length that depends on i, so that a reader can check
// each payload on its own.
func genData(pid, i int) string {
	sum := sha256.Sum256([]byte(fmt.Sprintf("%d:%d", pid, i)))
	return fmt.Sprintf("%d:%d:%s", pid, i, hex.EncodeToString(sum[:])[:i%65])
}

// checkData parses and verifies a payload made by genData.
func checkData(d string) (pid, i int, ok bool) {
	parts := strings.SplitN(d, ":", 3)
	if len(parts) != 3 {
		return 0, 0, false
	}
	pid, err1 := strconv.Atoi(parts[0])
	i, err2 := strconv.Atoi(parts[1])
	if err1 != nil || err2 != nil || i < 0 {
		return 0, 0, false
	}
	return pid, i, genData(pid, i) == d
}

// ---------------------------------------------------------------------------
// The child side.

type busRole struct {
	bus *events.Bus
	pid int

	mu      sync.Mutex
	recs    map[string][]evRec
	changed chan struct{} // closed and replaced whenever a record is added

	regs    map[string]*events.Registration
	cancels map[string]context.CancelFunc
	subs    map[string]<-chan *events.Event
}

func roleBus(args []string) error {
	var cfg busConfig
	if err := json.Unmarshal([]byte(args[0]), &cfg); err != nil {
		return err
	}
	opts := events.Options{
		Path:         cfg.Path,
		Mode:         cfg.Mode,
		Timeout:      cfg.Timeout,
		Interval:     cfg.Interval,
		WaitInterval: cfg.WaitInterval,
		WaitMax:      cfg.WaitMax,
		Logger:       slog.New(slog.NewTextHandler(os.Stderr, nil)),
	}
	switch cfg.Start {
	case "":
	case "oldest":
		opts.StartAt = events.Oldest
	default:
		seq, err := strconv.ParseUint(cfg.Start, 10, 64)
		if err != nil {
			return err
		}
		opts.StartAt = events.AtSeq(seq)
	}
	bus, err := events.Open(opts)
	if err != nil {
		return err
	}
	r := &busRole{
		bus: bus, pid: os.Getpid(),
		recs: map[string][]evRec{}, changed: make(chan struct{}),
		regs: map[string]*events.Registration{}, cancels: map[string]context.CancelFunc{},
		subs: map[string]<-chan *events.Event{},
	}
	fmt.Printf("ready %d %d\n", r.pid, bus.Cursor())
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) < 2 {
			continue
		}
		out, err := r.handle(f[0], f[1], f[2:])
		switch {
		case errors.Is(err, errReplied):
		case err != nil:
			fmt.Printf("r%s err %v\n", f[0], err)
		default:
			fmt.Printf("r%s ok %s\n", f[0], out)
		}
	}
	return bus.Close()
}

// errReplied: the command printed its own answer.
var errReplied = errors.New("replied")

// orEmpty turns the command-line placeholder "-" into "".
func orEmpty(s string) string {
	if s == "-" {
		return ""
	}
	return s
}

func toJSON(v any) string {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	return string(b)
}

func (r *busRole) record(id string, e *events.Event, res string) {
	r.mu.Lock()
	r.recs[id] = append(r.recs[id], evRec{
		Seq: e.Seq, Source: e.Source, Name: e.Name, Data: string(e.Data),
		Unique: e.Unique, PID: e.PID, Local: e.Local, Res: res,
	})
	close(r.changed)
	r.changed = make(chan struct{})
	r.mu.Unlock()
}

func (r *busRole) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.recs[id])
}

// waitRecs waits until cond, called under mu with id's records, holds.
func (r *busRole) waitRecs(id string, d time.Duration, cond func([]evRec) bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	for {
		r.mu.Lock()
		ok := cond(r.recs[id])
		ch := r.changed
		r.mu.Unlock()
		if ok {
			return true
		}
		select {
		case <-ch:
		case <-deadline.C:
			return false
		}
	}
}

func (r *busRole) stats() childStats {
	return childStats{Stats: r.bus.Stats(), Cursor: r.bus.Cursor(), Next: r.bus.Ring().Next()}
}

func (r *busRole) handle(id, verb string, a []string) (out string, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("command %s %v panicked: %v", verb, a, p)
		}
	}()
	b := r.bus
	atoi := func(s string) int {
		n, err := strconv.Atoi(s)
		if err != nil {
			panic(err)
		}
		return n
	}
	switch verb {
	case "reg": // ID SOURCE NAMES...: a recording handler
		hid := a[0]
		r.regs[hid] = b.Register(func(e *events.Event) { r.record(hid, e, "") }, orEmpty(a[1]), a[2:]...)
	case "regctx": // ID SOURCE NAMES...: recording, unregistered by "cancel ID"
		hid := a[0]
		ctx, cancel := context.WithCancel(context.Background())
		r.cancels[hid] = cancel
		r.regs[hid] = b.RegisterContext(ctx, func(e *events.Event) { r.record(hid, e, "") }, orEmpty(a[1]), a[2:]...)
	case "cancel": // ID
		r.cancels[a[0]]()
	case "regpanic": // ID SOURCE NAMES...: records, then panics
		hid := a[0]
		r.regs[hid] = b.Register(func(e *events.Event) {
			r.record(hid, e, "")
			panic("handler " + hid + " panics on purpose")
		}, orEmpty(a[1]), a[2:]...)
	case "regecho": // ID SOURCE TRIGGER ECHO: records; on TRIGGER posts ECHO from inside the handler
		hid, trigger, echo := a[0], a[2], a[3]
		r.regs[hid] = b.Register(func(e *events.Event) {
			res := ""
			if e.Name == trigger {
				got, err := b.Post(e.Source, echo, []byte(strconv.FormatUint(e.Seq, 10)))
				res = got.String()
				if err != nil {
					res = err.Error()
				}
			}
			r.record(hid, e, res)
		}, orEmpty(a[1]))
	case "regcloseafter": // ID SOURCE N: records; closes the bus from inside its Nth call
		hid, n := a[0], atoi(a[2])
		var calls int
		r.regs[hid] = b.Register(func(e *events.Event) {
			calls++
			res := ""
			if calls == n {
				res = fmt.Sprint("close: ", b.Close())
			}
			r.record(hid, e, res)
		}, orEmpty(a[1]))
	case "unreg": // ID
		return strconv.FormatBool(r.regs[a[0]].Unregister()), nil
	case "sub": // ID BUFFER SOURCE NAMES...: a channel nobody reads until "drain ID"
		r.subs[a[0]] = b.Subscribe(context.Background(), atoi(a[1]), orEmpty(a[2]), a[3:]...)
	case "drain": // ID: what the channel holds now
		var evs []evRec
		for ch := r.subs[a[0]]; ; {
			select {
			case e, ok := <-ch:
				if !ok {
					return toJSON(evs), nil
				}
				evs = append(evs, evRec{Seq: e.Seq, Source: e.Source, Name: e.Name, Data: string(e.Data), PID: e.PID})
				continue
			default:
			}
			return toJSON(evs), nil
		}
	case "post": // SOURCE NAME DATA
		res, err := b.Post(a[0], a[1], []byte(a[2]))
		if err != nil {
			return "", err
		}
		return res.String(), nil
	case "publish": // SOURCE NAME DATA
		seq, err := b.Publish(a[0], a[1], []byte(a[2]))
		return strconv.FormatUint(seq, 10), err
	case "postn": // SOURCE NAME N: Post N events of genData
		results := map[string]int{}
		for i := range atoi(a[2]) {
			res, err := b.Post(a[0], a[1], []byte(genData(r.pid, i)))
			if err != nil {
				return "", fmt.Errorf("post %d: %w", i, err)
			}
			results[res.String()]++
		}
		return toJSON(results), nil
	case "publishn": // SOURCE NAME N: Publish N events of genData; answers the first and last seq
		var first, last uint64
		for i := range atoi(a[2]) {
			seq, err := b.Publish(a[0], a[1], []byte(genData(r.pid, i)))
			if err != nil {
				return "", fmt.Errorf("publish %d: %w", i, err)
			}
			if i == 0 {
				first = seq
			}
			last = seq
		}
		return fmt.Sprintf("%d %d", first, last), nil
	case "publishloop": // SOURCE NAME MAX: answers at once, then publishes up to MAX events as fast as it can
		fmt.Printf("r%s ok looping\n", id)
		for i := range atoi(a[2]) {
			_, _ = b.Publish(a[0], a[1], []byte(genData(r.pid, i))) // ErrAbandoned when stalled: not our concern here
		}
		return "", errReplied
	case "postcheck": // ID SOURCE NAME N: Post N events; after each, was it Done and was our event handled?
		hid := a[0]
		notDone, missing := 0, 0
		for i := range atoi(a[3]) {
			data := genData(r.pid, i)
			res, err := b.Post(a[1], a[2], []byte(data))
			if err != nil {
				return "", fmt.Errorf("post %d: %w", i, err)
			}
			if res != events.Done {
				notDone++
			}
			r.mu.Lock()
			found := false
			recs := r.recs[hid]
			for j := len(recs) - 1; j >= 0 && !found; j-- {
				found = recs[j].PID == r.pid && recs[j].Data == data
			}
			r.mu.Unlock()
			if !found {
				missing++
			}
		}
		return toJSON(map[string]int{"notDone": notDone, "missing": missing}), nil
	case "unique": // SOURCE NAME KEY DATA
		res, err := b.PostUnique(a[0], a[1], []byte(a[3]), a[2])
		if err != nil {
			return "", err
		}
		return res.String(), nil
	case "local": // SOURCE NAME DATA: PostLocal, with the ring's counters around it
		before := b.Ring().Counters()
		res, err := b.PostLocal(a[0], a[1], []byte(a[2]))
		after := b.Ring().Counters()
		if err != nil {
			return "", err
		}
		return toJSON(map[string]any{"Res": res.String(), "Before": before, "After": after}), nil
	case "poll":
		res, err := b.Poll()
		if err != nil {
			return "", err
		}
		return res.String(), nil
	case "stats":
		return toJSON(r.stats()), nil
	case "cursor":
		return strconv.FormatUint(b.Cursor(), 10), nil
	case "events": // ID
		r.mu.Lock()
		defer r.mu.Unlock()
		return toJSON(r.recs[a[0]]), nil
	case "count": // ID
		return strconv.Itoa(r.count(a[0])), nil
	case "wait": // ID N MS: until handler ID has N records
		n := atoi(a[1])
		if !r.waitRecs(a[0], time.Duration(atoi(a[2]))*time.Millisecond, func(evs []evRec) bool { return len(evs) >= n }) {
			return "", fmt.Errorf("handler %s has %d records, want %d", a[0], r.count(a[0]), n)
		}
		return strconv.Itoa(r.count(a[0])), nil
	case "waitname": // ID NAME PID MS: until handler ID has seen NAME from PID (0: anyone)
		name, pid := a[1], atoi(a[2])
		if !r.waitRecs(a[0], time.Duration(atoi(a[3]))*time.Millisecond, func(evs []evRec) bool {
			for _, e := range evs {
				if e.Name == name && (pid == 0 || e.PID == pid) {
					return true
				}
			}
			return false
		}) {
			return "", fmt.Errorf("handler %s saw no %s from pid %d", a[0], name, pid)
		}
	case "settle": // START MS: until the bus is idle at the ring's end and its counters cover [START, cursor)
		start := uint64(atoi(a[0]))
		deadline := time.Now().Add(time.Duration(atoi(a[1])) * time.Millisecond)
		for {
			st := r.stats()
			if st.Cursor == st.Next && st.Received+st.Lost+st.Abandoned == st.Cursor-start || time.Now().After(deadline) {
				return toJSON(st), nil
			}
			time.Sleep(time.Millisecond)
		}
	case "waitstat": // FIELD[+FIELD...] N MS: until the sum of those Stats fields reaches N; answers the stats
		n := uint64(atoi(a[1]))
		deadline := time.Now().Add(time.Duration(atoi(a[2])) * time.Millisecond)
		for {
			st := r.stats()
			sum := uint64(0)
			for _, f := range strings.Split(a[0], "+") {
				sum += reflect.ValueOf(st.Stats).FieldByName(f).Uint()
			}
			if sum >= n || time.Now().After(deadline) {
				return toJSON(st), nil
			}
			time.Sleep(time.Millisecond)
		}
	case "close":
		return "", b.Close()
	case "keys":
		st, keys, err := b.Unique()
		return toJSON(map[string]any{"Stats": st, "Keys": keys}), err
	default:
		return "", fmt.Errorf("unknown command %q", verb)
	}
	return "", nil
}

// roleClaimer: PATH WAKE. Claims the ring's next sequence number (and some
// data bytes) the way a producer does, says which, and never commits it: it
// blocks until killed. With WAKE "wake" it then wakes sleeping readers as a
// producer does right after its claim; with "nowake" it does not, like a
// producer killed between the two.
func roleClaimer(args []string) error {
	region, err := shm.Open(args[0], shm.Options{})
	if err != nil {
		return err
	}
	ctl := region.Control() // byte map: ring/layout.go
	seqTail := (*atomic.Uint64)(unsafe.Pointer(&ctl[0]))
	dataTail := (*atomic.Uint64)(unsafe.Pointer(&ctl[128]))
	wakeGen := (*atomic.Uint32)(unsafe.Pointer(&ctl[256]))
	sleeping := (*atomic.Uint32)(unsafe.Pointer(&ctl[260]))
	dataTail.Add(64)
	seq := seqTail.Add(1) - 1
	if args[1] == "wake" && sleeping.Swap(0) != 0 {
		wakeGen.Add(1)
		shm.Wake(wakeGen)
	}
	fmt.Printf("claimed %d\n", seq)
	_, _ = io.Copy(io.Discard, os.Stdin) // a blocking read: the runtime sees no deadlock
	return errors.New("stdin closed before the kill")
}

// roleLocker: PATH. Takes the unique table's lock (the first word of the
// region's unique table, see events/unique.go) as a claiming process does,
// says so, and blocks until killed: a process that died inside a claim.
func roleLocker(args []string) error {
	region, err := shm.Open(args[0], shm.Options{})
	if err != nil {
		return err
	}
	lock := (*atomic.Uint64)(unsafe.Pointer(&region.Unique()[0]))
	if !lock.CompareAndSwap(0, uint64(proc.Self())) {
		return errors.New("the unique table's lock is taken")
	}
	fmt.Println("locked")
	_, _ = io.Copy(io.Discard, os.Stdin)
	return errors.New("stdin closed before the kill")
}

// ---------------------------------------------------------------------------
// The parent side.

type busChild struct {
	t     *testing.T
	p     *testproc.Proc
	Pid   int
	Start uint64 // Cursor() right after Open (exact only in Manual mode)
	cfg   busConfig
	next  int
}

// newRing creates the region the test's processes share.
func newRing(t *testing.T, slots uint32, size uint64) (string, *ring.Ring) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "bus")
	r, err := ring.Open(path, shm.Options{Geometry: shm.Geometry{IndexSlots: slots, DataBytes: size}})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return path, r
}

func startBus(t *testing.T, cfg busConfig) *busChild {
	t.Helper()
	arg, err := json.Marshal(cfg)
	require.NoError(t, err)
	p := testproc.Start(t, "bus", string(arg))
	line, err := p.Expect("ready ", waitLong)
	require.NoError(t, err)
	c := &busChild{t: t, p: p, cfg: cfg}
	_, err = fmt.Sscanf(line, "ready %d %d", &c.Pid, &c.Start)
	require.NoError(t, err)
	require.Equal(t, p.Pid(), c.Pid)
	t.Cleanup(func() {
		assert.NotContains(t, p.Stderr(), "DATA RACE", "child %d", c.Pid)
	})
	return c
}

func (c *busChild) send(format string, args ...any) int {
	c.t.Helper()
	c.next++
	_, err := fmt.Fprintf(c.p.Stdin, "%d %s\n", c.next, fmt.Sprintf(format, args...))
	require.NoError(c.t, err)
	return c.next
}

// reply waits for the answer to command id: its payload, or its error.
func (c *busChild) reply(id int) (string, error) {
	c.t.Helper()
	prefix := fmt.Sprintf("r%d ", id)
	line, err := c.p.Expect(prefix, waitLong)
	require.NoError(c.t, err)
	rest := strings.TrimPrefix(line, prefix)
	if msg, ok := strings.CutPrefix(rest, "err "); ok {
		return "", errors.New(msg)
	}
	return strings.TrimPrefix(strings.TrimPrefix(rest, "ok"), " "), nil
}

func (c *busChild) mustReply(id int) string {
	c.t.Helper()
	out, err := c.reply(id)
	require.NoError(c.t, err, "child %d, command %d", c.Pid, id)
	return out
}

func (c *busChild) do(format string, args ...any) string {
	c.t.Helper()
	return c.mustReply(c.send(format, args...))
}

func (c *busChild) events(id string) []evRec {
	c.t.Helper()
	var evs []evRec
	require.NoError(c.t, json.Unmarshal([]byte(c.do("events %s", id)), &evs))
	return evs
}

func (c *busChild) drain(id string) []evRec {
	c.t.Helper()
	var evs []evRec
	require.NoError(c.t, json.Unmarshal([]byte(c.do("drain %s", id)), &evs))
	return evs
}

func (c *busChild) stats() childStats {
	c.t.Helper()
	var st childStats
	require.NoError(c.t, json.Unmarshal([]byte(c.do("stats")), &st))
	return st
}

func (c *busChild) settle(start uint64) childStats {
	c.t.Helper()
	var st childStats
	require.NoError(c.t, json.Unmarshal([]byte(c.do("settle %d %d", start, waitLong.Milliseconds())), &st))
	return st
}

func (c *busChild) count(id string) int {
	c.t.Helper()
	n, err := strconv.Atoi(c.do("count %s", id))
	require.NoError(c.t, err)
	return n
}

func (c *busChild) wait(id string, n int) {
	c.t.Helper()
	c.do("wait %s %d %d", id, n, waitLong.Milliseconds())
}

func (c *busChild) waitName(id, name string, pid int) {
	c.t.Helper()
	c.do("waitname %s %s %d %d", id, name, pid, waitLong.Milliseconds())
}

// doAll sends one command to every child before reading any answer, so that
// they run it at the same time, and returns the answers.
func doAll(cs []*busChild, format string, args ...any) []string {
	ids := make([]int, len(cs))
	for i, c := range cs {
		ids[i] = c.send(format, args...)
	}
	out := make([]string, len(cs))
	for i, c := range cs {
		out[i] = c.mustReply(ids[i])
	}
	return out
}

func names(evs []evRec) []string {
	var out []string
	for _, e := range evs {
		out = append(out, e.Source+"/"+e.Name)
	}
	return out
}

func seqs(evs []evRec) []uint64 {
	var out []uint64
	for _, e := range evs {
		out = append(out, e.Seq)
	}
	return out
}

// ---------------------------------------------------------------------------
// The tests.

// TestProcEveryProcessSeesEveryEventInOneOrder: 4 processes post 2,000 events
// each at once; every process handles all 8,000, its own included, once
// each, in the same order, payloads intact.
func TestProcEveryProcessSeesEveryEventInOneOrder(t *testing.T) {
	const procs, each = 4, 2000
	path, _ := newRing(t, 1<<14, 1<<21)
	var cs []*busChild
	for range procs {
		c := startBus(t, busConfig{Path: path, Mode: events.Wake})
		c.do("reg all t1")
		cs = append(cs, c)
	}
	for i, out := range doAll(cs, "postn t1 ev %d", each) {
		var results map[string]int
		require.NoError(t, json.Unmarshal([]byte(out), &results))
		assert.Equal(t, each, results["done"]+results["recursive"], "child %d: %v", i, results)
	}
	var first []evRec
	for i, c := range cs {
		c.wait("all", procs*each)
		evs := c.events("all")
		require.Len(t, evs, procs*each, "child %d", i)
		next := map[int]int{}
		for j, e := range evs {
			if j > 0 {
				require.Greater(t, e.Seq, evs[j-1].Seq, "child %d: event %d out of order or repeated", i, j)
			}
			require.Equal(t, "t1/ev", e.Source+"/"+e.Name)
			pid, k, ok := checkData(e.Data)
			require.True(t, ok, "child %d: payload %q damaged", i, e.Data)
			require.Equal(t, pid, e.PID, "the event's pid is its poster's")
			require.Equal(t, next[pid], k, "child %d: poster %d's events in its own order, none missing", i, pid)
			next[pid]++
		}
		for _, o := range cs {
			assert.Equal(t, each, next[o.Pid], "child %d has all events of child %d", i, o.Pid)
		}
		assert.Equal(t, each, next[c.Pid], "child %d handled its own events", i)
		if i == 0 {
			first = evs
		} else {
			require.Equal(t, first, evs, "child %d saw another sequence than child 0", i)
		}
		st := c.stats()
		assert.Zero(t, st.Lost+st.Abandoned+st.HandlerPanics+st.Malformed, "child %d: %+v", i, st.Stats)
		assert.Equal(t, uint64(each+1), st.Posted, "child %d: its events and its started", i)
	}
}

// TestProcPostHandlesOwnEventBeforeReturning: a Manual-mode process posts
// while another process posts a stream of its own; each Post returns Done
// with the poster's event already handled, and both processes end up with
// the same sequence.
func TestProcPostHandlesOwnEventBeforeReturning(t *testing.T) {
	path, _ := newRing(t, 1<<12, 1<<20)
	m := startBus(t, busConfig{Path: path, Mode: events.Manual})
	w := startBus(t, busConfig{Path: path, Mode: events.Wake})
	m.do("reg h t2")
	w.do("reg h t2")
	wid := w.send("postn t2 w 1000")
	var check map[string]int
	require.NoError(t, json.Unmarshal([]byte(m.do("postcheck h t2 m 300")), &check))
	assert.Equal(t, map[string]int{"notDone": 0, "missing": 0}, check, "every Post returned Done after handling its own event")
	w.mustReply(wid)
	assert.Equal(t, "done", m.do("poll"))
	w.wait("h", 1300)
	me, we := m.events("h"), w.events("h")
	require.Len(t, me, 1300)
	assert.Equal(t, we, me, "both processes handled the same events in the same order")
}

// TestProcPostLocalStaysInProcess: PostLocal runs this process's handlers
// at once, leaves the region alone, and no other process sees it.
func TestProcPostLocalStaysInProcess(t *testing.T) {
	path, rg := newRing(t, 1<<10, 1<<16)
	m := startBus(t, busConfig{Path: path, Mode: events.Manual})
	w := startBus(t, busConfig{Path: path, Mode: events.Wake})
	m.do("reg loc t3")
	w.do("reg all -")
	before := rg.Counters()
	for i := range 3 {
		var out struct {
			Res           string
			Before, After ring.Counters
		}
		require.NoError(t, json.Unmarshal([]byte(m.do("local t3 ev local-%d", i)), &out))
		assert.Equal(t, "done", out.Res)
		assert.Equal(t, out.Before.Next, out.After.Next, "no sequence number taken")
		assert.Equal(t, out.Before.DataTail, out.After.DataTail, "no data bytes taken")
	}
	after := rg.Counters()
	assert.Equal(t, before.Next, after.Next)
	assert.Equal(t, before.DataTail, after.DataTail)

	loc := m.events("loc")
	require.Len(t, loc, 3, "handled before PostLocal returned")
	for i, e := range loc {
		assert.Equal(t, evRec{Source: "t3", Name: "ev", Data: fmt.Sprintf("local-%d", i), PID: m.Pid, Local: true}, e)
	}
	assert.Equal(t, uint64(3), m.stats().Local)

	// A global event after them: the other process sees that one only.
	assert.Equal(t, "done", m.do("post t3 marker x"))
	assert.Equal(t, before.Next+1, rg.Counters().Next)
	w.waitName("all", "marker", m.Pid)
	var seen []string
	for _, e := range w.events("all") {
		if e.Source == "t3" {
			seen = append(seen, e.Name)
			assert.False(t, e.Local)
		}
	}
	assert.Equal(t, []string{"marker"}, seen, "local events never reach another process")
	loc = m.events("loc")
	require.Len(t, loc, 4)
	assert.False(t, loc[3].Local)
	assert.NotZero(t, loc[3].Seq)
}

// uniqueRuns sums, over the processes, the handler calls for key and the
// UniqueRun and UniqueIgnored counters.
func uniqueRuns(cs []*busChild, handler, key string) (calls int, run, ignored uint64) {
	for _, c := range cs {
		for _, e := range c.events(handler) {
			if e.Unique == key {
				calls++
			}
		}
		st := c.stats()
		run += st.UniqueRun
		ignored += st.UniqueIgnored
		assert.Zero(c.t, st.UniqueFull)
	}
	return calls, run, ignored
}

// uniqueRound has every process post a unique event with key at once, then
// waits until every process has handled every one of them: in Manual mode
// by polling, in the poller modes by waiting for its poller to reach the
// ring's end.
func uniqueRound(t *testing.T, cs []*busChild, key string) {
	t.Helper()
	manual := cs[0].cfg.Mode == events.Manual
	for _, out := range doAll(cs, "unique t4 ev %s x", key) {
		if manual {
			require.Equal(t, "done", out)
		} else {
			require.Contains(t, []string{"done", "recursive"}, out)
		}
	}
	if manual {
		for _, out := range doAll(cs, "poll") {
			require.Equal(t, "done", out)
		}
		return
	}
	for _, c := range cs {
		st := c.settle(0)
		require.Equal(t, st.Next, st.Cursor, "child %d did not reach the ring's end", c.Pid)
	}
}

// TestProcPostUniqueRunsOnce: 4 processes post unique events with the same
// key at once: exactly one process runs one of them. Follow-ups from all 4
// within Timeout (a minute here, so timing plays no part) run nowhere.
func TestProcPostUniqueRunsOnce(t *testing.T) {
	for _, mode := range []events.Mode{events.Manual, events.Wake} {
		t.Run(mode.String(), func(t *testing.T) { testPostUniqueRunsOnce(t, mode) })
	}
}

func testPostUniqueRunsOnce(t *testing.T, mode events.Mode) {
	path, _ := newRing(t, 1<<12, 1<<20)
	var cs []*busChild
	for range 4 {
		c := startBus(t, busConfig{Path: path, Mode: mode, Timeout: time.Minute, Start: "0"}) // 0: see settle
		c.do("reg u t4")
		cs = append(cs, c)
	}
	uniqueRound(t, cs, "same")
	calls, run, ignored := uniqueRuns(cs, "u", "same")
	assert.Equal(t, 1, calls, "exactly one handler call in all processes")
	assert.Equal(t, uint64(1), run, "exactly one process counts the run")
	assert.Equal(t, uint64(4*4-1), ignored, "every other decision is an ignore")

	uniqueRound(t, cs, "same")
	calls, run, ignored = uniqueRuns(cs, "u", "same")
	assert.Equal(t, 1, calls, "follow-ups within Timeout run nowhere")
	assert.Equal(t, uint64(1), run)
	assert.Equal(t, uint64(2*4*4-1), ignored)

	// Another key is independent of the first.
	uniqueRound(t, cs, "other")
	calls, run, _ = uniqueRuns(cs, "u", "other")
	assert.Equal(t, 1, calls)
	assert.Equal(t, uint64(2), run)
}

// TestProcPostUniqueRunsAgainAfterTimeout: with a short Timeout, a key runs
// once, is ignored until Timeout has passed since its claim, then runs
// again, again in exactly one process.
func TestProcPostUniqueRunsAgainAfterTimeout(t *testing.T) {
	const timeout = 100 * time.Millisecond
	path, _ := newRing(t, 1<<12, 1<<20)
	var cs []*busChild
	for range 4 {
		c := startBus(t, busConfig{Path: path, Mode: events.Manual, Timeout: timeout})
		c.do("reg u t4")
		cs = append(cs, c)
	}
	// Claims made in one round lie within the round's span. Only a round
	// that took less than Timeout proves that its later events were
	// follow-ups; a slower one (a stalled machine) may run a key twice.
	start := time.Now()
	uniqueRound(t, cs, "k")
	span := time.Since(start)
	calls, run, _ := uniqueRuns(cs, "u", "k")
	if span < timeout {
		require.Equal(t, 1, calls, "a round shorter than Timeout runs the key once")
	} else {
		t.Logf("first round took %v, more than Timeout: exactness not checked", span)
		require.GreaterOrEqual(t, calls, 1)
	}
	require.Equal(t, uint64(calls), run)

	// Retry until the key runs again.
	deadline := time.Now().Add(waitLong)
	for rounds := 1; ; rounds++ {
		require.True(t, time.Now().Before(deadline), "the key never ran again")
		roundStart := time.Now()
		uniqueRound(t, cs, "k")
		roundEnd := time.Now()
		again, againRun, _ := uniqueRuns(cs, "u", "k")
		require.Equal(t, uint64(again), againRun)
		if again == calls {
			time.Sleep(timeout / 10) // pace the retries
			continue
		}
		// The first claim came after start, so its expiry after start+Timeout.
		assert.GreaterOrEqual(t, roundEnd.Sub(start), timeout, "the key ran again before Timeout passed")
		if roundEnd.Sub(roundStart) < timeout {
			assert.Equal(t, calls+1, again, "ran again in exactly one process")
		}
		t.Logf("ran again in round %d, %v after the first", rounds, roundEnd.Sub(start))
		break
	}
}

// TestProcUniqueFollowUpIgnoredByLaggingProcess: a follow-up is marked so
// when it is posted; a worker process that reads it late ignores it as the
// others did, though its winner has left the ring, the key has expired and
// another key has taken the table's only entry.
func TestProcUniqueFollowUpIgnoredByLaggingProcess(t *testing.T) {
	const timeout = 20 * time.Millisecond
	path := filepath.Join(t.TempDir(), "bus")
	r, err := ring.Open(path, shm.Options{Geometry: shm.Geometry{IndexSlots: 16, DataBytes: 1 << 16, UniqueSlots: 2}})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	cfg := busConfig{Path: path, Mode: events.Manual, Timeout: timeout}
	poster, a, lagging := startBus(t, cfg), startBus(t, cfg), startBus(t, cfg) // the poster has no handler
	a.do("reg u cache purge")
	lagging.do("reg u cache purge")

	winner := r.Next()
	poster.do("unique cache purge users winner")
	a.do("poll")
	lagging.do("poll")
	require.Equal(t, 1, a.count("u"))
	poster.do("publish filler tick x") // keeps the follow-up in the ring one event longer
	followUp := r.Next()
	poster.do("unique cache purge users follow-up")
	for r.Oldest() <= winner {
		poster.do("publish filler tick x")
	}
	a.do("poll")
	require.Equal(t, 1, a.count("u"), "a ignored the follow-up")
	deadline := time.Now().Add(waitLong)
	for !strings.Contains(poster.do("keys"), `"Keys":null`) { // the poster's clock decides
		require.True(t, time.Now().Before(deadline), "the key never expired")
		time.Sleep(timeout / 4)
	}

	poster.do("unique cache purge groups x") // takes the expired key's entry
	require.LessOrEqual(t, r.Oldest(), followUp, "the follow-up is still in the ring")
	lagging.do("poll")
	a.do("poll")
	assert.Equal(t, uint64(2), lagging.stats().UniqueIgnored, "the lagging process ignored the winner and the follow-up")
	assert.Equal(t, 2, a.count("u")+lagging.count("u"), "the winner and the new key ran once each, the follow-up nowhere")
}

// TestProcPostUniqueSkipsProcessWithoutHandler: the poster has no handler
// for the event, so it does not claim it; the other process, which has one,
// runs it; a follow-up is ignored by both.
func TestProcPostUniqueSkipsProcessWithoutHandler(t *testing.T) {
	path, _ := newRing(t, 1<<10, 1<<16)
	x := startBus(t, busConfig{Path: path, Mode: events.Manual, Timeout: time.Minute})
	y := startBus(t, busConfig{Path: path, Mode: events.Manual, Timeout: time.Minute})
	x.do("reg o other")
	y.do("reg u t4")
	// x polls the event first (PostUnique polls) and has nothing matching.
	assert.Equal(t, "done", x.do("unique t4 ev key from-x"))
	xs := x.stats()
	assert.Zero(t, xs.UniqueRun+xs.UniqueIgnored, "no handler: no claim, no decision")
	assert.Equal(t, "done", y.do("poll"))
	ue := y.events("u")
	require.Len(t, ue, 1)
	assert.Equal(t, evRec{Seq: ue[0].Seq, Source: "t4", Name: "ev", Data: "from-x", Unique: "key", PID: x.Pid}, ue[0])
	assert.Equal(t, uint64(1), y.stats().UniqueRun)

	assert.Equal(t, "done", x.do("unique t4 ev key again"))
	assert.Equal(t, "done", y.do("poll"))
	assert.Len(t, y.events("u"), 1, "the follow-up is ignored")
	ys := y.stats()
	assert.Equal(t, uint64(1), ys.UniqueRun)
	assert.Equal(t, uint64(1), ys.UniqueIgnored)
	assert.Empty(t, x.events("o"))
}

// TestProcUniqueLockOfKilledProcessIsTaken: a process SIGKILLed while it
// holds the unique table's lock does not stop unique events: the next
// claimer takes the lock over, runs the event in one process, and the
// takeover is counted.
func TestProcUniqueLockOfKilledProcessIsTaken(t *testing.T) {
	path, _ := newRing(t, 1<<10, 1<<16)
	cfg := busConfig{Path: path, Mode: events.Manual, Timeout: time.Minute}
	x := startBus(t, cfg)
	y := startBus(t, cfg)
	x.do("reg u t4")
	y.do("reg u t4")
	l := testproc.Start(t, "locker", path)
	_, err := l.Expect("locked", waitLong)
	require.NoError(t, err)
	require.True(t, l.Kill())

	assert.Equal(t, "done", x.do("unique t4 ev key x"))
	assert.Equal(t, "done", y.do("poll"))
	assert.Equal(t, "done", y.do("unique t4 ev key y"))
	assert.Equal(t, "done", x.do("poll"))
	xe, ye := x.events("u"), y.events("u")
	assert.Equal(t, 1, len(xe)+len(ye), "one run in all, follow-up ignored")
	xs, ys := x.stats(), y.stats()
	assert.Equal(t, uint64(1), xs.UniqueRun+ys.UniqueRun)
	assert.Equal(t, uint64(3), xs.UniqueIgnored+ys.UniqueIgnored)
	assert.Zero(t, xs.UniqueFull+ys.UniqueFull)
	var keys struct{ Stats events.UniqueStats }
	require.NoError(t, json.Unmarshal([]byte(x.do("keys")), &keys))
	assert.Equal(t, uint64(1), keys.Stats.Steals, "the dead holder's lock was taken over once")
	assert.Equal(t, uint64(1), keys.Stats.Claims)
	assert.Equal(t, 1, keys.Stats.Live)
}

// TestProcRecursivePost: a handler that posts gets Recursive, and the poll
// that runs it handles the new event before it returns; in Manual mode (the
// caller's poll) and in Wake mode (the poller's). Every process sees the
// triggers and echoes in one order.
func TestProcRecursivePost(t *testing.T) {
	path, _ := newRing(t, 1<<10, 1<<16)
	m := startBus(t, busConfig{Path: path, Mode: events.Manual})
	w := startBus(t, busConfig{Path: path, Mode: events.Wake})
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})
	m.do("regecho h t5 trigger-m echo-m")
	w.do("regecho h t5 trigger-w echo-w")
	p.do("reg h t5")

	assert.Equal(t, "done", p.do("post t5 trigger-m x"))
	assert.Equal(t, "done", m.do("poll"), "the outer poll finishes")
	me := m.events("h")
	require.Equal(t, []string{"t5/trigger-m", "t5/echo-m"}, names(me), "the echo was handled by the same poll")
	assert.Equal(t, "recursive", me[0].Res)
	assert.Equal(t, m.Pid, me[1].PID)
	assert.Equal(t, strconv.FormatUint(me[0].Seq, 10), me[1].Data)

	assert.Equal(t, "done", p.do("post t5 trigger-w x"))
	w.wait("h", 4)
	we := w.events("h")
	require.Equal(t, []string{"t5/trigger-m", "t5/echo-m", "t5/trigger-w", "t5/echo-w"}, names(we))
	assert.Equal(t, "recursive", we[2].Res)
	assert.Equal(t, w.Pid, we[3].PID)

	assert.Equal(t, "done", m.do("poll"))
	assert.Equal(t, "done", p.do("poll"))
	pe := p.events("h")
	assert.Equal(t, seqs(we), seqs(pe))
	assert.Equal(t, seqs(we), seqs(m.events("h")))
	assert.Equal(t, names(we), names(pe))
}

// TestProcRegisterFilters: events posted by another process reach handlers
// by source "", by source, and by source and names; Unregister stops
// delivery at once; RegisterContext's handler stops once its context ends;
// a handler that panics is counted and the others go on.
func TestProcRegisterFilters(t *testing.T) {
	for _, mode := range []events.Mode{events.Manual, events.Wake} {
		t.Run(mode.String(), func(t *testing.T) { testRegisterFilters(t, mode) })
	}
}

func testRegisterFilters(t *testing.T, mode events.Mode) {
	path, _ := newRing(t, 1<<10, 1<<16)
	a := startBus(t, busConfig{Path: path, Mode: mode, Start: "0"}) // the ring is new: 0 is Latest
	for _, cmd := range []string{
		"reg all -",
		"regpanic panic t6",
		"reg src t6",
		"reg names t6 a b",
		"reg other t6x",
		"regctx ctx t6",
		"reg unreg t6",
		"reg tail -", // last: once it has an event, every handler has had it
	} {
		a.do("%s", cmd)
	}
	b := startBus(t, busConfig{Path: path, Mode: events.Manual})
	// post has b post an event, then waits until a has handled it.
	post := func(source, name, data string) {
		t.Helper()
		assert.Equal(t, "done", b.do("post %s %s %s", source, name, data))
		if mode == events.Manual {
			assert.Equal(t, "done", a.do("poll"))
		} else {
			a.waitName("tail", name, b.Pid)
		}
	}
	post("t6", "a", "d0")
	post("t6", "b", "d1")
	post("t6", "c", "d2")
	post("t6x", "x", "d3")

	all := a.events("all")
	if mode != events.Manual {
		// The poller may have handled a's own started before "reg all".
		if len(all) > 0 && all[0].PID == a.Pid {
			all = all[1:]
		}
		all = append([]evRec{{Source: events.Source, Name: events.EventStarted, PID: a.Pid}}, all...)
	}
	assert.Equal(t, []string{"shmring/started", "shmring/started", "t6/a", "t6/b", "t6/c", "t6x/x"}, names(all))
	assert.Equal(t, []int{a.Pid, b.Pid, b.Pid, b.Pid, b.Pid, b.Pid}, func() (p []int) {
		for _, e := range all {
			p = append(p, e.PID)
		}
		return p
	}())
	assert.Equal(t, "d1", all[3].Data)
	abc := []string{"t6/a", "t6/b", "t6/c"}
	assert.Equal(t, abc, names(a.events("src")))
	assert.Equal(t, []string{"t6/a", "t6/b"}, names(a.events("names")))
	assert.Equal(t, []string{"t6x/x"}, names(a.events("other")))
	assert.Equal(t, abc, names(a.events("panic")))
	assert.Equal(t, abc, names(a.events("ctx")), "handlers after the panicking one still run")
	assert.Equal(t, abc, names(a.events("unreg")))
	assert.Equal(t, uint64(3), a.stats().HandlerPanics)

	assert.Equal(t, "true", a.do("unreg unreg"))
	a.do("cancel ctx")
	post("t6", "d", "x")
	assert.Len(t, a.events("unreg"), 3, "nothing after Unregister returned")

	// The context's end unregisters asynchronously: probe until an event
	// passes it by, then check that it stays unregistered.
	deadline := time.Now().Add(waitLong)
	for i := 0; ; i++ {
		before := a.count("ctx")
		post("t6", fmt.Sprintf("probe%d", i), "x")
		if a.count("ctx") == before {
			break
		}
		require.True(t, time.Now().Before(deadline), "RegisterContext's handler still runs after its context ended")
	}
	ctxSeen := a.count("ctx")
	for i := range 3 {
		post("t6", fmt.Sprintf("after%d", i), "x")
	}
	assert.Equal(t, ctxSeen, a.count("ctx"))
	assert.Equal(t, "false", a.do("unreg ctx"), "already unregistered by its context")
	assert.Equal(t, "false", a.do("unreg unreg"), "a second Unregister returns false")

	src := a.events("src")
	assert.Equal(t, names(src), names(a.events("panic")), "the panicking handler saw every t6 event")
	assert.Equal(t, uint64(len(src)), a.stats().HandlerPanics)
	assert.Equal(t, "t6/after2", names(src)[len(src)-1])
	st := a.settle(0)
	assert.Equal(t, st.Next, st.Cursor)
	assert.Equal(t, st.Cursor, st.Received, "every event since a's own started")
}

// TestProcStartedAndStopping: Open posts "started" and Close "stopping"
// under events.Source with the process's pid; other processes, the parent
// among them, see both, in that order.
func TestProcStartedAndStopping(t *testing.T) {
	path, _ := newRing(t, 1<<10, 1<<16)
	parent, err := events.Open(events.Options{Path: path, Mode: events.Manual})
	require.NoError(t, err)
	t.Cleanup(func() { parent.Close() })
	var mu sync.Mutex
	var seen []evRec
	parent.Register(func(e *events.Event) {
		mu.Lock()
		seen = append(seen, evRec{Seq: e.Seq, Source: e.Source, Name: e.Name, PID: e.PID})
		mu.Unlock()
	}, events.Source)
	parentSaw := func(name string, pid int) func() bool {
		return func() bool {
			_, err := parent.Poll()
			assert.NoError(t, err)
			mu.Lock()
			defer mu.Unlock()
			for _, e := range seen {
				if e.Name == name && e.PID == pid {
					return true
				}
			}
			return false
		}
	}

	d := startBus(t, busConfig{Path: path, Mode: events.Wake})
	d.do("reg sys %s", events.Source)
	// c exits normally; under -race that would cost a second's sleep at exit.
	t.Setenv("GORACE", strings.TrimSpace(os.Getenv("GORACE")+" atexit_sleep_ms=0"))
	c := startBus(t, busConfig{Path: path, Mode: events.Manual})
	c.do("reg sys %s", events.Source)
	assert.Equal(t, "done", c.do("poll"))
	own := c.events("sys")
	require.Len(t, own, 1, "a bus sees its own started")
	assert.Equal(t, evRec{Seq: own[0].Seq, Source: events.Source, Name: events.EventStarted, PID: c.Pid}, own[0])

	require.Eventually(t, parentSaw(events.EventStarted, c.Pid), waitLong, 5*time.Millisecond)
	d.waitName("sys", events.EventStarted, c.Pid)

	c.do("close")
	_, err = c.reply(c.send("post t7 x y"))
	require.ErrorContains(t, err, "closed", "a closed bus refuses posts")
	require.Eventually(t, parentSaw(events.EventStopping, c.Pid), waitLong, 5*time.Millisecond)
	d.waitName("sys", events.EventStopping, c.Pid)
	require.NoError(t, c.p.Stdin.Close())
	require.NoError(t, c.p.Wait(waitLong), "the child exits cleanly after Close")

	mu.Lock()
	parentSeen := append([]evRec(nil), seen...)
	mu.Unlock()
	for who, evs := range map[string][]evRec{"parent": parentSeen, "other child": d.events("sys")} {
		var fromC []evRec
		for _, e := range evs {
			if e.PID == c.Pid {
				fromC = append(fromC, e)
			}
		}
		require.Len(t, fromC, 2, who)
		assert.Equal(t, []string{"shmring/started", "shmring/stopping"}, names(fromC), who)
		assert.Equal(t, own[0].Seq, fromC[0].Seq, who)
		assert.Less(t, fromC[0].Seq, fromC[1].Seq, who)
	}
}

// TestProcSubscribeDropsExactly: a Subscribe channel nobody reads drops
// exactly what does not fit, for itself only; a channel with room and a
// Register handler in the same process get every event.
func TestProcSubscribeDropsExactly(t *testing.T) {
	const n, buf = 500, 16
	path, _ := newRing(t, 1<<10, 1<<17)
	a := startBus(t, busConfig{Path: path, Mode: events.Wake})
	a.do("sub slow %d t8", buf)
	a.do("sub roomy %d t8", n)
	a.do("sub otherSource %d t8x", buf)
	a.do("reg h t8")
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})
	p.do("publishn t8 ev %d", n)
	// The handler is registered after the channels' feeders, so once it has
	// all n, so have they.
	a.wait("h", n)
	// Handled counts a call once it has returned: wait for the last one.
	var st childStats
	require.NoError(t, json.Unmarshal([]byte(a.do("waitstat Handled %d %d", n+buf+n, waitLong.Milliseconds())), &st))
	assert.Equal(t, uint64(n-buf), st.Dropped, "dropped exactly what did not fit")
	assert.Equal(t, uint64(n+buf+n), st.Handled, "handler calls plus channel deliveries")

	slow := a.drain("slow")
	require.Len(t, slow, buf)
	for i, e := range slow {
		assert.Equal(t, genData(p.Pid, i), e.Data, "the first %d events, in order", buf)
	}
	roomy := a.drain("roomy")
	require.Len(t, roomy, n)
	assert.Equal(t, seqs(a.events("h")), seqs(roomy))
	assert.Empty(t, a.drain("otherSource"))
}

// claimAndDie starts a claimer process on the ring at path, which claims a
// sequence number (waking sleepers if wake is "wake") and never commits it,
// kills it with SIGKILL and returns the sequence number it claimed.
func claimAndDie(t *testing.T, path, wake string) uint64 {
	t.Helper()
	k := testproc.Start(t, "claimer", path, wake)
	line, err := k.Expect("claimed ", waitLong)
	require.NoError(t, err)
	seq, err := strconv.ParseUint(strings.TrimPrefix(line, "claimed "), 10, 64)
	require.NoError(t, err)
	require.True(t, k.Kill(), "the claimer died of SIGKILL")
	return seq
}

// TestProcKilledPosterIsSkippedDeterministic: a process claims a sequence
// number and is SIGKILLed before it writes the entry (and before it wakes
// anybody). Every bus process skips that entry once, counts it abandoned,
// and handles the events posted after it.
func TestProcKilledPosterIsSkippedDeterministic(t *testing.T) {
	const after = 100
	path, rg := newRing(t, 1<<10, 1<<17)
	cfg := busConfig{Path: path, Mode: events.Wake, WaitMax: 100 * time.Millisecond, WaitInterval: 5 * time.Millisecond, Start: "0"}
	var cs []*busChild
	for range 3 {
		c := startBus(t, cfg)
		c.do("reg h t9")
		cs = append(cs, c)
	}
	// Killed between its claim and its wake-up: the readers learn of the
	// entry from the next post.
	dead := claimAndDie(t, path, "nowake")

	cs[0].do("postn t9 ev %d", after)
	for i, c := range cs {
		c.wait("h", after)
		evs := c.events("h")
		require.Len(t, evs, after)
		for j, e := range evs {
			assert.Greater(t, e.Seq, dead, "child %d", i)
			assert.Equal(t, genData(cs[0].Pid, j), e.Data, "child %d", i)
		}
		st := c.settle(0)
		assert.Equal(t, uint64(1), st.Abandoned, "child %d skipped the dead entry once", i)
		assert.Zero(t, st.Lost, "child %d", i)
		assert.Equal(t, st.Next, st.Cursor, "child %d", i)
		assert.Equal(t, st.Cursor, st.Received+st.Lost+st.Abandoned, "child %d accounts for every sequence number", i)
	}
	assert.Equal(t, uint64(1), rg.Counters().Abandoned, "abandoned once, for everyone")

	// Killed after its wake-up: the readers, asleep on an otherwise idle
	// ring, skip the entry with no post after it.
	dead = claimAndDie(t, path, "wake")
	for i, c := range cs {
		var st childStats
		require.NoError(t, json.Unmarshal([]byte(c.do("waitstat Abandoned 2 %d", waitLong.Milliseconds())), &st))
		assert.Equal(t, uint64(2), st.Abandoned, "child %d", i)
		assert.Equal(t, dead+1, st.Cursor, "child %d moved past the dead entry", i)
		assert.Zero(t, st.Lost, "child %d", i)
	}
	cs[1].do("postn t9 more 10")
	for i, c := range cs {
		c.wait("h", after+10)
		evs := c.events("h")
		assert.Equal(t, "more", evs[after].Name, "child %d", i)
		assert.Greater(t, evs[after].Seq, dead, "child %d", i)
	}
	assert.Equal(t, uint64(2), rg.Counters().Abandoned)
}

// TestProcKilledPosterIsSkippedRandom: posters publishing as fast as they can
// are SIGKILLed wherever they happen to be, round after round. The reader
// processes account for every sequence number and see the same events in
// the same order, payloads intact.
func TestProcKilledPosterIsSkippedRandom(t *testing.T) {
	const rounds, most = 3, 15000
	path, rg := newRing(t, 1<<16, 1<<23)
	cfg := busConfig{Path: path, Mode: events.Wake, WaitMax: 100 * time.Millisecond, WaitInterval: 5 * time.Millisecond, Start: "0"}
	var rs []*busChild
	for range 2 {
		c := startBus(t, cfg)
		c.do("reg all -")
		rs = append(rs, c)
	}
	for round := range rounds {
		p := startBus(t, busConfig{Path: path, Mode: events.Manual})
		before := rg.Next()
		p.do("publishloop t9b ev %d", most)
		require.Eventually(t, func() bool { return rg.Next() >= before+uint64(2000+1000*round) }, waitLong, 100*time.Microsecond)
		p.p.Kill()
	}
	end := startBus(t, busConfig{Path: path, Mode: events.Manual})
	end.do("publish t9b end x")

	var lists [][]evRec
	var abandoned, received []uint64
	for i, r := range rs {
		r.waitName("all", "end", end.Pid)
		st := r.settle(0)
		assert.Equal(t, st.Next, st.Cursor, "reader %d", i)
		assert.Equal(t, st.Cursor, st.Received+st.Lost+st.Abandoned, "reader %d accounts for every sequence number: %+v", i, st.Stats)
		assert.Zero(t, st.Lost, "reader %d: the ring was never lapped", i)
		assert.Zero(t, st.Malformed, "reader %d", i)
		assert.LessOrEqual(t, st.Abandoned, uint64(rounds), "reader %d: at most one entry per killed poster", i)
		// The handler was registered after Open, while the poller ran, so
		// the bus events of the readers' own start may precede it.
		var evs []evRec
		for _, e := range r.events("all") {
			if e.Source != "t9b" {
				continue
			}
			if e.Name == "ev" {
				pid, _, ok := checkData(e.Data)
				require.True(t, ok, "reader %d: payload %q damaged", i, e.Data)
				require.Equal(t, e.PID, pid)
			}
			evs = append(evs, e)
		}
		require.NotEmpty(t, evs)
		assert.Equal(t, "end", evs[len(evs)-1].Name)
		lists = append(lists, evs)
		abandoned = append(abandoned, st.Abandoned)
		received = append(received, st.Received)
		t.Logf("reader %d: %d events, abandoned %d", i, len(evs), st.Abandoned)
	}
	assert.Equal(t, seqs(lists[0]), seqs(lists[1]), "both readers saw the same sequence numbers")
	assert.Equal(t, lists[0], lists[1])
	assert.Equal(t, abandoned[0], abandoned[1])
	assert.Equal(t, received[0], received[1])
	assert.Equal(t, abandoned[0], rg.Counters().Abandoned)
}

// TestProcLappedReaderCountsExactLoss: a Manual-mode process that does not
// poll while another publishes 1,000 events into a 64-entry ring learns
// exactly how many it missed.
func TestProcLappedReaderCountsExactLoss(t *testing.T) {
	path, rg := newRing(t, 64, 1<<16)
	r := startBus(t, busConfig{Path: path, Mode: events.Manual})
	r.do("reg all -")
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})
	p.do("publishn t10 ev 10")
	assert.Equal(t, "done", r.do("poll"))
	require.Equal(t, 12, r.count("all"), "its started, the poster's started, 10 events")

	p.do("publishn t10 late 1000")
	assert.Equal(t, "done", r.do("poll"))
	next := rg.Next()
	require.Equal(t, r.Start+2+10+1000, next)
	evs := r.events("all")
	st := r.stats()
	assert.Equal(t, uint64(len(evs)), st.Received)
	assert.Equal(t, next-r.Start-uint64(len(evs)), st.Lost, "lost exactly what it did not see")
	assert.Equal(t, uint64(1000-64), st.Lost, "of the late events it sees the last 64 only")
	assert.Zero(t, st.Abandoned)
	late := evs[12:]
	require.Len(t, late, 64)
	for i, e := range late {
		assert.Equal(t, next-64+uint64(i), e.Seq)
		assert.Equal(t, genData(p.Pid, 1000-64+i), e.Data)
	}
}

// TestProcResumeFromCursor: a process closes its bus from a handler part
// way through the pending events and prints its Cursor; a new process
// started at AtSeq(cursor) handles exactly the events after it, none again,
// none missed. When the ring has overwritten some meanwhile, Lost says how
// many.
func TestProcResumeFromCursor(t *testing.T) {
	path, rg := newRing(t, 64, 1<<16)
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})
	r1 := startBus(t, busConfig{Path: path, Mode: events.Manual})
	r1.do("regcloseafter h t11 10")
	p.do("publishn t11 ev 30")
	_, err := r1.reply(r1.send("poll"))
	require.ErrorContains(t, err, "closed", "the handler closed the bus mid-poll")
	h1 := r1.events("h")
	require.Len(t, h1, 10)
	assert.Equal(t, "close: <nil>", h1[9].Res)
	cursor, err := strconv.ParseUint(r1.do("cursor"), 10, 64)
	require.NoError(t, err)
	assert.Equal(t, h1[9].Seq+1, cursor, "the cursor is just past the last event handled")

	p.do("publishn t11 more 20")
	r2 := startBus(t, busConfig{Path: path, Mode: events.Manual, Start: strconv.FormatUint(cursor, 10)})
	r2.do("reg all -")
	assert.Equal(t, "done", r2.do("poll"))
	evs := r2.events("all")
	next := rg.Next()
	require.Equal(t, next-cursor, uint64(len(evs)), "every event from the cursor on")
	for i, e := range evs {
		require.Equal(t, cursor+uint64(i), e.Seq)
	}
	var got []string
	for _, e := range evs {
		got = append(got, e.Name+" "+e.Data)
	}
	var want []string
	for i := 10; i < 30; i++ {
		want = append(want, "ev "+genData(p.Pid, i))
	}
	want = append(want, events.EventStopping+" ") // r1's, posted by its Close after all 30
	for i := range 20 {
		want = append(want, "more "+genData(p.Pid, i))
	}
	want = append(want, events.EventStarted+" ") // r2's own
	assert.Equal(t, want, got)
	assert.Equal(t, r1.Pid, evs[20].PID)
	st := r2.stats()
	assert.Zero(t, st.Lost+st.Abandoned)
	assert.Equal(t, uint64(len(evs)), st.Received)

	// r2 stops; while it is away the ring comes round more than once.
	cursor2, err := strconv.ParseUint(r2.do("cursor"), 10, 64)
	require.NoError(t, err)
	require.Equal(t, next, cursor2)
	r2.do("close")
	p.do("publishn t11 away 200")
	r3 := startBus(t, busConfig{Path: path, Mode: events.Manual, Start: strconv.FormatUint(cursor2, 10)})
	r3.do("reg all -")
	assert.Equal(t, "done", r3.do("poll"))
	next = rg.Next()
	evs = r3.events("all")
	st = r3.stats()
	require.Len(t, evs, 64, "the ring holds 64")
	assert.Equal(t, next-64, evs[0].Seq)
	assert.Equal(t, next-64-cursor2, st.Lost, "lost exactly those the ring overwrote")
	assert.Equal(t, next-cursor2, st.Received+st.Lost)
	assert.Equal(t, events.EventStarted, evs[63].Name)
	assert.Equal(t, genData(p.Pid, 199), evs[62].Data)
}

// TestProcModesDeliver: an event published in one process reaches a
// Wake-mode process, which sleeps on the futex, a Timer-mode one and a
// Spin-mode one, none of which calls Poll.
func TestProcModesDeliver(t *testing.T) {
	path, rg := newRing(t, 1<<10, 1<<16)
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})
	w := startBus(t, busConfig{Path: path, Mode: events.Wake})
	tm := startBus(t, busConfig{Path: path, Mode: events.Timer, Interval: 20 * time.Millisecond})
	for _, c := range []*busChild{w, tm} {
		c.do("reg h t12")
	}
	// Only the Wake-mode process sleeps on the ring's futex.
	require.Eventually(t, func() bool { return rg.Counters().Waiters == 1 }, waitLong, time.Millisecond, "the Wake-mode poller is asleep")
	for round := range 3 {
		p.do("publish t12 ping %d", round)
		for _, c := range []*busChild{w, tm} {
			c.wait("h", round+1)
		}
	}
	// Spin mode costs a core while it runs: kept short.
	s := startBus(t, busConfig{Path: path, Mode: events.Spin})
	s.do("reg h t12")
	p.do("publish t12 ping 3")
	w.wait("h", 4)
	tm.wait("h", 4)
	s.wait("h", 1)
	s.do("close")
	for name, c := range map[string]*busChild{"wake": w, "timer": tm, "spin": s} {
		evs := c.events("h")
		require.NotEmpty(t, evs, name)
		last := evs[len(evs)-1]
		assert.Equal(t, "3", last.Data, name)
		assert.Equal(t, p.Pid, last.PID, name)
		if name != "spin" {
			assert.Equal(t, []string{"0", "1", "2", "3"}, func() (d []string) {
				for _, e := range evs {
					d = append(d, e.Data)
				}
				return d
			}(), name)
		}
	}
}

// TestProcSpinBusSkipsKilledPoster: a Spin-mode bus, which looks at the
// ring's claim counter only once per WaitInterval, still skips the entry of
// a poster killed between its claim and its commit, with or without an
// event posted after it, and counts it once.
func TestProcSpinBusSkipsKilledPoster(t *testing.T) {
	path, rg := newRing(t, 1<<10, 1<<17)
	s := startBus(t, busConfig{Path: path, Mode: events.Spin, WaitMax: 100 * time.Millisecond, WaitInterval: 5 * time.Millisecond, Start: "0"})
	s.do("reg h t13")
	p := startBus(t, busConfig{Path: path, Mode: events.Manual})

	dead := claimAndDie(t, path, "nowake")
	p.do("postn t13 ev 10")
	s.wait("h", 10)
	for _, e := range s.events("h") {
		assert.Greater(t, e.Seq, dead)
	}
	st := s.settle(0)
	assert.Equal(t, uint64(1), st.Abandoned)
	assert.Zero(t, st.Lost)

	// Nothing posted after it: the spinner finds it from the claim counter.
	dead = claimAndDie(t, path, "wake")
	require.NoError(t, json.Unmarshal([]byte(s.do("waitstat Abandoned 2 %d", waitLong.Milliseconds())), &st))
	assert.Equal(t, dead+1, st.Cursor, "moved past the dead entry")
	assert.Zero(t, st.Lost)
	p.do("postn t13 more 1")
	s.wait("h", 11)
	assert.Equal(t, uint64(2), rg.Counters().Abandoned, "abandoned once each")
	s.do("close")
}
