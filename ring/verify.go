package ring

import (
	"encoding/binary"
	"fmt"
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
	// Entries sorts the index entries by what their words say. Every entry
	// is in exactly one count, except those whose word is itself a Problem
	// (an undefined state, or a lap never claimed), which are in none.
	Entries struct {
		Committed int // committed for the current lap, bytes still in the data ring
		Abandoned int // abandoned for the current lap
		Busy      int // claimed for the current lap, not committed (being written, or its producer died)
		Empty     int // never written, nor claimed
		Stale     int // committed records whose bytes were overwritten
	}
	// Checked counts the committed records whose bytes were checksummed.
	Checked int
	// Problems lists the inconsistencies, control area first, then index
	// entries in index order, then reader slots. At most maxProblems are
	// listed; a last Problem says how many more were found.
	Problems []Problem
}

// maxProblems bounds Report.Problems: a region full of garbage would
// otherwise give several problems per index entry.
const maxProblems = 1000

// maxSeq bounds sequence numbers: 2^62 of them take 146 years at 10^9 a
// second, so a seqTail beyond it is damage.
const maxSeq = 1 << 62

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
// region, and it may run while producers append and readers read: it reads
// each entry the way a reader does (one load of its word, then the record's
// bytes and the overwrite check on dataTail) and counts a record whose bytes
// were overwritten while it read them as stale instead of reporting it.
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
		v.problem(place("control: seqTail"), "%d is beyond the %d sequence numbers a ring can reach", tail, uint64(maxSeq))
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

// checkEntry classifies index entry i and checks it.
func (v *verifier) checkEntry(i int) {
	r := v.r
	f := &r.fmt
	n := uint64(len(r.index))
	// Acquire: pairs with the commit CAS in Ring.commit; the record's bytes
	// written before it are visible once we see committed.
	w := r.index[i].word.Load()
	// Acquire, after the word: a producer claims its seq (fetch-add on
	// seqTail) before its commit CAS, so this covers the word's lap.
	tail := r.ctl.seqTail.Load()
	// After seqTail: every record below tail has its bytes below this.
	dataTail := r.ctl.dataTail.Load()
	claimed := tail > uint64(i) // some lap's seq of this entry was claimed
	if w == 0 {
		if claimed {
			v.rep.Entries.Busy++ // lap 0's seq, claimed, not committed
		} else {
			v.rep.Entries.Empty++
		}
		return
	}
	// The word's seq: the one of its lap nearest the entry's newest claimed
	// seq (cur), at or before it unless the word is of a later lap.
	var seq, behind uint64 // behind: laps from the word's to cur's
	future := true         // the word's lap was never claimed
	if claimed {
		cur := uint64(i) + (tail-1-uint64(i))/n*n
		behind = (f.lap(cur) - f.wordLap(w)) & f.lapMask
		if behind < f.lapHalf {
			seq, future = cur-behind*n, false
		} else {
			seq = cur + (f.lapMask+1-behind)*n
		}
	} else {
		seq = uint64(i) + f.wordLap(w)*n
	}
	where := entryWhere{i, seq}
	bad := false
	switch wordState(w) {
	case 0:
		v.problem(where, "word %#x has state 0, defined only for the never-written word 0", w)
		bad = true
	case 1:
		v.problem(where, "word %#x has state 1, which no writer stores", w)
		bad = true
	}
	if future {
		v.problem(where, "seq is at or beyond seqTail %d: it was never claimed", tail)
		bad = true
	}
	if bad {
		return
	}
	if behind != 0 {
		// The word is an earlier lap's: the entry's newest seq is claimed
		// and not committed yet.
		v.rep.Entries.Busy++
		return
	}
	if wordState(w) == stateAbandoned {
		v.rep.Entries.Abandoned++
		v.noteOldest(seq)
		return
	}
	v.checkCommitted(where, w, dataTail)
}

// checkCommitted checks the record of word w, committed for the current lap
// of the entry where names. dataTail was loaded after seqTail.
func (v *verifier) checkCommitted(where entryWhere, w, dataTail uint64) {
	r := v.r
	seq := where.seq
	pos := r.fmt.position(w, dataTail)
	if dataTail-pos > r.dataSize {
		v.rep.Entries.Stale++ // its bytes were overwritten by later records
		return
	}
	start := pos & r.dataMask
	length := binary.LittleEndian.Uint32(r.data[start:])
	stored := binary.LittleEndian.Uint32(r.data[start+4:])
	// Read the bytes only if they may be the record's: pos < D behind
	// dataTail, and the length bounded (start + 8 + MaxRecord stays inside
	// the mirror, as MaxRecord <= D/2).
	hdrFits := hdrSize <= dataTail-pos
	fits := hdrFits && length <= r.maxRecord && hdrSize+uint64(length) <= dataTail-pos
	var got uint32
	if fits {
		got = recordSum(r.data[start+hdrSize:start+hdrSize+uint64(length)]) ^ seqMix(seq)
	}
	// Acquire, after the bytes: a producer that overwrote them claimed them
	// first, so if this still covers pos they were intact while we read.
	if r.ctl.dataTail.Load()-pos > r.dataSize {
		v.rep.Entries.Stale++
		return
	}
	v.rep.Entries.Committed++
	switch {
	case !hdrFits:
		v.problem(where, "record header at data position %d ends beyond dataTail %d", pos, dataTail)
	case length > r.maxRecord:
		v.problem(where, "length %d exceeds MaxRecord %d", length, r.maxRecord)
	case !fits:
		v.problem(where, "record at data position %d, %d bytes and its header, ends beyond dataTail %d", pos, length, dataTail)
	default:
		v.rep.Checked++
		v.noteOldest(seq)
		if got != stored {
			v.problem(where, "checksum mismatch: damaged record (%d bytes at data position %d, stored %#08x, computed %#08x)",
				length, pos, stored, got)
		}
	}
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
