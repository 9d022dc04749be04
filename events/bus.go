package events

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// Source is the source of the events the bus itself posts.
const Source = "shmring"

// Names of the events the bus posts under Source.
const (
	// EventStarted is posted by Open: a process joined the bus.
	EventStarted = "started"
	// EventStopping is posted by Close: a process is leaving the bus.
	EventStopping = "stopping"
)

// Defaults for the zero Options fields.
const (
	DefaultTimeout      = 2 * time.Second
	DefaultInterval     = time.Second
	DefaultWaitInterval = ring.DefaultWaitInterval
	DefaultWaitMax      = ring.DefaultWaitMax
	// DefaultSize and DefaultSlots are the ring's geometry when a bus
	// creates the region: 4 MiB of event data, 16384 events at most.
	DefaultSize  = shm.DefaultDataBytes
	DefaultSlots = shm.DefaultIndexSlots
)

// Mode says how a bus runs handlers for events from the ring.
type Mode int

const (
	// Wake runs a poller goroutine that sleeps on the region's futex and
	// handles events within microseconds of their commit, using no CPU
	// while idle. The default.
	Wake Mode = iota
	// Timer runs a poller goroutine that polls every Interval.
	Timer
	// Spin runs a poller goroutine that polls without sleeping: the lowest
	// latency, at the price of a busy core.
	Spin
	// Manual runs no goroutine: handlers run only inside Poll, Post,
	// PostUnique and PostLocal, in the caller's goroutine.
	Manual
)

func (m Mode) String() string {
	switch m {
	case Wake:
		return "wake"
	case Timer:
		return "timer"
	case Spin:
		return "spin"
	case Manual:
		return "manual"
	}
	return fmt.Sprintf("Mode(%d)", int(m))
}

// StartAt says where a bus starts reading the ring: Latest, Oldest or
// AtSeq(n).
type StartAt = ring.Start

var (
	// Latest starts after the newest event: the bus sees only events
	// posted from now on (its own "started" among them). The default.
	Latest = ring.Latest
	// Oldest starts at the oldest event still in the ring.
	Oldest = ring.Oldest
)

// AtSeq starts at sequence seq, typically a Cursor saved before a restart:
// the bus neither repeats nor misses an event still in the ring, and counts
// in Stats.Lost those that have left it.
func AtSeq(seq uint64) StartAt { return ring.AtSeq(seq) }

// Options configure Open. The zero value of every field but Path takes its
// default.
type Options struct {
	// Path is the region file, created if absent. Keep it on tmpfs
	// (/dev/shm): a ring is not meant to outlive a reboot, and unique keys
	// kept across one would stay live for up to the previous uptime.
	Path string
	// Size is the ring's data bytes when the file is created: a power of two
	// (default 4 MiB). The largest event is a quarter of it.
	Size int
	// Slots is the number of index entries when the file is created: the
	// most events the ring holds at once; a power of two (default 16384).
	Slots int
	// UniqueSlots is the unique table's size when the file is created
	// (default 1024): how many distinct unique keys can be live at once.
	UniqueSlots int
	// Perm is a new file's mode (default 0600).
	Perm os.FileMode
	// Timeout is how long after a unique key's winning event was posted
	// later events with the key are ignored (default 2s): an event posted
	// within it is a follow-up wherever and whenever it is polled. The
	// Timeout of the process that posts the winner is the one that counts,
	// so processes sharing a ring should agree on it (shmctl post takes
	// --timeout).
	Timeout time.Duration
	// Interval is the Timer mode's poll period (default 1s).
	Interval time.Duration
	// WaitInterval is how often an entry that is claimed but not yet
	// written is retried (default 10ms).
	WaitInterval time.Duration
	// WaitMax is how long such an entry is waited for before it is skipped
	// for every process and counted in Stats.Abandoned (default 500ms).
	WaitMax time.Duration
	// Mode is how handlers are run (default Wake).
	Mode Mode
	// StartAt is where the bus starts reading (default Latest).
	StartAt StartAt
	// Logger receives handler panics and skipped records (default
	// slog.Default()).
	Logger *slog.Logger
	// MustExist makes Open fail (with an error wrapping fs.ErrNotExist)
	// instead of creating a missing file.
	MustExist bool
	// Observe makes a bus that only watches, for tools: it posts no
	// "started" or "stopping", takes no reader-registry slot, and never
	// competes for unique events: its handlers see every event, unique
	// ones included (Event.Unique says so), whoever runs them.
	Observe bool
	// Setup, if set, is called by Open before the bus posts "started" and
	// starts its poller: register handlers there to be sure they see every
	// event from the first, this process's own "started" included. (In the
	// poller modes, a handler registered after Open returns misses what
	// the poller handled before it.)
	Setup func(*Bus)
}

