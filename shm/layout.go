package shm

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"math/bits"
	"time"
)

// The region file, as laid out in memory and on disk. All integers are
// little-endian (the hosts we run on: amd64, arm64); every section starts on a
// page boundary so that it can be mapped on its own.
//
//	offset            size          section
//	0                 4096          header page
//	HeaderSize        R*64 (paged)  reader table   (layout owned by package ring)
//	readersOff+..     U*32 + N*8    unique table   (layout owned by package events;
//	                  (paged)                       none when U is 0)
//	uniqueOff+..      N*8 (paged)   index ring     (layout owned by package ring)
//	indexOff+..       D             data ring      (opaque bytes, owned by package ring)
//
// The header page:
//
//	off  size  field          written by          notes
//	0    8     magic          creator, once       "SHMRING\x00"
//	8    4     version        creator, once       LayoutVersion
//	12   4     flags          creator, once       reserved, 0
//	16   4     indexSlots N   creator, once       power of two
//	20   4     readerSlots R  creator, once
//	24   8     dataBytes D    creator, once       power of two, multiple of the page size
//	32   4     uniqueSlots U  creator, once
//	36   4     maxRecord      creator, once       largest record, <= D/2
//	40   8     createdNs      creator, once       unix nanoseconds
//	48   4     creatorPID     creator, once
//	52   4     pidNamespace   creator, once       inode of its PID namespace; 0 = unknown
//	56   4     geometryCRC    creator, once       CRC32C of bytes [0, 56)
//	60   68    reserved       -                   0
//	128  3968  control area   package ring        hot words, one per 128-byte block
//
// Bytes [0, 128) never change after creation, so every process may keep them
// in a shared cache line. The control area is handed to package ring, which
// documents its own byte map (ring/layout.go).
const (
	// PageSize is the alignment of every section. Sections are sized in whole
	// pages so the data ring can be mapped twice back to back.
	PageSize = 4096
	// HeaderSize is the size of the header page.
	HeaderSize = PageSize
	// LayoutVersion is the version of this byte map, and of the meaning of
	// the fields inside its sections. Bump it on any change. 2: one-word
	// index entries; 3: the unique table's expiry is a posting time plus
	// the timeout, not a claim time; 4: a record's checksum is XXH3-64, not
	// CRC32C; 5: a unique-table entry's last four bytes say how far its
	// key's last known follow-up lies after the winner; 6: the unique
	// section ends with a claim word per index slot, and a unique event is
	// marked a follow-up when it is posted, not when it is polled; 7: a
	// unique key's expiry is CLOCK_MONOTONIC, not wall, nanoseconds; 8: the
	// header's word at 52 names the creator's PID namespace.
	LayoutVersion = 8

	// ReaderSlotSize is the size of one reader-table entry.
	ReaderSlotSize = 64
	// UniqueSlotSize is the size of one unique-table entry.
	UniqueSlotSize = 32
	// UniqueClaimSize is the size of one of the unique section's claim
	// words, one per index slot, after its UniqueSlots entries.
	UniqueClaimSize = 8
	// IndexEntrySize is the size of one index-ring entry: one word.
	IndexEntrySize = 8
	// RecordHeaderSize is the size of the header package ring puts in front
	// of each record in the data ring (length and checksum).
	RecordHeaderSize = 8

	// ControlOffset is where the control area starts inside the header page.
	ControlOffset = 128
	// ControlSize is the size of the control area.
	ControlSize = HeaderSize - ControlOffset
)

// Header field offsets. Each is derived from the one before it; a test pins them.
const (
	offMagic       = 0
	offVersion     = offMagic + 8
	offFlags       = offVersion + 4
	offIndexSlots  = offFlags + 4
	offReaderSlots = offIndexSlots + 4
	offDataBytes   = offReaderSlots + 4
	offUniqueSlots = offDataBytes + 8
	offMaxRecord   = offUniqueSlots + 4
	offCreatedNs   = offMaxRecord + 4
	offCreatorPID  = offCreatedNs + 8
	offPIDNS       = offCreatorPID + 4
	offGeometryCRC = offPIDNS + 4
	geometryEnd    = offGeometryCRC // the CRC covers [0, geometryEnd)
)

