package ring

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// Regression tests for interleavings found in review.

var smallGeometry = shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 1024}

// A stale producer (claimed bytes, descheduled before its copy while the
// ring wrapped) writes into the bytes of a newer AppendFunc record while it
// is being filled. The checksum comes from AppendFunc's private buffer, so
// the record readers get is the one that was written.
func TestStaleWriteDuringAppendFunc(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	rd := newTestReader(t, r, ReaderOptions{Unregistered: true})
	qpos := r.ctl.dataTail.Add(100) - 100 // Q claims [0,100), then stalls
	for i := 0; i < 37; i++ {             // others claim 37*(100+8) = 3996 bytes
		_, err := r.Append(bytes.Repeat([]byte{'x'}, 100))
		require.NoError(t, err)
	}
	drain(t, rd)
	want := bytes.Repeat([]byte{'R'}, 100)
	seq, err := r.AppendFunc(100, func(dst []byte) {
		copy(dst, want)
		copy(r.data[qpos&r.dataMask:], bytes.Repeat([]byte{'Q'}, 50)) // Q's late copy
	})
	require.NoError(t, err)
	rec, err := rd.Read()
	require.NoError(t, err, "stats %+v", rd.Stats())
	assert.Equal(t, seq, rec.Seq)
	assert.Equal(t, want, rec.Data, "never torn bytes as a valid record")
}

// A producer whose claimed bytes are already a whole ring behind drops its
// record before it takes a sequence number.
func TestStaleClaimIsDropped(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	qpos := r.ctl.dataTail.Add(100) - 100
	assert.False(t, r.stale(qpos))
	r.ctl.dataTail.Add(4096)
	assert.True(t, r.stale(qpos))
	assert.Equal(t, uint64(1), r.Counters().LateCommits)
	assert.Equal(t, uint64(0), r.Counters().Next, "no sequence number was claimed")
}

// A producer paused between its claim and its commit CAS, whose entry is
// abandoned and reused by the next lap, must not overwrite the new owner's
// word when it wakes: two readers, one before and one after, see the same
// records.
func TestLateProducerCannotClobberNextOwner(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	opts := ReaderOptions{Unregistered: true, WaitMax: 20 * time.Millisecond, WaitInterval: time.Millisecond}
	rdA := newTestReader(t, r, opts)
	rdB := newTestReader(t, r, opts)
	hold, reached := make(chan struct{}), make(chan struct{})
	SetHook(r, func(p HookPoint, seq uint64) {
		if p == HookClaimed && seq == 0 {
			close(reached)
			<-hold
		}
	})
	done := make(chan error, 1)
	go func() { _, err := r.Append(bytes.Repeat([]byte{'P'}, 40)); done <- err }()
	<-reached
	// A gives up on seq 0 after WaitMax, for everyone.
	require.Eventually(t, func() bool {
		_, err := rdA.Read()
		return errors.Is(err, ErrEmpty)
	}, 10*time.Second, time.Millisecond)
	_, err := rdB.Read()
	require.ErrorIs(t, err, ErrEmpty)
	for i := 1; i <= 16; i++ { // seq 16 reuses entry 0
		_, err := r.Append(payload(i, 40))
		require.NoError(t, err)
	}
	a := drain(t, rdA)
	close(hold)
	require.ErrorIs(t, <-done, ErrAbandoned)
	b := drain(t, rdB)
	require.Equal(t, len(a), len(b), "A %+v, B %+v", rdA.Stats(), rdB.Stats())
	for i := range a {
		assert.Equal(t, a[i], b[i])
	}
	assert.Zero(t, rdB.Stats().Corrupt)
}

// lateCtx is cancelled just after Wait's first look at it, so that the
// cancellation falls between that check and the futex wait.
type lateCtx struct {
	context.Context
	cancel context.CancelFunc
	n      int
}

