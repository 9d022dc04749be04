package ring

import (
	"testing"
	"unsafe"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
)

// TestLayoutPinned pins every offset of the byte maps in layout.go. A change
// here is a change of the file format: bump shm.LayoutVersion with it.
func TestLayoutPinned(t *testing.T) {
	var c control
	assert.Equal(t, uintptr(0), unsafe.Offsetof(c.seqTail))
	assert.Equal(t, uintptr(128), unsafe.Offsetof(c.dataTail))
	assert.Equal(t, uintptr(256), unsafe.Offsetof(c.wakeGen))
	assert.Equal(t, uintptr(260), unsafe.Offsetof(c.sleeping))
	assert.Equal(t, uintptr(384), unsafe.Offsetof(c.abandoned))
	assert.Equal(t, uintptr(392), unsafe.Offsetof(c.tooBig))
	assert.Equal(t, uintptr(400), unsafe.Offsetof(c.lateCommits))
	assert.Equal(t, uintptr(512), unsafe.Sizeof(c))
	assert.LessOrEqual(t, int(unsafe.Sizeof(c)), shm.ControlSize)
	assert.Zero(t, shm.ControlOffset%128, "the control area starts on a 128-byte block")

	var e entry
	assert.Equal(t, uintptr(0), unsafe.Offsetof(e.stamp))
	assert.Equal(t, uintptr(8), unsafe.Offsetof(e.dataPos))
	assert.Equal(t, uintptr(16), unsafe.Offsetof(e.meta))
	// meta holds the length in bytes 16-19 and the crc in bytes 20-23.
	m := packMeta(0x11223344, 0xaabbccdd)
	assert.Equal(t, [8]byte{0x44, 0x33, 0x22, 0x11, 0xdd, 0xcc, 0xbb, 0xaa}, *(*[8]byte)(unsafe.Pointer(&m)))
	l, cr := unpackMeta(m)
	assert.Equal(t, uint32(0x11223344), l)
	assert.Equal(t, uint32(0xaabbccdd), cr)
	assert.Equal(t, uintptr(24), unsafe.Offsetof(e.touch))
	assert.Equal(t, uintptr(shm.IndexEntrySize), unsafe.Sizeof(e))

	var s readerSlot
	assert.Equal(t, uintptr(0), unsafe.Offsetof(s.owner))
	assert.Equal(t, uintptr(8), unsafe.Offsetof(s.cursor))
	assert.Equal(t, uintptr(16), unsafe.Offsetof(s.received))
	assert.Equal(t, uintptr(24), unsafe.Offsetof(s.lost))
	assert.Equal(t, uintptr(32), unsafe.Offsetof(s.abandoned))
	assert.Equal(t, uintptr(40), unsafe.Offsetof(s.corrupt))
	assert.Equal(t, uintptr(48), unsafe.Offsetof(s.heartbeat))
	assert.Equal(t, uintptr(56), unsafe.Offsetof(s.waiting))
	assert.Equal(t, uintptr(shm.ReaderSlotSize), unsafe.Sizeof(s))
}

func TestStampEncoding(t *testing.T) {
	for _, seq := range []uint64{0, 1, 12345, 1<<62 - 1} {
		for _, state := range []uint64{stateBusy, stateCommitted, stateAbandoned} {
			st := stamp(seq, state)
			assert.Equal(t, seq, stampSeq(st))
			assert.Equal(t, state, stampState(st))
		}
	}
	assert.NotEqual(t, stamp(0, stateCommitted), uint64(0), "a zeroed entry never reads as committed")
	assert.NotEqual(t, seqMix(1), seqMix(2))
}
