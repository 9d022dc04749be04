package clock

import (
	"io"
	"os"
	"sync"
)

// rdtsc reads the time-stamp counter.
func rdtsc() uint64

// rdtscOrdered reads the time-stamp counter after every earlier instruction
// has completed.
func rdtscOrdered() uint64

// tscUsable reports whether the counter ticks at one rate in every CPU
// state (constant_tsc, nonstop_tsc), as the kernel reports it for the first
// CPU. Whether the CPUs' counters agree is checked as anchors are taken.
// SHMRING_CLOCK=kernel turns it off.
var tscUsable = sync.OnceValue(func() bool {
	if os.Getenv("SHMRING_CLOCK") == "kernel" {
		return false
	}
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return false
	}
	defer f.Close()
	// The first CPU's entry is enough, and on a big machine the whole
	// file is large and slow to generate.
	info := make([]byte, 32<<10)
	n, _ := io.ReadFull(f, info)
	flags := cpuFlags(info[:n])
	return flags["constant_tsc"] && flags["nonstop_tsc"]
})
