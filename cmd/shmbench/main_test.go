package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/bench"
)

// The harness re-executes this test binary for its children.
func TestMain(m *testing.M) {
	bench.ServeChild()
	os.Exit(m.Run())
}

func run(t *testing.T, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := newCommand(&out, &errOut)
	cmd.SetArgs(args)
	err = cmd.Execute()
	return out.String(), errOut.String(), err
}

// A quick run as JSON: every scenario's rows are there, each checked, and
// the comparisons are filled in.
func TestQuickJSON(t *testing.T) {
	png := filepath.Join(t.TempDir(), "cdf.png")
	stdout, stderr, err := run(t, "--quick", "--json", "--readers", "1,2", "--samples", "300", "--dir", t.TempDir(), "--plot", png)
	require.NoError(t, err, stderr)
	var rep bench.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)

	assert.Positive(t, rep.Machine.CPUs)
	assert.NotEmpty(t, rep.Machine.Go)
	assert.NotEmpty(t, rep.Elapsed)

	type key struct{ scenario, series, method string }
	rows := map[key][]*bench.Row{}
	for _, r := range rep.Rows {
		rows[key{r.Scenario, r.Series, r.Method}] = append(rows[key{r.Scenario, r.Series, r.Method}], r)
		assert.Empty(t, r.Err, "%s %s", r.Series, r.Method)
		assert.False(t, r.Failed(), "%s %s %d→%d: %s", r.Series, r.Method, r.Producers, r.Readers, r.Check)
		assert.Positive(t, r.Sent, "%s %s sent", r.Series, r.Method)
	}
	// The paced series: the floors and the bus, each with all its samples.
	for _, s := range []string{"floor/cacheline", "floor/futex", "ring/spin", "events/spin", "events/wake"} {
		rs := rows[key{"latency", s, "paced"}]
		require.Len(t, rs, 1, s)
		assert.EqualValues(t, 300, rs[0].Latency.Count, s)
		assert.Positive(t, rs[0].Latency.P50, s)
		assert.LessOrEqual(t, rs[0].Latency.P50, rs[0].Latency.Max, s)
		assert.Equal(t, "ok", rs[0].Check, s)
		// --quick takes them in two rounds, each series in turn, and
		// compares with the floor round by round.
		assert.Equal(t, 2, rs[0].Runs, s)
		assert.Len(t, rs[0].RoundP50s, 2, s)
		if !strings.HasPrefix(s, "floor/") {
			require.Len(t, rs[0].VsFloorRounds, 2, s)
			assert.InDelta(t, (rs[0].VsFloorRounds[0]+rs[0].VsFloorRounds[1])/2, rs[0].VsFloor, 1e-9, "%s: the median of two rounds", s)
		}
	}
	// At a rate, with 1 and 2 readers: the bus's modes and the baselines.
	for _, s := range []string{"events/spin", "events/wake", "events/timer", "broker/unix", "pipe", "chan"} {
		rs := rows[key{"latency", s, "rate"}]
		require.Len(t, rs, 2, s)
		for _, r := range rs {
			assert.Equal(t, 10000, r.Rate, s)
			assert.Positive(t, r.Latency.Count, s)
			if s != "broker/unix" {
				assert.Positive(t, r.VsBroker, "%s against the broker", s)
			}
			if !strings.HasPrefix(s, "events/") {
				assert.Zero(t, r.Lost, "%s loses nothing", s)
			}
		}
	}
	// Throughput: the ring rows and every baseline, for 1→1, 1→2 and 2→1.
	for _, s := range []string{"ring", "events/spin", "events/wake", "events/timer", "broker/unix", "chan"} {
		rs := rows[key{"throughput", s, "full speed"}]
		require.Len(t, rs, 3, s)
		for _, r := range rs {
			assert.Positive(t, r.EventsPerSec, s)
			assert.InDelta(t, r.EventsPerSec*float64(r.Size)/1e6, r.MBPerSec, 1e-6, s)
			assert.Len(t, r.RunRates, 1, s)
		}
	}
	require.Len(t, rows[key{"throughput", "pipe", "full speed"}], 2, "pipe: one producer only")
	floor := rows[key{"throughput", "floor/spsc", "full speed"}]
	require.Len(t, floor, 1)
	assert.Positive(t, floor[0].EventsPerSec)
	for _, r := range rows[key{"throughput", "ring", "full speed"}] {
		assert.Positive(t, r.VsFloor, "ring against the spsc floor")
		assert.Positive(t, r.VsBroker, "ring against the broker")
	}

	b, err := os.ReadFile(png)
	require.NoError(t, err)
	assert.True(t, bytes.HasPrefix(b, []byte("\x89PNG\r\n")), "plot is a PNG")
}

