package ring

import (
	"math/bits"
	"sync/atomic"
	"unsafe"

	"github.com/shmring/shmring/shm"
	"github.com/zeebo/xxh3"
)

// The ring's parts of the region (package shm places them; see shm/layout.go).
//
// Control area (shm.Region.Control, at header offset 128). Each block is
// 128 bytes so that words written by different parties never share a cache
// line, nor the pair of lines that adjacent-line prefetchers fetch together.
//
//	ctl off  hdr off  size  field        written by                   read by
//	0        128      8     seqTail      producers: fetch-add (claim)  readers: when the next entry is not
//	                                                                   committed (empty or pending?) or
//	                                                                   reused (lapped?)
//	128      256      8     dataTail     producers: fetch-add (claim)  readers: at most twice per batch
//	                                                                   (a position with nothing to guess
//	                                                                   from; the overwrite check, which a
//	                                                                   lone record at the head skips)
//	256      384      4     wakeGen      producers: add to wake        readers: futex word
//	260      388      4     sleeping     readers: 1 before a wait      producers: swap to 0, then wake
//	384      512      8     abandoned    the reader that abandons      operators
//	392      520      8     tooBig       producers (rejects)           operators
//	400      528      8     lateCommits  producers whose entry was
//	                                     abandoned or reused           operators
//
// Index entry (shm.IndexEntrySize = 8 bytes, eight per cache line, N of
// them; entry i holds sequence numbers s with s mod N == i). One word, P and
// L = 62 - P derived from the geometry (shm.Geometry.PositionBits):
//
//	bits     field  notes
//	0..P-1   pos    the record's monotonic data-ring position mod 2^P
//	P..61    lap    seq / N mod 2^L
//	62..63   state  0 never written (the whole word is 0), 2 committed,
//	                3 abandoned (pos bits 0); 1 is not used
//
// Stored little-endian, as every word here: the state is the top two bits of
// byte 7.
//
// The word alone says which sequence number it belongs to: lap and entry
// index give seq mod N*2^L, and a reader knows the seq it looks for. A
// producer commits with one CAS from the word it loaded, which must be zero
// or of an earlier lap, to committed(lap, pos); a reader abandons with one
// CAS from such a word to abandoned(lap). A producer that finds its own lap
// or a later one lost its entry and reports ErrAbandoned; it has nothing else
// in the entry that it could overwrite. Laps compare modulo 2^L: a word is of
// an earlier lap if it lies less than 2^(L-1) laps behind.
//
// A reader recovers the full position from dataTail, loaded after seqTail:
// pos = dataTail - ((dataTail - posLow) mod 2^P). The record's bytes were
// claimed before its sequence number, so pos < dataTail, and fewer than 2^P
// bytes were claimed since (see shm.Geometry.PositionBits).
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
//	48   8     heartbeat  unix nanoseconds of an update at most 1 ms before the last
//	56   4     waiting    1 while the reader sleeps on wakeGen (for operators)
//	60   4     reserved
//
// Only the owner writes the slot's counters; anyone may read them.
//
// Data ring: shm.Region.Data, DataBytes bytes mapped twice back to back, so
// the record at pos occupies data[pos mod D : pos mod D + 8 + length] without
// wrapping. Records are packed with no padding, each behind a header of
// shm.RecordHeaderSize = 8 bytes:
//
//	off  size  field   written by the producer
//	0    4     length  with the payload, before it claims a sequence number
//	4    4     sum     recordSum(payload) ^ seqMix(seq), after it claims seq
//	                   and before its commit CAS
//	8    len   payload with the length
//
// A record's bytes are protected by the overwrite check (a record whose
// position lies more than D behind dataTail may have been overwritten) and
// by the checksum, which ties them to one sequence number.

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
	word atomic.Uint64
}

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

// Index word states (bits 62-63).
const (
	stateCommitted = 2
	stateAbandoned = 3
	stateShift     = 62
)

// hdrSize is the size of a record's header in the data ring.
const hdrSize = shm.RecordHeaderSize

