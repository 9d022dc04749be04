package events

import (
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"
	_ "unsafe" // go:linkname

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// monoToWall is internal/clock's per-process offset between the wall clock
// and CLOCK_MONOTONIC, taken once when a process starts.
//
//go:linkname monoToWall github.com/shmring/shmring/internal/clock.monoToWall
var monoToWall int64

// Two processes that started on either side of a step of the wall clock (an
// NTP step after boot, a date change) stamp events with wall times that
// differ by the step. A unique key's expiry is kept on CLOCK_MONOTONIC, the
// same in every process, so such a step changes nothing: here the second
// process is the same bus after its offset moved by 10 s.
func TestUniqueTimeoutIgnoresWallClockSteps(t *testing.T) {
	opts := Options{Path: filepath.Join(t.TempDir(), "bus"), Mode: Manual, Timeout: 5 * time.Second}
	a := openBus(t, opts)
	var runs atomic.Int64
	a.Register(func(*Event) { runs.Add(1) }, "cache", "purge")

	_, err := a.PostUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	saved := monoToWall
	monoToWall += int64(10 * time.Second)
	_, err = a.PostUnique("cache", "purge", nil, "users")
	monoToWall = saved
	require.NoError(t, err)
	assert.Equal(t, int64(1), runs.Load(), "two posts of one key microseconds apart, Timeout 5s: one run")
}
