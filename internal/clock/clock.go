// Package clock reads the machine's clocks cheaply.
package clock

import (
	"time"
	_ "unsafe" // for go:linkname
)

// Mono returns CLOCK_MONOTONIC in nanoseconds: one clock for every process
// of the machine, never stepped. (The monotonic reading inside a time.Time
// counts from its process's start, so it cannot be compared across
// processes.) It is one vDSO read, half the cost of time.Now.
func Mono() int64 { return nanotime() }

// nanotime is CLOCK_MONOTONIC on Linux. The runtime keeps it available to
// linkname for this kind of use (see runtime/time_nofake.go).
//
//go:linkname nanotime runtime.nanotime
func nanotime() int64

// monoToWall is the wall clock minus the monotonic clock, taken once.
var monoToWall = func() int64 {
	wall := time.Now().UnixNano()
	return wall - Mono()
}()

// WallNano returns the wall clock in unix nanoseconds, derived from Mono and
// the offset between the clocks at start-up: a stamp for humans at the cost
// of one monotonic read. It does not follow steps of the wall clock made
// after the process started (NTP slews are a few ppm).
func WallNano() int64 { return Mono() + monoToWall }
