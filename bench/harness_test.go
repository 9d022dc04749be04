package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

func frame(size, id int, seq uint64, stamp int64) []byte {
	msg := make([]byte, size)
	putFrame(msg, stamp, id, seq)
	return msg
}

func TestFrameRoundTrip(t *testing.T) {
	msg := frame(MinSize, 3, 12345, 987654321)
	stamp, id, seq := readFrame(msg)
	assert.Equal(t, int64(987654321), stamp)
	assert.Equal(t, 3, id)
	assert.Equal(t, uint64(12345), seq)
	_, _, seq = readFrame(frame(64, 1, endSeq, 1))
	assert.Equal(t, uint64(endSeq), seq)
}

// The verifier counts exactly what a reader missed, saw twice or out of
// order, and ends at the last end marker.
func TestVerifier(t *testing.T) {
	v := newVerifier(2, 32, 2)
	add := func(id int, seq uint64) bool { return v.add(frame(32, id, seq, Now()-100_000)) }
	for _, seq := range []uint64{0, 1, 2, 5, 6} { // 3 and 4 lost
		assert.True(t, add(0, seq))
	}
	assert.True(t, add(1, 0))
	assert.True(t, add(1, 1))
	assert.True(t, add(1, 1), "a duplicate is disorder")
	assert.True(t, v.add(make([]byte, 31)), "wrong size")
	assert.True(t, add(7, 0), "unknown producer")
	assert.True(t, add(0, endSeq))
	assert.True(t, add(0, endSeq), "a second end marker of one producer changes nothing")
	assert.False(t, v.done())
	before := Now()
	assert.False(t, add(1, endSeq), "the last end marker ends the run")
	after := Now()
	assert.True(t, v.done())

	res := v.result(after + 1e9)
	assert.EqualValues(t, 8, res.Received)
	assert.EqualValues(t, 1, res.Disorder)
	assert.EqualValues(t, 2, res.Malformed)
	assert.True(t, before <= res.EndNs && res.EndNs <= after, "the end is when the last marker came")
	// Every second sequence number is sampled: 0, 2, 6 of producer 0 and
	// 0 of producer 1.
	assert.EqualValues(t, 4, res.Latency.Count())
	assert.GreaterOrEqual(t, res.Latency.Min(), 100*time.Microsecond)
	assert.Less(t, res.Latency.Max(), time.Minute)

	// Two readers that saw the same tags in the same order agree; another
	// order does not.
	a, b, c := newVerifier(2, 16, 1), newVerifier(2, 16, 1), newVerifier(2, 16, 1)
	for _, v := range []*verifier{a, b} {
		v.add(frame(16, 0, 0, 1))
		v.add(frame(16, 1, 0, 1))
	}
	c.add(frame(16, 1, 0, 1))
	c.add(frame(16, 0, 0, 1))
	assert.Equal(t, a.res.OrderHash, b.res.OrderHash)
	assert.NotEqual(t, a.res.OrderHash, c.res.OrderHash)
}

func readerResult(received uint64, hash uint64, end int64) ReaderResult {
	return ReaderResult{Received: received, OrderHash: hash, EndNs: end, Latency: new(Latency)}
}

