package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"runtime/debug"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/shm"
)

// Start says where a new reader begins.
type Start struct {
	kind startKind
	seq  uint64
}

type startKind int

const (
	startLatest startKind = iota
	startOldest
	startAt
)

var (
	// Latest starts after the newest record: the reader sees only what is
	// appended from now on. It is the zero Start.
	Latest = Start{kind: startLatest}
	// Oldest starts at the oldest record still in the ring.
	Oldest = Start{kind: startOldest}
)

// AtSeq starts at sequence seq, typically a Cursor saved before a restart.
// Records between seq and the oldest one still in the ring are counted as
// lost.
func AtSeq(seq uint64) Start { return Start{kind: startAt, seq: seq} }

func (s Start) String() string {
	switch s.kind {
	case startOldest:
		return "oldest"
	case startAt:
		return fmt.Sprintf("seq %d", s.seq)
	}
	return "latest"
}

// Defaults for ReaderOptions, the same as lua-resty-worker-events'.
const (
	DefaultWaitInterval = 10 * time.Millisecond
	DefaultWaitMax      = 500 * time.Millisecond
	DefaultBatch        = 256
)

// ReaderOptions configure a Reader. The zero value gives the defaults.
type ReaderOptions struct {
	// Start is where the reader begins; default Latest.
	Start Start
	// WaitInterval is how often an incomplete entry is retried; default 10ms.
	WaitInterval time.Duration
	// WaitMax is how long an incomplete entry is waited for before it is
	// abandoned (for every reader) and counted; default 500ms.
	WaitMax time.Duration
	// Unregistered keeps the reader out of the region's reader registry
	// (for short-lived observers).
	Unregistered bool
	// Batch is the most records copied out per refill; default 256.
	Batch int
}

// Record is one record as returned by Read. Data is a copy private to the
// Reader, valid until its next Read.
type Record struct {
	Seq  uint64
	Data []byte
}

// ReaderStats are one reader's counters. Every sequence number the reader
// has moved past is counted in exactly one of them.
type ReaderStats struct {
	Received  uint64 // records delivered by Read
	Lost      uint64 // records lapped or overwritten before they could be read
	Abandoned uint64 // entries skipped because their producer never committed
	Corrupt   uint64 // entries that failed their bounds or checksum checks
}

// batchRecord is a buffered record: 32 bytes, so that copying, checking and
// delivering a batch moves little memory. What was skipped just before it,
// rare, is kept apart in Reader.skipped.
type batchRecord struct {
	seq     uint64
	pos     uint64 // data-ring position, for the overwrite check
	off     int    // offset in the arena: of the header, then (verified) of the payload
	length  uint32
	badLen  bool // the header's length exceeds MaxRecord: nothing was copied
	guessed bool // pos was guessed from where the previous record ended (copyBatch)
	skipped bool // Reader.skipped at the same index holds what was skipped just before it
}

// Reader reads a Ring from one goroutine at a time. Each process may have any
// number of readers; each sees every record independently.
type Reader struct {
	ring *Ring
	opts ReaderOptions

	cursor uint64 // next sequence to examine (past the buffered batch)
	arena  []byte
	recs   []batchRecord
	// skipped[i] is what was skipped just before recs[i], where
	// recs[i].skipped says so; allocated at the first skip.
	skipped []ReaderStats
	next    int // next buffered record to deliver

	stats ReaderStats
	// skip gathers what the refill under way skipped; each skip is moved to
	// stats only when the reader's Cursor moves past it, so that Stats and
	// Cursor always describe the same point.
	skip     ReaderStats
	trailing ReaderStats // skipped after the last buffered record

	pendingSeq   uint64
	pendingSince time.Time
	pendingSet   bool

	// expect is where the record after the last one copied begins: the
	// next one's position is guessed from it (see copyBatch) without
	// loading dataTail, a cache miss whenever a producer has just claimed.
	expect     uint64
	haveExpect bool
	// nextLine is expect's offset in the data ring plus one (0: unknown),
	// for Ready, which may run on another goroutine; nextShown is the
	// value last stored, so that fill stores it only when it moved.
	nextLine  atomic.Uint64
	nextShown uint64

	slot      *readerSlot // nil when Unregistered
	slotOwner uint64      // the owner word we claimed the slot with
	slotIndex int
	// shown is what the slot holds from the last publish, so that a
	// publish stores only what moved: each store is an atomic exchange.
	shown     slotCounters
	shownOnce bool
	beatAt    int64 // clock.Stamp when the heartbeat was last stored
	fills     uint64
	closed    bool
}

// slotCounters are the fields of a registry slot that a reader publishes
// besides its heartbeat.
type slotCounters struct {
	cursor uint64
	ReaderStats
}

