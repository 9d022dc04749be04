// Package ring is a multi-producer, many-reader broadcast ring of opaque
// records in a shared region (package shm).
//
// Any process appends; every reader sees every committed record once, in one
// global order given by a 64-bit sequence number, the same in every process.
// Readers never hold producers back: a reader that falls behind by more than
// the ring holds is lapped and learns exactly how many records it lost. An
// entry whose producer claimed it and never committed (it was slow, or was
// killed) is retried every WaitInterval and abandoned after WaitMax, for every
// reader at once, and the producer, if it ever comes back, gets ErrAbandoned.
//
// The byte maps of the parts of the region this package owns are in layout.go.
package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"unsafe"

	"github.com/shmring/shmring/shm"
)

var (
	// ErrTooBig: the record is larger than the ring's MaxRecord.
	ErrTooBig = errors.New("ring: record too big")
	// ErrAbandoned: the producer was too slow; readers gave up on its entry
	// (or the ring reused it) before it committed. The record was not
	// published; the caller may append it again.
	ErrAbandoned = errors.New("ring: entry abandoned before commit")
	// ErrEmpty: Read found nothing new.
	ErrEmpty = errors.New("ring: no new record")
	// ErrPending: the next entry is claimed but not committed yet; Read will
	// abandon it once it has waited WaitMax.
	ErrPending = errors.New("ring: next entry not committed yet")
	// ErrNoReaderSlot: every reader-registry slot is held by a live reader.
	ErrNoReaderSlot = errors.New("ring: reader registry full")
	// ErrCursor: a start sequence lies beyond the ring's next sequence.
	ErrCursor = errors.New("ring: start sequence is in the future")
	// ErrFault: touching the mapped region faulted, typically because the
	// file was truncated underneath the mapping. The ring is unusable.
	ErrFault = errors.New("ring: memory fault in the mapped region (file truncated?)")
	// ErrClosed: the ring or reader is closed. It is shm.ErrClosed (os.ErrClosed).
	ErrClosed = shm.ErrClosed
)

// Ring is one process's handle on a shared ring. Its append methods may be
// called from many goroutines at once.
type Ring struct {
	region *shm.Region // nil for rings over plain memory (tests, fuzzing)
	ctl    *control
	index  []entry
	data   []byte // 2*dataSize: the data ring mapped twice
	slots  []readerSlot

	indexMask uint64
	fmt       wordFormat
	dataMask  uint64
	dataSize  uint64
	maxRecord uint32
	closed    atomic.Bool

	fillBufs sync.Pool // *[]byte for AppendFunc

	readersMu sync.Mutex
	readers   map[*Reader]struct{} // open readers, whose slots Close releases

	// hook, when set (tests only), runs at points of an append where a
	// crash or a pause matters; see hookPoint.
	hook func(point hookPoint, seq uint64)
}

type hookPoint int

const (
	hookClaimed hookPoint = iota // seq claimed, commit CAS not tried yet
)

// Options are the settings for Open.
type Options = shm.Options

// Open opens the ring at path, creating it with opts.Geometry if it does not
// exist (see shm.OpenOrCreate). Close releases it.
func Open(path string, opts Options) (*Ring, error) {
	region, err := shm.OpenOrCreate(path, opts)
	if err != nil {
		return nil, err
	}
	r := New(region)
	return r, nil
}

// New makes a Ring over an open region. Closing the Ring closes the region.
func New(region *shm.Region) *Ring {
	g := region.Geometry()
	r := newRing(region.Control(), region.Index(), region.Data(), region.Readers(), g)
	r.region = region
	return r
}

// newRing builds a Ring over raw memory. data must be 2*g.DataBytes long with
// its halves aliased (or, for single-threaded tests, kept equal by hand).
func newRing(ctl, index, data, readers []byte, g shm.Geometry) *Ring {
	return &Ring{
		fillBufs:  sync.Pool{New: func() any { return new([]byte) }},
		ctl:       (*control)(unsafe.Pointer(&ctl[0])),
		index:     view[entry](index)[:g.IndexSlots],
		data:      data,
		slots:     view[readerSlot](readers)[:g.ReaderSlots],
		indexMask: uint64(g.IndexSlots) - 1,
		fmt:       newWordFormat(g),
		dataMask:  g.DataBytes - 1,
		dataSize:  g.DataBytes,
		maxRecord: g.MaxRecord,
	}
}

