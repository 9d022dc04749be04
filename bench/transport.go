package bench

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// A transport carries messages from producer processes to reader
// processes: shmring's event bus in each of its reader modes, its bare ring,
// and the baselines it is compared with.
type transport struct {
	name string
	// spins says its readers keep a core busy while they wait.
	spins bool
	// oneProducer says it takes a single producer (a pipe per reader).
	oneProducer bool
	// ordered says every reader sees one global order, so their order
	// hashes must agree when nothing was lost.
	ordered bool
	// lossy says readers may fall behind and lose messages rather than
	// hold the producers back.
	lossy bool
	// prepare sets up, in the harness, what the children share.
	prepare func(r *runEnv) error
	// newSender and newReceiver run in the children.
	newSender   func(s *childSpec, extra []*os.File) (sender, error)
	newReceiver func(s *childSpec, extra []*os.File) (receiver, error)
}

// A sender sends messages of one producer.
type sender interface {
	// send sends msg; errDropped means the transport refused it (it is
	// counted, not resent).
	send(msg []byte) error
	close() error
}

// A receiver receives the messages of one reader.
type receiver interface {
	// receive calls fn with every message as soon as it arrives, until
	// fn returns false, or until stop is closed and nothing more is
	// waiting. fn runs on one goroutine at a time.
	receive(fn func(msg []byte) bool, stop <-chan struct{}) error
	// counters are the transport's own counts, read after receive.
	counters() map[string]int64
	close() error
}

var errDropped = errors.New("bench: message dropped by the transport")

// childSpec is what a child of a run is told, as its one argument.
type childSpec struct {
	Transport string        `json:"transport"`
	Dir       string        `json:"dir"`
	ID        int           `json:"id"`
	Producers int           `json:"producers"`
	Readers   int           `json:"readers"`
	Size      int           `json:"size"`
	Rate      int           `json:"rate"` // messages/s per producer; 0: as fast as it can
	Duration  time.Duration `json:"duration"`
	Sample    int           `json:"sample"`
	Interval  time.Duration `json:"interval"` // Timer mode's poll period
}

var transports = map[string]*transport{}

func init() {
	for _, m := range []struct {
		name string
		mode events.Mode
	}{{"events/spin", events.Spin}, {"events/wake", events.Wake}, {"events/timer", events.Timer}} {
		mode := m.mode
		transports[m.name] = &transport{
			name: m.name, spins: mode == events.Spin, ordered: true, lossy: true,
			prepare:   prepareRing,
			newSender: newEventsSender,
			newReceiver: func(s *childSpec, _ []*os.File) (receiver, error) {
				return newEventsReceiver(s, mode)
			},
		}
	}
	transports["ring"] = &transport{
		name: "ring", spins: true, ordered: true, lossy: true,
		prepare:     prepareRing,
		newSender:   newRingSender,
		newReceiver: newRingReceiver,
	}
	transports["broker/unix"] = &transport{
		name: "broker/unix", ordered: true,
		prepare:     prepareBroker,
		newSender:   newBrokerSender,
		newReceiver: newBrokerReceiver,
	}
	transports["pipe"] = &transport{
		name: "pipe", oneProducer: true, ordered: true,
		prepare:     preparePipes,
		newSender:   newPipeSender,
		newReceiver: newPipeReceiver,
	}
	// "chan" runs in one process and "spsc" is a floor; run.go handles
	// both apart.
}

// ringSizes returns a ring's data bytes and index slots for messages of
// size bytes: room for tens of milliseconds at tens of millions of small
// messages a second, and for a thousand of the largest (128 MiB at 64 KiB).
func ringSizes(size int) (dataBytes, slots int) {
	dataBytes = 64 << 20
	for dataBytes < 1024*(size+64) {
		dataBytes <<= 1
	}
	return dataBytes, 1 << 20
}

func ringPath(dir string) string { return filepath.Join(dir, "ring") }

// prepareRing creates the ring file, so that no child's first open races
// another's over its geometry.
func prepareRing(r *runEnv) error {
	bus, err := events.Open(events.Options{
		Path: ringPath(r.spec.Dir), Size: int(r.ring.DataBytes), Slots: int(r.ring.IndexSlots), Mode: events.Manual, Observe: true,
	})
	if err != nil {
		return err
	}
	return bus.Close()
}