const arenaSoftCap = 256 << 10

// NewReader returns a reader positioned by opts.Start.
func (r *Ring) NewReader(opts ReaderOptions) (*Reader, error) {
	if r.closed.Load() {
		return nil, ErrClosed
	}
	if opts.WaitInterval <= 0 {
		opts.WaitInterval = DefaultWaitInterval
	}
	if opts.WaitMax <= 0 {
		opts.WaitMax = DefaultWaitMax
	}
	if opts.Batch <= 0 {
		opts.Batch = DefaultBatch
	}
	rd := &Reader{ring: r, opts: opts, slotIndex: -1, recs: make([]batchRecord, 0, opts.Batch)}
	tail := r.ctl.seqTail.Load()
	switch opts.Start.kind {
	case startLatest:
		rd.cursor = tail
	case startOldest:
		rd.cursor = r.Oldest()
	case startAt:
		if opts.Start.seq > tail {
			return nil, fmt.Errorf("start at %d, next sequence is %d: %w", opts.Start.seq, tail, ErrCursor)
		}
		rd.cursor = opts.Start.seq
	}
	if !opts.Unregistered {
		i, owner, err := r.claimSlot()
		if err != nil {
			return nil, err
		}
		rd.slot, rd.slotIndex, rd.slotOwner = &r.slots[i], i, owner
		rd.publish()
		r.readersMu.Lock()
		if r.readers == nil {
			r.readers = make(map[*Reader]struct{})
		}
		r.readers[rd] = struct{}{}
		r.readersMu.Unlock()
	}
	return rd, nil
}

// Cursor returns the sequence number of the next record Read will consider.
// A reader started with AtSeq(Cursor()) after a restart neither repeats nor
// skips a record still in the ring.
func (rd *Reader) Cursor() uint64 {
	if rd.next < len(rd.recs) {
		return rd.recs[rd.next].seq
	}
	return rd.cursor
}

// Buffered returns how many records Read can return without touching the
// shared region again.
func (rd *Reader) Buffered() int { return len(rd.recs) - rd.next }

// Lag returns how many sequence numbers have been claimed past the reader's
// cursor: records it has still to see (or lose). It reads the producers'
// hottest word, so call it once per batch, not per record. It is 0 once
// the ring is closed.
func (rd *Reader) Lag() uint64 {
	if rd.ring.closed.Load() {
		return 0
	}
	tail := rd.ring.ctl.seqTail.Load() // snapshot; orders nothing
	if c := rd.Cursor(); tail > c {
		return tail - c
	}
	return 0
}

func (s *ReaderStats) add(o ReaderStats) {
	s.Received += o.Received
	s.Lost += o.Lost
	s.Abandoned += o.Abandoned
	s.Corrupt += o.Corrupt
}

// Stats returns the reader's counters. They account for exactly the
// sequence numbers before Cursor().
func (rd *Reader) Stats() ReaderStats { return rd.stats }

// Slot returns the reader's registry slot, or -1 if it has none.
func (rd *Reader) Slot() int { return rd.slotIndex }

// Close releases the reader's registry slot. It is idempotent.
func (rd *Reader) Close() (err error) {
	if rd.closed {
		return nil
	}
	rd.closed = true
	if rd.slot == nil {
		return nil
	}
	r := rd.ring
	r.readersMu.Lock()
	defer r.readersMu.Unlock()
	if !r.closed.Load() {
		delete(r.readers, rd)
		slot := rd.slot
		rd.slot = nil
		// The file may have been truncated under us: then the slot is gone
		// with it, and the fault is an error, not a crash.
		defer RecoverFault(debug.SetPanicOnFault(true), &err)
		rd.publishTo(slot)
		// Full barrier: the slot's counters are final before it reads as
		// free, and a slot someone else took over is left alone.
		slot.owner.CompareAndSwap(rd.slotOwner, 0)
	}
	rd.slot = nil
	return nil
}

// Read returns the next record without blocking. It returns ErrEmpty when the
// reader has caught up and ErrPending when the next entry is claimed but not
// yet committed; a Read at least WaitMax after the first ErrPending for an
// entry abandons it and moves on. Records lost, abandoned or corrupt on the
// way are skipped and counted in Stats.
func (rd *Reader) Read() (Record, error) {
	if rd.next >= len(rd.recs) {
		if err := rd.fill(); err != nil {
			return Record{}, err
		}
	}
	b := &rd.recs[rd.next]
	rd.next++
	rd.stats.Received++
	// The cursor moves to the next buffered record (or past the batch):
	// count what is skipped on the way.
	if rd.next < len(rd.recs) {
		rd.addSkipped(rd.next)
	} else {
		rd.stats.add(rd.trailing)
		rd.trailing = ReaderStats{}
	}
	end := b.off + int(b.length)
	return Record{Seq: b.seq, Data: rd.arena[b.off:end:end]}, nil
}

