package events

import (
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

// Unique section (shm.Region.Unique): U entries of shm.UniqueSlotSize = 32
// bytes, the key table, then N claim words of 8 bytes, one per index slot.
// Entry 0 is the table's header; entries 1..U-1 hold keys, placed by open
// addressing (linear probing from hash mod (U-1)).
//
// Header, entry 0:
//
//	off  size  field   notes
//	0    8     lock    proc.Owner of the process inside a post; 0 = free
//	8    8     claims  unique events that ran, in one process each (counter)
//	16   8     full    unique posts refused because no entry was free (counter)
//	24   8     steals  locks taken over from a holder that died (counter)
//
// Key entry:
//
//	off  size  field   notes
//	0    8     hash    FNV-1a 64 of the key, never 0; 0 = never used
//	8    8     seq     sequence number + 1 of the key's winning event; 0 while it is being posted
//	16   8     expiry  CLOCK_MONOTONIC ns: when the winner was posted + the poster's Timeout
//	24   4     pid     the process that posted the winner (for operators)
//	28   4     reserved, zero
//
// Claim word i (after the U entries): sequence number + 1 of the last
// winning event with seq mod N = i that a process took to run; 0 = none.
//
// Whether a unique event is its key's winner or a follow-up is decided once,
// by its poster, under the table's lock, and written into the event (a flag
// of the record): a follow-up is an event posted before the expiry of its
// key's winner, and no process runs it. Which process runs a winner is
// decided at poll time by a CAS on its claim word: the first process with a
// matching handler to take it. Neither decision depends on when, or in which
// order, processes poll: a process that polls late, replays the ring from
// Oldest, or has handlers others lack decides as every other process did.
//
// A key's entry serves only posters, so an expired one may be given to
// another key at once. A claim word is reused only by an event a whole index
// later, when the event it held has left the ring.
//
// Expiry is read on CLOCK_MONOTONIC (internal/clock.Mono), one clock for
// every process of the machine that is never stepped (a read may fall some
// tens of ns behind the one before it when internal/clock takes a new
// anchor, far below any Timeout); the posting time an event carries for its
// handlers is wall time, and decides nothing here.

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
	_      uint32
}

func init() {
	if unsafe.Sizeof(uniqueHeader{}) != shm.UniqueSlotSize || unsafe.Sizeof(uniqueEntry{}) != shm.UniqueSlotSize {
		panic("events: unique table entry size disagrees with shm.UniqueSlotSize")
	}
}

// uniqueTable is one process's view of the region's unique section.
type uniqueTable struct {
	hdr       *uniqueHeader
	entries   []uniqueEntry   // entries[0] is the header's space; keys use 1..
	claims    []atomic.Uint64 // one per index slot
	claimMask uint64
	me        proc.Owner
	// lockWait bounds how long a post waits for a live holder of the lock.
	lockWait time.Duration
}

// newUniqueTable maps region's unique section: its geometry's UniqueSlots
// key-table entries and IndexSlots claim words.
func newUniqueTable(region *shm.Region, lockWait time.Duration) (*uniqueTable, error) {
	b, g := region.Unique(), region.Geometry()
	u, n := int(g.UniqueSlots), int(g.IndexSlots)
	if u < 2 {
		return nil, fmt.Errorf("%w: the region's unique table has %d entries, need at least 2", ErrUniqueTableFull, u)
	}
	if len(b) < u*shm.UniqueSlotSize+n*shm.UniqueClaimSize || n&(n-1) != 0 {
		return nil, fmt.Errorf("events: a unique section of %d bytes cannot hold %d entries and %d claim words", len(b), u, n)
	}
	claims := b[u*shm.UniqueSlotSize:]
	return &uniqueTable{
		hdr:       (*uniqueHeader)(unsafe.Pointer(&b[0])),
		entries:   unsafe.Slice((*uniqueEntry)(unsafe.Pointer(&b[0])), u),
		claims:    unsafe.Slice((*atomic.Uint64)(unsafe.Pointer(&claims[0])), n),
		claimMask: uint64(n - 1),
		me:        proc.Self(),
		lockWait:  lockWait,
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
			// The holder died inside its post. Dead processes write
			// nothing more, so taking over is safe; see begin for what it
			// may have left half-written.
			if t.hdr.lock.CompareAndSwap(uint64(owner), uint64(t.me)) {
				t.hdr.steals.Add(1) // counter only
				return nil
			}
			continue
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%w (pid %d)", ErrUniqueLockHeld, owner.PID())
		}
		time.Sleep(50 * time.Microsecond)
	}
}

func (t *uniqueTable) unlock() {
	t.hdr.lock.Store(0) // release: our entry writes happen before the next holder's reads
}

// probe finds key hash's entry, or the entry a new key would take: the
// first never-used entry of the probe sequence, else the first that has
// expired at now. It must run under the lock.
func (t *uniqueTable) probe(hash uint64, now int64) (e *uniqueEntry, found bool) {
	keys := t.entries[1:]
	n := uint64(len(keys))
	start := hash % n
	var victim *uniqueEntry
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
			victim = c
		}
	}
	return victim, false
}