// Region returns the underlying region, or nil.
func (r *Ring) Region() *shm.Region { return r.region }

// MaxRecord returns the largest record the ring accepts.
func (r *Ring) MaxRecord() int { return int(r.maxRecord) }

// Close releases the registry slots of the ring's open readers, marks the
// ring closed and closes its region. It is idempotent. The caller must first
// stop every goroutine that appends to or reads from it: afterwards their
// calls return ErrClosed (or, where a method has no error to return, false,
// zero or nil), but a call already running faults on the region's addresses,
// which stay reserved (shm.Region.Close).
func (r *Ring) Close() error {
	if r.closed.Swap(true) {
		return nil
	}
	faultErr := r.releaseSlots()
	if r.region != nil {
		if err := r.region.Close(); err != nil {
			return err
		}
	}
	return faultErr
}

// releaseSlots frees the registry slots of the ring's open readers. A file
// truncated under the mapping makes that fault: it returns ErrFault then,
// and Close still unmaps.
func (r *Ring) releaseSlots() (err error) {
	r.readersMu.Lock()
	defer r.readersMu.Unlock()
	defer RecoverFault(debug.SetPanicOnFault(true), &err)
	for rd := range r.readers {
		if rd.slot != nil {
			rd.slot.owner.CompareAndSwap(rd.slotOwner, 0) // see Reader.Close
		}
	}
	r.readers = nil
	return nil
}

// Append publishes p as one record and returns its sequence number. It
// returns ErrTooBig if p is larger than MaxRecord and ErrAbandoned if the
// readers gave up on the entry before this call committed it.
func (r *Ring) Append(p []byte) (uint64, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if uint64(len(p)) > uint64(r.maxRecord) {
		return 0, r.tooBig(len(p))
	}
	n := uint64(len(p)) + hdrSize
	// Claim the bytes before the sequence number, so the entry stays
	// claimed-but-uncommitted (which stalls readers) only for a few stores,
	// not for the copy. Pairs with the dataTail loads in Reader.fill.
	pos := r.ctl.dataTail.Add(n) - n
	if r.stale(pos) {
		return 0, ErrAbandoned
	}
	r.put(pos, p)
	sum := recordSum(p)
	// Claim the sequence number: from here readers know the record exists.
	seq := r.ctl.seqTail.Add(1) - 1
	// A reader asleep on an empty ring must learn of the claim too: if this
	// producer dies before its commit, nobody else would wake it.
	r.wake()
	err := r.commit(seq, pos, sum)
	r.wake()
	return seq, err
}

// put writes the length and the payload of a record at pos; commit writes
// its checksum once the record has a sequence number.
func (r *Ring) put(pos uint64, p []byte) {
	d := r.data[pos&r.dataMask:]
	binary.LittleEndian.PutUint32(d, uint32(len(p)))
	copy(d[hdrSize:], p)
}

// AppendFunc publishes a record of n bytes that fill writes, for callers
// that encode straight into a buffer. fill must write all n bytes and must
// not retain dst. If fill panics, nothing has been claimed.
func (r *Ring) AppendFunc(n int, fill func(dst []byte)) (uint64, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	if n < 0 || uint64(n) > uint64(r.maxRecord) {
		return 0, r.tooBig(n)
	}
	// fill writes a private buffer, and the checksum is taken from it: taken
	// from the ring, it could cover bytes a stale producer wrote meanwhile.
	bufp := r.fillBufs.Get().(*[]byte)
	defer r.fillBufs.Put(bufp)
	if cap(*bufp) < n {
		*bufp = make([]byte, n)
	}
	buf := (*bufp)[:n]
	fill(buf)
	sum := recordSum(buf)
	un := uint64(n) + hdrSize
	pos := r.ctl.dataTail.Add(un) - un // pairs with the dataTail loads in Reader.fill
	if r.stale(pos) {
		return 0, ErrAbandoned
	}
	r.put(pos, buf)
	seq := r.ctl.seqTail.Add(1) - 1
	// A reader asleep on an empty ring must learn of the claim too: if this
	// producer dies before its commit, nobody else would wake it.
	r.wake()
	err := r.commit(seq, pos, sum)
	r.wake()
	return seq, err
}