var magic = [8]byte{'S', 'H', 'M', 'R', 'I', 'N', 'G', 0}

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// Limits on a geometry. They keep every derived size inside what a 64-bit
// process can map and keep the ring's 32-bit length fields meaningful.
const (
	MinIndexSlots  = 16
	MaxIndexSlots  = 1 << 26
	MinDataBytes   = PageSize
	MaxDataBytes   = 1 << 32
	MaxReaderSlots = 1 << 12
	MaxUniqueSlots = 1 << 22
)

// An index entry is one 64-bit word: 2 state bits, then L lap bits, then the
// low P bits of the record's data-ring position (package ring has the byte
// map). Readers recover the full position from dataTail, which is exact
// while fewer than 2^P bytes were claimed after the record's own claim. That
// holds for any record whose entry has not been reused if
//
//	2^P > (IndexSlots + InFlightRecords) * (MaxRecord + RecordHeaderSize)
//
// (at most IndexSlots-1 later sequence numbers, each with one record, plus
// records whose bytes are claimed and whose sequence number is not yet).
// P is the smallest such value (Geometry.PositionBits), and a geometry needs
// P <= MaxPositionBits, so that at least MinLapBits remain for the lap.
const (
	// InFlightRecords bounds the records whose bytes are claimed but whose
	// sequence number is not yet claimed, at any moment.
	InFlightRecords = 4096
	// IndexWordBits is the bits of an index word that hold lap and position.
	IndexWordBits = 62
	// MinLapBits is the fewest lap bits an index word may keep.
	MinLapBits = 20
	// MaxPositionBits is the most position bits an index word may take.
	MaxPositionBits = IndexWordBits - MinLapBits
)

// Defaults used when a Geometry field is zero.
const (
	DefaultIndexSlots  = 1 << 14
	DefaultDataBytes   = 4 << 20
	DefaultReaderSlots = 64
	DefaultUniqueSlots = 1024
)

// Geometry is the immutable shape of a region, fixed when the file is created.
type Geometry struct {
	// IndexSlots is the number of index-ring entries: how many records the
	// ring can hold at once. A power of two; default 16384.
	IndexSlots uint32
	// DataBytes is the size of the data ring in bytes. A power of two of at
	// least one page; default 4 MiB.
	DataBytes uint64
	// ReaderSlots is the number of reader-registry entries; default 64.
	ReaderSlots uint32
	// UniqueSlots is the number of unique-table entries; default 1024.
	UniqueSlots uint32
	// MaxRecord is the largest record in bytes; default DataBytes/4, at most
	// DataBytes/2.
	MaxRecord uint32
}

// WithDefaults returns g with every zero field set to its default.
func (g Geometry) WithDefaults() Geometry {
	if g.IndexSlots == 0 {
		g.IndexSlots = DefaultIndexSlots
	}
	if g.DataBytes == 0 {
		g.DataBytes = DefaultDataBytes
	}
	if g.ReaderSlots == 0 {
		g.ReaderSlots = DefaultReaderSlots
	}
	if g.UniqueSlots == 0 {
		g.UniqueSlots = DefaultUniqueSlots
	}
	if g.MaxRecord == 0 {
		// A quarter of the data ring, halved until the index word can
		// hold the positions it needs.
		m := uint32(min(g.DataBytes/4, 1<<31))
		for m > 1 && positionBits(g.IndexSlots, m) > MaxPositionBits {
			m /= 2
		}
		g.MaxRecord = m
	}
	return g
}