// A row's check says what went wrong: losses are counted (and fail the row
// only on a transport that must not lose), disagreement and disorder fail.
func TestRowCheck(t *testing.T) {
	prod := []ProducerResult{{Sent: 100, StartNs: 1_000_000_000}}
	for _, c := range []struct {
		series  string
		readers []ReaderResult
		check   string
		failed  bool
	}{
		{"events/wake", []ReaderResult{readerResult(100, 7, 2e9), readerResult(100, 7, 2e9)}, "ok", false},
		{"events/wake", []ReaderResult{readerResult(100, 7, 2e9), readerResult(90, 8, 2e9)}, "lost 10", false},
		{"broker/unix", []ReaderResult{readerResult(90, 8, 2e9)}, "LOST 10 on a lossless transport", true},
		{"ring", []ReaderResult{readerResult(100, 7, 2e9), readerResult(100, 8, 2e9)}, "readers disagree on the order", true},
		{"chan", []ReaderResult{readerResult(100, 7, 2e9), readerResult(100, 8, 2e9)}, "readers disagree on the order", true},
		{"pipe", []ReaderResult{{Received: 100, Disorder: 3, EndNs: 2e9}}, "3 out of order", true},
		{"pipe", []ReaderResult{readerResult(101, 1, 2e9)}, "1 bad", true},
	} {
		r := &Row{Series: c.series}
		hist := new(Latency)
		r.add(runOut{producers: prod, readers: c.readers}, hist)
		r.finish(hist, nil, transports[c.series])
		assert.Equal(t, c.check, r.Check, "%s %+v", c.series, c.readers)
		assert.Equal(t, c.failed, r.Failed(), "%s %s", c.series, r.Check)
	}

	// The rate is the slowest reader's, over the time from the first send
	// to the last reader's end; the row's is the median of its runs.
	r := &Row{Series: "ring", Size: 100}
	hist := new(Latency)
	for _, end := range []int64{2e9, 3e9, 1.5e9} {
		r.add(runOut{producers: prod, readers: []ReaderResult{readerResult(100, 1, end), readerResult(80, 1, end)}}, hist)
	}
	r.finish(hist, nil, transports["ring"])
	assert.Equal(t, []float64{80, 40, 160}, r.RunRates)
	assert.Equal(t, 80.0, r.EventsPerSec)
	assert.InDelta(t, 0.008, r.MBPerSec, 1e-12)
	assert.EqualValues(t, 60, r.Lost, "the most one reader missed, over three runs")

	// At a rate: the rate kept, and a producer that fell behind is flagged
	// (more than 1 % of its sends late), not failed.
	r = &Row{Series: "pipe", Rate: 100}
	late := []ProducerResult{{Sent: 100, Behind: 2, StartNs: 1e9, EndNs: 3e9}}
	r.add(runOut{producers: late, readers: []ReaderResult{readerResult(100, 1, 3e9)}}, new(Latency))
	r.finish(new(Latency), nil, transports["pipe"])
	assert.Equal(t, 50.0, r.Achieved)
	assert.Equal(t, "behind 2", r.Check)
	assert.False(t, r.Failed())

	r = &Row{Series: "pipe"}
	r.finish(new(Latency), []string{"boom"}, transports["pipe"])
	assert.Equal(t, "FAILED", r.Check)
	assert.True(t, r.Failed())
}

func TestMedian(t *testing.T) {
	assert.Equal(t, 2.0, median([]float64{3, 1, 2}))
	assert.Equal(t, 2.5, median([]float64{4, 1, 3, 2}))
	in := []float64{3, 1, 2}
	median(in)
	assert.Equal(t, []float64{3, 1, 2}, in, "the input is left alone")
}

func TestRoundSamples(t *testing.T) {
	for _, c := range []struct{ samples, rounds int }{{20000, 5}, {1001, 2}, {7, 3}, {3, 3}, {5, 1}} {
		total, prev := 0, c.samples
		for round := range c.rounds {
			n := roundSamples(c.samples, c.rounds, round)
			assert.Positive(t, n, "%+v round %d", c, round)
			assert.LessOrEqual(t, n, prev, "%+v: the first rounds take the remainder", c)
			assert.LessOrEqual(t, n-c.samples/c.rounds, 1, "%+v: even shares", c)
			total, prev = total+n, n
		}
		assert.Equal(t, c.samples, total, "%+v", c)
	}
}