// ReadContext returns the next record, blocking until one is committed or ctx
// ends. An incomplete entry is retried every WaitInterval and abandoned
// after WaitMax, so it blocks for at most WaitMax on a dead producer.
func (rd *Reader) ReadContext(ctx context.Context) (Record, error) {
	for {
		rec, err := rd.Read()
		if err != ErrEmpty && err != ErrPending {
			return rec, err
		}
		if err := rd.Wait(ctx, 0); err != nil {
			return Record{}, err
		}
	}
}

// fill refills the batch. It returns nil with at least one record buffered,
// or ErrEmpty, ErrPending, ErrClosed or ErrFault.
func (rd *Reader) fill() (err error) {
	if rd.closed || rd.ring.closed.Load() {
		return ErrClosed
	}
	// A file truncated under the mapping raises SIGBUS on access; turn
	// that into an error for this reader instead of a crash of the process.
	defer RecoverFault(debug.SetPanicOnFault(true), &err)
	rd.fills++
	if rd.slot != nil && rd.fills%64 == 0 {
		rd.publish() // before next is reset: Cursor is past the batch delivered
	}
	rd.next = 0
	defer rd.showNextLine()
	for {
		// Start each pass empty: a pass whose records were all dropped by
		// verifyBatch must not leave the arena full for the next one.
		rd.recs = rd.recs[:0]
		rd.arena = rd.arena[:0]
		stop := rd.copyBatch()
		if len(rd.recs) > 0 && rd.verifyBatch(stop == stopCaughtUp) {
			stop = stopRetry
		}
		if len(rd.recs) > 0 {
			rd.trailing, rd.skip = rd.skip, ReaderStats{}
			rd.addSkipped(0) // the cursor is at the first record
			return nil
		}
		// Nothing buffered: the cursor is past everything skipped.
		rd.stats.add(rd.skip)
		rd.skip = ReaderStats{}
		switch stop {
		case stopEmpty:
			return ErrEmpty
		case stopPending:
			return ErrPending
		}
		// Everything examined was skipped (lost, abandoned, corrupt), or a
		// guessed position was wrong: go on.
	}
}

// showNextLine publishes where the record after the last one copied is
// expected (see Ready).
func (rd *Reader) showNextLine() {
	next := uint64(0)
	if rd.haveExpect {
		next = rd.expect&rd.ring.dataMask + 1
	}
	if next != rd.nextShown {
		rd.nextShown = next
		rd.nextLine.Store(next) // for Ready's loads; orders nothing
	}
}

// batchStop says why copyBatch stopped.
type batchStop int

const (
	stopFull     batchStop = iota // the batch is full
	stopCaughtUp                  // records were copied and the next entry is not committed
	stopEmpty                     // nothing is claimed past the cursor
	stopPending                   // the entry at the cursor is claimed but not committed
	stopRetry                     // verifyBatch cut the batch short: read on from the cursor
)

// RecoverFault restores the goroutine's panic-on-fault setting and turns a
// memory fault into ErrFault. Other panics go on. Defer it, for code that
// touches the mapped region and must survive its file being truncated:
//
//	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err)
func RecoverFault(old bool, err *error) { faultError(old, recover(), err, "") }

// RecoverFaultIn is RecoverFault for a caller that names where the fault
// happened: the error reads "where: fault at ...".
func RecoverFaultIn(old bool, err *error, where string) { faultError(old, recover(), err, where) }

// faultError is RecoverFault's work on what recover returned (recover
// works only when called by the deferred function itself).
func faultError(old bool, p any, err *error, where string) {
	debug.SetPanicOnFault(old)
	if p == nil {
		return
	}
	f, ok := p.(interface{ Addr() uintptr })
	if !ok {
		panic(p)
	}
	*err = fmt.Errorf("fault at %#x: %w", f.Addr(), ErrFault)
	if where != "" {
		*err = fmt.Errorf("%s: %w", where, *err)
	}
}

