package bench

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/shmring/shmring/internal/clock"
	"golang.org/x/sys/unix"
)

// CPUSpeed is one CPU's speed at a fixed loop, relative to the fastest CPU
// of the machine. On a shared host a CPU whose core another tenant keeps
// busy runs the loop at half speed, or worse, and every row that puts a
// process on it is slower for that: a report says so, next to its rows.
type CPUSpeed struct {
	CPU      int     `json:"cpu"`
	Relative float64 `json:"relative"`
}

// speedLoopTurns is the length of the timed loop: about 4 ms at 3 GHz.
const speedLoopTurns = 3_000_000

// speedLoop is a chain of dependent multiply-adds, which no CPU can run
// faster than its multiplier's latency: its time tracks the CPU's share of
// a core.
//
//go:noinline
func speedLoop(x uint64) uint64 {
	for range speedLoopTurns {
		x = x*6364136223846793005 + 1442695040888963407
	}
	return x
}

// MeasureCPUSpeeds times speedLoop on each CPU this process may run on,
// pinned there, and returns the speeds relative to the fastest. It takes
// about 50 ms per CPU. It returns nil where it cannot pin a thread.
func MeasureCPUSpeeds() []CPUSpeed {
	var speeds []CPUSpeed
	done := make(chan struct{})
	go func() {
		defer close(done)
		// The thread's affinity changes: it stays locked, so that the
		// runtime ends it with this goroutine instead of reusing it.
		runtime.LockOSThread()
		var allowed unix.CPUSet
		if unix.SchedGetaffinity(0, &allowed) != nil {
			return
		}
		var perTurn []float64
		for cpu := 0; cpu < len(allowed)*64 && len(speeds) < allowed.Count(); cpu++ {
			if !allowed.IsSet(cpu) {
				continue
			}
			var one unix.CPUSet
			one.Set(cpu)
			if unix.SchedSetaffinity(0, &one) != nil {
				return
			}
			// The median of several runs: a CPU shared in time slices is
			// slow on average, not in every run.
			var runs []float64
			for i := range 9 {
				start := time.Now()
				speedLoop(uint64(i))
				runs = append(runs, float64(time.Since(start)))
			}
			slices.Sort(runs)
			speeds = append(speeds, CPUSpeed{CPU: cpu})
			perTurn = append(perTurn, runs[len(runs)/2])
		}
		fastest := slices.Min(perTurn)
		for i := range speeds {
			speeds[i].Relative = fastest / perTurn[i]
		}
	}()
	<-done
	return speeds
}

// MeasureClockRead returns the cost of one fenced read of CLOCK_MONOTONIC
// (Now) in nanoseconds, the read every latency sample takes twice. (An
// event's posting time is an unfenced read, cheaper where the clock reads
// the CPU's counter.)
func MeasureClockRead() float64 {
	const reads = 1 << 20
	start := time.Now()
	var sink int64
	for range reads {
		sink += clock.Mono()
	}
	_ = sink
	return float64(time.Since(start)) / reads
}

// slowCPUs names the CPUs that ran the loop below 80 % of the fastest's
// speed, or returns "" if none did.
func slowCPUs(speeds []CPUSpeed) string {
	var slow []string
	for _, s := range speeds {
		if s.Relative < 0.8 {
			slow = append(slow, fmt.Sprintf("cpu%d at %.2f×", s.CPU, s.Relative))
		}
	}
	return strings.Join(slow, ", ")
}