// PositionBits returns P, the number of low data-ring position bits an index
// word holds for this geometry: the smallest P with
// 2^P > (IndexSlots + InFlightRecords) * (MaxRecord + RecordHeaderSize).
// The lap gets the other IndexWordBits - P bits.
func (g Geometry) PositionBits() uint { return positionBits(g.IndexSlots, g.MaxRecord) }

func positionBits(indexSlots, maxRecord uint32) uint {
	// At most (2^32 + 2^12) * (2^32 + 8) < 2^65: compute it in two words.
	hi, lo := bits.Mul64(uint64(indexSlots)+InFlightRecords, uint64(maxRecord)+RecordHeaderSize)
	if hi != 0 {
		return 64 + uint(bits.Len64(hi))
	}
	return uint(bits.Len64(lo))
}

// Validate reports whether g is a geometry this layout can hold. It is used
// both for a caller's request and for a header read from a file.
func (g Geometry) Validate() error {
	switch {
	case g.IndexSlots < MinIndexSlots || g.IndexSlots > MaxIndexSlots || !isPow2(uint64(g.IndexSlots)):
		return fmt.Errorf("index slots %d: want a power of two in [%d, %d]", g.IndexSlots, MinIndexSlots, MaxIndexSlots)
	case g.DataBytes < MinDataBytes || g.DataBytes > MaxDataBytes || !isPow2(g.DataBytes):
		return fmt.Errorf("data bytes %d: want a power of two in [%d, %d]", g.DataBytes, MinDataBytes, uint64(MaxDataBytes))
	case g.ReaderSlots < 1 || g.ReaderSlots > MaxReaderSlots:
		return fmt.Errorf("reader slots %d: want [1, %d]", g.ReaderSlots, MaxReaderSlots)
	case g.UniqueSlots > MaxUniqueSlots:
		return fmt.Errorf("unique slots %d: want at most %d", g.UniqueSlots, MaxUniqueSlots)
	case g.MaxRecord < 1 || uint64(g.MaxRecord) > g.DataBytes/2:
		return fmt.Errorf("max record %d: want [1, %d] (half the data ring)", g.MaxRecord, g.DataBytes/2)
	case g.PositionBits() > MaxPositionBits:
		return fmt.Errorf("max record %d with %d index slots needs %d position bits in an index word, more than %d (the lap keeps at least %d): lower max record or index slots",
			g.MaxRecord, g.IndexSlots, g.PositionBits(), MaxPositionBits, MinLapBits)
	}
	return nil
}

func isPow2(v uint64) bool { return v != 0 && bits.OnesCount64(v) == 1 }

func pageRound(n uint64) uint64 { return (n + PageSize - 1) &^ (PageSize - 1) }

// Sections are the byte offsets and sizes of a region's parts, derived from its
// geometry.
type Sections struct {
	ReadersOff, ReadersSize uint64
	UniqueOff, UniqueSize   uint64
	IndexOff, IndexSize     uint64
	DataOff, DataSize       uint64
	FileSize                uint64
}

// Sections derives the section offsets from g (which must be valid).
func (g Geometry) Sections() Sections {
	var s Sections
	s.ReadersOff = HeaderSize
	s.ReadersSize = pageRound(uint64(g.ReaderSlots) * ReaderSlotSize)
	s.UniqueOff = s.ReadersOff + s.ReadersSize
	if g.UniqueSlots > 0 {
		s.UniqueSize = pageRound(uint64(g.UniqueSlots)*UniqueSlotSize + uint64(g.IndexSlots)*UniqueClaimSize)
	}
	s.IndexOff = s.UniqueOff + s.UniqueSize
	s.IndexSize = pageRound(uint64(g.IndexSlots) * IndexEntrySize)
	s.DataOff = s.IndexOff + s.IndexSize
	s.DataSize = g.DataBytes
	s.FileSize = s.DataOff + s.DataSize
	return s
}

