package shm

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/internal/testproc"
)

// controlWord is the 4-byte word at byte offset off of the control area.
func controlWord(r *Region, off int) *atomic.Uint32 {
	return (*atomic.Uint32)(unsafe.Pointer(&r.Control()[off]))
}

func openTestRing(t *testing.T) *Region {
	t.Helper()
	r, err := Create(filepath.Join(t.TempDir(), "ring"), testOpts())
	require.NoError(t, err)
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func TestWaitReturnsAtOnceWhenWordDiffers(t *testing.T) {
	r := openTestRing(t)
	w := controlWord(r, 0)
	w.Store(5)
	for _, timeout := range []time.Duration{0, time.Hour} {
		var err error
		// Were the value compared wrongly, Wait would sleep for an hour (or
		// for ever) and within would fail the test.
		within(t, 10*time.Second, "Wait on a word that differs", func() { err = Wait(w, 4, timeout) })
		assert.NoError(t, err, "timeout %v", timeout)
	}
}

func TestWaitTimeout(t *testing.T) {
	r := openTestRing(t)
	w := controlWord(r, 128)
	const timeout = 20 * time.Millisecond
	// Wait may return nil early on a signal (callers re-check); retry until
	// one call runs into its deadline.
	for attempt := 0; ; attempt++ {
		require.Less(t, attempt, 50, "Wait never reported its deadline")
		start := time.Now()
		err := Wait(w, 0, timeout)
		if err == nil {
			continue
		}
		assert.ErrorIs(t, err, os.ErrDeadlineExceeded)
		assert.GreaterOrEqual(t, time.Since(start), timeout, "Wait returned before its timeout")
		break
	}
	assert.Equal(t, uint32(0), w.Load())
}

func TestWakeWithoutWaiters(t *testing.T) {
	r := openTestRing(t)
	assert.Zero(t, Wake(controlWord(r, 0)), "nobody waits, nobody is woken")
}

func TestWakeGoroutine(t *testing.T) {
	r := openTestRing(t)
	w := controlWord(r, 256)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for w.Load() == 0 {
			_ = Wait(w, 0, 0)
		}
	}()
	t.Cleanup(func() { w.Store(1); Wake(w); <-done })

	// Until Wake finds the goroutine in the kernel's queue it reports 0;
	// a woken goroutine sees the word unchanged and sleeps again.
	waitFor(t, 10*time.Second, time.Millisecond, "the goroutine sleeps in Wait", func() bool { return Wake(w) == 1 })
	w.Store(1)
	waitFor(t, 10*time.Second, time.Millisecond, "the goroutine is woken", func() bool {
		Wake(w)
		select {
		case <-done:
			return true
		default:
			return false
		}
	})
}

// runFutexWait: path off. Maps the ring and sleeps on the control word at
// off until it is non-zero.
func runFutexWait(args []string) error {
	off, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	r, err := Open(args[0], Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	w := controlWord(r, off)
	fmt.Println("waiting")
	returns := 0
	for w.Load() == 0 {
		if err := Wait(w, 0, 0); err != nil {
			return fmt.Errorf("Wait without timeout: %w", err)
		}
		returns++
	}
	fmt.Printf("woken value=%d returns=%d\n", w.Load(), returns)
	return nil
}

func TestWakeAcrossProcesses(t *testing.T) {
	r := openTestRing(t)
	const off = 384
	w := controlWord(r, off)
	p := testproc.Start(t, "futex-wait", r.Path(), strconv.Itoa(off))
	_, err := p.Expect("waiting", 30*time.Second)
	require.NoError(t, err)

	// The child is asleep once a Wake from this process finds it in the
	// wait queue of the shared word. Each such Wake wakes it; it sees 0
	// and sleeps again.
	waitFor(t, 10*time.Second, time.Millisecond, "a Wake here reaches the child's Wait", func() bool { return Wake(w) == 1 })

	w.Store(1)
	var line string
	deadline := time.Now().Add(10 * time.Second)
	for {
		Wake(w)
		line, err = p.Expect("woken", 5*time.Millisecond)
		if err == nil || time.Now().After(deadline) {
			break
		}
	}
	require.NoError(t, err, "the child should wake once the word is 1")
	var value, returns int
	_, err = fmt.Sscanf(line, "woken value=%d returns=%d", &value, &returns)
	require.NoError(t, err, "child printed %q", line)
	assert.Equal(t, 1, value, "the child sees the parent's store")
	assert.GreaterOrEqual(t, returns, 1, "the child slept at least once")
	require.NoError(t, p.Wait(10*time.Second))
	assert.Zero(t, Wake(w), "no one is left waiting")
}
