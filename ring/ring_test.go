package ring

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// openTestRing creates a ring with geometry g under t.TempDir().
func openTestRing(t testing.TB, g shm.Geometry) *Ring {
	t.Helper()
	r, err := Open(filepath.Join(t.TempDir(), "ring"), Options{Geometry: g})
	require.NoError(t, err)
	t.Cleanup(func() { r.Close() })
	return r
}

func newTestReader(t testing.TB, r *Ring, opts ReaderOptions) *Reader {
	t.Helper()
	rd, err := r.NewReader(opts)
	require.NoError(t, err)
	t.Cleanup(func() { rd.Close() })
	return rd
}

// payload returns a record of n bytes that names its number i.
func payload(i, n int) []byte {
	p := make([]byte, n)
	for j := range p {
		p[j] = byte(i*7 + j)
	}
	if n >= 8 {
		binary.LittleEndian.PutUint64(p, uint64(i))
	}
	return p
}

// drain reads until ErrEmpty and returns the records (copied).
func drain(t testing.TB, rd *Reader) []Record {
	t.Helper()
	var out []Record
	for {
		rec, err := rd.Read()
		if errors.Is(err, ErrEmpty) {
			return out
		}
		require.NoError(t, err)
		out = append(out, Record{Seq: rec.Seq, Data: bytes.Clone(rec.Data)})
	}
}

func TestAppendReadAcrossTheWrap(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 4096, MaxRecord: 2048})
	rd := newTestReader(t, r, ReaderOptions{})
	// Odd sizes so records straddle the end of the data ring many times.
	sizes := []int{0, 1, 7, 100, 333, 1000, 2048, 513}
	for i := 0; i < 200; i++ {
		want := payload(i, sizes[i%len(sizes)])
		seq, err := r.Append(want)
		require.NoError(t, err)
		require.Equal(t, uint64(i), seq)
		rec, err := rd.Read()
		require.NoError(t, err)
		assert.Equal(t, uint64(i), rec.Seq)
		require.True(t, bytes.Equal(want, rec.Data), "record %d", i)
	}
	assert.Greater(t, r.Counters().DataTail, uint64(10*4096), "the data ring wrapped many times")
	assert.Equal(t, ReaderStats{Received: 200}, rd.Stats())
}

func TestTooBig(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 100})
	_, err := r.Append(make([]byte, 101))
	require.ErrorIs(t, err, ErrTooBig)
	_, err = r.AppendFunc(101, func([]byte) { t.Fatal("fill called for a record that is too big") })
	require.ErrorIs(t, err, ErrTooBig)
	_, err = r.AppendBatch([][]byte{{1}, make([]byte, 101)})
	require.ErrorIs(t, err, ErrTooBig)
	c := r.Counters()
	assert.Equal(t, uint64(3), c.TooBig)
	assert.Equal(t, uint64(0), c.Next, "nothing was claimed")
	_, err = r.Append(make([]byte, 100))
	require.NoError(t, err)
}

func TestAppendBatchAndFunc(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 256, DataBytes: 1 << 16})
	rd := newTestReader(t, r, ReaderOptions{})
	var batch [][]byte
	for i := 0; i < 100; i++ {
		batch = append(batch, payload(i, 10+i))
	}
	first, err := r.AppendBatch(batch)
	require.NoError(t, err)
	require.Equal(t, uint64(0), first)
	seq, err := r.AppendFunc(5, func(dst []byte) { copy(dst, "hello") })
	require.NoError(t, err)
	require.Equal(t, uint64(100), seq)

	got := drain(t, rd)
	require.Len(t, got, 101)
	for i := 0; i < 100; i++ {
		assert.Equal(t, uint64(i), got[i].Seq)
		assert.Equal(t, batch[i], got[i].Data)
	}
	assert.Equal(t, "hello", string(got[100].Data))
}

func TestAppendBatchLargerThanHalfTheRingIsSplit(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 4096, MaxRecord: 1024})
	rd := newTestReader(t, r, ReaderOptions{})
	batch := [][]byte{payload(0, 1000), payload(1, 1000), payload(2, 1000)}
	_, err := r.AppendBatch(batch)
	require.NoError(t, err)
	got := drain(t, rd)
	require.Len(t, got, 3)
	for i := range got {
		assert.Equal(t, batch[i], got[i].Data)
	}
}

func TestLappedReaderCountsExactLoss(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 1 << 16})
	rd := newTestReader(t, r, ReaderOptions{})
	for i := 0; i < 50; i++ {
		_, err := r.Append(payload(i, 16))
		require.NoError(t, err)
	}
	got := drain(t, rd)
	require.Len(t, got, 16, "the ring holds 16 records")
	assert.Equal(t, uint64(34), got[0].Seq, "the reader continues from the oldest record still valid")
	assert.Equal(t, ReaderStats{Received: 16, Lost: 34}, rd.Stats())
}