// The table: both sections, their headers, and a line per row.
func TestTable(t *testing.T) {
	stdout, stderr, err := run(t, "--quick", "--readers", "1", "--producers", "1", "--series", "floor/futex,events/wake,broker/unix,floor/spsc", "--samples", "200", "--dir", t.TempDir())
	require.NoError(t, err, stderr)
	assert.Contains(t, stdout, "machine: ")
	assert.Contains(t, stdout, "Latency, one way")
	assert.Contains(t, stdout, "Throughput, as fast as the producers send")
	for _, h := range []string{"p50", "p99.9", "×floor", "×broker", "events/s", "MB/s", "check"} {
		assert.Contains(t, stdout, h)
	}
	lines := 0
	for _, l := range strings.Split(stdout, "\n") {
		f := strings.Fields(l)
		if len(f) > 0 && (f[0] == "floor/futex" || f[0] == "events/wake" || f[0] == "broker/unix" || f[0] == "floor/spsc") {
			lines++
			// ok, or flagged without failing: under -race on a busy
			// machine a producer may fall behind its rate.
			if f[len(f)-1] != "ok" {
				assert.Equal(t, "behind", f[len(f)-2], l)
			}
		}
	}
	// futex and wake paced; wake and broker at a rate; spsc, wake and broker at full speed.
	assert.Equal(t, 7, lines, stdout)
	assert.Contains(t, stderr, "latency", "progress lines")
}

func TestUsageErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--size", "8"},
		{"--mode", "busy"},
		{"--series", "carrier-pigeon"},
		{"--readers", "0"},
		{"--readers", "x"},
		{"--rate", "-1"},
		{"extra"},
		{"--dir", "/nonexistent/shmbench"},
	} {
		if !slices.Contains(args, "--dir") {
			args = append(args, "--dir", t.TempDir())
		}
		// --quick, so that a case that wrongly passes is over soon.
		_, _, err := run(t, append(args, "--quick")...)
		var usage errUsage
		assert.True(t, errors.As(err, &usage), "%q: %v", args, err)
	}
}

// A ring geometry the ring cannot have, or too small for the payloads, is a
// usage error that says so, before any child runs.
func TestRingGeometryUsageErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--ring-bytes", "5000000"}, "data bytes 5000000: want a power of two"},
		{[]string{"--ring-bytes", "lots"}, `invalid argument "lots" for "--ring-bytes"`},
		{[]string{"--ring-bytes", "4MB"}, "such as 67108864 or 64MiB"},
		{[]string{"--ring-bytes", "4KiB", "--size", "4096"}, "too small for 4096-byte payloads"},
		{[]string{"--ring-slots", "1000"}, "index slots 1000: want a power of two"},
	} {
		_, _, err := run(t, append(c.args, "--quick", "--dir", t.TempDir())...)
		var usage errUsage
		assert.True(t, errors.As(err, &usage), "%q: %v", c.args, err)
		assert.ErrorContains(t, err, c.want, "%q", c.args)
	}
}

// A run on a ring of the geometry asked for says so in its JSON report.
func TestRingGeometryReported(t *testing.T) {
	args := []string{"--quick", "--series", "ring", "--readers", "1", "--producers", "1", "--ring-bytes", "8MiB", "--ring-slots", "65536", "--dir", t.TempDir()}
	stdout, stderr, err := run(t, append(args, "--json")...)
	require.NoError(t, err, stderr)
	var rep bench.Report
	require.NoError(t, json.Unmarshal([]byte(stdout), &rep), stdout)
	assert.Equal(t, []bench.RingGeometry{{Size: 64, DataBytes: 8 << 20, IndexSlots: 65536}}, rep.Rings)
	require.Len(t, rep.Rows, 1)
	assert.Equal(t, "ring", rep.Rows[0].Series)
	assert.False(t, rep.Rows[0].Failed(), rep.Rows[0].Check)
	assert.Positive(t, rep.Rows[0].Sent)
}