func (c *lateCtx) Err() error {
	c.n++
	if c.n == 1 {
		c.cancel()
		return nil
	}
	return c.Context.Err()
}

func TestWaitSeesCancelBetweenCheckAndSleep(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	rd := newTestReader(t, r, ReaderOptions{Unregistered: true})
	inner, cancel := context.WithCancel(context.Background())
	ctx := &lateCtx{Context: inner, cancel: cancel}
	res := make(chan error, 1)
	go func() { res <- rd.Wait(ctx, 0) }()
	select {
	case err := <-res:
		assert.ErrorIs(t, err, context.Canceled)
	case <-time.After(30 * time.Second):
		_, _ = r.Append([]byte("x"))
		t.Fatalf("Wait slept on after its context was cancelled: %v", <-res)
	}
}

// The cancellation wake-up must be over before Wait returns: the caller may
// close (unmap) the ring right after.
func TestCloseRightAfterCancelledWait(t *testing.T) {
	dir := t.TempDir()
	for i := 0; i < 300; i++ {
		r, err := Open(filepath.Join(dir, "r"), Options{Geometry: smallGeometry})
		require.NoError(t, err)
		rd, err := r.NewReader(ReaderOptions{Unregistered: true})
		require.NoError(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		require.ErrorIs(t, rd.Wait(ctx, 0), context.Canceled)
		require.NoError(t, rd.Close())
		require.NoError(t, r.Close())
	}
}

// The cursor a reader publishes to its registry slot at a refill is where
// the reader is, with the counters of the same point: never the start of
// the batch it has already delivered.
func TestPublishedCursorAtRefill(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 1024})
	rd := newTestReader(t, r, ReaderOptions{Batch: 4})
	for i := range 400 {
		_, err := r.Append(payload(i, 16))
		require.NoError(t, err)
	}
	slot := func() ReaderInfo {
		for _, ri := range r.Readers() {
			if ri.Slot == rd.Slot() {
				return ri
			}
		}
		t.Fatal("the reader's slot is not in the registry")
		return ReaderInfo{}
	}
	// 63 refills of 4 records, then the 64th refill publishes.
	for range 63 * 4 {
		_, err := rd.Read()
		require.NoError(t, err)
	}
	_, err := rd.Read() // the 64th refill
	require.NoError(t, err)
	ri := slot()
	assert.Equal(t, uint64(63*4), ri.Received, "records delivered before the refill")
	assert.Equal(t, uint64(63*4), ri.Cursor, "the cursor of the same point")
}

// RecoverFault turns a memory fault into ErrFault, and RecoverFaultIn names
// where it happened; any other panic goes on.
func TestRecoverFault(t *testing.T) {
	page, err := unix.Mmap(-1, 0, 4096, unix.PROT_NONE, unix.MAP_ANON|unix.MAP_PRIVATE)
	require.NoError(t, err)
	t.Cleanup(func() { unix.Munmap(page) })
	touch := func() { page[0]++ } // faults: the page is PROT_NONE

	fault := func(where string) (err error) {
		if where == "" {
			defer RecoverFault(debug.SetPanicOnFault(true), &err)
		} else {
			defer RecoverFaultIn(debug.SetPanicOnFault(true), &err, where)
		}
		touch()
		return nil
	}
	err = fault("")
	require.ErrorIs(t, err, ErrFault)
	assert.True(t, strings.HasPrefix(err.Error(), "fault at 0x"), err.Error())
	err = fault("events: poll /dev/shm/x")
	require.ErrorIs(t, err, ErrFault)
	assert.True(t, strings.HasPrefix(err.Error(), "events: poll /dev/shm/x: fault at 0x"), err.Error())
	assert.False(t, debug.SetPanicOnFault(false), "the goroutine's setting is restored")

	assert.PanicsWithValue(t, "not a fault", func() {
		var err error
		defer RecoverFaultIn(debug.SetPanicOnFault(true), &err, "x")
		panic("not a fault")
	})
}
