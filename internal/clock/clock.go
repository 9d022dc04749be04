// Package clock reads the machine's clocks cheaply.
//
// Mono is CLOCK_MONOTONIC. The kernel's own read goes through the vDSO, which
// in a KVM guest (kvm-clock) costs about 28 ns from Go: a switch to the
// system stack, the pvclock page's version loop and a fenced TSC read. Where
// the CPU's time-stamp counter ticks at one rate whatever the CPU's state
// (constant_tsc and nonstop_tsc), this package reads the counter itself and
// maps it onto CLOCK_MONOTONIC with an anchor: a pair of readings of both
// clocks taken at most 2^21 ticks (about a millisecond) ago, and the rate
// between anchors. A read then costs one counter read, a multiply and an add
// (11 ns unfenced, 22 ns fenced on the development VM). A pair is kept only if
// the two counter reads around the kernel's read lie within 2^9 ticks, so an
// anchor is off by at most half that (typically some tens of ns); every
// process anchors to the same CLOCK_MONOTONIC, so readings compare across
// processes.
//
// The flags do not promise that every CPU's counter agrees. Each new anchor is
// therefore checked against the one before: a counter that ran backwards,
// a rate that moved by more than 1 %, or an extrapolation more than 5 µs off
// the kernel's clock (counters apart on two CPUs, a jump, a live migration,
// an NTP daemon slewing the kernel's clock by more than 0.5 %) turns the
// counter off for the rest of the process, and reads go to the kernel: a
// safe end, at the kernel's price. SHMRING_CLOCK=kernel turns it off from
// the start.
//
// Reads are not strictly monotonic: a new anchor may start up to the
// extrapolation's error (tens of ns) behind the reads of the old one.
package clock

import (
	"math/bits"
	"sync/atomic"
	"time"
	_ "unsafe" // for go:linkname
)

// Mono returns CLOCK_MONOTONIC in nanoseconds: one clock for every process
// of the machine, never stepped. (The monotonic reading inside a time.Time
// counts from its process's start, so it cannot be compared across
// processes.) The counter read is fenced: it happens after every load that
// precedes the call, so a receiver's stamp never precedes its sight of what
// it is timing.
func Mono() int64 {
	if !tscOff.Load() { // snapshot: turned off at most once
		if ns, ok := anchored.at(rdtscOrdered()); ok {
			return ns
		}
	}
	return reanchor()
}

// Stamp is Mono without the fence, for a time that a record carries or a
// rough interval: it may be read a few nanoseconds early or late.
func Stamp() int64 {
	if !tscOff.Load() {
		if ns, ok := anchored.at(rdtsc()); ok {
			return ns
		}
	}
	return reanchor()
}

// System returns CLOCK_MONOTONIC as the kernel reads it, for tests and for
// measuring Mono.
func System() int64 { return nanotime() }

// Source names the clock Mono reads: "tsc" or "kernel".
func Source() string {
	if tscOff.Load() || !tscUsable() {
		return "kernel"
	}
	return "tsc"
}

// nanotime is CLOCK_MONOTONIC on Linux. The runtime keeps it available to
// linkname for this kind of use (see runtime/time_nofake.go).
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// monoToWall is the wall clock minus the monotonic clock, taken once.
var monoToWall = func() int64 {
	wall := time.Now().UnixNano()
	return wall - nanotime()
}()

// WallNano returns the wall clock in unix nanoseconds, derived from the
// monotonic clock and the offset between the clocks at start-up: a stamp for
// humans at the cost of one unfenced monotonic read. It does not follow
// steps of the wall clock made after the process started (NTP slews are a
// few ppm).
func WallNano() int64 { return Stamp() + monoToWall }

// tscOff is whether reads go to the kernel's clock: set for good by the
// first read on a machine whose counter is not usable (tscUsable, asked
// then rather than when a process starts, which not every process that
// links this package would pay for), or when the counter disagrees with the
// kernel's clock.
var tscOff atomic.Bool

// anchorState maps counter readings near tsc onto CLOCK_MONOTONIC:
// ns + (counter - tsc) * mult / 2^32. It is a sequence lock: a writer makes
// gen odd, stores the fields, and makes it even again; a reader that sees
// the same even gen before and after its loads has a consistent anchor.
// Every access is atomic, so no anchor is ever allocated.
type anchorState struct {
	gen  atomic.Uint64
	tsc  atomic.Uint64
	ns   atomic.Int64
	mult atomic.Uint64 // nanoseconds per tick, 32.32 fixed point; 0 = rate not measured yet
}

var anchored anchorState

// at returns the time at counter reading t, if the anchor covers it.
func (a *anchorState) at(t uint64) (int64, bool) {
	base, ns, mult, ok := a.load()
	d := t - base
	if !ok || mult == 0 || d >= anchorTicks { // d wraps for a counter behind the anchor
		return 0, false
	}
	return ns + ticksToNs(d, mult), true
}