// AppendBatch publishes recs as consecutive records with one claim of
// sequence numbers and one of data bytes, and one wake-up. It returns the
// first record's sequence number. If some entries were abandoned before they
// committed it still commits the others and returns an error wrapping
// ErrAbandoned that says how many.
func (r *Ring) AppendBatch(recs [][]byte) (uint64, error) {
	if r.closed.Load() {
		return 0, ErrClosed
	}
	var total uint64
	for _, p := range recs {
		if uint64(len(p)) > uint64(r.maxRecord) {
			return 0, r.tooBig(len(p))
		}
		total += uint64(len(p)) + hdrSize
	}
	if len(recs) == 0 {
		return r.ctl.seqTail.Load(), nil
	}
	if total > r.dataSize/2 && len(recs) > 1 {
		// One claim must not cover more than the ring holds; split.
		half := len(recs) / 2
		first, err1 := r.AppendBatch(recs[:half])
		_, err2 := r.AppendBatch(recs[half:])
		return first, errors.Join(err1, err2)
	}
	pos := r.ctl.dataTail.Add(total) - total // pairs with the dataTail loads in Reader.fill
	if r.stale(pos) {
		return 0, fmt.Errorf("%d records: %w", len(recs), ErrAbandoned)
	}
	var stack [64]uint32
	sums := stack[:0] // grows onto the heap only for batches over 64
	p0 := pos
	for _, p := range recs {
		r.put(p0, p)
		sums = append(sums, recordSum(p))
		p0 += uint64(len(p)) + hdrSize
	}
	k := uint64(len(recs))
	first := r.ctl.seqTail.Add(k) - k
	r.wake() // see Append
	failed := 0
	for i, p := range recs {
		if r.commit(first+uint64(i), pos, sums[i]) != nil {
			failed++
		}
		pos += uint64(len(p)) + hdrSize
	}
	r.wake()
	if failed > 0 {
		return first, fmt.Errorf("%d of %d records: %w", failed, len(recs), ErrAbandoned)
	}
	return first, nil
}

func (r *Ring) tooBig(n int) error {
	r.ctl.tooBig.Add(1) // counter only; orders nothing
	return fmt.Errorf("%d bytes, the ring takes at most %d: %w", n, r.maxRecord, ErrTooBig)
}

// stale reports whether bytes claimed at pos already lie more than one ring
// behind the newest claim: this producer was descheduled between its claim
// and its copy while others wrapped the data ring, and copying now would
// damage their newer records. The record is dropped (counted as a late
// commit) before it gets a sequence number, so no reader waits for it. A
// producer paused between this check and its copy can still damage a newer
// record; readers that copy it afterwards then fail its checksum and count it
// corrupt.
func (r *Ring) stale(pos uint64) bool {
	if r.ctl.dataTail.Load()-pos <= r.dataSize { // snapshot; orders nothing
		return false
	}
	r.ctl.lateCommits.Add(1) // counter only
	return true
}

// commit writes the checksum of the record at pos, which holds seq's bytes,
// and publishes it with one CAS on seq's index word.
func (r *Ring) commit(seq, pos uint64, sum uint32) error {
	if r.hook != nil {
		r.hook(hookClaimed, seq)
	}
	e := &r.index[seq&r.indexMask].word
	old := e.Load()
	// A word of this lap or a later one means readers abandoned ours, or the
	// ring came round and reused the entry: never overwrite it, and leave
	// the bytes alone too.
	if !r.fmt.earlier(old, seq) {
		r.ctl.lateCommits.Add(1) // counter only
		return ErrAbandoned
	}
	// The checksum ties the bytes to seq. A plain store: the commit CAS
	// below publishes it with the rest of the record.
	binary.LittleEndian.PutUint32(r.data[pos&r.dataMask+4:], sum^seqMix(seq))
	want := r.fmt.committed(seq, pos)
	for tries := 0; ; tries++ {
		// Release: pairs with the acquire load of the word in Reader.fill;
		// the record's bytes are visible to a reader that sees committed.
		// Anything older is ours to take, even the word of a previous lap
		// whose producer has not committed: that producer is a whole lap
		// behind, and its own CAS will fail.
		if e.CompareAndSwap(old, want) {
			return nil
		}
		old = e.Load()
		if !r.fmt.earlier(old, seq) || tries == 64 {
			r.ctl.lateCommits.Add(1) // counter only
			return ErrAbandoned
		}
	}
}

