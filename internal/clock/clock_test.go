package clock

import (
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"golang.org/x/sys/unix"
)

func TestMonoIsClockMonotonic(t *testing.T) {
	var before, after unix.Timespec
	require := assert.New(t)
	require.NoError(unix.ClockGettime(unix.CLOCK_MONOTONIC, &before))
	m := Mono()
	require.NoError(unix.ClockGettime(unix.CLOCK_MONOTONIC, &after))
	require.LessOrEqual(before.Nano(), m)
	require.LessOrEqual(m, after.Nano())
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

func BenchmarkTimeNow(b *testing.B) {
	for b.Loop() {
		time.Now()
	}
}
