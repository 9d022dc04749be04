package bench

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// Cross-process throughput of the ring: producer processes append b.N
// records in all, one reader process reads and verifies every one. The
// clock runs from the release of the producers until the reader has seen
// the last record, so process start-up is not measured.
//
// Each record carries (producer id << 48 | counter) in its first and last 8
// bytes; the reader checks that every producer's counters arrive complete
// and in order, and that both copies agree (the ring itself also checks
// every record's checksum).

func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		"producer": runProducer,
		"reader":   runReader,

		"now": runNow,
	})
}

func ringGeometry(size int) shm.Geometry {
	return shm.Geometry{IndexSlots: 1 << 17, DataBytes: uint64(max(1<<24, 1<<10*size))}
}

// ringDir is where benchmark rings live: /dev/shm (RAM, as in production)
// when it exists, so that page-cache writeback of a disk does not skew them.
func ringDir(b *testing.B) string {
	dir, err := os.MkdirTemp("/dev/shm", "shmring-bench")
	if err != nil {
		return b.TempDir()
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

func BenchmarkCrossProcess(b *testing.B) {
	cases := []struct {
		producers, size, batch int
	}{
		{1, 64, 1},
		{1, 64, 64},
		{4, 64, 1},
		{4, 64, 64},
		{1, 1 << 10, 1},
		{1, 16 << 10, 1},
	}
	for _, c := range cases {
		name := fmt.Sprintf("%dp1r/%dB/batch%d", c.producers, c.size, c.batch)
		b.Run(name, func(b *testing.B) { benchCrossProcess(b, c.producers, c.size, c.batch) })
	}
}

func benchCrossProcess(b *testing.B, producers, size, batch int) {
	path := filepath.Join(ringDir(b), "ring")
	r, err := ring.Open(path, ring.Options{Geometry: ringGeometry(size)})
	if err != nil {
		b.Fatal(err)
	}
	defer r.Close()
	total := b.N
	per := (total + producers - 1) / producers
	total = per * producers

	reader := testproc.Start(b, "reader", path, strconv.Itoa(total), strconv.Itoa(producers), strconv.Itoa(size))
	if _, err := reader.Expect("ready", time.Minute); err != nil {
		b.Fatal(err)
	}
	var procs []*testproc.Proc
	for i := range producers {
		p := testproc.Start(b, "producer", path, strconv.Itoa(i), strconv.Itoa(per), strconv.Itoa(size), strconv.Itoa(batch))
		if _, err := p.Expect("ready", time.Minute); err != nil {
			b.Fatal(err)
		}
		procs = append(procs, p)
	}
	b.SetBytes(int64(size))
	b.ResetTimer()
	start := time.Now()
	for _, p := range procs {
		p.Stdin.Close() // release all producers at once
	}
	// A producer may drop records (ErrAbandoned: it was descheduled while
	// the others lapped it), so the reader cannot count on seeing total:
	// once every producer is done, it is told to drain what is left.
	dropped, appendNs := 0, 0.0
	for _, p := range procs {
		if err := p.Wait(10 * time.Minute); err != nil {
			b.Fatal(err)
		}
		var n int
		var ns float64
		line, err := p.Expect("dropped ", time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := fmt.Sscanf(line, "dropped %d ns/record %g", &n, &ns); err != nil {
			b.Fatalf("producer said %q: %v", line, err)
		}
		dropped += n
		appendNs += ns / float64(producers)
	}
	reader.Stdin.Close()
	line, err := reader.Expect("done", 10*time.Minute)
	elapsed := time.Since(start)
	b.StopTimer()
	if err != nil {
		b.Fatal(err)
	}
	var received, lost, bad uint64
	if _, err := fmt.Sscanf(line, "done received=%d lost=%d bad=%d", &received, &lost, &bad); err != nil {
		b.Fatalf("reader said %q: %v", line, err)
	}
	if bad != 0 {
		b.Fatalf("reader found %d records out of order or damaged", bad)
	}
	b.ReportMetric(float64(received)/elapsed.Seconds(), "records/s")
	b.ReportMetric(float64(lost), "lost")
	b.ReportMetric(float64(dropped), "dropped")
	// A producer's own time per record: when it is close to 1e9 over
	// records/s (times the producers), the producers set the pace, not
	// the reader.
	b.ReportMetric(appendNs, "producer-ns/record")
}

func openRing(path string) (*ring.Ring, error) {
	return ring.Open(path, ring.Options{})
}

// runProducer: path id count size batch.
func runProducer(args []string) error {
	r, err := openRing(args[0])
	if err != nil {
		return err
	}
	defer r.Close()
	id, _ := strconv.Atoi(args[1])
	count, _ := strconv.Atoi(args[2])
	size, _ := strconv.Atoi(args[3])
	batch, _ := strconv.Atoi(args[4])
	recs := make([][]byte, batch)
	for i := range recs {
		recs[i] = make([]byte, size)
	}
	fmt.Println("ready")
	testproc.WaitStdinClosed()
	dropped := 0
	start := time.Now()
	defer func() {
		fmt.Printf("dropped %d ns/record %g\n", dropped, float64(time.Since(start).Nanoseconds())/float64(max(count, 1)))
	}()
	for n := 0; n < count; {
		k := min(batch, count-n)
		for i := range k {
			stampRecord(recs[i], id, uint64(n+i))
		}
		if k == 1 {
			_, err = r.Append(recs[0])
		} else {
			_, err = r.AppendBatch(recs[:k])
		}
		if errors.Is(err, ring.ErrAbandoned) {
			dropped += k
		} else if err != nil {
			return err
		}
		// ErrAbandoned: this producer was descheduled long enough for the
		// others to lap the ring over its claimed entries. Those records
		// are gone, and the reader counts them as lost; go on.
		n += k
	}
	return nil
}

func stampRecord(p []byte, id int, counter uint64) {
	tag := uint64(id)<<48 | counter
	binary.LittleEndian.PutUint64(p, tag)
	binary.LittleEndian.PutUint64(p[len(p)-8:], tag)
}

// runReader: path total producers size. Reads from sequence 0 until it has
// moved past total records, spinning (it has a core of its own).
func runReader(args []string) error {
	r, err := openRing(args[0])
	if err != nil {
		return err
	}
	defer r.Close()
	total, _ := strconv.ParseUint(args[1], 10, 64)
	producers, _ := strconv.Atoi(args[2])
	size, _ := strconv.Atoi(args[3])
	batch := awaitCount(r.Region().Geometry(), size)
	rd, err := r.NewReader(ring.ReaderOptions{Start: ring.AtSeq(0), Batch: int(batch)})
	if err != nil {
		return err
	}
	defer rd.Close()
	next := make([]uint64, producers)
	var bad uint64
	fmt.Println("ready")
	if f := os.Getenv("SHMRING_BENCH_READER_PROFILE"); f != "" {
		out, err := os.Create(f)
		if err != nil {
			return err
		}
		pprof.StartCPUProfile(out)
		defer pprof.StopCPUProfile()
	}
	var producersDone atomic.Bool
	go func() {
		testproc.WaitStdinClosed()
		producersDone.Store(true)
	}()
	idle := 0
	for rd.Cursor() < total {
		if rd.Buffered() == 0 {
			awaitBatch(rd, min(batch, total-rd.Cursor()), producersDone.Load)
		}
		rec, err := rd.Read()
		if err == nil {
			idle = 0
			if len(rec.Data) != size {
				bad++
				continue
			}
			tag := binary.LittleEndian.Uint64(rec.Data)
			id, counter := int(tag>>48), tag&(1<<48-1)
			if id >= producers || binary.LittleEndian.Uint64(rec.Data[size-8:]) != tag || counter < next[id] {
				bad++
				continue
			}
			next[id] = counter + 1
			continue
		}
		if errors.Is(err, ring.ErrEmpty) && producersDone.Load() && rd.Lag() == 0 {
			break // every producer has exited and the ring is drained
		}
		if !errors.Is(err, ring.ErrEmpty) && !errors.Is(err, ring.ErrPending) {
			return err
		}
		// Empty after awaitBatch's time limit, or an entry pending before
		// the batch's last: pause before the next Read, each of which
		// loads the head's lines, as ringReceiver does.
		spinPause(awaitPause)
		if idle++; idle > 100 {
			idle = 0
			if err := rd.Wait(context.Background(), time.Millisecond); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
				return err
			}
		}
	}
	st := rd.Stats()
	fmt.Printf("done received=%d lost=%d bad=%d\n", st.Received, st.Lost+st.Abandoned+st.Corrupt, bad)
	return nil
}