// wake wakes sleeping readers, if there are any.
//
// A reader about to sleep stores sleeping = 1, reads wakeGen, re-checks the
// ring, checks that sleeping is still 1, and only then sleeps on the wakeGen
// value it read. A producer reads sleeping after its commit CAS (a full
// barrier): either it sees 1, or the reader's re-check sees the commit. The
// producer that swaps 1 to 0 bumps wakeGen and wakes everyone; the producers
// after it see 0 and skip the system call, so a burst of appends costs one
// wake-up, not one per record. A reader that finds sleeping already cleared
// sets it again before it sleeps, so no sleeper is left without a waker.
func (r *Ring) wake() {
	if r.ctl.sleeping.Load() == 0 {
		return
	}
	// Full barrier; only one producer gets the 1.
	if r.ctl.sleeping.Swap(0) == 0 {
		return
	}
	r.ctl.wakeGen.Add(1) // stale for every sleeper and would-be sleeper
	shm.Wake(&r.ctl.wakeGen)
}

// Next returns the next sequence number to be claimed: the number of
// records ever claimed; 0 once the ring is closed.
func (r *Ring) Next() uint64 {
	if r.closed.Load() {
		return 0
	}
	return r.ctl.seqTail.Load() // snapshot
}

// Counters are the ring-wide counters kept in the region.
type Counters struct {
	// Next is the next sequence number to be claimed: the number of records
	// ever claimed.
	Next uint64
	// DataTail is the number of data bytes ever claimed.
	DataTail uint64
	// Abandoned counts entries readers gave up on after WaitMax.
	Abandoned uint64
	// TooBig counts appends rejected with ErrTooBig.
	TooBig uint64
	// LateCommits counts appends that failed with ErrAbandoned.
	LateCommits uint64
	// Waiters is the number of registered readers asleep on the ring now.
	Waiters uint32
}

// Counters reads the ring-wide counters; all zero once the ring is closed.
func (r *Ring) Counters() Counters {
	if r.closed.Load() {
		return Counters{}
	}
	return Counters{
		Next:        r.ctl.seqTail.Load(),
		DataTail:    r.ctl.dataTail.Load(),
		Abandoned:   r.ctl.abandoned.Load(),
		TooBig:      r.ctl.tooBig.Load(),
		LateCommits: r.ctl.lateCommits.Load(),
		Waiters:     r.sleepingReaders(),
	}
}

func (r *Ring) sleepingReaders() uint32 {
	n := uint32(0)
	for i := range r.slots {
		// Both loads are snapshots for operators; they order nothing.
		if r.slots[i].owner.Load() != 0 && r.slots[i].waiting.Load() != 0 {
			n++
		}
	}
	return n
}

// Oldest returns the sequence number of the oldest record still in the ring
// (committed or abandoned, with its bytes not yet overwritten), or Next if
// there is none; 0 once the ring is closed.
func (r *Ring) Oldest() uint64 {
	if r.closed.Load() {
		return 0
	}
	tail := r.ctl.seqTail.Load()
	// After seqTail: every record below tail has its bytes below this.
	dataTail := r.ctl.dataTail.Load()
	n := uint64(len(r.index))
	c := uint64(0)
	if tail > n {
		c = tail - n
	}
	for ; c < tail; c++ {
		w := r.index[c&r.indexMask].word.Load() // acquire: pairs with the commit CAS
		switch r.fmt.tag(w) {
		case r.fmt.tagOf(c, stateAbandoned):
			return c
		case r.fmt.tagOf(c, stateCommitted):
			pos := r.fmt.position(w, dataTail)
			if r.ctl.dataTail.Load()-pos <= r.dataSize {
				return c
			}
		}
	}
	return tail
}