// Event bus messages all have one source and name.
const (
	benchSource = "bench"
	benchName   = "m"
)

// eventOverhead is what a ring record of the bus holds besides a message:
// the event's 24-byte header, its source and its name (events' wire format).
const eventOverhead = 24 + len(benchSource) + len(benchName)

type eventsSender struct{ bus *events.Bus }

func newEventsSender(s *childSpec, _ []*os.File) (sender, error) {
	// A producer only posts: Manual runs no poller, Observe takes no
	// reader slot and posts no started event.
	bus, err := events.Open(events.Options{Path: ringPath(s.Dir), Mode: events.Manual, Observe: true, MustExist: true})
	if err != nil {
		return nil, err
	}
	prefault(bus.Ring())
	return &eventsSender{bus: bus}, nil
}

func (e *eventsSender) send(msg []byte) error {
	_, err := e.bus.Publish(benchSource, benchName, msg)
	if errors.Is(err, ring.ErrAbandoned) {
		return errDropped
	}
	return err
}

func (e *eventsSender) close() error { return e.bus.Close() }

type eventsReceiver struct {
	bus  *events.Bus
	fn   atomic.Pointer[func(msg []byte) bool]
	done chan struct{}
	// mu is held by the handler while it calls fn, and by receive when it
	// ends the run: after that, fn is never called again, so the caller
	// may read what fn wrote even while the poller goes on.
	mu    sync.Mutex
	ended bool
}

func newEventsReceiver(s *childSpec, mode events.Mode) (receiver, error) {
	r := &eventsReceiver{done: make(chan struct{})}
	bus, err := events.Open(events.Options{
		Path: ringPath(s.Dir), Mode: mode, Interval: s.Interval, MustExist: true,
		Setup: func(b *events.Bus) {
			b.Register(func(e *events.Event) {
				fn := r.fn.Load() // set by receive before the run starts
				if fn == nil {
					return
				}
				r.mu.Lock()
				defer r.mu.Unlock()
				if r.ended {
					return
				}
				if !(*fn)(e.Data) {
					r.ended = true
					close(r.done)
				}
			}, benchSource, benchName)
		},
	})
	if err != nil {
		return nil, err
	}
	r.bus = bus
	prefault(bus.Ring())
	return r, nil
}

// receive runs while the bus's poller calls the handler. fn is set before
// the first message of the run: the run starts after "ready".
func (r *eventsReceiver) receive(fn func([]byte) bool, stop <-chan struct{}) error {
	r.fn.Store(&fn) // before the producers are released, so before the run's first message
	defer func() {
		r.mu.Lock() // waits for a call of fn in progress
		r.ended = true
		r.mu.Unlock()
	}()
	select {
	case <-r.done:
		return nil
	case <-r.bus.Done():
		return r.bus.Err()
	case <-stop:
	}
	// Told to stop: the producers are done; take what is still in the ring.
	deadline := time.Now().Add(10 * time.Second)
	for r.bus.Cursor() < r.bus.Ring().Next() && time.Now().Before(deadline) {
		select {
		case <-r.done:
			return nil
		case <-time.After(time.Millisecond):
		}
	}
	return nil
}

func (r *eventsReceiver) counters() map[string]int64 {
	st := r.bus.Stats()
	return map[string]int64{"lost": int64(st.Lost), "abandoned": int64(st.Abandoned), "corrupt": int64(st.Corrupt)}
}

func (r *eventsReceiver) close() error { return r.bus.Close() }

// The bare ring: records appended with ring.Append and read by a spinning
// ring.Reader, without the event bus's codec, handlers or poller.

type ringSender struct{ r *ring.Ring }

func newRingSender(s *childSpec, _ []*os.File) (sender, error) {
	r, err := ring.Open(ringPath(s.Dir), ring.Options{})
	if err != nil {
		return nil, err
	}
	prefault(r)
	return &ringSender{r: r}, nil
}

func (s *ringSender) send(msg []byte) error {
	_, err := s.r.Append(msg)
	if errors.Is(err, ring.ErrAbandoned) {
		return errDropped
	}
	return err
}

func (s *ringSender) close() error { return s.r.Close() }

type ringReceiver struct {
	r     *ring.Ring
	rd    *ring.Reader
	await uint64 // records to wait for before a read: the reader's batch
}