// copyBatch copies committed records from the cursor into the arena, up to
// the first entry that is not ready, and says why it stopped.
//
// It reads the index words first and the claim counters only when it must:
// seqTail to tell an empty ring from a pending entry, or to measure a lap;
// dataTail when it has no earlier position to guess from. Each of those is
// a cache miss while producers are busy, and a reader woken for one record
// would otherwise take them before it could deliver it.
func (rd *Reader) copyBatch() batchStop {
	r := rd.ring
	f := &r.fmt
	c := rd.cursor
	defer func() { rd.cursor = c }()
	for len(rd.recs) < cap(rd.recs) && len(rd.arena) < arenaSoftCap {
		e := &r.index[c&r.indexMask].word
		// Acquire: pairs with the commit CAS in Ring.commit; the record's
		// bytes written before it are visible once we see committed.
		w := e.Load()
		switch {
		case f.tag(w) == f.tagOf(c, stateCommitted):
			var pos uint64
			guessed := rd.haveExpect
			switch {
			case guessed && (w-rd.expect)&f.posMask == 0:
				// The record begins where the last one ended, as it
				// does unless producers overtook each other. Taken from
				// expect, not from w, the copy's address does not wait
				// for the word's load: the CPU fetches both lines at
				// once, and the branch checks the guess.
				pos = rd.expect
			case guessed:
				pos = f.near(w, rd.expect) // checked by verifyBatch
			default:
				// Acquire, after the word: seq c is claimed, so its bytes
				// lie below this, less than 2^P bytes back (layout.go).
				pos = f.position(w, r.ctl.dataTail.Load())
			}
			rd.expect, rd.haveExpect = pos, true // a guess for the next one, if this one's length is bad
			start := pos & r.dataMask
			// Bounded before it sizes the copy; whether a bad length is
			// damage or overwritten bytes, verifyBatch decides.
			length := binary.LittleEndian.Uint32(r.data[start:])
			if length > r.maxRecord {
				b := rd.pushRecord()
				b.seq, b.pos, b.badLen, b.guessed = c, pos, true, guessed
				rd.takeSkip()
				c++
				continue
			}
			off := len(rd.arena)
			rd.arena = append(rd.arena, r.data[start:start+hdrSize+uint64(length)]...)
			rd.expect = pos + hdrSize + uint64(length)
			b := rd.pushRecord()
			b.seq, b.pos, b.off, b.length, b.guessed = c, pos, off, length, guessed
			rd.takeSkip()
			c++
		case f.tag(w) == f.tagOf(c, stateAbandoned):
			rd.skip.Abandoned++
			c++
		case w != 0 && f.later(w, c):
			// A later lap reused the entry before we got to it, so c is
			// claimed: a seqTail that says otherwise is damage, and
			// there is nothing to read here.
			if c >= r.ctl.seqTail.Load() { // acquire, after the word
				if len(rd.recs) > 0 {
					return stopCaughtUp
				}
				return stopEmpty
			}
			if rd.lapped(&c) {
				continue
			}
			rd.skip.Lost++
			c++
		default:
			// Not committed: the word is still an earlier lap's, or zero.
			if len(rd.recs) > 0 {
				return stopCaughtUp // deliver what we have first
			}
			// Acquire, after the word: pairs with the producers' fetch-add.
			if c >= r.ctl.seqTail.Load() {
				return stopEmpty
			}
			if rd.lapped(&c) {
				continue
			}
			// Claimed but not committed.
			if !rd.giveUp(c, e, w) {
				return stopPending
			}
			c++
		}
	}
	return stopFull
}

// lapped moves *c to the oldest entry the index can still hold, counting
// the sequence numbers it jumps over as lost, if producers have claimed more
// than a whole index past it. It reports whether it moved.
func (rd *Reader) lapped(c *uint64) bool {
	r := rd.ring
	// Acquire: pairs with the producers' fetch-add; every sequence below
	// tail has been claimed.
	tail, n := r.ctl.seqTail.Load(), uint64(len(r.index))
	if tail <= *c || tail-*c <= n {
		return false
	}
	// Everything older than tail-n has been overwritten.
	rd.skip.Lost += tail - n - *c
	*c = tail - n
	return true
}

// giveUp decides whether the incomplete entry for seq c has been waited for
// long enough, and if so abandons it for every reader. It reports whether
// the reader should move past c (and has counted it).
func (rd *Reader) giveUp(c uint64, e *atomic.Uint64, w uint64) bool {
	since := rd.notePending(c)
	if time.Since(since) < rd.opts.WaitMax {
		return false
	}
	f := &rd.ring.fmt
	for range 8 {
		// Full barrier: after this CAS the producer's own commit CAS (from
		// the earlier word) fails, so every reader sees abandoned for c, or
		// committed if the producer won the race.
		if e.CompareAndSwap(w, f.abandoned(c)) {
			rd.ring.ctl.abandoned.Add(1) // counter only
			rd.skip.Abandoned++
			rd.pendingSet = false
			return true
		}
		w = e.Load() // acquire: pairs with the commit CAS
		switch {
		case f.tag(w) == f.tagOf(c, stateCommitted):
			return false // committed at the last moment: read it normally
		case f.tag(w) == f.tagOf(c, stateAbandoned):
			rd.skip.Abandoned++
			rd.pendingSet = false
			return true
		case w != 0 && f.later(w, c):
			rd.skip.Lost++
			rd.pendingSet = false
			return true
		}
	}
	// The word keeps changing under us: a damaged or hostile writer.
	rd.skip.Corrupt++
	rd.pendingSet = false
	return true
}