func TestConfigDefaultsAndErrors(t *testing.T) {
	c, err := Config{Dir: t.TempDir()}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, 250*time.Millisecond, c.Duration)
	assert.Equal(t, 3, c.Repeat)
	assert.Equal(t, []int{64}, c.Sizes)
	assert.Equal(t, []string{"spin", "wake", "timer"}, c.Modes)
	assert.NotEmpty(t, c.Exe)
	q, err := Config{Dir: t.TempDir(), Quick: true}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, 100*time.Millisecond, q.Duration)
	assert.Equal(t, 1, q.Repeat)
	assert.Equal(t, 5, c.Rounds)
	assert.Equal(t, 2, q.Rounds)
	few, err := Config{Dir: t.TempDir(), Samples: 3, Rounds: 10}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, 3, few.Rounds, "no round without a sample")

	for _, bad := range []Config{
		{Sizes: []int{15}},
		{Sizes: []int{MaxSize + 1}},
		{Rate: MaxRate + 1},
		{Modes: []string{"poll"}},
		{Readers: []int{0}},
		{Producers: []int{65}},
		{Series: []string{"smoke-signals"}},
		{Rate: -1},
		{Rounds: -1},
		{Dir: "/nonexistent/shmbench"},
		{Dir: "/dev/null"},
		{RingBytes: 5_000_000},
		{RingBytes: -1},
		{RingSlots: 1000},
		{RingSlots: shm.MaxIndexSlots * 2},
		{RingBytes: 4096, Sizes: []int{4096}},
	} {
		if bad.Dir == "" {
			bad.Dir = t.TempDir()
		}
		_, err := bad.withDefaults()
		assert.Error(t, err, "%+v", bad)
	}
	// Modes select the bus's series.
	c, err = Config{Dir: t.TempDir(), Modes: []string{"wake"}}.withDefaults()
	require.NoError(t, err)
	assert.True(t, c.wants("events/wake"))
	assert.False(t, c.wants("events/spin"))
	assert.True(t, c.wants("broker/unix"))
}

// The ring and events rows run on ringSizes' ring unless told otherwise,
// prepareRing makes its file with exactly the geometry the report states,
// and eventOverhead is what the bus adds to a message.
func TestRingFile(t *testing.T) {
	c, err := Config{Dir: t.TempDir(), Sizes: []int{64, MaxSize}}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, []RingGeometry{
		{Size: 64, DataBytes: 64 << 20, IndexSlots: 1 << 20},
		{Size: MaxSize, DataBytes: 128 << 20, IndexSlots: 1 << 20},
	}, c.ringFiles())
	c.Series = []string{"pipe"}
	assert.Empty(t, c.ringFiles(), "no ring or events rows")

	c, err = Config{Dir: t.TempDir(), RingBytes: 8 << 20, RingSlots: 1 << 16}.withDefaults()
	require.NoError(t, err)
	assert.Equal(t, []RingGeometry{{Size: 64, DataBytes: 8 << 20, IndexSlots: 1 << 16}}, c.ringFiles())

	env := &runEnv{spec: childSpec{Dir: t.TempDir(), Size: 64}, ring: c.ringFile(64)}
	require.NoError(t, prepareRing(env))
	region, err := shm.Open(ringPath(env.spec.Dir), shm.Options{})
	require.NoError(t, err)
	defer region.Close()
	assert.Equal(t, env.ring, region.Geometry())

	bus, err := events.Open(events.Options{Path: ringPath(env.spec.Dir), Mode: events.Manual, Observe: true, MustExist: true})
	require.NoError(t, err)
	defer bus.Close()
	assert.Equal(t, int(env.ring.MaxRecord)-eventOverhead, bus.MaxData(benchSource, benchName, ""))
}

// A report names its ring files: one geometry, or each with its sizes.
func TestRingLine(t *testing.T) {
	var out bytes.Buffer
	rep := &Report{Rings: []RingGeometry{{Size: 64, DataBytes: 64 << 20, IndexSlots: 1 << 20}}}
	require.NoError(t, rep.WriteTable(&out))
	assert.Contains(t, out.String(), "\nring: 64MiB data, 1048576 index slots (ring and events series;")

	out.Reset()
	rep.Rings = append(rep.Rings, RingGeometry{Size: 256, DataBytes: 64 << 20, IndexSlots: 1 << 20}, RingGeometry{Size: MaxSize, DataBytes: 128 << 20, IndexSlots: 1 << 20})
	require.NoError(t, rep.WriteTable(&out))
	assert.Contains(t, out.String(), "\nring: 64MiB data, 1048576 index slots at 64B, 256B; 128MiB data, 1048576 index slots at 64KiB (")

	out.Reset()
	rep.Rings = nil
	require.NoError(t, rep.WriteTable(&out))
	assert.NotContains(t, out.String(), "ring:")
}

