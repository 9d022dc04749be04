// Package clock reads the machine's clocks cheaply.
//
// Mono is CLOCK_MONOTONIC. The kernel's own read goes through the vDSO, which
// in a KVM guest (kvm-clock) costs about 28 ns from Go: a switch to the
// system stack, the pvclock page's version loop and a fenced TSC read. Where
// the CPU's time-stamp counter ticks at a constant rate in every state and is
// the same on every CPU (constant_tsc and nonstop_tsc), this package reads
// the counter itself and maps it onto CLOCK_MONOTONIC with an anchor: a pair
// of readings of both clocks taken at most about a millisecond ago, and the
// rate between them measured across earlier anchors. A read then costs one
// TSC read, a multiply and an add (11 ns unfenced, 19 ns fenced on the same
// machine), and stays within tens of nanoseconds of the kernel's clock: the
// error of the rate over one anchor's span. Every process anchors to the
// same CLOCK_MONOTONIC, so readings still compare across processes.
//
// Elsewhere, or if the counter misbehaves (it runs backwards, or its rate
// moves by more than 1 %, as after a live migration to another host), reads
// fall back to the kernel's clock until a new rate is measured.
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
	if tscUsable {
		if a := anchorNow.Load(); a != nil { // acquire: pairs with the Store in reanchor
			if d := rdtscOrdered() - a.tsc; d < anchorTicks {
				return a.ns + ticksToNs(d, a.mult)
			}
		}
	}
	return reanchor()
}

// stamp is Mono without the fence, for a time that a record carries: it may
// be read a few nanoseconds early or late.
func stamp() int64 {
	if tscUsable {
		if a := anchorNow.Load(); a != nil { // acquire: pairs with the Store in reanchor
			if d := rdtsc() - a.tsc; d < anchorTicks {
				return a.ns + ticksToNs(d, a.mult)
			}
		}
	}
	return reanchor()
}

// System returns CLOCK_MONOTONIC as the kernel reads it, for tests and for
// measuring Mono.
func System() int64 { return nanotime() }

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
func WallNano() int64 { return stamp() + monoToWall }

// An anchor maps counter readings near tsc onto CLOCK_MONOTONIC:
// ns + (counter - tsc) * mult / 2^32. Anchors are immutable once published.
type anchor struct {
	tsc  uint64
	ns   int64
	mult uint64 // nanoseconds per tick, 32.32 fixed point; 0 = not measured yet
}

// anchorNow is the anchor reads extrapolate from; nil before the first read
// and while the rate is being measured.
var anchorNow atomic.Pointer[anchor]

// pending is the last pair of readings taken while no rate was known: the
// start of the next rate measurement.
var pending atomic.Pointer[anchor]

const (
	// anchorTicks is how far a read extrapolates from its anchor before it
	// takes a new one: 2^21 ticks, 0.5-2 ms at 1-4 GHz. The rate error
	// times this span bounds the error of a read.
	anchorTicks = 1 << 21
	// minRateTicks is the shortest span a rate is measured over: the two
	// pairs of readings are each off by up to some tens of nanoseconds.
	minRateTicks = 1 << 20
	// maxRateTicks is the longest: over minutes, a host may have moved the
	// guest between machines.
	maxRateTicks = 1 << 40
)

func ticksToNs(d, mult uint64) int64 {
	hi, lo := bits.Mul64(d, mult)
	return int64(hi<<32 | lo>>32)
}

// reanchor reads CLOCK_MONOTONIC from the kernel and, where the counter is
// usable, publishes a new anchor there, with the rate measured since the
// previous one folded into the one it had. Concurrent callers each publish
// their own; any of them will do.
//
//go:noinline
func reanchor() int64 {
	if !tscUsable {
		return nanotime()
	}
	t := rdtscOrdered()
	ns := nanotime() // reads the counter again inside: within some tens of ns of t
	base := anchorNow.Load()
	if base == nil {
		base = pending.Load()
	}
	if base == nil {
		pending.Store(&anchor{tsc: t, ns: ns})
		return ns
	}
	dt, dns := t-base.tsc, ns-base.ns
	if dt < minRateTicks && base.mult == 0 {
		return ns // too short to measure a rate; keep the start
	}
	if dt < minRateTicks || dt >= maxRateTicks || dns <= 0 {
		// Counter and kernel disagree on the span (the counter ran
		// backwards, or a long gap): keep the rate, move the anchor.
		if base.mult == 0 {
			pending.Store(&anchor{tsc: t, ns: ns})
			return ns
		}
		anchorNow.Store(&anchor{tsc: t, ns: ns, mult: base.mult})
		return ns
	}
	rate := uint64(float64(dns) / float64(dt) * (1 << 32))
	mult := rate
	if m := base.mult; m != 0 {
		if rate < m-m/100 || rate > m+m/100 {
			// The rate moved by more than 1 %: the counter is not what
			// it was. Read the kernel's clock until a new span is
			// measured from here.
			anchorNow.Store(nil)
			pending.Store(&anchor{tsc: t, ns: ns})
			return ns
		}
		mult = m - m/8 + rate/8 // smooth the readings' jitter
	}
	anchorNow.Store(&anchor{tsc: t, ns: ns, mult: mult}) // release: the anchor's fields before it
	return ns
}