// notePending records when the reader first found seq c incomplete.
func (rd *Reader) notePending(c uint64) time.Time {
	if !rd.pendingSet || rd.pendingSeq != c {
		rd.pendingSeq, rd.pendingSince, rd.pendingSet = c, time.Now(), true
	}
	return rd.pendingSince
}

// pushRecord appends a zero record to the batch, which has room for it
// (copyBatch's loop checks), and returns it for the caller to fill in
// place. A record built on the stack and then appended is copied with
// 16-byte loads, which wait for the narrower stores that built it: a few
// nanoseconds a record.
func (rd *Reader) pushRecord() *batchRecord {
	n := len(rd.recs)
	rd.recs = rd.recs[:n+1]
	rd.recs[n] = batchRecord{}
	return &rd.recs[n]
}

// takeSkip moves what was skipped before the record just appended to the
// batch into its place in skipped.
func (rd *Reader) takeSkip() {
	if rd.skip != (ReaderStats{}) {
		i := len(rd.recs) - 1
		rd.setSkipped(i, &rd.recs[i], rd.skip)
		rd.skip = ReaderStats{}
	}
}

// setSkipped records s as what was skipped before b, buffered at index i.
func (rd *Reader) setSkipped(i int, b *batchRecord, s ReaderStats) {
	if rd.skipped == nil {
		rd.skipped = make([]ReaderStats, cap(rd.recs))
	}
	b.skipped = true
	rd.skipped[i] = s
}

// addSkipped counts what was skipped before buffered record i: the cursor
// has moved to it.
func (rd *Reader) addSkipped(i int) {
	if rd.recs[i].skipped {
		rd.stats.add(rd.skipped[i])
	}
}

// verifyBatch drops the copied records whose bytes may have been overwritten
// while they were copied, or that fail their checks (a lone record at the
// head: that fails its checks, below). If a record's position
// was guessed wrong, it keeps only the records before it, moves the cursor
// back to it and reports true: the next pass reads it again. caughtUp says
// the batch ended at an entry not yet committed.
func (rd *Reader) verifyBatch(caughtUp bool) (cut bool) {
	r := rd.ring
	// One record, and the next not committed: the reader is at the head of
	// the committed records (most often of the ring), the case where
	// latency matters. Its checksum, which ties its bytes to its sequence
	// number, is the check, and dataTail is not loaded: that load is a
	// cache miss on the reader's path, and it costs the next producer
	// another, to take the line back for its claim. For the record to be
	// overwritten before or while it was copied, producers would have to
	// claim the whole data ring past it (the reader was descheduled, or a
	// dead producer's entry holds it at a record far behind), and the bytes
	// they wrote would then have to pass a 32-bit checksum under this
	// record's sequence number. A record that fails it is checked against
	// dataTail below, like any other: lost if overwritten, corrupt if not.
	// One that passes is delivered even where dataTail says its bytes may
	// have been overwritten (the claims past it were not all written):
	// they were not.
	if caughtUp && len(rd.recs) == 1 && rd.intact(&rd.recs[0]) {
		rd.recs[0].off += hdrSize
		return false
	}
	// Acquire, after the copies: producers claim bytes (fetch-add on
	// dataTail) before they write them, so a record whose first byte is
	// still within the last D claimed bytes was intact while we copied it.
	dataTail := r.ctl.dataTail.Load()
	kept := rd.recs[:0]
	var carry ReaderStats // skips of dropped records, for the next kept one
	for i := range rd.recs {
		b := &rd.recs[i]
		if b.skipped {
			carry.add(rd.skipped[i])
		}
		if r.fmt.position(b.pos, dataTail) != b.pos {
			if b.guessed {
				// The guess from the previous record's position was
				// wrong: the bytes copied are another record's.
				// Everything from here on is read again, with the
				// position from dataTail.
				rd.cursor, rd.haveExpect = b.seq, false
				rd.recs = kept
				rd.skip = carry // the skips after b are found again
				return true
			}
			// Recovered from dataTail, yet dataTail moved by more than
			// the position bits cover between two loads: no producer
			// of this ring does that. Skipped, not read again, so that
			// a damaged or hostile writer cannot keep the reader here.
			rd.haveExpect = false
			carry.Corrupt++
			continue
		}
		if dataTail-b.pos > r.dataSize {
			carry.Lost++
			continue
		}
		// Not overwritten by the ring's own producers, yet wrong: a producer
		// that wrote after its entry was abandoned, or damage.
		if !rd.intact(b) {
			carry.Corrupt++
			continue
		}
		b.off += hdrSize
		// kept is at most as long as the records examined: index
		// len(kept) of skipped has been read already.
		b.skipped = false
		if carry != (ReaderStats{}) {
			rd.setSkipped(len(kept), b, carry)
			carry = ReaderStats{}
		}
		if len(kept) == i {
			// Nothing dropped before b: it is in place. Copying it onto
			// itself would reload the fields just stored, and that load
			// waits for them.
			kept = kept[:i+1]
		} else {
			kept = append(kept, *b)
		}
	}
	rd.recs = kept
	// Drops after the last kept record come before anything skipped after it.
	carry.add(rd.skip)
	rd.skip = carry
	return false
}

