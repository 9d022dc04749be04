package ring

import (
	"testing"
	"unsafe"

	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
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
	assert.Equal(t, uintptr(0), unsafe.Offsetof(e.word))
	assert.Equal(t, uintptr(shm.IndexEntrySize), unsafe.Sizeof(e))
	assert.Equal(t, 8, 64/shm.IndexEntrySize, "eight entries per cache line")

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

// TestWordEncoding pins the bits of an index word: state in bits 62-63,
// lap in bits P-61, the position's low P bits below.
func TestWordEncoding(t *testing.T) {
	g := shm.Geometry{IndexSlots: 16, DataBytes: 4096, MaxRecord: 1024}
	f := newWordFormat(g)
	// (16 + 4096) * (1024 + 8) = 4243584 < 2^23.
	require.Equal(t, uint(23), f.posBits)
	assert.Equal(t, uint64(1)<<23-1, f.posMask)
	assert.Equal(t, uint64(1)<<39-1, f.lapMask, "62 - 23 lap bits")
	// seq 0x35 is lap 3 of entry 5.
	w := f.committed(0x35, 0xabc_1234_5678)
	assert.Equal(t, uint64(2)<<62|uint64(3)<<23|0x345678, w)
	assert.Equal(t, [8]byte{0x78, 0x56, 0xb4, 0x01, 0, 0, 0, 0x80}, *(*[8]byte)(unsafe.Pointer(&w)), "little-endian bytes")
	assert.Equal(t, uint64(3)<<62|uint64(3)<<23, f.abandoned(0x35), "an abandoned word has no position")
	assert.Equal(t, uint64(stateCommitted), wordState(w))
	assert.Equal(t, uint64(3), f.wordLap(w))
	assert.Equal(t, f.tagOf(0x35, stateCommitted), f.tag(w))
	assert.NotEqual(t, f.tagOf(0x25, stateCommitted), f.tag(w), "another lap")
	assert.NotEqual(t, f.committed(0, 0), uint64(0), "a zeroed entry never reads as committed")

	// The position comes back from any dataTail less than 2^P past it.
	for _, pos := range []uint64{0, 1, 1<<23 - 1, 1 << 23, 0xabc_1234_5678} {
		for _, d := range []uint64{8, 1000, 1<<23 - 1} {
			assert.Equal(t, pos, f.position(f.committed(7, pos), pos+d), "pos %d, dataTail %d past it", pos, d)
		}
	}

	// Laps compare modulo 2^L.
	seq := uint64(5) << 4 // lap 5
	assert.True(t, f.earlier(0, seq))
	assert.True(t, f.earlier(f.committed(seq-16, 1), seq))
	assert.True(t, f.earlier(f.abandoned(seq-16*1000), seq))
	assert.False(t, f.earlier(f.committed(seq, 1), seq), "its own lap")
	assert.False(t, f.earlier(f.abandoned(seq), seq), "its own lap, abandoned")
	assert.False(t, f.earlier(f.committed(seq+16, 1), seq), "a later lap")
	assert.True(t, f.later(f.committed(seq+16, 1), seq))
	assert.False(t, f.later(f.committed(seq, 1), seq))
	assert.False(t, f.later(f.committed(seq-16, 1), seq))
	// Lap 0 follows lap 2^L-1.
	last := (f.lapMask << 4) | 3
	assert.True(t, f.earlier(f.committed(last, 9), 3+(f.lapMask+1)<<4))
	assert.True(t, f.later(f.committed(3+(f.lapMask+1)<<4, 9), last))

	assert.NotEqual(t, seqMix(1), seqMix(2))
}

// The default geometry keeps more lap bits than the minimum.
func TestWordFormatDefaults(t *testing.T) {
	f := newWordFormat(shm.Geometry{}.WithDefaults())
	// (16384 + 4096) * (2^20 + 8) < 2^35.
	assert.Equal(t, uint(35), f.posBits)
	assert.Equal(t, uint64(1)<<27-1, f.lapMask)
}