func newRingReceiver(s *childSpec, _ []*os.File) (receiver, error) {
	r, err := ring.Open(ringPath(s.Dir), ring.Options{})
	if err != nil {
		return nil, err
	}
	n := awaitCount(r.Region().Geometry(), s.Size)
	rd, err := r.NewReader(ring.ReaderOptions{Batch: int(n)})
	if err != nil {
		r.Close()
		return nil, err
	}
	prefault(r)
	return &ringReceiver{r: r, rd: rd, await: n}, nil
}

func (s *ringReceiver) receive(fn func([]byte) bool, stop <-chan struct{}) error {
	stopped := false
	isStopped := func() bool {
		select {
		case <-stop:
			stopped = true
		default:
		}
		return stopped
	}
	for {
		if s.rd.Buffered() == 0 && !stopped {
			awaitBatch(s.rd, s.await, isStopped)
		}
		rec, err := s.rd.Read()
		switch {
		case err == nil:
			if !fn(rec.Data) {
				return nil
			}
			continue
		case errors.Is(err, ring.ErrEmpty), errors.Is(err, ring.ErrPending):
		default:
			return err
		}
		if errors.Is(err, ring.ErrEmpty) && isStopped() {
			return nil
		}
		// A pending entry (a producer between its claim and its commit)
		// can hold the cursor while the batch's last entry is committed
		// already, and then awaitBatch returns at once: pause before the
		// next Read, each of which loads the head's lines.
		spinPause(awaitPause)
	}
}

// maxAwait is the most records a throughput reader waits for before it
// reads, and copies in one fill.
const maxAwait = 1024

// awaitCount is how many records of size payload bytes a throughput reader
// of a ring of geometry g waits for before it reads, and copies in one
// fill: at most maxAwait; at most 256 KiB, what a ring.Reader copies in one
// fill at most, so that the fill ends at the last record waited for; and
// at most a quarter of the ring's index and of its data, so that the first
// records waited for are not overwritten before the last one lands.
func awaitCount(g shm.Geometry, size int) uint64 {
	rec := uint64(size + shm.RecordHeaderSize)
	return max(1, min(maxAwait, (256<<10)/rec, uint64(g.IndexSlots)/4, g.DataBytes/4/rec))
}

// awaitSpins pauses of awaitPause iterations bound awaitBatch's wait:
// about 70 µs on the development VM (1.1 µs a pause).
const (
	awaitSpins = 64
	awaitPause = 3000
)

// awaitBatch waits until the n-th entry past rd's cursor is committed (or
// abandoned), or for about 70 µs (awaitSpins), or until done. It looks
// only at that entry's index word, which producers will not write for
// another n records: a reader that polls the head instead (Read, Lag, or
// Ready at the cursor) takes the lines the producers are writing, and each
// look costs a producer a round trip between cores ("A reader that has
// caught up" in README.md). A Read with a batch of n (awaitCount) then
// copies the n records and stops, without going near the head. The time
// limit bounds the wait for the tail of a stream that stops short of n.
// A true Ready does not promise that Read returns a record: an entry
// before the last may still be pending, and the caller backs off then.
func awaitBatch(rd *ring.Reader, n uint64, done func() bool) {
	if n == 0 {
		return
	}
	last := rd.Cursor() + n - 1
	for i := 0; i < awaitSpins && !rd.Ready(last); i++ {
		if done() {
			return
		}
		spinPause(awaitPause)
	}
}

func (s *ringReceiver) counters() map[string]int64 { return readerCounters(s.rd.Stats()) }

// readerCounters are a ring reader's skips, as a Result's counters.
func readerCounters(st ring.ReaderStats) map[string]int64 {
	return map[string]int64{"lost": int64(st.Lost), "abandoned": int64(st.Abandoned), "corrupt": int64(st.Corrupt)}
}

func (s *ringReceiver) close() error {
	return errors.Join(s.rd.Close(), s.r.Close())
}

// prefault takes the page faults of a fresh ring before the run rather
// than in it. Where the kernel cannot, the run takes them, as a fresh
// ring in production does.
func prefault(r *ring.Ring) { _ = r.Region().Prefault() }

//go:noinline
func spinPause(n int) int {
	x := 0
	for i := range n {
		x += i
	}
	return x
}

func checkSize(size int) error {
	if size < MinSize {
		return fmt.Errorf("bench: payload size %d is below the %d-byte header", size, MinSize)
	}
	return nil
}
