package ring

import (
	"fmt"
	"hash/crc32"
	"runtime/debug"

	"github.com/shmring/shmring/internal/proc"
)

// Problem is one inconsistency Verify found.
type Problem struct {
	Where string // e.g. "index entry 17 (seq 4113)", "control: seqTail", "reader slot 3"
	What  string // one line: what is wrong
}

func (p Problem) String() string { return p.Where + ": " + p.What }

// Report is what Verify found.
type Report struct {
	// Next is seqTail as read at the end of the walk: every sequence number
	// Verify saw is below it.
	Next uint64
	// Oldest is the oldest sequence number among the current lap's
	// abandoned entries and the committed records whose bytes were checked
	// (on a quiet, healthy ring, what Ring.Oldest returns), or Next if there
	// is none.
	Oldest uint64
	// Entries sorts the index entries by what their stamps say. Every entry
	// is in exactly one count, except those whose stamp is itself a Problem
	// (an undefined state, a seq that belongs to another entry, or a seq
	// never claimed), which are in none.
	Entries struct {
		Committed int // committed for the current lap, bytes still in the data ring
		Abandoned int // abandoned for the current lap
		Busy      int // claimed for the current lap and being written (or its producer died)
		Empty     int // never written
		Stale     int // stamps of earlier laps, or committed records whose bytes were overwritten
	}
	// Checked counts the committed records whose bytes were CRC-checked.
	Checked int
	// Problems lists the inconsistencies, control area first, then index
	// entries in index order, then reader slots. At most maxProblems are
	// listed; a last Problem says how many more were found.
	Problems []Problem
}

// maxProblems bounds Report.Problems: a region full of garbage would
// otherwise give several problems per index entry.
const maxProblems = 1000

// maxSeq bounds sequence numbers: a stamp holds a seq in its top 62 bits.
const maxSeq = 1 << 62

// verifyTries bounds how often Verify re-reads an entry that changes while
// it reads it; one that keeps changing is counted stale.
const verifyTries = 8

type verifier struct {
	r       *Ring
	rep     Report
	dropped int // problems beyond maxProblems
	oldest  uint64
	found   bool // oldest is set
}

func (v *verifier) problem(where fmt.Stringer, format string, args ...any) {
	if len(v.rep.Problems) >= maxProblems {
		v.dropped++
		return
	}
	v.rep.Problems = append(v.rep.Problems, Problem{Where: where.String(), What: fmt.Sprintf(format, args...)})
}

// place is a Problem.Where that needs no formatting.
type place string

func (p place) String() string { return string(p) }

func (v *verifier) noteOldest(seq uint64) {
	if !v.found || seq < v.oldest {
		v.oldest, v.found = seq, true
	}
}

// Verify walks the ring's control words, every index entry and the reader
// registry, and reports every inconsistency it finds. It only reads the
// region, and it may run while producers append and readers read: it takes
// a snapshot of each entry the way a reader does (a seqlock on the stamp,
// then the overwrite check on dataTail) and skips an entry that changed
// while it read it instead of reporting it.
//
// It never panics on what the region holds. A memory fault (the file was
// truncated under the mapping) ends the walk with an error wrapping
// ErrFault, alongside what was found up to then.
func (r *Ring) Verify() (rep Report, err error) {
	if r.closed.Load() {
		return Report{}, ErrClosed
	}
	v := &verifier{r: r}
	defer func() {
		if v.dropped > 0 {
			v.rep.Problems = append(v.rep.Problems, Problem{Where: "verify", What: fmt.Sprintf("%d more problems not listed", v.dropped)})
		}
		rep = v.rep
	}()
	defer RecoverFault(debug.SetPanicOnFault(true), &err)

	v.checkControl()
	for i := range r.index {
		v.checkEntry(i)
	}
	v.checkReaders()
	v.rep.Next = r.ctl.seqTail.Load() // acquire: covers every seq found in a stamp above
	v.rep.Oldest = v.rep.Next
	if v.found {
		v.rep.Oldest = v.oldest
	}
	return v.rep, nil
}

// checkControl checks the control words that have invariants of their own.
// seqTail and dataTail are checked further against every entry.
func (v *verifier) checkControl() {
	ctl := v.r.ctl
	// Loaded before seqTail: an abandonment is counted after the seq it
	// abandons was claimed, so a later seqTail covers it.
	abandoned := ctl.abandoned.Load()
	tail := ctl.seqTail.Load() // snapshot, after abandoned (see above)
	if tail >= maxSeq {
		v.problem(place("control: seqTail"), "%d is beyond the %d sequence numbers a stamp can hold", tail, uint64(maxSeq))
	}
	if abandoned > tail {
		v.problem(place("control: abandoned"), "%d entries abandoned, more than the %d sequence numbers ever claimed", abandoned, tail)
	}
	// Snapshot; only ever stored as 0 or 1.
	if s := ctl.sleeping.Load(); s > 1 {
		v.problem(place("control: sleeping"), "flag is %d, not 0 or 1", s)
	}
}

// entryWhere names index entry i holding seq, for Problem.Where. It is
// formatted only when there is a problem to report.
type entryWhere struct {
	i   int
	seq uint64
}

func (w entryWhere) String() string { return fmt.Sprintf("index entry %d (seq %d)", w.i, w.seq) }

// slotWhere names reader slot i, for Problem.Where.
type slotWhere int