func (o *Options) setDefaults() error {
	if o.Path == "" {
		return fmt.Errorf("%w: Path is empty", ErrOptions)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Timeout", &o.Timeout, DefaultTimeout},
		{"Interval", &o.Interval, DefaultInterval},
		{"WaitInterval", &o.WaitInterval, DefaultWaitInterval},
		{"WaitMax", &o.WaitMax, DefaultWaitMax},
	} {
		if *d.v < 0 {
			return fmt.Errorf("%w: %s is negative (%v)", ErrOptions, d.name, *d.v)
		}
		if *d.v == 0 {
			*d.v = d.def
		}
	}
	if o.Size < 0 || o.Slots < 0 || o.UniqueSlots < 0 || o.UniqueSlots > shm.MaxUniqueSlots {
		return fmt.Errorf("%w: negative or too large Size, Slots or UniqueSlots", ErrOptions)
	}
	if o.Mode < Wake || o.Mode > Manual {
		return fmt.Errorf("%w: unknown mode %v", ErrOptions, o.Mode)
	}
	if o.Logger == nil {
		o.Logger = slog.Default()
	}
	return nil
}

// Result is the outcome of a poll.
type Result int

const (
	// Done: every pending event, up to and including the one just posted,
	// has been handled.
	Done Result = iota + 1
	// Recursive: a poll was already running on this bus (the caller is a
	// handler, or runs beside one); the event is posted and that poll will
	// handle it.
	Recursive
)

func (r Result) String() string {
	switch r {
	case Done:
		return "done"
	case Recursive:
		return "recursive"
	}
	return fmt.Sprintf("Result(%d)", int(r))
}

// Event is one event as handlers see it.
//
// The *Event and its Data are the bus's, valid only until the handler
// returns, and shared by every handler of the event: read them, do not
// modify them, and Clone the event to keep it.
type Event struct {
	Source, Name string
	Data         []byte
	Unique       string    // the unique key, or ""
	FollowUp     bool      // a unique event posted within Timeout of its key's winner: no process runs it (observers see it)
	PID          int       // the posting process
	Seq          uint64    // the ring's sequence number; 0 for a local event
	Posted       time.Time // when the poster posted it (its wall clock)
	Local        bool      // posted with PostLocal, by this process
}

// Clone returns a copy of e that the caller owns.
func (e *Event) Clone() *Event {
	c := *e
	c.Data = append([]byte(nil), e.Data...)
	return &c
}

// Stats are a bus's counters. Every global event the bus moved past is in
// exactly one of Received, Lost and Abandoned (Corrupt and Malformed are part
// of Lost's and Received's detail, as documented on each).
type Stats struct {
	Posted        uint64 // events this bus published to the ring
	Received      uint64 // global events read from the ring (Malformed included)
	Handled       uint64 // handler calls that returned (Subscribe deliveries included); counted in steps of up to 64 while a poll runs, in full when it ends
	Lost          uint64 // events this bus never saw: lapped, overwritten, or corrupt
	Abandoned     uint64 // entries skipped because their poster never finished writing them
	Dropped       uint64 // events a Subscribe channel had no room for
	HandlerPanics uint64 // handler calls that panicked (recovered and logged)
	Lag           uint64 // events posted that this bus has still to handle
	// Beyond the model:
	Local         uint64 // events posted with PostLocal
	Corrupt       uint64 // of Lost: entries that failed the ring's checks
	Malformed     uint64 // of Received: records that were not valid events (skipped)
	UniqueRun     uint64 // unique events this process won and ran
	UniqueIgnored uint64 // unique events another process ran, or follow-ups within Timeout
	UniqueFull    uint64 // unique posts this bus could not make: the unique table was full, or its lock held too long
	UniqueStale   uint64 // unique winners skipped because the ring moved a whole index past them before this bus reached them: whether another process ran them is unknown
}

// Bus is one process's handle on the shared event ring. Its methods may be
// called from any goroutine.
type Bus struct {
	opts   Options
	ring   *ring.Ring
	uniq   *uniqueTable
	pid    int
	cursor atomic.Uint64 // rd.Cursor() after the last record handled

	// life is read-held by the calls that touch the region other than
	// publish (which pub counts instead, for less than a read lock costs)
	// and write-held by Close, so Close never unmaps under a running call.
	life       sync.RWMutex
	pub        publishers
	pollWhere  string      // names a fault a poll meets; built once, not per poll
	closing    atomic.Bool // Close has begun
	closed     atomic.Bool // Close has posted "stopping": new calls fail
	deferClose atomic.Bool // Close left its teardown to the running poll

	// pollMu is held by whoever reads the ring; dispatching is true while
	// that holder handles events, from before its first handler call until
	// it has found the ring empty (see drain and Poll).
	pollMu      sync.Mutex
	dispatching atomic.Bool
	rd          *ring.Reader
	names       interner
	// handledPending counts handler calls not yet added to stats.handled,
	// which is added to every handledFlush calls and when a drain ends:
	// one atomic add per event would cost more than the call.
	handledPending uint64
	ev             Event
	wire           wireEvent        // the record being handled, decoded; under pollMu
	lossSeen       ring.ReaderStats // the reader's loss counters last mirrored
	local          localQueue

	regMu    sync.Mutex
	handlers atomic.Pointer[[]*Registration] // copy on write under regMu
	subs     map[*subscription]struct{}      // under regMu

	ctx      context.Context // cancelled by Close
	cancel   context.CancelFunc
	poller   sync.WaitGroup
	done     chan struct{} // closed by stop
	stopOnce sync.Once
	stopErr  error // why the bus stopped, if not by Close; set before done closes

	stats struct {
		received, handled, dropped, panics, local                    atomic.Uint64
		malformed, uniqueRun, uniqueIgnored, uniqueFull, uniqueStale atomic.Uint64
		lost, abandoned, corrupt                                     atomic.Uint64 // mirrors of the reader's
	}
}

