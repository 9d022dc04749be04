package clock

import (
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// tolerance is how far a read may stray from the kernel's clock read just
// before and just after it: extrapolation errors are tens of nanoseconds; the
// rest is room for a noisy machine.
const tolerance = 20 * time.Microsecond

func TestMonoIsClockMonotonic(t *testing.T) {
	var before, after unix.Timespec
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &before))
	m := Mono()
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &after))
	assert.LessOrEqual(t, before.Nano()-int64(tolerance), m)
	assert.LessOrEqual(t, m, after.Nano()+int64(tolerance))
}

// readsAgree checks n reads of read against the kernel's clock around each
// and returns the largest distance outside that bracket.
func readsAgree(t *testing.T, n int, read func() int64) time.Duration {
	t.Helper()
	var worst int64
	for range n {
		lo := System()
		m := read()
		hi := System()
		var off int64
		if m < lo {
			off = lo - m
		} else if m > hi {
			off = m - hi
		}
		worst = max(worst, off)
	}
	return time.Duration(worst)
}

// Reads across many anchors, from several goroutines at once (each may
// re-anchor), stay with the kernel's clock.
func TestMonoAgreesWithTheKernelAcrossAnchors(t *testing.T) {
	if !tscUsable {
		t.Log("the counter is not used on this machine; checking the kernel's clock path")
	}
	var wg sync.WaitGroup
	worst := make([]time.Duration, runtime.GOMAXPROCS(0)+1)
	deadline := System() + int64(50*time.Millisecond) // tens of anchors
	for g := range worst {
		wg.Go(func() {
			for System() < deadline {
				worst[g] = max(worst[g], readsAgree(t, 1000, Mono), readsAgree(t, 1000, stamp))
			}
		})
	}
	wg.Wait()
	for g, w := range worst {
		assert.LessOrEqual(t, w, tolerance, "goroutine %d", g)
	}
	if tscUsable {
		// 0.1-10 GHz: a rate, not garbage.
		a := measuredAnchor(t)
		assert.Greater(t, a.mult, uint64(1<<32/10), "mult %d", a.mult)
		assert.Less(t, a.mult, uint64(10<<32), "mult %d", a.mult)
	}
}

// A counter that jumps (backwards, or far ahead, as after a migration)
// moves the anchor rather than extrapolating from it.
func TestMonoSurvivesCounterJumps(t *testing.T) {
	if !tscUsable {
		t.Skip("the counter is not used on this machine")
	}
	for _, jump := range []int64{-1 << 30, 1 << 41} {
		bad := *measuredAnchor(t)
		bad.tsc = uint64(int64(rdtsc()) + jump)
		anchorNow.Store(&bad)
		assert.LessOrEqual(t, readsAgree(t, 1000, Mono), tolerance, "after a jump of %d ticks", jump)
		assert.NotSame(t, &bad, anchorNow.Load())
	}
}

// measuredAnchor reads the clock until it has measured the counter's rate.
func measuredAnchor(t *testing.T) *anchor {
	t.Helper()
	deadline := System() + int64(time.Second)
	for System() < deadline {
		Mono()
		if a := anchorNow.Load(); a != nil {
			return a
		}
	}
	t.Fatal("no rate measured within a second")
	return nil
}

func TestKernelClockFallback(t *testing.T) {
	saved := tscUsable
	t.Cleanup(func() { tscUsable = saved })
	tscUsable = false
	assert.LessOrEqual(t, readsAgree(t, 1000, Mono), tolerance)
}

func TestCPUFlags(t *testing.T) {
	info := []byte("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu tsc constant_tsc nonstop_tsc\n\nprocessor\t: 1\nflags\t\t: fpu\n")
	f := cpuFlags(info)
	assert.True(t, f["constant_tsc"])
	assert.True(t, f["nonstop_tsc"])
	assert.False(t, f["processor"])
	assert.Empty(t, cpuFlags([]byte("garbage\n\x00:")))
}

func TestWallNanoTracksWallClock(t *testing.T) {
	w := WallNano()
	now := time.Now().UnixNano()
	assert.InDelta(t, float64(now), float64(w), float64(50*time.Millisecond))
}

func BenchmarkMono(b *testing.B) {
	for b.Loop() {
		Mono()
	}
}

func BenchmarkWallNano(b *testing.B) {
	for b.Loop() {
		WallNano()
	}
}

func BenchmarkSystem(b *testing.B) {
	for b.Loop() {
		System()
	}
}

func BenchmarkTimeNow(b *testing.B) {
	for b.Loop() {
		time.Now()
	}
}