// uniquePost is a unique event being posted: the table's lock is held from
// begin until end, across the append, so that the decision and the event
// appear together to every later poster.
type uniquePost struct {
	t        *uniqueTable
	followUp bool
	// For a winner: its entry, and the entry as it was, for undo.
	e     *uniqueEntry
	found bool
	old   struct {
		hash, seq uint64
		expiry    int64
		pid       uint32
	}
}

// begin decides whether an event with key hash, posted now, is its key's
// winner or a follow-up, and takes the table's lock until end. Now is read
// once the lock is held (clock.Mono), so that a wait for it does not age
// the event.
// A winner's entry is written at once, but for its sequence number (done):
// a poster that dies before it appends leaves a key that ignores follow-ups
// until it expires, with no winner, which errs towards running an event
// nowhere rather than twice. It returns ErrUniqueTableFull, unlocked, when
// no entry is free for a new key, and releases the lock if the region
// faults under it.
func (t *uniqueTable) begin(hash uint64, timeout time.Duration) (_ *uniquePost, err error) {
	if err := t.lock(); err != nil {
		return nil, err
	}
	now := clock.Mono()
	held := false
	defer func() {
		if !held {
			t.unlock() // also when the region faults under us
		}
	}()
	e, found := t.probe(hash, now)
	if found && now < e.expiry.Load() {
		held = true
		return &uniquePost{t: t, followUp: true}, nil
	}
	if e == nil {
		t.hdr.full.Add(1) // counter only
		return nil, ErrUniqueTableFull
	}
	p := &uniquePost{t: t, e: e, found: found}
	p.old.hash, p.old.seq, p.old.expiry, p.old.pid = e.hash.Load(), e.seq.Load(), e.expiry.Load(), e.pid.Load()
	expiry := now + int64(timeout)
	if expiry < now {
		expiry = math.MaxInt64 // a Timeout of "for ever" must not wrap into the past
	}
	// The key first, while the entry's expiry is still the old, past one:
	// a poster killed here leaves an expired entry of this key, and blocks
	// no other key. The expiry last: from then on follow-ups are ignored.
	if !found {
		e.hash.Store(hash)
	}
	e.pid.Store(uint32(t.me.PID()))
	e.seq.Store(0)
	e.expiry.Store(expiry)
	held = true
	return p, nil
}

// done records the winner's sequence number.
func (p *uniquePost) done(seq uint64) {
	if p.e != nil {
		p.e.seq.Store(seq + 1)
	}
}

// undo puts a winner's entry back as it was, expiry first: its event was
// not posted.
func (p *uniquePost) undo() {
	if p.e == nil {
		return
	}
	p.e.expiry.Store(p.old.expiry)
	p.e.seq.Store(p.old.seq)
	p.e.pid.Store(p.old.pid)
	p.e.hash.Store(p.old.hash)
}

// end releases the table's lock.
func (p *uniquePost) end() { p.t.unlock() }

// claimResult says what a claim at poll time decided.
type claimResult int

const (
	claimWon   claimResult = iota // run the handlers
	claimTaken                    // another process took this very event
	claimStale                    // the claim word was reused: the event left the ring unclaimed here
)

// claim decides whether this process runs the winning event seq: the first
// process to move its claim word to seq+1 does.
func (t *uniqueTable) claim(seq uint64) claimResult {
	w := &t.claims[seq&t.claimMask]
	for range 64 { // a damaged file must not keep a poller here
		old := w.Load() // acquire: pairs with the winning CAS
		switch {
		case old == seq+1:
			return claimTaken
		case old > seq+1:
			return claimStale
		}
		if w.CompareAndSwap(old, seq+1) {
			t.hdr.claims.Add(1) // counter only
			return claimWon
		}
	}
	return claimStale
}

// UniqueKey is a snapshot of one entry of the unique table.
type UniqueKey struct {
	Hash uint64 // FNV-1a 64 of the key
	// Key is the key's text, read from the winning event while that is
	// still in the ring (the table keeps only the hash); "" once it has
	// left.
	Key string
	// Seq is the event that won the key; Posting says its poster has not
	// recorded it yet (it is posting it, or died doing so).
	Seq     uint64
	Posting bool
	PID     int // the process that posted the winner
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
	Full    uint64 // unique posts refused because the table was full
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
	now := clock.Mono()
	var live []UniqueKey
	for i := range t.entries[1:] {
		e := &t.entries[1+i]
		h := e.hash.Load() // snapshot: may mix a post in progress
		if h == 0 {
			continue
		}
		st.Used++
		rem := time.Duration(e.expiry.Load() - now)
		if rem > 0 {
			st.Live++
			k := UniqueKey{Hash: h, PID: int(e.pid.Load()), Remaining: rem}
			if s := e.seq.Load(); s != 0 {
				k.Seq = s - 1
			} else {
				k.Posting = true
			}
			live = append(live, k)
		}
	}
	return st, live
}

// UniqueTable reads the unique table of an open ring: its counters and the
// keys still live, with their text where the winning event is still in the
// ring. It writes nothing and registers no reader, for tools.
func UniqueTable(r *ring.Ring) (UniqueStats, []UniqueKey, error) {
	t, err := newUniqueTable(r.Region(), 0)
	if err != nil {
		return UniqueStats{}, nil, fmt.Errorf("events: %s: %w", r.Region().Path(), err)
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
		if k.Posting {
			continue
		}
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