// intact reports whether buffered record b passes its checks: a length
// within MaxRecord that was still the header's after the copy, and the
// checksum under its sequence number.
func (rd *Reader) intact(b *batchRecord) bool {
	if b.badLen {
		return false
	}
	hdr := rd.arena[b.off : b.off+hdrSize]
	payload := rd.arena[b.off+hdrSize : b.off+hdrSize+int(b.length)]
	return binary.LittleEndian.Uint32(hdr) == b.length &&
		recordSum(payload)^seqMix(b.seq) == binary.LittleEndian.Uint32(hdr[4:])
}

// Wait blocks until Read has something to return, ctx ends, or timeout
// passes (timeout <= 0: no limit). It sleeps on the ring's futex, so it wakes
// within microseconds of a commit and costs no CPU while idle. While the next
// entry is incomplete it returns after at most WaitInterval, so that the
// caller's Read retries (and in time abandons) it. It returns ctx.Err() or
// os.ErrDeadlineExceeded when it gives up.
func (rd *Reader) Wait(ctx context.Context, timeout time.Duration) error {
	if rd.next < len(rd.recs) {
		return nil
	}
	if rd.closed || rd.ring.closed.Load() {
		return ErrClosed
	}
	defer rd.ring.wakeOnDone(ctx)()
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	if rd.slot != nil {
		rd.publish()
	}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		state := rd.peek()
		if state == peekReady {
			return nil
		}
		sleep := time.Duration(0)
		if !deadline.IsZero() {
			sleep = time.Until(deadline)
			if sleep <= 0 {
				return os.ErrDeadlineExceeded
			}
		}
		if state == peekPending {
			left := rd.opts.WaitMax - time.Since(rd.notePending(rd.cursor))
			if left <= 0 {
				return nil // time to abandon it: Read does that
			}
			sleep = minPositive(sleep, min(rd.opts.WaitInterval, left))
			// A live producer commits within a microsecond or so of its
			// claim, and it woke us at the claim: sleeping now would cost
			// a second wake-up (a system call on each side) for an entry
			// that is about to be ready.
			if rd.spinPending() {
				return nil
			}
		}
		err := rd.sleep(ctx, state, sleep)
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
		if state == peekPending {
			return nil // retry the entry every WaitInterval
		}
		if err != nil && !deadline.IsZero() && time.Until(deadline) <= 0 {
			return os.ErrDeadlineExceeded
		}
	}
}

// sleep re-checks the ring and sleeps on wakeGen for at most d (d <= 0: no
// limit) unless the reader's state is no longer want or ctx has ended.
func (rd *Reader) sleep(ctx context.Context, want peekState, d time.Duration) error {
	return rd.ring.sleep(ctx, rd.slot, func() bool { return rd.peek() != want }, d)
}

// WaitNext blocks until the ring holds a record with sequence number seq or
// later (it has been claimed, not necessarily committed), ctx ends, or
// timeout passes (timeout <= 0: no limit). Unlike the reader's other
// methods it may run on another goroutine while one reads: it is for
// callers that read under their own lock and sleep without holding it. It
// returns ctx.Err() or os.ErrDeadlineExceeded when it gives up.
func (rd *Reader) WaitNext(ctx context.Context, seq uint64, timeout time.Duration) error {
	r := rd.ring
	if r.closed.Load() {
		return ErrClosed
	}
	defer r.wakeOnDone(ctx)()
	var deadline time.Time
	if timeout > 0 {
		deadline = time.Now().Add(timeout)
	}
	// The index word first: once the record is committed, the line it
	// brings in is the one the read that follows needs.
	ready := func() bool { return r.Ready(seq) || r.ctl.seqTail.Load() > seq } // acquire: pairs with the producers' fetch-add
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		if ready() {
			return nil
		}
		sleep := time.Duration(0)
		if !deadline.IsZero() {
			if sleep = time.Until(deadline); sleep <= 0 {
				return os.ErrDeadlineExceeded
			}
		}
		if err := r.sleep(ctx, rd.slot, ready, sleep); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
}