// A child that fails says why, and the row carries it; the others still run.
func TestRunReportsAFailingRow(t *testing.T) {
	rep, err := Run(context.Background(), Config{
		Exe: "/bin/false", Dir: t.TempDir(), Quick: true, Readers: []int{1}, Producers: []int{1},
		Series: []string{"pipe", "floor/futex"},
	})
	require.NoError(t, err)
	require.NotEmpty(t, rep.Rows)
	for _, r := range rep.Rows {
		assert.True(t, r.Failed(), r.Series)
		assert.NotEmpty(t, r.Err, r.Series)
	}
	var out bytes.Buffer
	require.NoError(t, rep.WriteTable(&out))
	assert.Contains(t, out.String(), "FAILED")
	assert.Contains(t, out.String(), "error: ")
}

func TestPlotNeedsLatencyRows(t *testing.T) {
	err := Plot(&Report{}, t.TempDir()+"/x.png")
	assert.Error(t, err)
	_, statErr := os.Stat(t.TempDir() + "/x.png")
	assert.True(t, os.IsNotExist(statErr))
}

func TestMachine(t *testing.T) {
	m := ReadMachine()
	assert.Positive(t, m.CPUs)
	assert.True(t, strings.HasPrefix(m.Go, "go"))
	assert.Contains(t, m.String(), "CPUs")
}

// progressFunc calls f with every progress line.
type progressFunc func(line string)

func (p progressFunc) Write(b []byte) (int, error) {
	p(string(b))
	return len(b), nil
}

// Interrupted in the middle of a run, the harness kills its children,
// removes its files, and returns the rows measured before.
func TestRunInterrupted(t *testing.T) {
	dir := t.TempDir()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	rep, err := Run(ctx, Config{
		Dir: dir, Readers: []int{1}, Producers: []int{1}, Samples: 200,
		Duration: time.Hour, // only the interruption ends the pipe's run
		Series:   []string{"floor/futex", "pipe"},
		Progress: progressFunc(func(line string) {
			if strings.Contains(line, "pipe") {
				go func() {
					// Once the run's children are up: its directory
					// has been made by then.
					waitFor(t, func() bool { entries, _ := os.ReadDir(dir); return len(entries) > 0 })
					cancel()
				}()
			}
		}),
	})
	require.ErrorIs(t, err, context.Canceled)
	require.NotNil(t, rep)
	assert.True(t, rep.Interrupted)
	require.Len(t, rep.Rows, 1, "the futex row, and not the interrupted one")
	assert.Equal(t, "floor/futex", rep.Rows[0].Series)
	assert.Equal(t, "ok", rep.Rows[0].Check)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	assert.Empty(t, entries, "the run's directory is removed")
}

func TestRunSelectsNothing(t *testing.T) {
	_, err := Run(context.Background(), Config{Dir: t.TempDir(), Modes: []string{"spin"}, Series: []string{"events/wake"}})
	assert.ErrorContains(t, err, "no rows")
}

func waitFor(t *testing.T, cond func() bool) {
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Error("condition not met within a minute")
			return
		}
		time.Sleep(time.Millisecond)
	}
}

func TestMeasureCPUSpeeds(t *testing.T) {
	var allowed unix.CPUSet
	require.NoError(t, unix.SchedGetaffinity(0, &allowed))
	speeds := MeasureCPUSpeeds()
	require.Len(t, speeds, allowed.Count(), "one speed per CPU this process may use")
	fastest := 0.0
	for _, s := range speeds {
		assert.True(t, allowed.IsSet(s.CPU), "cpu%d is not one of ours", s.CPU)
		assert.Greater(t, s.Relative, 0.0)
		assert.LessOrEqual(t, s.Relative, 1.0)
		fastest = max(fastest, s.Relative)
	}
	assert.Equal(t, 1.0, fastest, "speeds are relative to the fastest CPU")
	assert.Greater(t, MeasureClockRead(), 0.0)

	assert.Equal(t, "", slowCPUs([]CPUSpeed{{0, 1}, {1, 0.85}}))
	assert.Equal(t, "cpu1 at 0.50×, cpu3 at 0.79×", slowCPUs([]CPUSpeed{{0, 1}, {1, 0.5}, {2, 1}, {3, 0.79}}))
}

