//go:build !amd64

package clock

// Only amd64 reads the counter itself; elsewhere Mono is the kernel's read.
func tscUsable() bool { return false }

func rdtsc() uint64        { return 0 }
func rdtscOrdered() uint64 { return 0 }
