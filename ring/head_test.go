package ring

import (
	"encoding/binary"
	"testing"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// A reader at the head of the ring checks a batch of one record by its
// checksum alone. A record that fails it is still told apart as the ones
// of longer batches are: corrupt if damaged, lost if producers overwrote it.
func TestHeadRecordFailingItsChecksum(t *testing.T) {
	t.Run("damaged", func(t *testing.T) {
		r := openTestRing(t, smallGeometry)
		rd := newTestReader(t, r, ReaderOptions{})
		_, err := r.Append(payload(0, 64))
		require.NoError(t, err)
		record(r, 0)[hdrSize] ^= 0xff
		assert.Empty(t, drain(t, rd))
		assert.Equal(t, ReaderStats{Corrupt: 1}, rd.Stats())
		assert.Equal(t, uint64(1), rd.Cursor())

		// The next record is read as usual.
		_, err = r.Append(payload(1, 64))
		require.NoError(t, err)
		got := drain(t, rd)
		require.Len(t, got, 1)
		assert.Equal(t, payload(1, 64), got[0].Data)
	})
	t.Run("overwritten", func(t *testing.T) {
		r := openTestRing(t, smallGeometry)
		rd := newTestReader(t, r, ReaderOptions{})
		_, err := r.Append(payload(0, 64))
		require.NoError(t, err)
		// Producers claimed a whole ring after it (their sequence numbers
		// not yet committed) and one wrote over its bytes.
		r.ctl.dataTail.Add(smallGeometry.DataBytes)
		copy(record(r, 0)[hdrSize:], payload(9, 64))
		assert.Empty(t, drain(t, rd))
		assert.Equal(t, ReaderStats{Lost: 1}, rd.Stats())
	})
	t.Run("intact", func(t *testing.T) {
		r := openTestRing(t, smallGeometry)
		rd := newTestReader(t, r, ReaderOptions{})
		for i := range 3 {
			_, err := r.Append(payload(i, 64))
			require.NoError(t, err)
			got := drain(t, rd)
			require.Len(t, got, 1)
			assert.Equal(t, payload(i, 64), got[0].Data)
		}
		assert.Equal(t, ReaderStats{Received: 3}, rd.Stats())
	})
}

// Reader.Ready turns true when the entry commits, stays false while it is
// only claimed, and is true for an entry a later lap reused, so that a
// lapped reader that spins on it reads on and counts its loss.
func TestReaderReady(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 1 << 16, MaxRecord: 1024}
	r := openTestRing(t, g)
	rd := newTestReader(t, r, ReaderOptions{})
	assert.False(t, rd.Ready(0), "empty")
	_, err := r.Append(payload(0, 64))
	require.NoError(t, err)
	assert.True(t, rd.Ready(0), "committed")
	require.Len(t, drain(t, rd), 1)

	// Claimed, not committed.
	r.ctl.seqTail.Add(1)
	assert.False(t, rd.Ready(1), "pending")
	// Give the entry its commit by hand, as its producer would.
	pos := r.ctl.dataTail.Add(hdrSize+8) - hdrSize - 8
	d := r.data[pos&r.dataMask:]
	binary.LittleEndian.PutUint32(d, 8)
	copy(d[hdrSize:], payload(1, 8))
	require.NoError(t, r.commit(1, pos, recordSum(payload(1, 8))))
	assert.True(t, rd.Ready(1))

	// Producers lap the reader: its entry holds a later lap's word.
	for i := 2; i < 2+int(g.IndexSlots); i++ {
		_, err := r.Append(payload(i, 8))
		require.NoError(t, err)
	}
	assert.True(t, rd.Ready(1), "reused by a later lap")
	got := drain(t, rd)
	require.NotEmpty(t, got)
	st := rd.Stats()
	assert.Equal(t, r.Next(), st.Received+st.Lost, "every sequence number accounted for")
	assert.Equal(t, r.Next(), rd.Cursor())
	assert.NotZero(t, st.Lost)
}

// On a damaged ring whose entry at the cursor holds a later lap's word
// while seqTail says nothing is claimed there, Read finds the ring empty;
// Reader.Ready must agree, or a caller spinning on it would poll in a loop.
func TestReaderReadyOnDamagedTail(t *testing.T) {
	r := heapRing(nil)
	for i := range 40 {
		_, err := r.Append(payload(i, 20))
		require.NoError(t, err)
		copy(r.data[r.dataSize:], r.data[:r.dataSize]) // heap rings keep their mirror by hand
	}
	rd, err := r.NewReader(ReaderOptions{Start: AtSeq(20), Unregistered: true})
	require.NoError(t, err)
	r.ctl.seqTail.Store(20)
	_, err = rd.Read()
	require.ErrorIs(t, err, ErrEmpty)
	assert.Equal(t, peekEmpty, rd.peek())
	assert.False(t, rd.Ready(rd.Cursor()))
}

// After each read, Reader.Ready knows where the next record will begin and
// loads those lines while it waits for the commit; at every position of a
// small ring, the end of the data area included, it does so inside the
// mapping and still answers as before.
func TestReaderReadyKnowsTheNextRecordsLine(t *testing.T) {
	r := openTestRing(t, smallGeometry)
	rd := newTestReader(t, r, ReaderOptions{})
	assert.Zero(t, rd.nextLine.Load(), "nothing read yet: no guess")
	for i := range 400 {
		assert.False(t, rd.Ready(rd.Cursor()), "record %d: nothing committed", i)
		size := 1 + (i*37)%200
		_, err := r.Append(payload(i, size))
		require.NoError(t, err)
		require.True(t, rd.Ready(rd.Cursor()), "record %d", i)
		rec, err := rd.Read()
		require.NoError(t, err)
		require.Equal(t, payload(i, size), rec.Data)
		next := r.ctl.dataTail.Load() // where the next record will be claimed
		assert.Equal(t, next&r.dataMask+1, rd.nextLine.Load(), "record %d", i)
	}
}
