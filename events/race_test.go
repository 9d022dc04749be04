//go:build race

package events

// raceDetector: built with -race. The race detector performs atomic
// operations inside its own runtime, off the goroutine's stack, where a
// fault on a truncated mapping cannot be turned into a panic: the process
// dies instead of reporting ErrFault.
const raceDetector = true
