package ring

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"sync"
	"testing"
	"time"
	"unsafe"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// entryCounts is Report.Entries, for comparing in tests.
type entryCounts = struct{ Committed, Abandoned, Busy, Empty, Stale int }

func verifyOK(t *testing.T, r *Ring) Report {
	t.Helper()
	rep, err := r.Verify()
	require.NoError(t, err)
	require.Empty(t, rep.Problems)
	return rep
}

func TestVerifyHealthyRing(t *testing.T) {
	g := shm.Geometry{IndexSlots: 64, DataBytes: 4096, MaxRecord: 2048}
	r := openTestRing(t, g)
	rep := verifyOK(t, r)
	assert.Equal(t, entryCounts{Empty: 64}, rep.Entries)
	assert.Equal(t, uint64(0), rep.Next)
	assert.Equal(t, uint64(0), rep.Oldest)

	rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
	for i := 0; i < 10; i++ {
		_, err := r.Append(payload(i, 100))
		require.NoError(t, err)
	}
	drain(t, rd)
	rep = verifyOK(t, r)
	assert.Equal(t, entryCounts{Committed: 10, Empty: 54}, rep.Entries)
	assert.Equal(t, 10, rep.Checked)
	assert.Equal(t, uint64(10), rep.Next)
	assert.Equal(t, uint64(0), rep.Oldest)

	// Wrap the index and the data ring many times; odd sizes straddle the
	// end of the data ring, and the last record is empty (its header ends
	// at dataTail itself).
	sizes := []int{0, 1, 7, 100, 333, 1000, 2048, 513}
	pos := []uint64{}
	var tail uint64
	for i := 0; i < 10; i++ {
		pos = append(pos, tail)
		tail += 100 + hdrSize
	}
	for i := 10; i < 200; i++ {
		n := sizes[i%len(sizes)]
		if i == 199 {
			n = 0
		}
		_, err := r.Append(payload(i, n))
		require.NoError(t, err)
		pos = append(pos, tail)
		tail += uint64(n) + hdrSize
	}
	drain(t, rd)
	require.Equal(t, tail, r.Counters().DataTail)
	want := entryCounts{}
	oldest := uint64(200)
	for s := 200 - 64; s < 200; s++ {
		if tail-pos[s] <= g.DataBytes {
			want.Committed++
			oldest = min(oldest, uint64(s))
		} else {
			want.Stale++
		}
	}
	require.NotZero(t, want.Stale, "some records were overwritten")
	rep = verifyOK(t, r)
	assert.Equal(t, want, rep.Entries)
	assert.Equal(t, want.Committed, rep.Checked)
	assert.Equal(t, uint64(200), rep.Next)
	assert.Equal(t, oldest, rep.Oldest)
	assert.Equal(t, r.Oldest(), rep.Oldest)

	// Index laps only: every entry is committed for the current lap.
	r2 := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 1 << 16})
	for i := 0; i < 50; i++ {
		_, err := r2.Append(payload(i, 16))
		require.NoError(t, err)
	}
	rep = verifyOK(t, r2)
	assert.Equal(t, entryCounts{Committed: 16}, rep.Entries)
	assert.Equal(t, uint64(34), rep.Oldest)
}

// Entries claimed and not committed are counted, not reported: busy while
// their producer writes them, then abandoned by a reader. Seq 1 takes a
// fresh entry; seq 17 one that holds lap 0's committed record.
func TestVerifyCountsBusyAndAbandoned(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096})
	claimed1, claimed2 := make(chan struct{}), make(chan struct{})
	release := make(chan struct{})
	SetHook(r, func(p HookPoint, seq uint64) {
		switch {
		case p == HookClaimed && seq == 1:
			close(claimed1)
			<-release
		case p == HookClaimed && seq == 2:
			close(claimed2)
			<-release
		}
	})
	_, err := r.Append(payload(0, 8))
	require.NoError(t, err)
	errs := make(chan error, 2)
	late := func() { _, err := r.Append(payload(9, 8)); errs <- err }
	go late()
	<-claimed1 // seq 1 is claimed, its entry still zero
	go late()
	<-claimed2 // seq 2 likewise
	_, err = r.Append(payload(3, 8))
	require.NoError(t, err)

	rep := verifyOK(t, r)
	assert.Equal(t, entryCounts{Committed: 2, Busy: 2, Empty: 12}, rep.Entries)
	assert.Equal(t, uint64(4), rep.Next)

	rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0), WaitInterval: time.Millisecond, WaitMax: 5 * time.Millisecond})
	require.Eventually(t, func() bool {
		_, err := rd.Read()
		return errors.Is(err, ErrEmpty)
	}, 10*time.Second, time.Millisecond)
	require.Equal(t, uint64(2), rd.Stats().Abandoned)
	rep = verifyOK(t, r)
	assert.Equal(t, entryCounts{Committed: 2, Abandoned: 2, Empty: 12}, rep.Entries)

	close(release)
	require.ErrorIs(t, <-errs, ErrAbandoned)
	require.ErrorIs(t, <-errs, ErrAbandoned)
	rep = verifyOK(t, r)
	assert.Equal(t, entryCounts{Committed: 2, Abandoned: 2, Empty: 12}, rep.Entries)
	assert.Equal(t, uint64(0), rep.Oldest)
}