// Open opens the bus on the region at opts.Path, creating the file if it does
// not exist, posts a "started" event under Source and, unless opts.Mode is
// Manual, starts the poller goroutine. A file that is not a ring gives an
// error wrapping ErrNotRing (or another of shm's open errors) and naming the
// path.
func Open(opts Options) (*Bus, error) {
	if err := opts.setDefaults(); err != nil {
		return nil, fmt.Errorf("events: open %s: %w", opts.Path, err)
	}
	shmOpts := shm.Options{
		Geometry: shm.Geometry{
			IndexSlots:  uint32(opts.Slots),
			DataBytes:   uint64(opts.Size),
			UniqueSlots: uint32(opts.UniqueSlots),
		},
		Perm: opts.Perm,
	}
	var r *ring.Ring
	var err error
	if opts.MustExist {
		var region *shm.Region
		if region, err = shm.Open(opts.Path, shmOpts); err == nil {
			r = ring.New(region)
		}
	} else {
		r, err = ring.Open(opts.Path, shmOpts)
	}
	if err != nil {
		return nil, fmt.Errorf("events: open: %w", err)
	}
	uniq, err := newUniqueTable(r.Region(), opts.WaitMax)
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("events: open %s: %w", opts.Path, err)
	}
	rd, err := r.NewReader(ring.ReaderOptions{
		Start:        opts.StartAt,
		WaitInterval: opts.WaitInterval,
		WaitMax:      opts.WaitMax,
		Unregistered: opts.Observe,
	})
	if err != nil {
		r.Close()
		return nil, fmt.Errorf("events: open %s: %w", opts.Path, err)
	}
	b := &Bus{opts: opts, ring: r, uniq: uniq, pid: os.Getpid(), rd: rd, subs: map[*subscription]struct{}{},
		pollWhere: "events: poll " + opts.Path}
	b.cursor.Store(rd.Cursor())
	b.handlers.Store(new([]*Registration))
	b.ctx, b.cancel = context.WithCancel(context.Background())
	b.done = make(chan struct{})
	if opts.Setup != nil {
		opts.Setup(b)
	}
	if opts.Observe {
		// Nothing to announce.
	} else if _, err := b.publish(Source, EventStarted, "", nil); err != nil {
		// Setup may have subscribed or started goroutines: close properly.
		b.closing.Store(true)
		b.closed.Store(true)
		b.cancel()
		b.teardown(true) // no poller yet
		return nil, fmt.Errorf("events: open %s: post %q: %w", opts.Path, EventStarted, err)
	}
	if opts.Mode != Manual {
		b.poller.Add(1)
		go b.run()
	}
	return b, nil
}

// Close posts a "stopping" event under Source, stops the poller, waits for
// calls in flight and releases the region. Events still pending are not
// handled. Close is idempotent; afterwards every method returns ErrClosed
// (Register and Subscribe return inert values).
//
// Close may be called from a handler. Then, and whenever it is called while
// handlers run, it returns at once and the running poll releases the region
// as soon as its current handler returns. A second Close returns at once,
// even while the first is still releasing.
func (b *Bus) Close() error {
	if !b.closing.CompareAndSwap(false, true) {
		return nil
	}
	// Best effort: a full or damaged ring must not keep a process from
	// closing.
	var postErr error
	if !b.opts.Observe {
		_, postErr = b.publish(Source, EventStopping, "", nil)
	}
	if postErr != nil {
		postErr = fmt.Errorf("events: close %s: post %q: %w", b.opts.Path, EventStopping, postErr)
	}
	b.closed.Store(true) // new calls fail from here on
	b.cancel()           // wakes the poller and any Wait in a poll
	if !b.pollMu.TryLock() {
		if b.dispatching.Load() {
			// Handlers are running; our caller may be one of them, so
			// waiting could deadlock. Leave the rest to the poll: it
			// checks deferClose after it unlocks.
			b.deferClose.Store(true)
			if !b.pollMu.TryLock() {
				return postErr // still held: its holder will see deferClose
			}
			b.pollMu.Unlock()
			if !b.deferClose.CompareAndSwap(true, false) {
				return postErr // the holder took it over meanwhile
			}
		}
	} else {
		b.pollMu.Unlock()
	}
	return errors.Join(postErr, b.teardown(false))
}

// afterPoll runs after a poll has released pollMu: it finishes a Close that
// was called while that poll ran handlers.
func (b *Bus) afterPoll(onPoller bool) {
	if b.deferClose.Load() && b.deferClose.CompareAndSwap(true, false) {
		if err := b.teardown(onPoller); err != nil {
			b.opts.Logger.Error("events: close failed", "path", b.opts.Path, "err", err)
		}
	}
}