// Header is the decoded immutable part of the header page.
type Header struct {
	Version    uint32
	Geometry   Geometry
	Created    time.Time
	CreatorPID int
	// PIDNamespace is the inode number of the creator's PID namespace
	// (/proc/PID/ns/pid), or 0 if it was not known. Readers and posters are
	// told apart by process id, so only processes of this namespace may
	// share the region (Open checks).
	PIDNamespace uint32
}

// encodeHeader writes the immutable header into b (at least geometryEnd+4 bytes).
func encodeHeader(b []byte, h Header) {
	le := binary.LittleEndian
	copy(b[offMagic:], magic[:])
	le.PutUint32(b[offVersion:], h.Version)
	le.PutUint32(b[offFlags:], 0)
	le.PutUint32(b[offIndexSlots:], h.Geometry.IndexSlots)
	le.PutUint32(b[offReaderSlots:], h.Geometry.ReaderSlots)
	le.PutUint64(b[offDataBytes:], h.Geometry.DataBytes)
	le.PutUint32(b[offUniqueSlots:], h.Geometry.UniqueSlots)
	le.PutUint32(b[offMaxRecord:], h.Geometry.MaxRecord)
	le.PutUint64(b[offCreatedNs:], uint64(h.Created.UnixNano()))
	le.PutUint32(b[offCreatorPID:], uint32(h.CreatorPID))
	le.PutUint32(b[offPIDNS:], h.PIDNamespace)
	le.PutUint32(b[offGeometryCRC:], crc32.Checksum(b[:geometryEnd], castagnoli))
}

// DecodeHeader parses and validates a header page. It checks, in order, the
// magic (ErrNotRing), the version (ErrVersion), the checksum and the geometry
// (ErrCorrupt). It never panics, whatever b holds; a b shorter than the header
// gives ErrTruncated.
func DecodeHeader(b []byte) (Header, error) {
	if len(b) == 0 {
		return Header{}, reasonf(ErrTruncated, "file is empty")
	}
	if len(b) < len(magic) {
		if string(b) == string(magic[:len(b)]) {
			return Header{}, reasonf(ErrTruncated, "file is %d bytes, a header is %d", len(b), HeaderSize)
		}
		return Header{}, reasonf(ErrNotRing, "no shmring magic at offset 0")
	}
	if [8]byte(b[:8]) != magic {
		return Header{}, reasonf(ErrNotRing, "no shmring magic at offset 0")
	}
	if len(b) < HeaderSize {
		return Header{}, reasonf(ErrTruncated, "header is %d bytes, want %d", len(b), HeaderSize)
	}
	le := binary.LittleEndian
	h := Header{Version: le.Uint32(b[offVersion:])}
	if h.Version != LayoutVersion {
		return Header{}, reasonf(ErrVersion, "layout version %d, this build reads %d", h.Version, LayoutVersion)
	}
	if want, got := crc32.Checksum(b[:geometryEnd], castagnoli), le.Uint32(b[offGeometryCRC:]); want != got {
		return Header{}, reasonf(ErrCorrupt, "header checksum %#08x, computed %#08x", got, want)
	}
	if flags := le.Uint32(b[offFlags:]); flags != 0 {
		return Header{}, reasonf(ErrCorrupt, "reserved header flags are not zero (%#x)", flags)
	}
	h.Geometry = Geometry{
		IndexSlots:  le.Uint32(b[offIndexSlots:]),
		ReaderSlots: le.Uint32(b[offReaderSlots:]),
		DataBytes:   le.Uint64(b[offDataBytes:]),
		UniqueSlots: le.Uint32(b[offUniqueSlots:]),
		MaxRecord:   le.Uint32(b[offMaxRecord:]),
	}
	if err := h.Geometry.Validate(); err != nil {
		return Header{}, reasonf(ErrCorrupt, "header geometry: %v", err)
	}
	h.Created = time.Unix(0, int64(le.Uint64(b[offCreatedNs:])))
	h.CreatorPID = int(le.Uint32(b[offCreatorPID:]))
	h.PIDNamespace = le.Uint32(b[offPIDNS:])
	return h, nil
}