func TestVerifyReportsDamage(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 512, ReaderSlots: 4}
	type want struct{ where, what string }
	cases := []struct {
		name   string
		damage func(r *Ring, rd *Reader)
		want   []want
	}{
		{"data byte flipped", func(r *Ring, _ *Reader) {
			record(r, 3)[hdrSize+10] ^= 0x40
		}, []want{{"index entry 3 (seq 3)", "checksum mismatch: damaged record"}}},
		{"stored crc changed", func(r *Ring, _ *Reader) {
			record(r, 1)[7]++
		}, []want{{"index entry 1 (seq 1)", "checksum mismatch: damaged record"}}},
		{"length beyond MaxRecord", func(r *Ring, _ *Reader) {
			binary.LittleEndian.PutUint32(record(r, 5), 100000)
		}, []want{{"index entry 5 (seq 5)", "length 100000 exceeds MaxRecord 512"}}},
		{"position of another record", func(r *Ring, _ *Reader) {
			r.index[2].word.Store(r.fmt.committed(2, posOf(r, 3)))
		}, []want{{"index entry 2 (seq 2)", "checksum mismatch"}}},
		{"seq beyond seqTail", func(r *Ring, _ *Reader) {
			r.index[4].word.Store(r.fmt.committed(20, posOf(r, 4)))
		}, []want{{"index entry 4 (seq 20)", "at or beyond seqTail 8"}}},
		{"undefined state 0", func(r *Ring, _ *Reader) {
			r.index[6].word.Store(r.index[6].word.Load() &^ (3 << stateShift))
		}, []want{{"index entry 6 (seq 6)", "state 0"}}},
		{"undefined state 1", func(r *Ring, _ *Reader) {
			r.index[6].word.Store(r.index[6].word.Load()&^(3<<stateShift) | 1<<stateShift)
		}, []want{{"index entry 6 (seq 6)", "state 1"}}},
		{"position past dataTail", func(r *Ring, _ *Reader) {
			r.index[7].word.Store(r.fmt.committed(7, r.ctl.dataTail.Load()-4))
		}, []want{{"index entry 7 (seq 7)", "ends beyond dataTail"}}},
		{"length past dataTail", func(r *Ring, _ *Reader) {
			binary.LittleEndian.PutUint32(record(r, 7), 65)
		}, []want{{"index entry 7 (seq 7)", "ends beyond dataTail"}}},
		// Laps are kept modulo 2^L, and 2^62 / 16 is a multiple of 2^L:
		// measured from such a seqTail, every word is of the lap after it.
		{"seqTail beyond what a ring reaches", func(r *Ring, _ *Reader) {
			r.ctl.seqTail.Store(1 << 62)
		}, append([]want{{"control: seqTail", "beyond"}}, func() (ws []want) {
			for i := range 8 {
				ws = append(ws, want{fmt.Sprintf("index entry %d (seq %d)", i, 1<<62+i), "at or beyond seqTail"})
			}
			return ws
		}()...)},
		{"abandoned counter", func(r *Ring, _ *Reader) {
			r.ctl.abandoned.Store(9)
		}, []want{{"control: abandoned", "more than the 8 sequence numbers"}}},
		{"sleeping flag", func(r *Ring, _ *Reader) {
			r.ctl.sleeping.Store(7)
		}, []want{{"control: sleeping", "flag is 7"}}},
		{"owner with pid 0", func(r *Ring, _ *Reader) {
			r.slots[2].owner.Store(12345)
		}, []want{{"reader slot 2", "pid 0"}}},
		{"cursor beyond seqTail", func(r *Ring, rd *Reader) {
			r.slots[rd.Slot()].cursor.Store(9)
		}, []want{{"reader slot 0", "cursor 9 is beyond seqTail 8"}}},
		{"waiting flag", func(r *Ring, rd *Reader) {
			r.slots[rd.Slot()].waiting.Store(3)
		}, []want{{"reader slot 0", "waiting flag is 3"}}},
		{"several at once", func(r *Ring, rd *Reader) {
			r.index[0].word.Store(r.fmt.abandoned(16)) // never claimed
			record(r, 3)[hdrSize] ^= 1
			r.slots[1].owner.Store(1)
		}, []want{
			{"index entry 0 (seq 16)", "at or beyond seqTail"},
			{"index entry 3 (seq 3)", "checksum mismatch"},
			{"reader slot 1", "pid 0"},
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := openTestRing(t, g)
			rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
			require.Equal(t, 0, rd.Slot())
			for i := 0; i < 8; i++ {
				_, err := r.Append(payload(i, 64))
				require.NoError(t, err)
			}
			drain(t, rd)
			verifyOK(t, r)
			tc.damage(r, rd)
			rep, err := r.Verify()
			require.NoError(t, err)
			require.Len(t, rep.Problems, len(tc.want), "%v", rep.Problems)
			for i, w := range tc.want {
				assert.Equal(t, w.where, rep.Problems[i].Where)
				assert.Contains(t, rep.Problems[i].What, w.what)
			}
		})
	}
}