// teardown releases everything once closed is set. onPoller says it runs
// on the poller goroutine, which then must not wait for itself.
func (b *Bus) teardown(onPoller bool) error {
	if !onPoller {
		b.poller.Wait()
	}
	// pollMu before life: a poll's handlers may call Stats or Unique (life.RLock) while the
	// poll holds pollMu, and nobody holds life while waiting for pollMu.
	b.pollMu.Lock()
	defer b.pollMu.Unlock()
	b.life.Lock() // waits for the calls in flight that hold it; later ones see closed
	defer b.life.Unlock()
	b.waitPublishers()
	b.regMu.Lock()
	for s := range b.subs {
		if s.stop != nil {
			s.stop()
		}
		s.close()
	}
	b.subs = nil
	for _, r := range *b.handlers.Load() {
		if r.stop != nil {
			r.stop() // releases RegisterContext's hold on its context
			r.stop = nil
		}
	}
	b.regMu.Unlock()
	err := b.rd.Close()
	if cerr := b.ring.Close(); err == nil {
		err = cerr
	}
	b.stop(nil)
	if err != nil {
		return fmt.Errorf("events: close %s: %w", b.opts.Path, err)
	}
	return nil
}

// Path returns the region file's path.
func (b *Bus) Path() string { return b.opts.Path }

// Options returns the options the bus runs with, defaults filled in.
func (b *Bus) Options() Options { return b.opts }

// MaxData returns the most data bytes an event with this source, name and
// unique key can carry.
func (b *Bus) MaxData(source, name, unique string) int {
	return max(0, b.ring.MaxRecord()-encodedSize(source, name, unique, nil))
}

func checkNames(source, name string) error {
	switch {
	case source == "":
		return ErrNoSource
	case name == "":
		return ErrNoName
	case len(source) > MaxNameLen || len(name) > MaxNameLen:
		return fmt.Errorf("%w: source or name longer than %d bytes", ErrTooBig, MaxNameLen)
	}
	return nil
}

// Publish appends an event to the ring and returns its sequence number,
// without polling: for hot producers and tools. Handlers in this process
// see it when the bus next polls.
func (b *Bus) Publish(source, name string, data []byte) (seq uint64, err error) {
	return b.publish(source, name, "", data)
}

func (b *Bus) publish(source, name, unique string, data []byte) (_ uint64, err error) {
	if err := checkNames(source, name); err != nil {
		return 0, err
	}
	if len(unique) > MaxNameLen {
		return 0, fmt.Errorf("%w: unique key longer than %d bytes", ErrTooBig, MaxNameLen)
	}
	// Full barrier, before the closed check: pairs with Close's store of
	// closed and its wait for publishers (waitPublishers).
	b.pub.started.Add(1)
	defer b.pubDone(&err)
	if b.closed.Load() {
		return 0, ErrClosed
	}
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err) // named by pubDone
	if unique != "" {
		return b.appendUnique(source, name, unique, data)
	}
	if n := encodedSize(source, name, "", data); n <= smallEvent {
		// The common case without a call: encoded on the stack. It is
		// appendEvent's first branch again, which a call to appendEvent
		// would make 2.6 ns slower per post (measured side by side).
		var buf [smallEvent]byte
		encode(buf[:n], source, name, "", data, b.pid, clock.WallNano(), false)
		seq, err := b.ring.Append(buf[:n])
		if err != nil {
			return 0, b.postError(source, name, "", data, err)
		}
		return seq, nil
	}
	return b.appendEvent(source, name, "", data, clock.WallNano(), false)
}

// appendEvent encodes an event posted at posted and appends it to the ring.
func (b *Bus) appendEvent(source, name, unique string, data []byte, posted int64, followUp bool) (seq uint64, err error) {
	n := encodedSize(source, name, unique, data)
	if n <= smallEvent {
		// Encoded on the stack: no pooled buffer and no callback.
		var buf [smallEvent]byte
		encode(buf[:n], source, name, unique, data, b.pid, posted, followUp)
		seq, err = b.ring.Append(buf[:n])
	} else {
		seq, err = b.ring.AppendFunc(n, func(dst []byte) {
			encode(dst, source, name, unique, data, b.pid, posted, followUp)
		})
	}
	if err != nil {
		return 0, b.postError(source, name, unique, data, err)
	}
	return seq, nil
}

// postError wraps an error of the ring's append with what was posted where.
func (b *Bus) postError(source, name, unique string, data []byte, err error) error {
	if errors.Is(err, ring.ErrTooBig) {
		return fmt.Errorf("events: post %s/%s to %s: %d data bytes, at most %d fit: %w",
			source, name, b.opts.Path, len(data), b.MaxData(source, name, unique), ErrTooBig)
	}
	return fmt.Errorf("events: post %s/%s to %s: %w", source, name, b.opts.Path, err)
}

// appendUnique posts a unique event: whether it is its key's winner or a
// follow-up is decided here, once, under the table's lock, which is held
// until the event is in the ring. The caller recovers from faults.
func (b *Bus) appendUnique(source, name, unique string, data []byte) (uint64, error) {
	uq, err := b.uniq.begin(keyHash(unique), b.opts.Timeout)
	if err != nil {
		b.stats.uniqueFull.Add(1)
		if errors.Is(err, ErrUniqueTableFull) {
			return 0, fmt.Errorf("events: post unique %q: %d entries in %s: %w", unique, len(b.uniq.entries)-1, b.opts.Path, err)
		}
		return 0, fmt.Errorf("events: post unique %q to %s: %w", unique, b.opts.Path, err)
	}
	defer uq.end() // apart from the undo: a fault in the undo must not keep the lock
	appended := false
	defer func() {
		if !appended {
			uq.undo() // not posted (an error, or a fault): the key is as it was
		}
	}()
	seq, err := b.appendEvent(source, name, unique, data, clock.WallNano(), uq.followUp)
	if err != nil {
		return 0, err
	}
	appended = true
	uq.done(seq)
	return seq, nil
}