func TestDataOverwriteCountsExactLoss(t *testing.T) {
	// Plenty of index slots, little data: records are lost to data laps.
	r := openTestRing(t, shm.Geometry{IndexSlots: 1024, DataBytes: 4096, MaxRecord: 1000})
	rd := newTestReader(t, r, ReaderOptions{})
	for i := 0; i < 20; i++ {
		_, err := r.Append(payload(i, 1000))
		require.NoError(t, err)
	}
	got := drain(t, rd)
	st := rd.Stats()
	assert.Equal(t, uint64(20), st.Received+st.Lost)
	assert.Equal(t, uint64(len(got)), st.Received)
	require.NotEmpty(t, got)
	assert.LessOrEqual(t, len(got), 4, "only 4 records of 1000 bytes fit in 4096")
	for _, rec := range got {
		assert.Equal(t, payload(int(rec.Seq), 1000), rec.Data)
	}
	assert.Equal(t, uint64(19), got[len(got)-1].Seq)
}

// A reader guesses each record's position from the last one it read. After
// producers have written more than half the position space past that, the
// guess is wrong; the reader must notice, read the record again from its
// true position, and count nothing twice.
func TestWrongPositionGuessIsReadAgain(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 64}
	r := openTestRing(t, g)
	rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
	_, err := r.Append(payload(0, 64))
	require.NoError(t, err)
	require.Len(t, drain(t, rd), 1)
	require.True(t, rd.haveExpect)
	ref := rd.expect

	// Write just over half the position space, in 64-byte records.
	half := uint64(1) << (g.PositionBits() - 1)
	n := int(half/(64+hdrSize)) + 40
	for i := 1; i <= n; i++ {
		_, err := r.Append(payload(i, 64))
		require.NoError(t, err)
	}
	oldest := r.Next() - 16
	w := r.index[oldest&r.indexMask].word.Load()
	truePos := r.fmt.position(w, r.ctl.dataTail.Load())
	require.NotEqual(t, truePos, r.fmt.near(w, ref), "the test must make the guess wrong")

	got := drain(t, rd)
	require.Len(t, got, 16)
	for _, rec := range got {
		assert.Equal(t, payload(int(rec.Seq), 64), rec.Data)
	}
	assert.Equal(t, oldest, got[0].Seq)
	assert.Equal(t, ReaderStats{Received: 17, Lost: oldest - 1}, rd.Stats())
	assert.Equal(t, r.Next(), rd.Cursor())
}

func TestStartPositions(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 1 << 16})
	for i := 0; i < 40; i++ {
		_, err := r.Append(payload(i, 8))
		require.NoError(t, err)
	}
	assert.Equal(t, uint64(24), r.Oldest())

	latest := newTestReader(t, r, ReaderOptions{})
	assert.Equal(t, uint64(40), latest.Cursor())
	assert.Empty(t, drain(t, latest))

	oldest := newTestReader(t, r, ReaderOptions{Start: Oldest})
	got := drain(t, oldest)
	require.Len(t, got, 16)
	assert.Equal(t, uint64(24), got[0].Seq)
	assert.Equal(t, ReaderStats{Received: 16}, oldest.Stats(), "records gone before the reader started are not its losses")

	older := newTestReader(t, r, ReaderOptions{Start: AtSeq(10)})
	got = drain(t, older)
	require.Len(t, got, 16)
	assert.Equal(t, uint64(14), older.Stats().Lost, "seq 10..23 are gone")

	_, err := r.NewReader(ReaderOptions{Start: AtSeq(41)})
	require.ErrorIs(t, err, ErrCursor)
}

func TestResumeFromCursor(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 64, DataBytes: 1 << 16})
	rd, err := r.NewReader(ReaderOptions{Start: AtSeq(0)})
	require.NoError(t, err)
	for i := 0; i < 30; i++ {
		_, err := r.Append(payload(i, 32))
		require.NoError(t, err)
	}
	// Read 10 of the 30 (the reader has buffered more internally), then
	// "restart" from the saved cursor.
	for i := 0; i < 10; i++ {
		rec, err := rd.Read()
		require.NoError(t, err)
		require.Equal(t, uint64(i), rec.Seq)
	}
	saved := rd.Cursor()
	require.Equal(t, uint64(10), saved)
	require.NoError(t, rd.Close())

	resumed := newTestReader(t, r, ReaderOptions{Start: AtSeq(saved)})
	got := drain(t, resumed)
	require.Len(t, got, 20)
	assert.Equal(t, uint64(10), got[0].Seq, "no record repeated or skipped")
	assert.Equal(t, ReaderStats{Received: 20}, resumed.Stats())
}