// wakeOnDone arranges for ctx's end to wake every sleeper on the ring, so
// that a sleeper of ours returns. The function it returns must be called
// before the caller returns: it waits for a wake-up under way, since the
// caller may close the ring (and unmap ctl) as soon as it returns.
func (r *Ring) wakeOnDone(ctx context.Context) func() {
	if ctx.Done() == nil {
		return func() {}
	}
	ctl := r.ctl
	woken := make(chan struct{})
	stop := context.AfterFunc(ctx, func() {
		defer close(woken)
		ctl.wakeGen.Add(1) // make a sleeper's futex word stale, then wake it
		shm.Wake(&ctl.wakeGen)
	})
	return func() {
		if !stop() {
			<-woken
		}
	}
}

// sleep sleeps on wakeGen for at most d (d <= 0: no limit) unless ready()
// or ctx has ended. It returns os.ErrDeadlineExceeded on timeout and a
// futex failure as is. slot, if not nil, shows operators that we sleep. The
// protocol is described at Ring.wake.
func (r *Ring) sleep(ctx context.Context, slot *readerSlot, ready func() bool, d time.Duration) error {
	ctl := r.ctl
	for range 8 {
		ctl.sleeping.Store(1) // full barrier: producers committing after this see it
		gen := ctl.wakeGen.Load()
		if ready() {
			return nil
		}
		if ctl.sleeping.Load() == 0 {
			continue // a producer took the flag after our store: set it again
		}
		// Checked after gen was read: a cancellation after this point bumps
		// wakeGen, so the futex wait below returns at once.
		if ctx.Err() != nil {
			return nil
		}
		if slot != nil {
			slot.waiting.Store(1) // for operators only
		}
		err := shm.Wait(&ctl.wakeGen, gen, d)
		if slot != nil {
			slot.waiting.Store(0)
		}
		return err
	}
	return nil // the ring is busy: no need to sleep
}

// pendingSpin bounds how long Wait spins on an entry that is claimed but not
// committed before it sleeps.
const pendingSpin = 20 * time.Microsecond

// spinPending re-checks a pending entry for up to pendingSpin and reports
// whether it stopped being pending.
func (rd *Reader) spinPending() bool {
	start := time.Now()
	for i := 1; ; i++ {
		if rd.peek() != peekPending {
			return true
		}
		if i%64 == 0 && time.Since(start) > pendingSpin {
			return false
		}
	}
}

type peekState int

const (
	peekEmpty peekState = iota
	peekPending
	peekReady
)

// peek classifies the entry at the cursor without changing anything.
func (rd *Reader) peek() peekState {
	r := rd.ring
	c := rd.cursor
	w := r.index[c&r.indexMask].word.Load() // acquire: pairs with the commit CAS
	if r.fmt.settled(w, c) {
		return peekReady
	}
	tail := r.ctl.seqTail.Load() // acquire, after the word: pairs with the producers' fetch-add
	if c >= tail {
		// Nothing claimed: empty, as copyBatch finds it, even where a
		// damaged file holds a later lap's word.
		return peekEmpty
	}
	if tail-c > uint64(len(r.index)) || (w != 0 && r.fmt.later(w, c)) {
		return peekReady // lapped, or the entry reused: Read counts the loss
	}
	return peekPending
}

// Ready reports whether the entry for seq is committed or abandoned, so
// that a reader at seq has a record to return or an entry to skip. It
// loads one index word and neither claim counter: the cheapest check to
// spin on, and when it turns true the line it loaded is the one a read of
// seq needs. An entry claimed but not committed is not ready, nor is one
// that a later lap reused (the reader was lapped): a caller that spins on
// Ready should also look at Next now and then, and read, so that a dead
// producer's entry is abandoned in time and a lapped reader counts its loss.
// It is false once the ring is closed.
func (r *Ring) Ready(seq uint64) bool {
	if r.closed.Load() {
		return false
	}
	return r.fmt.settled(r.index[seq&r.indexMask].word.Load(), seq) // acquire: pairs with the commit CAS
}