// publishers counts the calls of publish as they start, and as they end,
// by outcome: a call that has ended touches the region no more. Close
// waits until the ended ones are all that started (waitPublishers). The
// two atomic adds a call makes are what a read lock would cost, and the
// second is its count in Stats.Posted too.
type publishers struct {
	started   atomic.Uint64
	_         [56]byte
	succeeded atomic.Uint64 // Stats.Posted
	failed    atomic.Uint64
}

// pubDone ends a publish call. The add is a release: the call is done
// with the region before waitPublishers can count it.
func (b *Bus) pubDone(err *error) {
	if *err != nil {
		b.pub.failed.Add(1)
		if errors.Is(*err, ring.ErrFault) {
			// From RecoverFault, the one source of ErrFault in publish:
			// named here, off the path of a post that succeeds.
			*err = fmt.Errorf("events: post to %s: %w", b.opts.Path, *err)
		}
	} else {
		b.pub.succeeded.Add(1)
	}
}

// waitPublishers waits until no publish call is touching the region. It
// runs after closed is set: a call that starts later sees closed and
// touches nothing.
func (b *Bus) waitPublishers() {
	for spins := 0; ; spins++ {
		// The ended first: they only grow and never pass started, so if
		// they equal started loaded last, no call was under way then.
		ended := b.pub.succeeded.Load() + b.pub.failed.Load()
		if ended == b.pub.started.Load() {
			return
		}
		if spins < 64 {
			runtime.Gosched()
		} else {
			time.Sleep(10 * time.Microsecond)
		}
	}
}

// smallEvent is the largest encoded event publish builds on its stack. The
// ring checksums a record from memory no other producer can write, so an
// event is encoded once before it is copied into the ring either way.
const smallEvent = 256

// Post publishes an event to every process on the ring, this one included,
// then polls, so that when it returns Done this process has handled every
// event up to and including its own. It returns Recursive when a poll was
// already running on the bus (a handler posted, or the poller goroutine was
// busy): the event is posted and that poll handles it (in Spin mode, when
// an entry before it is still being written, the poller's next poll).
func (b *Bus) Post(source, name string, data []byte) (Result, error) {
	if _, err := b.publish(source, name, "", data); err != nil {
		return 0, err
	}
	return b.Poll()
}

// PostUnique posts an event that exactly one process runs handlers for: the
// first to poll it among those with a matching handler. The first event of
// a key is its winner, whether or not any process has a handler for it;
// every later event with the key posted within Timeout of the winner is a
// follow-up, marked so as it is posted, and ignored by every process,
// however late it polls. It returns ErrUniqueTableFull, without posting,
// if the region's unique table has no room for a new key, and
// ErrUniqueLockHeld if a live process held the table's lock too long.
func (b *Bus) PostUnique(source, name string, data []byte, unique string) (Result, error) {
	if _, err := b.PublishUnique(source, name, data, unique); err != nil {
		return 0, err
	}
	return b.Poll()
}

// PublishUnique appends a unique event without polling, as Publish does,
// deciding as PostUnique does whether it is its key's winner.
func (b *Bus) PublishUnique(source, name string, data []byte, unique string) (uint64, error) {
	if unique == "" {
		return 0, ErrNoUnique
	}
	return b.publish(source, name, unique, data)
}

// PostLocal runs an event through this process's handlers only; it never
// touches the shared region. Like Post it then polls and returns the poll's
// result. The bus keeps its own copy of data.
func (b *Bus) PostLocal(source, name string, data []byte) (Result, error) {
	if err := checkNames(source, name); err != nil {
		return 0, err
	}
	if b.closed.Load() {
		return 0, ErrClosed
	}
	e := &Event{
		Source: source, Name: name, Data: append([]byte(nil), data...),
		PID: b.pid, Posted: time.Now(), Local: true,
	}
	b.local.push(e)
	b.stats.local.Add(1)
	return b.Poll()
}

// Poll handles every pending event: the ring's, then local ones, until both
// are empty, and returns Done. An entry that is claimed but not yet written
// is retried every WaitInterval and skipped after WaitMax, so Poll may block
// that long behind a poster that died mid-write.
//
// A Poll that finds another running on the bus returns Recursive at once if
// that one is handling events (the caller may be one of its handlers; the
// running poll reads on until it finds the ring empty after the caller's
// check, so it handles what the caller posted; the Spin poller stops at an
// entry still being written, and its next poll, a spin later, handles what
// is behind it). Otherwise it waits for it and then polls itself.
func (b *Bus) Poll() (Result, error) { return b.poll(false) }

func (b *Bus) poll(onPoller bool) (Result, error) {
	if b.closed.Load() {
		return 0, ErrClosed
	}
	// The poller is never a handler, so it may always wait.
	if onPoller {
		b.pollMu.Lock()
	} else if !b.pollMu.TryLock() {
		// dispatching is true during every handler call (and between
		// the events of one drain), so a handler of this bus never sees
		// false here: waiting is safe only then.
		if b.dispatching.Load() {
			return Recursive, nil
		}
		b.pollMu.Lock()
	}
	err := ErrClosed
	if !b.closed.Load() {
		err = b.drain(onPoller && b.opts.Mode == Spin)
	}
	b.pollMu.Unlock()
	b.afterPoll(onPoller)
	if err != nil {
		return 0, err
	}
	return Done, nil
}