// wordFormat encodes and decodes index words for one geometry.
type wordFormat struct {
	posBits    uint   // P
	posMask    uint64 // 2^P - 1
	lapMask    uint64 // 2^L - 1
	lapHalf    uint64 // 2^(L-1)
	indexShift uint   // log2 N
}

func newWordFormat(g shm.Geometry) wordFormat {
	p := g.PositionBits()
	l := shm.IndexWordBits - p
	return wordFormat{
		posBits:    p,
		posMask:    1<<p - 1,
		lapMask:    1<<l - 1,
		lapHalf:    1 << (l - 1),
		indexShift: uint(bits.TrailingZeros32(g.IndexSlots)),
	}
}

// lap returns the lap field for seq.
func (f *wordFormat) lap(seq uint64) uint64 { return seq >> f.indexShift & f.lapMask }

// committed returns the word of seq's committed record at pos.
func (f *wordFormat) committed(seq, pos uint64) uint64 {
	return stateCommitted<<stateShift | f.lap(seq)<<f.posBits | pos&f.posMask
}

// abandoned returns the word of seq's abandoned entry.
func (f *wordFormat) abandoned(seq uint64) uint64 {
	return stateAbandoned<<stateShift | f.lap(seq)<<f.posBits
}

// tag returns a word's state and lap: the bits that say which seq it is for.
func (f *wordFormat) tag(w uint64) uint64 { return w >> f.posBits }

// tagOf returns the tag of seq's words in state.
func (f *wordFormat) tagOf(seq, state uint64) uint64 {
	return state<<(stateShift-f.posBits) | f.lap(seq)
}

func wordState(w uint64) uint64 { return w >> stateShift }

// wordLap returns a word's lap field.
func (f *wordFormat) wordLap(w uint64) uint64 { return w >> f.posBits & f.lapMask }

// later reports whether non-zero word w belongs to a later lap than seq's.
func (f *wordFormat) later(w, seq uint64) bool {
	d := (f.wordLap(w) - f.lap(seq)) & f.lapMask
	return d != 0 && d < f.lapHalf
}

// settled reports whether w is seq's word committed or abandoned: a reader
// at seq has a record to read or an entry to skip.
func (f *wordFormat) settled(w, seq uint64) bool {
	t := f.tag(w)
	return t == f.tagOf(seq, stateCommitted) || t == f.tagOf(seq, stateAbandoned)
}

// earlier reports whether w is zero or belongs to an earlier lap than
// seq's: the entry is free for seq's commit.
func (f *wordFormat) earlier(w, seq uint64) bool {
	if w == 0 {
		return true
	}
	d := (f.lap(seq) - f.wordLap(w)) & f.lapMask
	return d != 0 && d < f.lapHalf
}

// position recovers the full data-ring position of word w's record from
// dataTail, loaded after the seqTail that covers the record's seq.
func (f *wordFormat) position(w, dataTail uint64) uint64 {
	return dataTail - (dataTail-w)&f.posMask
}

// near guesses the full position of word w's record as the one nearest to
// ref, the position of a record read just before it: records of adjacent
// sequence numbers lie close together. It is only a guess: a reader checks
// it against position() with a dataTail loaded after the copy, except for a
// lone record at the head, whose bytes are the same at any position with
// the same low P bits (2^P is a multiple of the data size), so that a wrong
// guess there costs nothing and is corrected at the next longer batch.
func (f *wordFormat) near(w, ref uint64) uint64 {
	d := (w - ref) & f.posMask
	if d > f.posMask>>1 {
		return ref - (f.posMask + 1 - d) // w lies behind ref
	}
	return ref + d
}

// recordSum is a record's checksum: the low 32 bits of the XXH3-64 hash of
// its payload. It guards against bytes a stale producer wrote over the
// record, and against damage, not against an adversary; XXH3 does that job
// in half the time of CRC32C at the sizes events have (64 bytes: 3.7 ns
// against 7.5 ns), and the checksum is on every append and every read.
func recordSum(p []byte) uint32 { return uint32(xxh3.Hash(p)) }

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