func TestPendingEntryIsAbandonedAfterWaitMax(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096})
	release := make(chan struct{})
	var once sync.Once
	SetHook(r, func(p HookPoint, seq uint64) {
		if p == HookClaimed && seq == 1 {
			once.Do(func() { <-release })
		}
	})
	rd := newTestReader(t, r, ReaderOptions{WaitInterval: time.Millisecond, WaitMax: 30 * time.Millisecond})
	_, err := r.Append(payload(0, 8))
	require.NoError(t, err)
	lateErr := make(chan error, 1)
	go func() {
		_, err := r.Append(payload(1, 8))
		lateErr <- err
	}()

	rec, err := rd.Read()
	require.NoError(t, err)
	require.Equal(t, uint64(0), rec.Seq)
	// Wait until the goroutine's entry is claimed.
	require.Eventually(t, func() bool { return r.Counters().Next == 2 }, 5*time.Second, time.Millisecond)
	_, err = rd.Read()
	require.ErrorIs(t, err, ErrPending)

	// Wait returns within WaitInterval while the entry is pending, so a
	// ReadContext loop retries it and gives up after WaitMax.
	_, err = r.Append(payload(2, 8))
	require.NoError(t, err)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec, err = rd.ReadContext(ctx)
	require.NoError(t, err)
	assert.Equal(t, uint64(2), rec.Seq, "seq 1 was skipped")
	assert.Equal(t, uint64(1), rd.Stats().Abandoned)
	assert.Equal(t, uint64(1), r.Counters().Abandoned)

	close(release)
	require.ErrorIs(t, <-lateErr, ErrAbandoned, "the late producer learns its record was not published")
	assert.Equal(t, uint64(1), r.Counters().LateCommits)

	// A second reader that starts before the abandoned entry sees it as
	// abandoned too: the skip is global.
	other := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
	got := drain(t, other)
	require.Len(t, got, 2)
	assert.Equal(t, []uint64{0, 2}, []uint64{got[0].Seq, got[1].Seq})
	assert.Equal(t, uint64(1), other.Stats().Abandoned)
}

func TestCorruptEntriesAreSkippedAndCounted(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 512})
	for i := 0; i < 4; i++ {
		_, err := r.Append(payload(i, 64))
		require.NoError(t, err)
	}
	binary.LittleEndian.PutUint32(record(r, 1), 100000) // length beyond MaxRecord
	record(r, 2)[4]++                                   // checksum mismatch
	record(r, 3)[hdrSize] ^= 0xff                       // damaged bytes
	rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
	got := drain(t, rd)
	require.Len(t, got, 1)
	assert.Equal(t, uint64(0), got[0].Seq)
	assert.Equal(t, ReaderStats{Received: 1, Corrupt: 3}, rd.Stats())
}

func TestWaitWakesOnCommit(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096})
	rd := newTestReader(t, r, ReaderOptions{})
	got := make(chan Record, 1)
	go func() {
		rec, err := rd.ReadContext(context.Background())
		if err == nil {
			got <- Record{Seq: rec.Seq, Data: bytes.Clone(rec.Data)}
		}
		close(got)
	}()
	// Append only once the reader is asleep, to exercise the futex path.
	require.Eventually(t, func() bool { return r.Counters().Waiters == 1 }, 5*time.Second, time.Millisecond)
	_, err := r.Append([]byte("wake up"))
	require.NoError(t, err)
	select {
	case rec := <-got:
		assert.Equal(t, "wake up", string(rec.Data))
	case <-time.After(10 * time.Second):
		t.Fatal("reader was not woken")
	}
	assert.Equal(t, uint32(0), r.Counters().Waiters)
}

func TestWaitEndsOnContextAndTimeout(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096})
	rd := newTestReader(t, r, ReaderOptions{})
	err := rd.Wait(context.Background(), 5*time.Millisecond)
	require.ErrorIs(t, err, os.ErrDeadlineExceeded)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- rd.Wait(ctx, 0) }()
	require.Eventually(t, func() bool { return r.Counters().Waiters == 1 }, 5*time.Second, time.Millisecond)
	cancel()
	select {
	case err := <-done:
		require.ErrorIs(t, err, context.Canceled)
	case <-time.After(10 * time.Second):
		t.Fatal("Wait did not return on cancel")
	}
	assert.Equal(t, uint32(0), r.Counters().Waiters)
}