// drain reads until the ring and the local queue are empty. It runs under
// pollMu.
//
// spinning says the Spin poller drains: once it has handled an event, an
// entry that is not yet committed ends the drain without a look at the
// claim counter to tell an empty ring from a pending entry. Loading that
// counter takes its line from the producers, and the next one to post
// would wait to take it back, on the way to the reader. The poller's spin
// looks at the counter in its own time (spinNext).
func (b *Bus) drain(spinning bool) (err error) {
	// A file truncated under the mapping faults on access: an error for
	// this bus, not a crash of the process.
	defer ring.RecoverFaultIn(debug.SetPanicOnFault(true), &err, b.pollWhere)
	defer b.mirrorReaderStats()
	// The loop is a function of its own so that the compiler open-codes
	// these defers, which it does not for three defers and the loop's many
	// returns: the runtime's deferred calls cost each Post ~23 ns.
	return b.drainEvents(spinning)
}

// drainEvents is drain's loop.
func (b *Bus) drainEvents(spinning bool) error {
	// dispatching is set before the first handler runs and cleared only
	// once the ring is found empty, then the ring is read once more: a
	// Poll that saw it set (and returned Recursive) had posted before it
	// was cleared, so that last read finds its event. One store per run of
	// events rather than two per event.
	dispatching := false
	defer func() {
		if dispatching {
			b.dispatching.Store(false)
		}
	}()
	for !b.closed.Load() { // a handler may close the bus
		if spinning && dispatching && b.rd.Buffered() == 0 && !b.rd.Ready(b.rd.Cursor()) {
			// As if empty (see above); local events are still run.
			if e := b.local.pop(); e != nil {
				b.dispatch(e)
				continue
			}
			b.dispatching.Store(false) // ordered before the looks that follow
			dispatching = false
			// Look once more, as below: a Poll that returned Recursive
			// posted before the store. An event behind an entry still
			// pending is the spin's, which polls again.
			if b.rd.Ready(b.rd.Cursor()) || b.local.n.Load() != 0 {
				continue
			}
			return nil
		}
		rec, err := b.rd.Read()
		switch {
		case err == nil:
			// Cursor and counters move before the handlers run, so that a
			// handler that saves Cursor() resumes after its own event and
			// Stats account for everything up to it.
			b.cursor.Store(b.rd.Cursor())
			b.mirrorLoss()
			if !dispatching {
				b.dispatching.Store(true) // before any handler runs: see Poll
				dispatching = true
			}
			b.handleRecord(rec)
			continue
		case errors.Is(err, ring.ErrEmpty):
			if b.syncCursor() { // it moved past skipped entries
				b.mirrorLoss()
			}
			if e := b.local.pop(); e != nil {
				if !dispatching {
					b.dispatching.Store(true)
					dispatching = true
				}
				b.dispatch(e)
				continue
			}
			if dispatching {
				b.dispatching.Store(false) // ordered before the read that follows
				dispatching = false
				continue
			}
			return nil
		case errors.Is(err, ring.ErrPending):
			// Sleep until the entry commits or WaitInterval passes; Read
			// abandons it once WaitMax has passed.
			if werr := b.rd.Wait(b.ctx, b.opts.WaitInterval); werr != nil && !errors.Is(werr, os.ErrDeadlineExceeded) {
				if b.ctx.Err() != nil {
					return ErrClosed
				}
				return fmt.Errorf("events: poll %s: %w", b.opts.Path, werr)
			}
		default:
			return fmt.Errorf("events: poll %s: %w", b.opts.Path, err)
		}
	}
	return ErrClosed
}

// mirrorReaderStats publishes the reader's registry slot and copies its
// counters to where Stats can read them.
func (b *Bus) mirrorReaderStats() {
	b.rd.Sync()
	// A read that ended on a pending entry may have moved past skipped
	// ones: the cursor moves with the counters that account for them.
	b.syncCursor()
	b.mirrorLoss()
	b.flushHandled()
}

// syncCursor publishes the reader's cursor if it moved since the last
// store (a store is an atomic exchange, not free), and reports whether it
// did. It runs under pollMu.
func (b *Bus) syncCursor() bool {
	c := b.rd.Cursor()
	if c == b.cursor.Load() {
		return false
	}
	b.cursor.Store(c)
	return true
}

// mirrorLoss copies the reader's loss counters, which only the pollMu
// holder may read, to where Stats can, when they have changed (rarely: the
// stores are not free).
func (b *Bus) mirrorLoss() {
	st := b.rd.Stats()
	if st.Lost == b.lossSeen.Lost && st.Corrupt == b.lossSeen.Corrupt && st.Abandoned == b.lossSeen.Abandoned {
		return
	}
	b.lossSeen = st
	b.stats.lost.Store(st.Lost + st.Corrupt)
	b.stats.corrupt.Store(st.Corrupt)
	b.stats.abandoned.Store(st.Abandoned)
}