// awaitBatch returns at once when the n-th record is there, stops looking
// when told to, and gives up on its own when the stream stops short.
func TestAwaitBatch(t *testing.T) {
	r, err := ring.Open(t.TempDir()+"/ring", ring.Options{Geometry: shm.Geometry{IndexSlots: 64, DataBytes: 1 << 12}})
	require.NoError(t, err)
	defer r.Close()
	rd, err := r.NewReader(ring.ReaderOptions{Start: ring.AtSeq(0), Batch: 8})
	require.NoError(t, err)
	defer rd.Close()
	for range 8 {
		_, err := r.Append([]byte("record"))
		require.NoError(t, err)
	}

	looked := 0
	awaitBatch(rd, 8, func() bool { looked++; return false })
	assert.Zero(t, looked, "the 8th record is committed: no wait")

	// Nine are asked for and eight are there: the wait ends on done,
	// or, with done never true, at its own limit.
	awaitBatch(rd, 9, func() bool { looked++; return looked == 3 })
	assert.Equal(t, 3, looked)
	looked = 0
	awaitBatch(rd, 9, func() bool { looked++; return false })
	assert.Equal(t, awaitSpins, looked)

	// What the wait was for is read in one batch.
	for i := range 8 {
		rec, err := rd.Read()
		require.NoError(t, err)
		assert.Equal(t, uint64(i), rec.Seq)
		if i < 7 {
			assert.Equal(t, 7-i, rd.Buffered())
		}
	}
	_, err = rd.Read()
	assert.ErrorIs(t, err, ring.ErrEmpty)

	// A batch of small records, at most 256 KiB of large ones, at most a
	// quarter of a small ring's index or data, at least one.
	big := shm.Geometry{IndexSlots: 1 << 20, DataBytes: 64 << 20}
	assert.Equal(t, uint64(maxAwait), awaitCount(big, 64))
	assert.Equal(t, uint64(15), awaitCount(big, 16<<10)) // 15 × 16392 bytes ≤ 256 KiB < 16
	assert.Equal(t, uint64(1), awaitCount(big, 1<<20))
	assert.Equal(t, uint64(128), awaitCount(shm.Geometry{IndexSlots: 512, DataBytes: 64 << 20}, 64))
	assert.Equal(t, uint64(227), awaitCount(shm.Geometry{IndexSlots: 1 << 20, DataBytes: 64 << 10}, 64)) // 16 KiB / 72
	assert.Equal(t, uint64(1), awaitCount(shm.Geometry{IndexSlots: 2, DataBytes: 64 << 10}, 64))
}

// The ring row's receiver reads what is there, short of a batch, and stops
// once told to and the ring is empty.
func TestRingReceiverDrainsThenStops(t *testing.T) {
	dir := t.TempDir()
	r, err := ring.Open(ringPath(dir), ring.Options{Geometry: shm.Geometry{IndexSlots: 64, DataBytes: 1 << 12}})
	require.NoError(t, err)
	defer r.Close()
	rcv, err := newRingReceiver(&childSpec{Dir: dir, Size: 16}, nil)
	require.NoError(t, err)
	defer rcv.close()
	require.Equal(t, uint64(16), rcv.(*ringReceiver).await, "a quarter of the index")
	for i := range 5 {
		_, err := r.Append(frame(16, 0, uint64(i), 0))
		require.NoError(t, err)
	}
	stop := make(chan struct{})
	close(stop)
	var got []uint64
	require.NoError(t, rcv.receive(func(msg []byte) bool {
		_, _, seq := readFrame(msg)
		got = append(got, seq)
		return true
	}, stop))
	assert.Equal(t, []uint64{0, 1, 2, 3, 4}, got)
	assert.Equal(t, map[string]int64{"lost": 0, "abandoned": 0, "corrupt": 0}, rcv.counters())
}
