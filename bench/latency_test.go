package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/internal/testproc"
)

// TestMain serves the harness's children (see ServeChild): the paced
// series run their receivers in this test binary.
func TestMain(m *testing.M) {
	ServeChild()
	os.Exit(m.Run())
}

// latencyDir is a fresh directory for one run: in /dev/shm (RAM, as in
// production) when it exists.
func latencyDir(tb testing.TB) string {
	dir, err := os.MkdirTemp("/dev/shm", "shmring-latency")
	if err != nil {
		return tb.TempDir()
	}
	tb.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// runLatency runs n samples of a paced series (paced.go) as shmbench does:
// the sender here, the receiver in a child. The Result has exactly n
// samples, or the test fails.
func runLatency(tb testing.TB, s pacedSeries, n int) *Result {
	tb.Helper()
	h := &harness{ctx: context.Background(), cfg: Config{Exe: os.Args[0], Dir: latencyDir(tb), Samples: n}}
	res, err := h.runPaced(s, n)
	if err != nil {
		tb.Fatalf("%s: %v", s.name, err)
	}
	return res
}

// BenchmarkLatency measures one-way latency between two processes for each
// series, b.N samples each. The metrics p50-ns, p90-ns, p99-ns, p99.9-ns and
// max-ns are the one-way latencies; the futex floor's "awake" counts samples
// in which the receiver never left the CPU (not a wake-up). ns/op is the
// time per sample of the whole run, child start-up included: not a latency.
func BenchmarkLatency(b *testing.B) {
	for _, s := range pacedSeriesList {
		b.Run(s.name, func(b *testing.B) {
			res := runLatency(b, s, b.N)
			sum := res.Latency.Summary()
			b.ReportMetric(float64(sum.P50), "p50-ns")
			b.ReportMetric(float64(sum.P90), "p90-ns")
			b.ReportMetric(float64(sum.P99), "p99-ns")
			b.ReportMetric(float64(sum.P999), "p99.9-ns")
			b.ReportMetric(float64(sum.Max), "max-ns")
			for name, v := range res.Counters {
				b.ReportMetric(float64(v), name)
			}
		})
	}
}

func TestLatencySeries(t *testing.T) {
	const n = 300
	for _, s := range pacedSeriesList {
		t.Run(s.name, func(t *testing.T) {
			res := runLatency(t, s, n)
			lat := res.Latency
			t.Logf("%v %v", lat, res.Counters)
			assert.EqualValues(t, n, lat.Count())
			assert.Zero(t, lat.Clamped(), "samples below zero or beyond a minute")
			assert.Positive(t, lat.Min(), "a sample arrived no later than it was sent")
			assert.Less(t, lat.Max(), DefaultTimeout, "a sample took longer than any wait allows")
			prev := lat.Min()
			for _, q := range []float64{0, 0.5, 0.9, 0.99, 0.999, 1} {
				v := lat.Quantile(q)
				assert.GreaterOrEqual(t, v, prev, "quantile %v", q)
				assert.LessOrEqual(t, v, lat.Max(), "quantile %v", q)
				prev = v
			}
			assert.Equal(t, lat.Max(), lat.Quantile(1))
			if s.name == "floor/futex" {
				assert.Contains(t, res.Counters, "awake")
				assert.LessOrEqual(t, res.Counters["awake"], int64(n))
			}
		})
	}
}

func runNow([]string) error {
	fmt.Printf("now %d\n", Now())
	return nil
}

func TestNowIsSystemWideMonotonic(t *testing.T) {
	// Now reads CLOCK_MONOTONIC: it lies between two direct readings.
	var ts unix.Timespec
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
	before := ts.Nano()
	now := Now()
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts))
	assert.LessOrEqual(t, before, now)
	assert.LessOrEqual(t, now, ts.Nano())

	// Another process reads the same clock.
	before = Now()
	p := testproc.Start(t, "now")
	line, err := p.Expect("now ", time.Minute)
	require.NoError(t, err)
	after := Now()
	child, err := strconv.ParseInt(strings.TrimPrefix(line, "now "), 10, 64)
	require.NoError(t, err)
	assert.Less(t, before, child, "the child read the clock after it was started")
	assert.Less(t, child, after, "the child read the clock before its line arrived")
	require.NoError(t, p.Wait(time.Minute))
}

