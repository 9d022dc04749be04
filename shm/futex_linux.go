package shm

import (
	"fmt"
	"math"
	"os"
	"sync/atomic"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Futex operations. These are the shared (not FUTEX_PRIVATE_FLAG) forms: the
// kernel keys the wait queue on the file page, so a waiter in one process is
// woken by a waker in another as long as both map the same file MAP_SHARED.
const (
	futexWait = 0
	futexWake = 1
)

// Wait blocks while *word == val, until another process calls Wake on the
// same word, or timeout passes (timeout <= 0: no timeout). It returns nil when
// woken, when *word != val on entry, or on a signal (callers re-check their
// condition either way), os.ErrDeadlineExceeded on timeout, and the system
// call's error for anything else (a word outside the mapping, for example).
//
// word must point into a Region's mapping.
func Wait(word *atomic.Uint32, val uint32, timeout time.Duration) error {
	var tsp unsafe.Pointer
	var ts unix.Timespec
	if timeout > 0 {
		ts = unix.NsecToTimespec(int64(timeout))
		tsp = unsafe.Pointer(&ts)
	}
	_, _, errno := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), futexWait,
		uintptr(val), uintptr(tsp), 0, 0)
	switch errno {
	case 0, unix.EAGAIN, unix.EINTR:
		return nil
	case unix.ETIMEDOUT:
		return os.ErrDeadlineExceeded
	}
	return fmt.Errorf("futex wait: %w", errno)
}

// Wake wakes every process and goroutine blocked in Wait on word and returns
// how many were woken.
func Wake(word *atomic.Uint32) int {
	n, _, _ := unix.Syscall6(unix.SYS_FUTEX, uintptr(unsafe.Pointer(word)), futexWake,
		uintptr(math.MaxInt32), 0, 0, 0)
	return int(n)
}