func (w slotWhere) String() string { return fmt.Sprintf("reader slot %d", int(w)) }

// checkEntry classifies index entry i and checks it, re-reading it if it
// changes under the walk.
func (v *verifier) checkEntry(i int) {
	r := v.r
	e := &r.index[i]
	n := uint64(len(r.index))
	for try := 0; try < verifyTries; try++ {
		// Acquire: pairs with the commit CAS in Ring.commit; the fields and
		// record bytes written before it are visible once we see committed.
		st := e.stamp.Load()
		if st == 0 {
			v.rep.Entries.Empty++
			return
		}
		// Acquire, after the stamp: a producer claims its seq (fetch-add on
		// seqTail) before its busy CAS, so this covers the stamp's seq.
		tail := r.ctl.seqTail.Load()
		seq, state := stampSeq(st), stampState(st)
		where := entryWhere{i, seq}
		bad := false
		if state == 0 {
			v.problem(where, "stamp %#x has state 0, defined only for the never-written stamp 0", st)
			bad = true
		}
		if seq&r.indexMask != uint64(i) {
			v.problem(where, "seq %d belongs to index entry %d", seq, seq&r.indexMask)
			bad = true
		}
		if seq >= tail {
			v.problem(where, "seq is at or beyond seqTail %d: it was never claimed", tail)
			bad = true
		}
		if bad {
			return
		}
		if tail-seq > n {
			v.rep.Entries.Stale++ // a later lap claimed the entry and has not marked it yet
			return
		}
		switch state {
		case stateBusy:
			v.rep.Entries.Busy++
			return
		case stateAbandoned:
			v.rep.Entries.Abandoned++
			v.noteOldest(seq)
			return
		}
		if v.checkCommitted(i, e, st) {
			return
		}
		// The entry changed while we read it: read it again.
	}
	v.rep.Entries.Stale++ // reused by lap after lap while we read it
}

// checkCommitted checks entry i, whose stamp st is committed for the current
// lap. It reports false if the entry changed while it was read, having
// counted and reported nothing.
func (v *verifier) checkCommitted(i int, e *entry, st uint64) bool {
	r := v.r
	seq := stampSeq(st)
	where := entryWhere{i, seq}
	pos := e.dataPos.Load()                  // seqlock-protected: checked by the re-load of stamp below
	length, crc := unpackMeta(e.meta.Load()) // likewise
	// Acquire, after the stamp: producers claim their bytes (fetch-add on
	// dataTail) before they commit, so this covers the record's bytes.
	dataTail := r.ctl.dataTail.Load()
	// Seqlock "end" for the fields: a later lap that took the entry marked
	// it busy before it touched them.
	if e.stamp.Load() != st {
		return false
	}
	if length > r.maxRecord {
		v.rep.Entries.Committed++
		v.problem(where, "length %d exceeds MaxRecord %d", length, r.maxRecord)
		return true
	}
	if pos > dataTail || uint64(length) > dataTail-pos {
		v.rep.Entries.Committed++
		v.problem(where, "record at data position %d, %d bytes, ends beyond dataTail %d", pos, length, dataTail)
		return true
	}
	if dataTail-pos > r.dataSize {
		v.rep.Entries.Stale++ // its bytes were overwritten by later records
		return true
	}
	start := pos & r.dataMask
	end := start + uint64(length)
	if end > uint64(len(r.data)) { // cannot happen with length <= MaxRecord <= D/2; never slice past the mapping
		v.rep.Entries.Committed++
		v.problem(where, "record at data position %d, %d bytes, runs past the data ring's mirror", pos, length)
		return true
	}
	got := crc32.Checksum(r.data[start:end], castagnoli) ^ seqMix(seq)
	// Seqlock "end": if the entry changed while we read the bytes, a later
	// lap took it and what we read may be torn.
	if e.stamp.Load() != st {
		return false
	}
	// Acquire, after the bytes: a producer that overwrote them claimed them
	// first, so if this still covers pos they were intact while we read.
	if r.ctl.dataTail.Load()-pos > r.dataSize {
		v.rep.Entries.Stale++
		return true
	}
	v.rep.Entries.Committed++
	v.rep.Checked++
	v.noteOldest(seq)
	if got != crc {
		v.problem(where, "checksum mismatch: damaged record (%d bytes at data position %d, stored %#08x, computed %#08x)",
			length, pos, crc, got)
	}
	return true
}

// checkReaders checks the occupied slots of the reader registry.
func (v *verifier) checkReaders() {
	r := v.r
	for i := range r.slots {
		s := &r.slots[i]
		owner := s.owner.Load() // acquire: pairs with the claim CAS in claimSlot
		if owner == 0 {
			continue
		}
		where := slotWhere(i)
		if proc.Owner(owner).PID() == 0 {
			v.problem(where, "owner word %#x names pid 0", owner)
		}
		cursor := s.cursor.Load() // snapshot; a reader publishes cursors it read below seqTail
		// Loaded after the cursor: seqTail only grows, so it covers it.
		if tail := r.ctl.seqTail.Load(); cursor > tail {
			v.problem(where, "cursor %d is beyond seqTail %d", cursor, tail)
		}
		if w := s.waiting.Load(); w > 1 { // snapshot; only ever stored as 0 or 1
			v.problem(where, "waiting flag is %d, not 0 or 1", w)
		}
	}
}