// Ready is Ring.Ready for this reader: it also reports an entry that a
// later lap reused (the reader was lapped; Read counts the loss), so that a
// caller spinning on it reads on. Unlike the reader's other methods it may
// run on another goroutine while one reads.
//
// A consumer that wants throughput waits on Ready(Cursor()+n-1) once it has
// caught up, then reads the n records: every Read at the head loads words
// that producers are about to write, and each such load costs a producer a
// trip between cores, whereas the entry n ahead is not written for another
// n records. The wait needs a time limit, or a stream that stops short of n
// records holds it forever; n should be well below the ring's index slots
// and the records its data holds, or the first records are overwritten
// before the last lands; a batch (ReaderOptions.Batch) of n ends the read
// at the record waited for. Ready true does not promise a record: an entry
// before seq may still be pending, and Read then returns ErrPending, after
// which the consumer should pause rather than read again at once. It is
// false once the ring is closed.
//
// Each call also loads the three lines of data from where the reader's next
// record is expected to begin (where the last one it read ended): the
// first 129 bytes of the record at least, an event of 64 data bytes whole.
// A reader spinning on its next entry so has those lines sent over with
// the commit's, rather than asking for them only once it has seen the
// commit. Where a line takes 450 ns to cross between two CPUs, that took
// about 120 ns off the ring's one-way latency and 200-250 ns off the bus's
// Spin mode (shmbench's ring/spin and events/spin); where it takes 130 ns,
// no change showed.
func (rd *Reader) Ready(seq uint64) bool {
	r := rd.ring
	if r.closed.Load() { // not rd.closed: Ready may run beside Close's goroutine
		return false
	}
	if next := rd.nextLine.Load(); next != 0 { // stored by fill; orders nothing
		// Hints, not reads: nothing is done with the values, and a
		// record's bytes are read only after the acquire load below sees
		// its commit. Word-aligned inside the doubled data mapping.
		off := (next - 1) &^ 7
		keep(loadWord(r.data, off), loadWord(r.data, (off+64)&^63), loadWord(r.data, (off+128)&^63))
	}
	w := r.index[seq&r.indexMask].word.Load() // acquire: pairs with the commit CAS
	if r.fmt.settled(w, seq) {
		return true
	}
	// A later lap's word with seq not claimed is damage, and Read finds
	// the ring empty there: not ready, or a spinner would poll in a loop.
	return w != 0 && r.fmt.later(w, seq) && seq < r.ctl.seqTail.Load() // acquire, after the word
}

// keep takes values so that the loads that produce them are made: the
// compiler drops an atomic load whose value nobody uses.
//
//go:noinline
func keep(_, _, _ uint64) {}

// loadWord loads the word at off, a multiple of 8, of b.
func loadWord(b []byte, off uint64) uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&b[off])).Load()
}

func minPositive(a, b time.Duration) time.Duration {
	if a <= 0 {
		return b
	}
	return min(a, b)
}

// Sync publishes the reader's cursor and counters to its registry slot now
// (Read does it every 64 refills and before sleeping), for readers that
// sleep through WaitNext.
func (rd *Reader) Sync() {
	if rd.slot != nil && !rd.closed && !rd.ring.closed.Load() {
		rd.publish()
	}
}

// publish copies the reader's cursor and counters into its registry slot.
func (rd *Reader) publish() { rd.publishTo(rd.slot) }

func (rd *Reader) publishTo(s *readerSlot) {
	if s.owner.Load() != rd.slotOwner {
		return // reclaimed by mistake and taken by another reader: not ours to write
	}
	// Each store is independent: observers read a recent snapshot, not a
	// consistent one. Only the owner writes these fields, so a value
	// stored before is still there; a bus publishes after every poll,
	// and the loss counters rarely move.
	now := slotCounters{cursor: rd.Cursor(), ReaderStats: rd.stats}
	old, all := rd.shown, !rd.shownOnce
	if all || now.cursor != old.cursor {
		s.cursor.Store(now.cursor)
	}
	if all || now.Received != old.Received {
		s.received.Store(now.Received)
	}
	if all || now.Lost != old.Lost {
		s.lost.Store(now.Lost)
	}
	if all || now.Abandoned != old.Abandoned {
		s.abandoned.Store(now.Abandoned)
	}
	if all || now.Corrupt != old.Corrupt {
		s.corrupt.Store(now.Corrupt)
	}
	rd.shown, rd.shownOnce = now, true
	// The heartbeat is wall time for operators, and time.Now reads two
	// kernel clocks (55 ns in a VM, more than the stores above together):
	// taken at most once per heartbeatEvery, which the counter clock
	// measures.
	if t := clock.Stamp(); all || t-rd.beatAt >= int64(heartbeatEvery) {
		s.heartbeat.Store(uint64(time.Now().UnixNano()))
		rd.beatAt = t
	}
}

// heartbeatEvery bounds how stale a registry slot's heartbeat is behind the
// reader's last publish.
const heartbeatEvery = time.Millisecond