func TestRegistry(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 2})
	a, err := r.NewReader(ReaderOptions{})
	require.NoError(t, err)
	b, err := r.NewReader(ReaderOptions{})
	require.NoError(t, err)
	_, err = r.NewReader(ReaderOptions{})
	require.ErrorIs(t, err, ErrNoReaderSlot)
	obs, err := r.NewReader(ReaderOptions{Unregistered: true})
	require.NoError(t, err, "observers need no slot")
	assert.Equal(t, -1, obs.Slot())

	_, err = r.Append([]byte("x"))
	require.NoError(t, err)
	_, err = a.Read()
	require.NoError(t, err)
	require.NoError(t, a.Close())
	require.NoError(t, a.Close(), "Close is idempotent")

	infos := r.Readers()
	require.Len(t, infos, 1)
	assert.Equal(t, b.Slot(), infos[0].Slot)
	assert.Equal(t, os.Getpid(), infos[0].PID)
	assert.True(t, infos[0].Alive)

	c, err := r.NewReader(ReaderOptions{})
	require.NoError(t, err, "a closed reader's slot is free again")
	require.NoError(t, c.Close())
	require.NoError(t, b.Close())
	assert.Empty(t, r.Readers())
}

// A reader's slot shows its cursor and counters after each publish, with
// only the fields that moved stored, and a wall-clock heartbeat renewed at
// most once per heartbeatEvery.
func TestRegistryPublish(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 1})
	before := time.Now()
	rd := newTestReader(t, r, ReaderOptions{})
	slot := func() ReaderInfo {
		infos := r.Readers()
		require.Len(t, infos, 1)
		return infos[0]
	}
	first := slot()
	assert.False(t, first.Heartbeat.Before(before.Truncate(time.Microsecond)), "stamped when the slot was taken")
	assert.False(t, first.Heartbeat.After(time.Now()))

	for i := range 3 {
		_, err := r.Append([]byte{byte(i)})
		require.NoError(t, err)
	}
	for range 3 {
		_, err := rd.Read()
		require.NoError(t, err)
	}
	rd.Sync()
	got := slot()
	assert.Equal(t, uint64(3), got.Cursor)
	assert.Equal(t, uint64(3), got.Received)
	assert.Zero(t, got.Lost+got.Abandoned+got.Corrupt)

	// The heartbeat moves on once heartbeatEvery has passed since the
	// last one was stored.
	deadline := time.Now().Add(10 * time.Second)
	for slot().Heartbeat.Equal(first.Heartbeat) {
		require.True(t, time.Now().Before(deadline), "the heartbeat never moved")
		rd.Sync()
	}
	// (Measured on the counter clock, taken on the wall clock: not exact.)
	assert.GreaterOrEqual(t, slot().Heartbeat.Sub(first.Heartbeat), heartbeatEvery/2)
	assert.Equal(t, uint64(3), slot().Cursor, "fields that did not move are still there")
}

func TestClosedRing(t *testing.T) {
	r, err := Open(filepath.Join(t.TempDir(), "ring"), Options{Geometry: shm.Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 1}})
	require.NoError(t, err)
	rd, err := r.NewReader(ReaderOptions{})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	require.NoError(t, r.Close(), "Close is idempotent")
	_, err = rd.Read()
	require.ErrorIs(t, err, ErrClosed)
	require.ErrorIs(t, rd.Wait(context.Background(), time.Millisecond), ErrClosed)
	require.ErrorIs(t, rd.WaitNext(context.Background(), 0, time.Millisecond), ErrClosed)
	_, err = rd.ReadContext(context.Background())
	require.ErrorIs(t, err, ErrClosed)
	// The methods without an error to return answer without touching the
	// unmapped region: a crash here is the bug this guards against.
	assert.False(t, rd.Ready(0))
	assert.Zero(t, rd.Lag())
	rd.Sync()
	require.NoError(t, rd.Close())
	_, err = r.NewReader(ReaderOptions{})
	require.ErrorIs(t, err, ErrClosed)

	_, err = r.Append([]byte("late"))
	require.ErrorIs(t, err, ErrClosed)
	_, err = r.AppendBatch([][]byte{[]byte("late")})
	require.ErrorIs(t, err, ErrClosed)
	_, err = r.AppendBatch(nil)
	require.ErrorIs(t, err, ErrClosed)
	_, err = r.AppendFunc(4, func([]byte) { t.Error("AppendFunc filled a record on a closed ring") })
	require.ErrorIs(t, err, ErrClosed)
	_, err = r.Verify()
	require.ErrorIs(t, err, ErrClosed)
	assert.False(t, r.Ready(0))
	assert.Zero(t, r.Next())
	assert.Zero(t, r.Oldest())
	assert.Zero(t, r.Counters())
	assert.Nil(t, r.Readers())
	assert.Zero(t, r.Reclaim())

	// Closing released the reader's slot in the file.
	r2, err := Open(r.Region().Path(), Options{})
	require.NoError(t, err)
	defer r2.Close()
	assert.Empty(t, r2.Readers())
}

