package events

import (
	"errors"
	"fmt"
	"math"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/internal/proc"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// Unique table (shm.Region.Unique: U entries of shm.UniqueSlotSize = 32
// bytes). Entry 0 is the table's header; entries 1..U-1 hold keys, placed by
// open addressing (linear probing from hash mod (U-1)).
//
// Header, entry 0:
//
//	off  size  field   notes
//	0    8     lock    proc.Owner of the process inside a claim; 0 = free
//	8    8     claims  unique events that won their key (counter)
//	16   8     full    unique events skipped because no entry was free (counter)
//	24   8     steals  locks taken over from a holder that died (counter)
//
// Key entry:
//
//	off  size  field   notes
//	0    8     hash    FNV-1a 64 of the key, never 0; 0 = never used
//	8    8     seq     sequence number + 1 of the event that won the key
//	16   8     expiry  unix ns: the winner's posting time + Timeout; later events with the key posted before it are ignored
//	24   4     pid     the process that won it (for operators)
//	28   4     follow  how far the last known follow-up lies after the winner, in sequence numbers (saturating)
//
// Every field is written only under lock, so a claim is a short critical
// section of plain decisions rather than a lock-free protocol over several
// words. Readers outside the lock (operators) see snapshots. Entries are
// never emptied: a key's entry stays, with its winning sequence, after it
// expires, so a process that polls the same event late still skips it. An
// entry is reused for another key only when it has expired and neither its
// winner nor any follow-up known to the table can be polled any more: each
// has left the ring and every live reader is past it. Without the
// follow-ups, a process still short of one would find no entry and run it.
// A follow-up is made known by its poster, right after it is posted, and
// by every process that ignores it.
//
// Whether an event is a follow-up of the winner is decided by the times the
// events were posted (Event.Posted, in the record), not by when a process
// polls them: a process that polls late, or starts reading from the oldest
// event, decides as the processes that polled on time did. The posting
// times come from internal/clock, which every process derives from
// CLOCK_MONOTONIC, one clock for the whole machine.

type uniqueHeader struct {
	lock   atomic.Uint64
	claims atomic.Uint64
	full   atomic.Uint64
	steals atomic.Uint64
}

type uniqueEntry struct {
	hash   atomic.Uint64
	seq    atomic.Uint64
	expiry atomic.Int64
	pid    atomic.Uint32
	follow atomic.Uint32
}

func init() {
	if unsafe.Sizeof(uniqueHeader{}) != shm.UniqueSlotSize || unsafe.Sizeof(uniqueEntry{}) != shm.UniqueSlotSize {
		panic("events: unique table entry size disagrees with shm.UniqueSlotSize")
	}
}

// uniqueTable is one process's view of the region's unique table.
type uniqueTable struct {
	hdr     *uniqueHeader
	entries []uniqueEntry // entries[0] is the header's space; keys use 1..
	me      proc.Owner
	// lockWait bounds how long a claim waits for a live holder of the lock.
	lockWait time.Duration
}

// errUniqueLock: a live process held the table's lock for longer than
// lockWait (it is stopped, or the machine is overloaded).
var errUniqueLock = errors.New("events: unique table lock held too long by a live process")

func newUniqueTable(b []byte, lockWait time.Duration) (*uniqueTable, error) {
	n := len(b) / shm.UniqueSlotSize
	if n < 2 {
		return nil, fmt.Errorf("%w: the region's unique table has %d entries, need at least 2", ErrUniqueTableFull, n)
	}
	entries := unsafe.Slice((*uniqueEntry)(unsafe.Pointer(&b[0])), n)
	return &uniqueTable{
		hdr:      (*uniqueHeader)(unsafe.Pointer(&b[0])),
		entries:  entries,
		me:       proc.Self(),
		lockWait: lockWait,
	}, nil
}

// keyHash is FNV-1a 64 of key, mapped away from 0 (the empty entry).
func keyHash(key string) uint64 {
	h := uint64(14695981039346656037)
	for i := 0; i < len(key); i++ {
		h ^= uint64(key[i])
		h *= 1099511628211
	}
	if h == 0 {
		h = 1
	}
	return h
}

func (t *uniqueTable) lock() error {
	deadline := time.Now().Add(t.lockWait)
	for spins := 0; ; spins++ {
		// Full barrier: everything the previous holder wrote before its
		// release is visible once we own the word.
		if t.hdr.lock.CompareAndSwap(0, uint64(t.me)) {
			return nil
		}
		if spins < 64 {
			runtime.Gosched()
			continue
		}
		owner := proc.Owner(t.hdr.lock.Load()) // snapshot; the CAS below decides
		if owner != 0 && !owner.Alive() {
			// The holder died inside its claim. Dead processes write
			// nothing more, so taking over is safe; see claim for what it
			// may have left half-written.
			if t.hdr.lock.CompareAndSwap(uint64(owner), uint64(t.me)) {
				t.hdr.steals.Add(1) // counter only
				return nil
			}
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (pid %d)", errUniqueLock, owner.PID())
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func (t *uniqueTable) unlock() {
	t.hdr.lock.Store(0) // release: our entry writes happen before the next holder's reads
}

// claimResult says what a claim decided.
type claimResult int

const (
	claimWon      claimResult = iota // run the handlers
	claimTaken                       // another process won this very event
	claimFollowUp                    // an earlier event holds the key and has not expired
	claimStale                       // a later event already holds the key: this poll is late
	claimFull                        // no entry is free: skipped and counted
)

// probe finds key hash's entry, or the entry a new key would take (the first
// never-used entry of the probe sequence, else the first reusable one). It
// must run under the lock. oldest is called at most once, when a reusable
// entry is needed.
func (t *uniqueTable) probe(hash uint64, now int64, oldest func() uint64) (e *uniqueEntry, found bool) {
	keys := t.entries[1:]
	n := uint64(len(keys))
	start := hash % n
	var victim *uniqueEntry
	oldestSeq, haveOldest := uint64(0), false
	for i := uint64(0); i < n; i++ {
		c := &keys[(start+i)%n]
		h := c.hash.Load() // under the lock: plain reads of our own writes or the last holder's
		if h == 0 {
			return c, false // the end of every probe sequence through it
		}
		if h == hash {
			return c, true
		}
		if victim == nil && c.expiry.Load() <= now {
			if !haveOldest {
				oldestSeq, haveOldest = oldest(), true
			}
			if s := c.seq.Load(); s != 0 && s-1+uint64(c.follow.Load()) < oldestSeq {
				victim = c
			}
		}
	}
	return victim, false
}

// claim decides whether this process runs the event seq, posted at posted
// (unix ns) with key hash, and records the decision in the table.
//
// A process that dies inside the section leaves at most one entry half
// written. The fields are written so that such an entry errs towards
// running an event nowhere rather than twice: expiry first (follow-ups are
// ignored), the winning sequence next, then the follow-up distance (a
// stale one only keeps the entry longer), the key's hash last (a new
// binding becomes visible only complete).
func (t *uniqueTable) claim(hash, seq uint64, posted int64, timeout time.Duration, oldest func() uint64) (claimResult, error) {
	if err := t.lock(); err != nil {
		return 0, err
	}
	defer t.unlock()
	e, found := t.probe(hash, clock.WallNano(), oldest)
	if found {
		s := e.seq.Load()
		switch {
		case s == seq+1:
			return claimTaken, nil
		case s > seq+1:
			return claimStale, nil
		case posted < e.expiry.Load():
			e.noteFollowUp(seq)
			return claimFollowUp, nil
		}
	}
	if e == nil {
		t.hdr.full.Add(1) // counter only
		return claimFull, nil
	}
	expiry := posted + int64(timeout)
	if expiry < posted {
		expiry = math.MaxInt64 // a Timeout of "for ever" must not wrap into the past
	}
	e.expiry.Store(expiry)
	e.pid.Store(uint32(t.me.PID()))
	e.seq.Store(seq + 1)
	e.follow.Store(0)
	if !found {
		e.hash.Store(hash)
	}
	t.hdr.claims.Add(1) // counter only
	return claimWon, nil
}

// noteFollowUp records that the event seq, a later event with the entry's
// key, may still be polled: the entry must outlive it. Under the lock.
func (e *uniqueEntry) noteFollowUp(seq uint64) {
	s := e.seq.Load()
	if s == 0 || seq < s {
		return // no winner yet, or seq is the winner or before it
	}
	d := min(seq-(s-1), math.MaxUint32)
	if uint32(d) > e.follow.Load() {
		e.follow.Store(uint32(d))
	}
}

// posted records, for a unique event just posted as seq, that it may
// follow its key's winner: a key's entry is not given away while a process
// can still poll a follow-up that nobody has polled yet.
func (t *uniqueTable) posted(hash, seq uint64, oldest func() uint64) error {
	if err := t.lock(); err != nil {
		return err
	}
	defer t.unlock()
	if e, found := t.probe(hash, clock.WallNano(), oldest); found {
		e.noteFollowUp(seq)
	}
	return nil
}

// room reports whether a claim for hash would find an entry now: the check
// PostUnique makes before it posts.
func (t *uniqueTable) room(hash uint64, oldest func() uint64) (bool, error) {
	if err := t.lock(); err != nil {
		return false, err
	}
	defer t.unlock()
	e, _ := t.probe(hash, clock.WallNano(), oldest)
	return e != nil, nil
}

// UniqueKey is a snapshot of one entry of the unique table.
type UniqueKey struct {
	Hash uint64 // FNV-1a 64 of the key
	// Key is the key's text, read from the winning event while that is
	// still in the ring (the table keeps only the hash); "" once it has
	// left.
	Key string
	Seq uint64 // the event that won the key
	PID int    // the process that ran it
	// Remaining is how long later events with the key are still ignored;
	// zero or negative once the key has expired.
	Remaining time.Duration
}

// UniqueStats are the unique table's counters, shared by every process.
type UniqueStats struct {
	Entries int    // key entries in the table
	Used    int    // entries holding a key (live or expired)
	Live    int    // keys still within their timeout
	Claims  uint64 // unique events that ran (in one process each)
	Full    uint64 // unique events skipped because the table was full
	Steals  uint64 // locks taken over from a process that died holding one
}

// snapshot reads the table without the lock.
func (t *uniqueTable) snapshot() (UniqueStats, []UniqueKey) {
	st := UniqueStats{
		Entries: len(t.entries) - 1,
		Claims:  t.hdr.claims.Load(), // snapshots for operators
		Full:    t.hdr.full.Load(),
		Steals:  t.hdr.steals.Load(),
	}
	now := clock.WallNano()
	var live []UniqueKey
	for i := range t.entries[1:] {
		e := &t.entries[1+i]
		h := e.hash.Load() // snapshot: may mix a claim in progress
		if h == 0 {
			continue
		}
		st.Used++
		rem := time.Duration(e.expiry.Load() - now)
		if rem > 0 {
			st.Live++
			live = append(live, UniqueKey{Hash: h, Seq: e.seq.Load() - 1, PID: int(e.pid.Load()), Remaining: rem})
		}
	}
	return st, live
}

// UniqueTable reads the unique table of an open ring: its counters and the
// keys still live, with their text where the winning event is still in the
// ring. It writes nothing and registers no reader, for tools.
func UniqueTable(r *ring.Ring) (UniqueStats, []UniqueKey, error) {
	region := r.Region()
	n := int(region.Geometry().UniqueSlots)
	t, err := newUniqueTable(region.Unique()[:n*shm.UniqueSlotSize], 0)
	if err != nil {
		return UniqueStats{}, nil, fmt.Errorf("events: %s: %w", region.Path(), err)
	}
	st, keys := t.snapshot()
	keyTexts(r, keys)
	return st, keys, nil
}

// keyTexts fills in the text of each key whose winning event is still in
// the ring and committed, checked against the key's hash. It never waits
// for an entry and never abandons one.
func keyTexts(r *ring.Ring, keys []UniqueKey) {
	for i := range keys {
		k := &keys[i]
		rd, err := r.NewReader(ring.ReaderOptions{Start: ring.AtSeq(k.Seq), Unregistered: true, Batch: 1, WaitMax: time.Hour})
		if err != nil {
			continue // a damaged entry (no such sequence): its hash only
		}
		rec, err := rd.Read()
		if err == nil && rec.Seq == k.Seq {
			if e, err := Decode(rec.Seq, rec.Data); err == nil && e.Unique != "" && keyHash(e.Unique) == k.Hash {
				k.Key = e.Unique
			}
		}
		rd.Close()
	}
}