// A damaged record is still counted as committed and checked.
func TestVerifyCountsDamagedRecords(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 512})
	for i := 0; i < 8; i++ {
		_, err := r.Append(payload(i, 64))
		require.NoError(t, err)
	}
	record(r, 3)[hdrSize] ^= 1
	rep, err := r.Verify()
	require.NoError(t, err)
	require.Len(t, rep.Problems, 1)
	assert.Equal(t, entryCounts{Committed: 8, Empty: 8}, rep.Entries)
	assert.Equal(t, 8, rep.Checked)
	assert.Equal(t, "index entry 3 (seq 3): "+rep.Problems[0].What, rep.Problems[0].String())
}

func TestVerifyTruncatedFileIsAnErrorNotACrash(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 4096}
	secs := g.WithDefaults().Sections()
	for _, size := range []uint64{0, shm.HeaderSize + shm.PageSize, secs.IndexOff, secs.DataOff} {
		t.Run(fmt.Sprint(size), func(t *testing.T) {
			r := openTestRing(t, g)
			for i := 0; i < 8; i++ {
				_, err := r.Append(payload(i, 100))
				require.NoError(t, err)
			}
			require.NoError(t, os.Truncate(r.Region().Path(), int64(size)))
			var err error
			require.NotPanics(t, func() { _, err = r.Verify() })
			require.ErrorIs(t, err, ErrFault)
		})
	}
}

func TestVerifyClosedRing(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	require.NoError(t, r.Close())
	_, err := r.Verify()
	require.ErrorIs(t, err, ErrClosed)
}

// heapBytes returns n zero bytes, 8-byte aligned.
func heapBytes(n int) []byte {
	w := make([]uint64, (n+7)/8)
	return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), n)
}

// newHeapRing builds a ring of geometry g over ordinary memory. Its data
// ring's halves are not aliased: heapAppend keeps them equal.
func newHeapRing(g shm.Geometry) *Ring {
	return newRing(heapBytes(shm.ControlSize), heapBytes(int(g.IndexSlots)*shm.IndexEntrySize),
		heapBytes(2*int(g.DataBytes)), heapBytes(int(g.ReaderSlots)*shm.ReaderSlotSize), g)
}

// heapAppend appends p to a heap ring and mirrors the bytes it wrote.
func heapAppend(t *testing.T, r *Ring, p []byte) {
	t.Helper()
	seq, err := r.Append(p)
	require.NoError(t, err)
	start := posOf(r, seq) & r.dataMask
	if end := start + hdrSize + uint64(len(p)); end > r.dataSize {
		copy(r.data[:end-r.dataSize], r.data[r.dataSize:end])
	}
	copy(r.data[r.dataSize:], r.data[:r.dataSize])
}

