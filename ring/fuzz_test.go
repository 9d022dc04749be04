package ring

import (
	"context"
	"encoding/binary"
	"errors"
	"testing"
	"time"
	"unsafe"

	"github.com/shmring/shmring/shm"
)

// fuzzGeometry is small so that random bytes cover the whole ring.
var fuzzGeometry = shm.Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 2, MaxRecord: 512}

// heapRing builds a ring over ordinary memory filled from b: the control
// words, the index entries and the data ring all come from untrusted bytes.
func heapRing(b []byte) *Ring {
	g := fuzzGeometry
	words := func(n int) []byte { // 8-byte aligned
		w := make([]uint64, (n+7)/8)
		return unsafe.Slice((*byte)(unsafe.Pointer(&w[0])), n)
	}
	ctl := words(shm.ControlSize)
	index := words(int(g.IndexSlots) * shm.IndexEntrySize)
	data := words(2 * int(g.DataBytes))
	readers := words(int(g.ReaderSlots) * shm.ReaderSlotSize)
	// The fuzzer's bytes go to the places that matter most: the first
	// control words (seqTail, dataTail), then the index, then the data.
	rest := b
	take := func(dst []byte) {
		n := copy(dst, rest)
		rest = rest[n:]
	}
	var tails [16]byte
	take(tails[:])
	binary.LittleEndian.PutUint64(ctl[0:], binary.LittleEndian.Uint64(tails[0:]))
	binary.LittleEndian.PutUint64(ctl[128:], binary.LittleEndian.Uint64(tails[8:]))
	take(index)
	take(data[:g.DataBytes])
	copy(data[g.DataBytes:], data[:g.DataBytes]) // the mirror
	return newRing(ctl, index, data, readers, g)
}

// validRing returns bytes that decode into a ring holding a few good
// records, as a seed the fuzzer can mutate.
func validRing() []byte {
	r := heapRing(nil)
	for i := 0; i < 20; i++ {
		r.Append(payload(i, 50+i*13))
		copy(r.data[r.dataSize:], r.data[:r.dataSize])
	}
	out := make([]byte, 16)
	binary.LittleEndian.PutUint64(out[0:], r.ctl.seqTail.Load())
	binary.LittleEndian.PutUint64(out[8:], r.ctl.dataTail.Load())
	idx := unsafe.Slice((*byte)(unsafe.Pointer(&r.index[0])), len(r.index)*shm.IndexEntrySize)
	out = append(out, idx...)
	return append(out, r.data[:r.dataSize]...)
}

// FuzzReader feeds arbitrary ring contents to a reader. Whatever the bytes,
// it must not panic, must stop within a bounded number of calls, and must
// account for every sequence number it moves past exactly once.
func FuzzReader(f *testing.F) {
	f.Add([]byte{})
	f.Add(validRing())
	f.Add(make([]byte, 16))
	f.Fuzz(func(t *testing.T, b []byte) {
		r := heapRing(b)
		for _, start := range []Start{AtSeq(0), Oldest} {
			if start.kind == startAt && r.ctl.seqTail.Load() == 0 {
				continue
			}
			rd, err := r.NewReader(ReaderOptions{Start: start, Unregistered: true, WaitMax: 1})
			if err != nil {
				t.Fatalf("NewReader: %v", err)
			}
			begin := rd.Cursor()
			var maxCalls = 4*len(r.index) + 64
			calls := 0
			for ; calls < maxCalls; calls++ {
				rec, err := rd.Read()
				if errors.Is(err, ErrEmpty) {
					break
				}
				if errors.Is(err, ErrPending) {
					continue // abandoned on the next call (WaitMax is 1ns)
				}
				if err != nil {
					t.Fatalf("Read: %v", err)
				}
				if len(rec.Data) > r.MaxRecord() {
					t.Fatalf("record of %d bytes, max %d", len(rec.Data), r.MaxRecord())
				}
			}
			if calls == maxCalls {
				t.Fatalf("reader did not finish within %d calls", maxCalls)
			}
			st := rd.Stats()
			moved := rd.Cursor() - begin
			if sum := st.Received + st.Lost + st.Abandoned + st.Corrupt; sum != moved {
				t.Fatalf("accounted %d (%+v), moved %d", sum, st, moved)
			}
		}
	})
}

// A damaged seqTail behind a later lap's word: Read finds nothing claimed
// at the cursor, and Wait must agree and sleep, not return at once and
// make a ReadContext loop spin.
func TestDamagedTailBehindLaterLapWordDoesNotSpin(t *testing.T) {
	r := heapRing(nil)
	for i := range 40 {
		if _, err := r.Append(payload(i, 20)); err != nil {
			t.Fatal(err)
		}
		copy(r.data[r.dataSize:], r.data[:r.dataSize])
	}
	rd, err := r.NewReader(ReaderOptions{Start: AtSeq(20), Unregistered: true})
	if err != nil {
		t.Fatal(err)
	}
	r.ctl.seqTail.Store(20) // the word at 20 is seq 36's (16 entries)
	if _, err := rd.Read(); !errors.Is(err, ErrEmpty) {
		t.Fatalf("Read: %v, want ErrEmpty", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	if err := rd.Wait(ctx, 0); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait returned %v before its context ended: a ReadContext loop would spin", err)
	}
}
