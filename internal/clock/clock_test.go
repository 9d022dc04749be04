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
// before and just after it: a pair's error is at most 2^8 ticks and the
// rate's a few ns per millisecond; the rest is room for a noisy machine.
const tolerance = 20 * time.Microsecond

func TestMonoIsClockMonotonic(t *testing.T) {
	var before, after unix.Timespec
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &before))
	m := Mono()
	require.NoError(t, unix.ClockGettime(unix.CLOCK_MONOTONIC, &after))
	assert.LessOrEqual(t, before.Nano()-int64(tolerance), m)
	assert.LessOrEqual(t, m, after.Nano()+int64(tolerance))
}

// readsAgree makes n reads of read, each between two of the kernel's clock,
// and returns the largest distance of a read outside its bracket.
func readsAgree(n int, read func() int64) time.Duration {
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

// fresh gives a test the clock as a process starts: no anchor, the counter
// on where the machine has a usable one. The state is restored afterwards.
func fresh(t *testing.T) {
	t.Helper()
	base, ns, mult, ok := anchored.load()
	require.True(t, ok)
	off := tscOff.Load()
	t.Cleanup(func() {
		setAnchor(base, ns, mult)
		tscOff.Store(off)
		betweenReads = nil
	})
	setAnchor(0, 0, 0)
	tscOff.Store(false) // the first read asks tscUsable
}

func setAnchor(base uint64, ns int64, mult uint64) {
	g := anchored.gen.Load() &^ 1
	anchored.gen.Store(g + 1)
	anchored.tsc.Store(base)
	anchored.ns.Store(ns)
	anchored.mult.Store(mult)
	anchored.gen.Store(g + 2)
}

// measuredAnchor reads the clock until it has measured the counter's rate.
func measuredAnchor(t *testing.T) (base uint64, ns int64, mult uint64) {
	t.Helper()
	deadline := System() + int64(time.Second)
	for System() < deadline {
		Mono()
		if base, ns, mult, ok := anchored.load(); ok && mult != 0 {
			return base, ns, mult
		}
	}
	t.Fatal("no rate measured within a second")
	return
}

func needTSC(t *testing.T) {
	t.Helper()
	if !tscUsable() {
		t.Skip("this machine's counter is not used")
	}
}

// From a process's first read on, through the rate's measurement and tens of
// anchors, reads from several goroutines at once (each may re-anchor) stay
// with the kernel's clock, never step back by more than a pair's error, and
// never find the counter at odds with the kernel on this machine.
func TestMonoAgreesWithTheKernelAcrossAnchors(t *testing.T) {
	fresh(t)
	var wg sync.WaitGroup
	worst := make([]time.Duration, runtime.GOMAXPROCS(0)+1)
	back := make([]int64, len(worst))
	deadline := System() + int64(50*time.Millisecond)
	for g := range worst {
		wg.Go(func() {
			last := Mono()
			for System() < deadline {
				worst[g] = max(worst[g], readsAgree(100, Mono), readsAgree(100, Stamp))
				for range 100 {
					m := Mono()
					back[g] = max(back[g], last-m)
					last = m
				}
			}
		})
	}
	wg.Wait()
	for g := range worst {
		assert.LessOrEqual(t, worst[g], tolerance, "goroutine %d: a read this far from the kernel's clock", g)
		assert.LessOrEqual(t, back[g], int64(time.Microsecond), "goroutine %d: a read this far behind the one before", g)
	}
	if tscUsable() {
		assert.Equal(t, "tsc", Source(), "the counter was turned off on a machine whose counter is fine")
		_, _, mult := measuredAnchor(t)
		// 0.1-10 GHz: a rate, not garbage.
		assert.Greater(t, mult, uint64(1<<32/10))
		assert.Less(t, mult, uint64(10<<32))
	}
}

// A pair whose reads were held apart (an interrupt, the thread descheduled)
// anchors nothing: the kernel's reading could lie anywhere between them.
func TestInterruptedPairAnchorsNothing(t *testing.T) {
	needTSC(t)
	fresh(t)
	base, ns, mult := measuredAnchor(t)
	betweenReads = func() {
		for t0 := rdtsc(); rdtsc()-t0 < 4*pairTicks; {
		}
	}
	setAnchor(base-anchorTicks, ns-ticksToNs(anchorTicks, mult), mult) // expired: the next read re-anchors
	gen := anchored.gen.Load()
	assert.LessOrEqual(t, readsAgree(10, Mono), tolerance)
	assert.Equal(t, gen, anchored.gen.Load(), "an interrupted pair was stored")
	assert.Equal(t, "tsc", Source())
}

// Counters that disagree with the kernel turn the counter off for good, and
// reads go on from the kernel's clock.
func TestCounterAtOddsWithTheKernelTurnsItOff(t *testing.T) {
	needTSC(t)
	for _, c := range []struct {
		name  string
		spoil func(base uint64, ns int64, mult uint64)
	}{
		{"counter behind the anchor", func(base uint64, ns int64, mult uint64) {
			setAnchor(rdtsc()+1<<30, ns, mult)
		}},
		{"extrapolation 50 µs off", func(base uint64, ns int64, mult uint64) {
			setAnchor(base-anchorTicks, ns-ticksToNs(anchorTicks, mult)+int64(50*time.Microsecond), mult)
		}},
		{"rate 5 % off over a long gap", func(base uint64, ns int64, mult uint64) {
			now := rdtsc()
			setAnchor(now-2*checkTicks, System()-ticksToNs(2*checkTicks, mult), mult+mult/20)
		}},
		{"kernel earlier, counter later", func(base uint64, ns int64, mult uint64) {
			now := rdtsc()
			setAnchor(now-anchorTicks, System()+int64(time.Millisecond), mult)
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			fresh(t)
			base, ns, mult := measuredAnchor(t)
			c.spoil(base, ns, mult)
			Mono()
			assert.Equal(t, "kernel", Source())
			assert.LessOrEqual(t, readsAgree(1000, Mono), tolerance)
			assert.LessOrEqual(t, readsAgree(1000, Stamp), tolerance)
		})
	}
}

// With the counter off, reads are the kernel's and anchor nothing.
func TestKernelClockFallback(t *testing.T) {
	fresh(t)
	tscOff.Store(true)
	gen := anchored.gen.Load()
	assert.LessOrEqual(t, readsAgree(1000, Mono), tolerance)
	assert.LessOrEqual(t, readsAgree(1000, WallNanoMinusOffset), tolerance)
	assert.Equal(t, gen, anchored.gen.Load(), "a read with the counter off touched the anchor")
	assert.Equal(t, "kernel", Source())
}

// WallNanoMinusOffset is WallNano on the monotonic scale.
func WallNanoMinusOffset() int64 { return WallNano() - monoToWall }

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
	b.ReportAllocs()
	for b.Loop() {
		WallNano()
	}
}

// BenchmarkReanchor is a read that finds its anchor expired, as every read
// of a process that reads the clock less than once a millisecond does.
func BenchmarkReanchor(b *testing.B) {
	b.ReportAllocs()
	for b.Loop() {
		reanchor()
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