// posOf returns the data-ring position of committed record seq.
func posOf(r *Ring, seq uint64) uint64 {
	return r.fmt.position(r.index[seq&r.indexMask].word.Load(), r.ctl.dataTail.Load())
}

// record returns the bytes of committed record seq, header first.
func record(r *Ring, seq uint64) []byte {
	return r.data[posOf(r, seq)&r.dataMask:]
}

// ringBytes returns the memory of a heap ring's parts.
func ringBytes(r *Ring) (ctl, index, readers []byte) {
	ctl = unsafe.Slice((*byte)(unsafe.Pointer(r.ctl)), shm.ControlSize)
	index = unsafe.Slice((*byte)(unsafe.Pointer(&r.index[0])), len(r.index)*shm.IndexEntrySize)
	readers = unsafe.Slice((*byte)(unsafe.Pointer(&r.slots[0])), len(r.slots)*shm.ReaderSlotSize)
	return ctl, index, readers
}

func fillRandom(rng *rand.Rand, b []byte) {
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
}

// TestVerifyGarbageNeverPanics feeds Verify control words, index entries
// and reader slots of random bytes, of random but plausible values, and of
// a healthy ring with random bytes changed.
func TestVerifyGarbageNeverPanics(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 4, MaxRecord: 512}
	rng := rand.New(rand.NewPCG(20240611, 1))
	n := uint64(g.IndexSlots)
	for it := 0; it < 600; it++ {
		var r *Ring
		mode := it % 3
		switch mode {
		case 0: // everything random
			r = newHeapRing(g)
			ctl, index, readers := ringBytes(r)
			fillRandom(rng, ctl)
			fillRandom(rng, index)
			fillRandom(rng, readers)
			fillRandom(rng, r.data)
		case 1: // plausible values: words, positions and lengths near the tails
			r = newHeapRing(g)
			tail := rng.Uint64N(4 * n)
			dataTail := rng.Uint64N(4 * g.DataBytes)
			r.ctl.seqTail.Store(tail)
			r.ctl.dataTail.Store(dataTail)
			r.ctl.sleeping.Store(rng.Uint32N(3))
			r.ctl.abandoned.Store(rng.Uint64N(tail + 2))
			fillRandom(rng, r.data)
			for i := range r.index {
				seq := uint64(i) + n*rng.Uint64N(5)
				if rng.IntN(8) == 0 {
					seq = rng.Uint64()
				}
				pos := dataTail - rng.Uint64N(2*g.DataBytes) + rng.Uint64N(64)
				w := r.fmt.committed(seq, pos)&^(3<<stateShift) | rng.Uint64N(4)<<stateShift
				r.index[i].word.Store(w)
				d := r.data[pos&r.dataMask:]
				binary.LittleEndian.PutUint32(d, rng.Uint32N(2*g.MaxRecord))
				binary.LittleEndian.PutUint32(d[4:], rng.Uint32())
			}
			copy(r.data[g.DataBytes:], r.data[:g.DataBytes])
			for i := range r.slots {
				r.slots[i].owner.Store(rng.Uint64N(4) << 32)
				r.slots[i].cursor.Store(rng.Uint64N(tail + 2))
				r.slots[i].waiting.Store(rng.Uint32N(3))
			}
		case 2: // a healthy ring, a few random bytes changed
			r = newHeapRing(g)
			for i := range 10 + rng.IntN(40) {
				heapAppend(t, r, payload(i, rng.IntN(int(g.MaxRecord)+1)))
			}
			if it < 30 {
				verifyOK(t, r)
			}
			ctl, index, readers := ringBytes(r)
			parts := [][]byte{ctl[:512], index, readers, r.data[:g.DataBytes]}
			for range 1 + rng.IntN(8) {
				p := parts[rng.IntN(len(parts))]
				p[rng.IntN(len(p))] = byte(rng.Uint32())
			}
			copy(r.data[g.DataBytes:], r.data[:g.DataBytes])
		}
		var rep Report
		var err error
		func() {
			defer func() {
				if p := recover(); p != nil {
					t.Fatalf("iteration %d (mode %d): Verify panicked: %v", it, mode, p)
				}
			}()
			rep, err = r.Verify()
		}()
		require.NoError(t, err, "iteration %d", it)
		c := rep.Entries
		assert.LessOrEqual(t, c.Committed+c.Abandoned+c.Busy+c.Empty+c.Stale, int(n), "iteration %d", it)
		assert.LessOrEqual(t, rep.Checked, c.Committed, "iteration %d", it)
		assert.LessOrEqual(t, rep.Oldest, rep.Next, "iteration %d", it)
		assert.LessOrEqual(t, len(rep.Problems), maxProblems+1, "iteration %d", it)
		for _, p := range rep.Problems {
			assert.NotEmpty(t, p.Where)
			assert.NotEmpty(t, p.What)
		}
	}
}