func TestOpenErrorsComeFromShm(t *testing.T) {
	path := filepath.Join(t.TempDir(), "garbage")
	require.NoError(t, os.WriteFile(path, bytes.Repeat([]byte("garbage!"), 1024), 0o600))
	_, err := Open(path, Options{})
	require.ErrorIs(t, err, shm.ErrNotRing)
	assert.Contains(t, err.Error(), path)
}

func ExampleRing() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	r, err := Open(filepath.Join(dir, "events.ring"), Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()

	rd, _ := r.NewReader(ReaderOptions{}) // starts at the latest record
	defer rd.Close()

	r.Append([]byte("hello"))
	r.Append([]byte("world"))
	for {
		rec, err := rd.Read()
		if err != nil {
			break // ErrEmpty: caught up
		}
		fmt.Println(rec.Seq, string(rec.Data))
	}
	// Output:
	// 0 hello
	// 1 world
}

func TestTruncatedFileIsAnErrorNotACrash(t *testing.T) {
	r := openTestRing(t, shm.Geometry{IndexSlots: 16, DataBytes: 4096})
	rd := newTestReader(t, r, ReaderOptions{Start: AtSeq(0)})
	_, err := r.Append([]byte("before"))
	require.NoError(t, err)
	require.NoError(t, os.Truncate(r.Region().Path(), shm.HeaderSize+shm.PageSize))
	_, err = rd.Read()
	require.ErrorIs(t, err, ErrFault)
}

func ExampleReader_ReadContext() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	r, err := Open(filepath.Join(dir, "events.ring"), Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	rd, _ := r.NewReader(ReaderOptions{Start: Oldest})
	defer rd.Close()

	appended := make(chan error, 1)
	go func() {
		_, err := r.AppendBatch([][]byte{[]byte("one"), []byte("two")})
		appended <- err
	}()

	// ReadContext sleeps on the region's futex until a record is committed.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := 0; i < 2; i++ {
		rec, err := rd.ReadContext(ctx)
		if err != nil {
			fmt.Println(err)
			return
		}
		fmt.Println(rec.Seq, string(rec.Data))
	}
	fmt.Printf("%+v\n", rd.Stats())
	// The append is over before the deferred Close unmaps the ring.
	fmt.Println("append error:", <-appended)
	// Output:
	// 0 one
	// 1 two
	// {Received:2 Lost:0 Abandoned:0 Corrupt:0}
	// append error: <nil>
}

func ExampleReader_Ready() {
	dir, _ := os.MkdirTemp("", "example")
	defer os.RemoveAll(dir)
	r, err := Open(filepath.Join(dir, "events.ring"), Options{})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer r.Close()
	const batch = 4
	rd, _ := r.NewReader(ReaderOptions{Start: Oldest, Batch: batch})
	defer rd.Close()

	appended := make(chan error, 1)
	go func() {
		var err error
		for _, s := range []string{"a", "b", "c", "d", "e", "f"} {
			if _, err = r.Append([]byte(s)); err != nil {
				break
			}
		}
		appended <- err
	}()

	// A consumer that wants throughput, once it has caught up, waits for
	// the last record of a whole batch, watching only that record's index
	// word: producers write it a batch from now, whereas the head's lines
	// are the ones they are writing. A time limit lets it read the tail of
	// a stream that stops short of a batch.
	sep := ""
	for rd.Cursor() < 6 { // also past an entry skipped after WaitMax
		last := rd.Cursor() + batch - 1
		for i := 0; i < 100 && !rd.Ready(last); i++ {
			time.Sleep(10 * time.Microsecond)
		}
		rec, err := rd.Read()
		for ; err == nil; rec, err = rd.Read() {
			fmt.Print(sep, rec.Seq, string(rec.Data))
			sep = " "
			if rd.Buffered() == 0 {
				break // the batch is read: wait for the next one
			}
		}
		if errors.Is(err, ErrPending) {
			time.Sleep(10 * time.Microsecond) // an entry is still being written
		}
	}
	// The appends are over before the deferred Close unmaps the ring.
	fmt.Println("\nappend error:", <-appended)
	// Output:
	// 0a 1b 2c 3d 4e 5f
	// append error: <nil>
}