func (b *Bus) handleRecord(rec ring.Record) {
	b.stats.received.Add(1)
	w := &b.wire
	if err := decodeInto(w, rec.Data); err != nil {
		b.stats.malformed.Add(1)
		b.opts.Logger.Warn("events: skipped a record that is not an event", "path", b.opts.Path, "seq", rec.Seq, "err", err)
		return
	}
	// Field by field: an Event literal is built on the stack and copied
	// with 16-byte loads, which wait for the narrower stores that built it.
	e := &b.ev
	e.Source = b.names.get(w.source)
	e.Name = b.names.get(w.name)
	e.Data = w.data
	e.Unique, e.FollowUp = "", false
	e.PID = int(w.pid)
	e.Seq = rec.Seq
	e.Posted = time.Unix(0, w.posted)
	e.Local = false
	if len(w.unique) > 0 {
		e.Unique = string(w.unique)
		e.FollowUp = w.followUp
		if !b.opts.Observe && !b.claimUnique(e) {
			return
		}
	}
	b.dispatch(e)
}

// claimUnique decides whether this process runs the unique event e. A
// process with no handler for e does not compete for it.
func (b *Bus) claimUnique(e *Event) bool {
	if !b.anyMatch(e) {
		return false // no part in it, not even counted
	}
	if e.FollowUp {
		b.stats.uniqueIgnored.Add(1)
		return false
	}
	switch b.uniq.claim(e.Seq) {
	case claimWon:
		b.stats.uniqueRun.Add(1)
		return true
	case claimStale:
		// The claim word already holds a winner a whole index later: this
		// process reached e (read while it was in the ring) only after the
		// ring had moved that far, and whether another process ran it
		// cannot be known. Run nowhere rather than possibly twice.
		b.stats.uniqueStale.Add(1)
		b.opts.Logger.Warn("events: skipped a unique event whose claim word a later event had taken", "path", b.opts.Path, "seq", e.Seq, "unique", e.Unique)
		return false
	default:
		b.stats.uniqueIgnored.Add(1)
		return false
	}
}

func (b *Bus) anyMatch(e *Event) bool {
	for _, r := range *b.handlers.Load() {
		if r.active.Load() && r.matches(e) {
			return true
		}
	}
	return false
}

// dispatch runs e through the handlers registered now. It runs inside
// drain, which has set dispatching.
func (b *Bus) dispatch(e *Event) {
	for _, r := range *b.handlers.Load() {
		// active is checked per call, so Unregister takes effect for the
		// next handler call even within this event.
		if r.active.Load() && r.matches(e) {
			b.call(r, e)
		}
	}
}

func (b *Bus) call(r *Registration, e *Event) {
	defer func() {
		if p := recover(); p != nil {
			b.stats.panics.Add(1)
			buf := make([]byte, 4<<10)
			buf = buf[:runtime.Stack(buf, false)]
			b.opts.Logger.Error("events: handler panicked", "path", b.opts.Path,
				"source", e.Source, "name", e.Name, "seq", e.Seq, "panic", fmt.Sprint(p), "stack", string(buf))
		}
	}()
	r.fn(e)
	if !r.sub {
		b.countHandled()
	}
}

// handledFlush bounds how far Stats.Handled lags behind the handler calls
// of a drain that goes on.
const handledFlush = 64

// countHandled counts a handler call that returned. It runs under pollMu.
func (b *Bus) countHandled() {
	if b.handledPending++; b.handledPending == handledFlush {
		b.flushHandled()
	}
}

// flushHandled adds the pending handler calls to the count Stats reads.
func (b *Bus) flushHandled() {
	if b.handledPending != 0 {
		b.stats.handled.Add(b.handledPending)
		b.handledPending = 0
	}
}

// run is the poller goroutine of the Wake, Timer and Spin modes.
func (b *Bus) run() {
	defer b.poller.Done()
	var tick *time.Ticker
	if b.opts.Mode == Timer {
		tick = time.NewTicker(b.opts.Interval)
		defer tick.Stop()
	}
	for b.ctx.Err() == nil {
		if _, err := b.poll(true); err != nil {
			if b.ctx.Err() != nil || errors.Is(err, ErrClosed) {
				return
			}
			b.opts.Logger.Error("events: poll failed", "path", b.opts.Path, "err", err)
			if errors.Is(err, ring.ErrFault) {
				b.stop(err) // the mapping is gone; every later poll would fail too
				return
			}
		}
		switch b.opts.Mode {
		case Wake:
			if err := b.waitNext(); errors.Is(err, ring.ErrFault) {
				b.opts.Logger.Error("events: wait failed", "path", b.opts.Path, "err", err)
				b.stop(err)
				return
			} else if err != nil && b.ctx.Err() == nil {
				b.opts.Logger.Error("events: wait failed", "path", b.opts.Path, "err", err)
				select {
				case <-b.ctx.Done():
				case <-time.After(b.opts.WaitInterval): // do not spin on a failing wait
				}
			}
		case Timer:
			select {
			case <-b.ctx.Done():
			case <-tick.C:
			}
		case Spin:
			if err := b.spinNext(); err != nil {
				b.opts.Logger.Error("events: wait failed", "path", b.opts.Path, "err", err)
				b.stop(err)
				return
			}
		}
	}
}