// load returns the anchor, and false while a writer holds it.
func (a *anchorState) load() (base uint64, ns int64, mult uint64, ok bool) {
	g := a.gen.Load() // acquire: pairs with the writer's final gen store
	base, ns, mult = a.tsc.Load(), a.ns.Load(), a.mult.Load()
	return base, ns, mult, g&1 == 0 && a.gen.Load() == g
}

// store publishes an anchor unless another writer is at it (then theirs
// will do).
func (a *anchorState) store(base uint64, ns int64, mult uint64) {
	g := a.gen.Load()
	if g&1 != 0 || !a.gen.CompareAndSwap(g, g+1) {
		return
	}
	a.tsc.Store(base)
	a.ns.Store(ns)
	a.mult.Store(mult)
	a.gen.Store(g + 2) // release: the fields before the even gen
}

const (
	// anchorTicks is how far a read extrapolates from its anchor before it
	// takes a new one: 2^21 ticks, 0.5-2 ms at 1-4 GHz. The rate error
	// times this span bounds the error of a read.
	anchorTicks = 1 << 21
	// pairTicks is the most the two counter reads around the kernel's
	// read may lie apart: a pair that took longer was interrupted, and
	// the kernel's reading could lie anywhere between them.
	// (On the development VM a pair takes 105 ticks at the median, 399 at
	// the 99th percentile and 651 at the 99.9th.)
	pairTicks = 1 << 9
	// minRateTicks is the shortest span a rate is measured over: the pairs'
	// errors, at most pairTicks/2 each, make the rate off by at most 2^-12.
	minRateTicks = 1 << 21
	// checkTicks is the longest span over which a new anchor is checked
	// against the old one's extrapolation: at most 2^11 ticks of error from
	// the rate, plus the pairs', within maxDisagree at 1 GHz and faster.
	checkTicks = 1 << 23
	// maxDisagree is how far the old anchor's extrapolation may miss the
	// kernel's clock before the counter is turned off.
	maxDisagree = 5 * int64(time.Microsecond)
)

func ticksToNs(d, mult uint64) int64 {
	hi, lo := bits.Mul64(d, mult)
	return int64(hi<<32 | lo>>32)
}

// betweenReads, if set, runs between the kernel's read and the second
// counter read of a pair: tests stall there.
var betweenReads func()

// pair reads the counter and the kernel's clock together: the counter
// reading is the midpoint of two around the kernel's. It fails if they lie
// more than pairTicks apart.
func pair() (t uint64, ns int64, ok bool) {
	for range 3 {
		t0 := rdtscOrdered()
		ns = nanotime() // reads the counter inside, between t0 and t1
		if betweenReads != nil {
			betweenReads()
		}
		t1 := rdtscOrdered()
		if t1-t0 <= pairTicks { // not when t1 < t0: wrapped
			return t0 + (t1-t0)/2, ns, true
		}
	}
	return 0, ns, false
}

// reanchor reads CLOCK_MONOTONIC from the kernel and, while the counter is
// on, takes a new anchor there: it measures the rate since the previous
// anchor, checks the previous anchor's extrapolation against the kernel,
// and folds the rate into the one it had.
func reanchor() int64 {
	if tscOff.Load() {
		return nanotime()
	}
	if !tscUsable() {
		turnOff()
		return nanotime()
	}
	t, ns, ok := pair()
	if !ok {
		return ns // interrupted pairs anchor nothing
	}
	base, baseNs, mult, ok := anchored.load()
	if !ok {
		return ns // another goroutine is anchoring
	}
	dt, dns := t-base, ns-baseNs
	switch {
	case base == 0 && baseNs == 0:
		anchored.store(t, ns, 0) // the first pair: start measuring
		return ns
	case dt >= 1<<63:
		// Our pair is older than the anchor: another goroutine stored
		// one after we read ours, and it will do; unless the counter is
		// still behind the anchor by more than a pair's width, which it
		// cannot be if it runs forward at one value on every CPU.
		if n := rdtscOrdered(); base-n < 1<<63 && base-n > pairTicks {
			turnOff()
		}
		return ns
	case dt < minRateTicks:
		// Too short a span to measure a rate over, or to tell the two
		// clocks apart in: keep the start while measuring, or let a
		// younger anchor that raced ours stand.
		return ns
	case dns <= 0:
		// The counter says a millisecond or more later, the kernel
		// earlier: the counters disagree.
		turnOff()
		return ns
	}
	rate := uint64(float64(dns) / float64(dt) * (1 << 32))
	if mult != 0 {
		if dt <= checkTicks {
			if miss := baseNs + ticksToNs(dt, mult) - ns; miss > maxDisagree || miss < -maxDisagree {
				turnOff()
				return ns
			}
		}
		if rate < mult-mult/100 || rate > mult+mult/100 {
			turnOff()
			return ns
		}
		rate = mult - mult/8 + rate/8 // smooth the pairs' jitter
	}
	anchored.store(t, ns, rate)
	return ns
}

// turnOff sends every later read to the kernel's clock.
func turnOff() { tscOff.Store(true) }