func TestLatencyHistogram(t *testing.T) {
	var empty Latency
	assert.Zero(t, empty.Count())
	assert.Zero(t, empty.Quantile(0.5))
	assert.Equal(t, Summary{}, empty.Summary())

	var all, low, high Latency
	for i := int64(1); i <= 1000; i++ {
		v := i * 1000 // 1 µs to 1 ms
		all.Record(v)
		if i%2 == 0 {
			low.Record(v)
		} else {
			high.Record(v)
		}
	}
	assert.EqualValues(t, 1000, all.Count())
	assert.Equal(t, time.Microsecond, all.Min())
	assert.Equal(t, time.Millisecond, all.Max())
	assert.Equal(t, time.Millisecond, all.Quantile(1))
	assert.Equal(t, time.Microsecond, all.Quantile(0))
	for q, want := range map[float64]time.Duration{0.5: 500 * time.Microsecond, 0.9: 900 * time.Microsecond, 0.99: 990 * time.Microsecond} {
		assert.InEpsilon(t, float64(want), float64(all.Quantile(q)), 0.001, "quantile %v", q)
	}

	var merged Latency
	merged.Merge(&low)
	merged.Merge(&high)
	merged.Merge(&empty)
	assert.Equal(t, all.Summary(), merged.Summary())
	assert.Equal(t, all.Min(), merged.Min())

	// Out of range samples are kept at the bounds and counted.
	var odd Latency
	odd.Record(-5)
	odd.Record(int64(2 * time.Minute))
	odd.Record(10)
	assert.EqualValues(t, 2, odd.Clamped())
	assert.EqualValues(t, 3, odd.Count())
	assert.Equal(t, time.Duration(0), odd.Min())
	assert.Equal(t, time.Minute, odd.Max())

	// JSON carries everything to another process.
	for _, l := range []*Latency{&all, &odd, &empty} {
		data, err := json.Marshal(l)
		require.NoError(t, err)
		var back Latency
		require.NoError(t, json.Unmarshal(data, &back), "%s", data)
		assert.Equal(t, l.Summary(), back.Summary())
		assert.Equal(t, l.Min(), back.Min())
	}
	var bad Latency
	assert.Error(t, json.Unmarshal([]byte(`{"count":3,"min_ns":1,"max_ns":2,"hdr":"garbage"}`), &bad))

	sum, err := json.Marshal(all.Summary())
	require.NoError(t, err)
	assert.JSONEq(t, `{"count":1000,"p50_ns":500223,"p90_ns":900095,"p99_ns":990207,"p99_9_ns":999423,"max_ns":1000000}`, string(sum))
	assert.Equal(t, "n=1000 p50=500.223µs p90=900.095µs p99=990.207µs p99.9=999.423µs max=1ms", all.Summary().String())
}

func TestLinkWaitsEnd(t *testing.T) {
	_, err := NewLink(make([]byte, LinkBytes-1))
	assert.Error(t, err)

	l, err := NewLink(make([]byte, LinkBytes))
	require.NoError(t, err)
	l.Timeout = 20 * time.Millisecond
	assert.Error(t, l.WaitReady(), "no receiver")
	assert.Error(t, l.WaitAck(1), "no receiver")
	assert.NoError(t, l.WaitAck(0))
	l.Ack(2)
	assert.Error(t, l.WaitAck(1), "acknowledged more than was sent")
	l.Ready()
	assert.NoError(t, l.WaitReady())
	assert.Error(t, CachelineSend(l, 1), "acknowledged more than was sent")
}

// BenchmarkNow is the cost of one clock read; each sample of a series
// includes about one of them (the sender's stamp to its store, and the
// receiver's read).
func BenchmarkNow(b *testing.B) {
	var sink int64
	for b.Loop() {
		sink += Now()
	}
	_ = sink
}