// spinNext watches the index word of the next event, with loads that
// take no lock (Reader.Ready), until it is ready or the bus closes: it
// turns ready with the event's commit, and the line it brings in is the
// one the poll needs first. Once per
// spinClaimCheck period it looks at the claim counter too, so that an entry
// claimed and never committed is polled, which starts its WaitMax. Not more
// often: the counter's line is one each producer writes, and a reader that
// holds it makes the next producer wait to take it back. A file truncated
// under the mapping gives ErrFault.
func (b *Bus) spinNext() (err error) {
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err)
	var last time.Time
	for i := 1; !b.rd.Ready(b.cursor.Load()); i++ {
		if i%1024 == 0 {
			if b.ctx.Err() != nil {
				return nil
			}
			if now := time.Now(); last.IsZero() {
				last = now
			} else if now.Sub(last) >= b.spinClaimCheck() {
				last = now
				if b.cursor.Load() < b.ring.Next() {
					return nil
				}
			}
			runtime.Gosched()
		}
	}
	return nil
}

// spinClaimCheck is how often spinNext looks at the claim counter:
// WaitInterval, the period at which an incomplete entry is retried, or a
// tenth of WaitMax if that is shorter, so that an entry whose producer died
// is skipped no more than a tenth later than WaitMax says.
func (b *Bus) spinClaimCheck() time.Duration {
	return min(b.opts.WaitInterval, b.opts.WaitMax/10)
}

// waitNext sleeps until the ring holds an event past the cursor.
func (b *Bus) waitNext() (err error) {
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err)
	return b.rd.WaitNext(b.ctx, b.cursor.Load(), 0)
}

// stop marks the bus as stopped, by Close (err nil) or by a failure.
func (b *Bus) stop(err error) {
	b.stopOnce.Do(func() {
		b.stopErr = err
		close(b.done)
	})
}

// Done returns a channel that is closed when the bus stops handling
// events: when Close has released it, or when its poller met an error it
// cannot recover from (the region's file was truncated); Err says which.
func (b *Bus) Done() <-chan struct{} { return b.done }

// Err returns, once Done is closed, the error that stopped the bus, or nil
// if Close did.
func (b *Bus) Err() error {
	select {
	case <-b.done:
		return b.stopErr
	default:
		return nil
	}
}

// Cursor returns the sequence number of the next ring event this bus will
// read. A bus opened later with StartAt AtSeq(Cursor()) neither re-runs nor
// misses an event still in the ring.
func (b *Bus) Cursor() uint64 { return b.cursor.Load() }

// Stats returns the bus's counters.
func (b *Bus) Stats() Stats {
	s := Stats{
		Posted:        b.pub.succeeded.Load(),
		Received:      b.stats.received.Load(),
		Handled:       b.stats.handled.Load(),
		Lost:          b.stats.lost.Load(),
		Abandoned:     b.stats.abandoned.Load(),
		Dropped:       b.stats.dropped.Load(),
		HandlerPanics: b.stats.panics.Load(),
		Local:         b.stats.local.Load(),
		Corrupt:       b.stats.corrupt.Load(),
		Malformed:     b.stats.malformed.Load(),
		UniqueRun:     b.stats.uniqueRun.Load(),
		UniqueIgnored: b.stats.uniqueIgnored.Load(),
		UniqueFull:    b.stats.uniqueFull.Load(),
		UniqueStale:   b.stats.uniqueStale.Load(),
	}
	b.life.RLock()
	if !b.closed.Load() {
		if n, err := b.lag(); err == nil {
			s.Lag = n
		}
	}
	b.life.RUnlock()
	return s
}

// lag is how many events are posted that this bus has not handled yet, or
// ErrFault if the region's file was truncated under it.
func (b *Bus) lag() (_ uint64, err error) {
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err)
	if next, c := b.ring.Next(), b.cursor.Load(); next > c {
		return next - c, nil
	}
	return 0, nil
}

// Unique returns the region's unique-table counters and its live keys.
func (b *Bus) Unique() (_ UniqueStats, _ []UniqueKey, err error) {
	b.life.RLock()
	defer b.life.RUnlock()
	if b.closed.Load() {
		return UniqueStats{}, nil, ErrClosed
	}
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err) // the file was truncated under us
	st, keys := b.uniq.snapshot()
	keyTexts(b.ring, keys)
	return st, keys, nil
}

// Ring returns the ring under the bus, for tools that inspect it. Closing
// the bus closes it.
func (b *Bus) Ring() *ring.Ring { return b.ring }

// localQueue holds PostLocal events until a poll runs them.
type localQueue struct {
	// n is len(q), readable without the lock: every poll looks here once
	// it finds the ring empty, and PostLocal is rare. Its add in push and
	// its load in pop are what order a push against the poll that must
	// find it (see drain), as the ring's commit does for an event.
	n  atomic.Int64
	mu sync.Mutex
	q  []*Event
}

func (l *localQueue) push(e *Event) {
	l.mu.Lock()
	l.q = append(l.q, e)
	l.n.Add(1)
	l.mu.Unlock()
}

func (l *localQueue) pop() *Event {
	if l.n.Load() == 0 {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.q) == 0 {
		return nil
	}
	e := l.q[0]
	l.q[0] = nil
	l.q = l.q[1:]
	l.n.Add(-1)
	return e
}
