package ring

import (
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"

	"github.com/shmring/shmring/shm"
)

// BenchmarkAppend is one process appending with no readers.
func BenchmarkAppend(b *testing.B) {
	for _, size := range []int{64, 1 << 10, 16 << 10} {
		b.Run(fmt.Sprintf("%dB", size), func(b *testing.B) {
			r := openTestRing(b, shm.Geometry{IndexSlots: 1 << 16, DataBytes: 1 << 24})
			p := payload(1, size)
			b.SetBytes(int64(size))
			b.ReportAllocs()
			for b.Loop() {
				if _, err := r.Append(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendRingSize is BenchmarkAppend of 64-byte records into rings
// of growing data sizes, in /dev/shm where it exists: once the ring is
// larger than the last-level cache, each append waits for memory, with no
// reader at all.
//
// A whole lap of the data ring and of the index (2^20 slots) is appended
// before the timer starts.
func BenchmarkAppendRingSize(b *testing.B) {
	for _, mib := range []int{4, 16, 64, 256} {
		b.Run(fmt.Sprintf("%dMiB", mib), func(b *testing.B) {
			dir := b.TempDir()
			if d, err := os.MkdirTemp("/dev/shm", "shmring-bench"); err == nil {
				b.Cleanup(func() { os.RemoveAll(d) })
				dir = d
			}
			r, err := Open(filepath.Join(dir, "ring"), Options{Geometry: shm.Geometry{IndexSlots: 1 << 20, DataBytes: uint64(mib) << 20}})
			if err != nil {
				b.Fatal(err)
			}
			defer r.Close()
			p := payload(1, 64)
			// A lap of the data ring and of the index first: the page
			// faults of a fresh file are not what this measures.
			for range max((mib<<20)/(64+hdrSize), 1<<20) {
				if _, err := r.Append(p); err != nil {
					b.Fatal(err)
				}
			}
			b.SetBytes(64)
			for b.Loop() {
				if _, err := r.Append(p); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkAppendBatch appends 64-byte records in batches of 64; ns/op is
// per record.
func BenchmarkAppendBatch(b *testing.B) {
	r := openTestRing(b, shm.Geometry{IndexSlots: 1 << 16, DataBytes: 1 << 24})
	batch := make([][]byte, 64)
	for i := range batch {
		batch[i] = payload(i, 64)
	}
	b.SetBytes(64)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		if n%64 == 0 {
			if _, err := r.AppendBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
		n++
	}
}

// BenchmarkRead is one process reading 64-byte records that are already in
// the ring; ns/op is per record, including the copy and both checks. The
// timer stops to refill the ring once per 32768 reads (stopping it reads
// the memory statistics, which costs more than a thousand reads), and 32768
// records (2.3 MB) stay in the CPU's caches, as a producer's records do when
// the reader follows it closely.
func BenchmarkRead(b *testing.B) {
	const refill = 1 << 15
	r := openTestRing(b, shm.Geometry{IndexSlots: 2 * refill, DataBytes: 1 << 24})
	batch := make([][]byte, 1024)
	for i := range batch {
		batch[i] = payload(i, 64)
	}
	fill := func() {
		for range refill / len(batch) {
			if _, err := r.AppendBatch(batch); err != nil {
				b.Fatal(err)
			}
		}
	}
	rd := newTestReader(b, r, ReaderOptions{Start: AtSeq(0)})
	b.SetBytes(64)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := rd.Read(); err != nil {
			b.StopTimer()
			fill()
			b.StartTimer()
		}
	}
	if st := rd.Stats(); st.Lost+st.Corrupt+st.Abandoned != 0 {
		b.Fatalf("the reader skipped records: %+v", st)
	}
}

// BenchmarkFloorFetchAddCopy is the cost floor of an append in one process:
// one fetch-add and a 64-byte copy, nothing else.
func BenchmarkFloorFetchAddCopy(b *testing.B) {
	var tail atomic.Uint64
	buf := make([]byte, 1<<20)
	p := payload(1, 64)
	for b.Loop() {
		pos := tail.Add(64) - 64
		copy(buf[pos&(1<<20-1):], p)
	}
}

// BenchmarkFloorChecksum is the checksum part of an append of 64 bytes,
// with the checksum records use and with the CRC32C they used before.
func BenchmarkFloorChecksum(b *testing.B) {
	p := payload(1, 64)
	var sink uint32
	b.Run("xxh3", func(b *testing.B) {
		for b.Loop() {
			sink += recordSum(p)
		}
	})
	castagnoli := crc32.MakeTable(crc32.Castagnoli)
	b.Run("crc32c", func(b *testing.B) {
		for b.Loop() {
			sink += crc32.Checksum(p, castagnoli)
		}
	})
	_ = sink
}
