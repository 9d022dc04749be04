package ring

import (
	"sync/atomic"
	"unsafe"

	"github.com/shmring/shmring/shm"
)

// The ring's parts of the region (package shm places them; see shm/layout.go).
//
// Control area (shm.Region.Control, at header offset 128). Each block is
// 128 bytes so that words written by different parties never share a cache
// line, nor the pair of lines that adjacent-line prefetchers fetch together.
//
//	ctl off  hdr off  size  field        written by                   read by
//	0        128      8     seqTail      producers: fetch-add (claim)  readers: once per batch
//	128      256      8     dataTail     producers: fetch-add (claim)  readers: once per batch (overwrite check)
//	256      384      4     wakeGen      producers: add to wake        readers: futex word
//	260      388      4     sleeping     readers: 1 before a wait      producers: swap to 0, then wake
//	384      512      8     abandoned    the reader that abandons      operators
//	392      520      8     tooBig       producers (rejects)           operators
//	400      528      8     lateCommits  producers whose entry was
//	                                     abandoned or reused           operators
//
// Index entry (shm.IndexEntrySize = 32 bytes, N of them, entry i holds
// sequence numbers s with s mod N == i):
//
//	off  size  field    notes
//	0    8     stamp    seq<<2 | state; state 1 busy, 2 committed, 3 abandoned;
//	                    0 is a never-written entry and never reads as committed
//	8    8     dataPos  monotonic data-ring position of the record's first byte
//	16   4     length   record length in bytes
//	20   4     crc      CRC32C(record) ^ seqMix(seq)
//	24   8     touch    scratch: producers store to it to own the line early
//
// dataPos, length and crc are seqlock-protected like the record bytes: the
// producer writes them between its busy CAS and its commit CAS on stamp, and
// a reader uses them only if stamp is the same committed value before and
// after it copied them. The producer writes them by CAS from the values it
// found after its busy CAS, so a producer that lost the entry while paused
// (abandoned, then reused by a later lap) cannot overwrite the fields of the
// entry's next owner: its CAS fails and it reports ErrAbandoned.
//
// Reader slot (shm.ReaderSlotSize = 64 bytes, R of them):
//
//	off  size  field      notes
//	0    8     owner      pid<<32 | low 32 bits of the process start time; 0 = free
//	8    8     cursor     next sequence the reader will deliver
//	16   8     received   records delivered
//	24   8     lost       records it never saw: lapped or overwritten while read
//	32   8     abandoned  incomplete entries it skipped after WaitMax
//	40   8     corrupt    entries that failed their bounds or checksum checks
//	48   8     heartbeat  unix nanoseconds of the last update
//	56   4     waiting    1 while the reader sleeps on wakeGen (for operators)
//	60   4     reserved
//
// Only the owner writes the slot's counters; anyone may read them.
//
// Data ring: shm.Region.Data, DataBytes bytes mapped twice back to back, so
// the record at dataPos occupies data[dataPos mod D : dataPos mod D + length]
// without wrapping. Records are packed with no header and no padding.

type control struct {
	seqTail     atomic.Uint64
	_           [120]byte
	dataTail    atomic.Uint64
	_           [120]byte
	wakeGen     atomic.Uint32
	sleeping    atomic.Uint32
	_           [120]byte
	abandoned   atomic.Uint64
	tooBig      atomic.Uint64
	lateCommits atomic.Uint64
	_           [104]byte
}

type entry struct {
	stamp   atomic.Uint64
	dataPos atomic.Uint64
	meta    atomic.Uint64 // length | crc<<32: bytes 16-19 length, 20-23 crc
	touch   uint64        // written, never read: see Ring.touch
}

func packMeta(length, crc uint32) uint64       { return uint64(length) | uint64(crc)<<32 }
func unpackMeta(m uint64) (length, crc uint32) { return uint32(m), uint32(m >> 32) }

type readerSlot struct {
	owner     atomic.Uint64
	cursor    atomic.Uint64
	received  atomic.Uint64
	lost      atomic.Uint64
	abandoned atomic.Uint64
	corrupt   atomic.Uint64
	heartbeat atomic.Uint64
	waiting   atomic.Uint32
	_         uint32
}

// Compile-time checks that the structs have the sizes of the byte map.
var (
	_ [shm.IndexEntrySize]byte = [unsafe.Sizeof(entry{})]byte{}
	_ [shm.ReaderSlotSize]byte = [unsafe.Sizeof(readerSlot{})]byte{}
	_ [512]byte                = [unsafe.Sizeof(control{})]byte{}
)

// Stamp states.
const (
	stateBusy      = 1
	stateCommitted = 2
	stateAbandoned = 3
	stateMask      = 3
)

func stamp(seq uint64, state uint64) uint64 { return seq<<2 | state }
func stampSeq(st uint64) uint64             { return st >> 2 }
func stampState(st uint64) uint64           { return st & stateMask }

// seqMix folds a record's sequence number into its checksum, so that bytes
// that belong to another record never verify under this one.
func seqMix(seq uint64) uint32 {
	h := seq * 0x9E3779B97F4A7C15
	return uint32(h >> 32)
}

// view casts a byte slice to a slice of T. b must be aligned for T.
func view[T any](b []byte) []T {
	var zero T
	n := uintptr(len(b)) / unsafe.Sizeof(zero)
	if n == 0 {
		return nil
	}
	return unsafe.Slice((*T)(unsafe.Pointer(&b[0])), n)
}