// FuzzVerify: whatever the ring's bytes, Verify neither panics nor fails.
func FuzzVerify(f *testing.F) {
	f.Add([]byte{})
	f.Add(validRing())
	seed := validRing()
	wf := newWordFormat(fuzzGeometry)
	binary.LittleEndian.PutUint64(seed[16+3*shm.IndexEntrySize:], wf.committed(2, 100)) // lap 0 of entry 2 in entry 3
	f.Add(seed)
	seed = validRing()
	binary.LittleEndian.PutUint64(seed[16+4*shm.IndexEntrySize:], wf.committed(4+16, 5)) // a lap ahead
	f.Add(seed)
	f.Fuzz(func(t *testing.T, b []byte) {
		r := heapRing(b)
		rep, err := r.Verify()
		if err != nil {
			t.Fatalf("Verify: %v", err)
		}
		if rep.Oldest > rep.Next {
			t.Fatalf("oldest %d after next %d", rep.Oldest, rep.Next)
		}
	})
}

// The list of problems is bounded, and says how many it left out.
func TestVerifyBoundsTheProblemList(t *testing.T) {
	g := shm.Geometry{IndexSlots: 1024, DataBytes: 4096, ReaderSlots: 1}
	r := newHeapRing(g.WithDefaults())
	for i := range r.index {
		r.index[i].word.Store(r.fmt.committed(uint64(i)+1024, 0) &^ (3 << stateShift)) // two problems each
	}
	rep, err := r.Verify()
	require.NoError(t, err)
	require.Len(t, rep.Problems, maxProblems+1)
	last := rep.Problems[maxProblems]
	assert.Equal(t, "verify", last.Where)
	assert.Equal(t, fmt.Sprintf("%d more problems not listed", 2*1024-maxProblems), last.What)
}

// Verify runs while producers append and a reader reads: it must report
// nothing, whatever it catches half-written. Multiple producers run while
// the data ring does not wrap (so a stale producer cannot damage a newer
// record, which Verify would rightly report); a single producer then wraps
// it many times.
func TestVerifyWhileAppending(t *testing.T) {
	for _, tc := range []struct {
		name      string
		g         shm.Geometry
		producers int
		each      int
		maxSize   int
	}{
		{"producers, index laps", shm.Geometry{IndexSlots: 16, DataBytes: 1 << 20, MaxRecord: 1024}, 4, 2000, 200},
		{"one producer, data laps", shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 1024}, 1, 20000, 1024},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := openTestRing(t, tc.g)
			rd := newTestReader(t, r, ReaderOptions{})
			done := make(chan struct{})
			var wg sync.WaitGroup
			for id := range tc.producers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range tc.each {
						// Appends fail only with ErrAbandoned: the reader
						// below may give up on a descheduled producer.
						if _, err := r.Append(payload(i, (i*37+id*11)%(tc.maxSize+1))); err != nil && !errors.Is(err, ErrAbandoned) {
							t.Error(err)
							return
						}
					}
				}()
			}
			go func() { wg.Wait(); close(done) }()
			readerDone := make(chan struct{})
			go func() {
				defer close(readerDone)
				for {
					_, err := rd.Read()
					select {
					case <-done:
						if errors.Is(err, ErrEmpty) {
							return
						}
					default:
					}
				}
			}()
			runs, stale := 0, 0
			for running := true; running; runs++ {
				select {
				case <-done:
					running = false
				default:
				}
				rep, err := r.Verify()
				require.NoError(t, err)
				require.Empty(t, rep.Problems, "run %d", runs)
				stale += rep.Entries.Stale
			}
			<-readerDone
			if tc.producers > 1 {
				require.LessOrEqual(t, r.Counters().DataTail, tc.g.DataBytes, "the data ring must not wrap")
			}
			rep := verifyOK(t, r)
			t.Logf("%d runs, %d stale entries seen; final %+v, checked %d", runs, stale, rep.Entries, rep.Checked)
		})
	}
}
