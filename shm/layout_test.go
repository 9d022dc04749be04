package shm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// testGeometry is the smallest valid geometry: every section is one page.
var testGeometry = Geometry{IndexSlots: 16, DataBytes: 4096, ReaderSlots: 1, UniqueSlots: 1, MaxRecord: 1024}

// largestGeometry has every limit at its largest, and the largest MaxRecord
// that leaves an index word 20 lap bits with that many index slots.
var largestGeometry = Geometry{IndexSlots: MaxIndexSlots, DataBytes: MaxDataBytes, ReaderSlots: MaxReaderSlots, UniqueSlots: MaxUniqueSlots, MaxRecord: 1 << 15}

// allSentinels are the errors DecodeHeader and Open classify failures with.
var allSentinels = []error{ErrNotRing, ErrVersion, ErrCorrupt, ErrTruncated, ErrSymlink, ErrNotRegular, ErrForeignOwner, ErrGeometry}

// assertOnlySentinel checks that err wraps want and none of the other sentinels.
func assertOnlySentinel(t *testing.T, err, want error) {
	t.Helper()
	require.Error(t, err, "want an error wrapping %v", want)
	assert.ErrorIs(t, err, want)
	for _, s := range allSentinels {
		if s != want {
			assert.NotErrorIs(t, err, s, "error %q should wrap only %v", err, want)
		}
	}
}

// fixCRC recomputes the geometry checksum of a header page in place.
func fixCRC(b []byte) {
	binary.LittleEndian.PutUint32(b[offGeometryCRC:], crc32.Checksum(b[:geometryEnd], castagnoli))
}

// validPage returns an encoded header page for g.
func validPage(g Geometry) []byte {
	page := make([]byte, HeaderSize)
	encodeHeader(page, Header{Version: LayoutVersion, Geometry: g, Created: time.Unix(0, 1_700_000_000_123_456_789), CreatorPID: 4242})
	return page
}

func TestHeaderOffsets(t *testing.T) {
	// The byte map in layout.go is a cross-process ABI: these numbers may
	// only change together with LayoutVersion.
	tests := []struct {
		name      string
		got, want int
	}{
		{"offMagic", offMagic, 0},
		{"offVersion", offVersion, 8},
		{"offFlags", offFlags, 12},
		{"offIndexSlots", offIndexSlots, 16},
		{"offReaderSlots", offReaderSlots, 20},
		{"offDataBytes", offDataBytes, 24},
		{"offUniqueSlots", offUniqueSlots, 32},
		{"offMaxRecord", offMaxRecord, 36},
		{"offCreatedNs", offCreatedNs, 40},
		{"offCreatorPID", offCreatorPID, 48},
		{"offPIDNS", offPIDNS, 52},
		{"offGeometryCRC", offGeometryCRC, 56},
		{"geometryEnd", geometryEnd, 56},
		{"ControlOffset", ControlOffset, 128},
		{"ControlSize", ControlSize, 3968},
		{"HeaderSize", HeaderSize, 4096},
		{"PageSize", PageSize, 4096},
		{"LayoutVersion", LayoutVersion, 8},
		{"ReaderSlotSize", ReaderSlotSize, 64},
		{"UniqueSlotSize", UniqueSlotSize, 32},
		{"IndexEntrySize", IndexEntrySize, 8},
		{"RecordHeaderSize", RecordHeaderSize, 8},
		{"InFlightRecords", InFlightRecords, 4096},
		{"MaxPositionBits", MaxPositionBits, 42},
	}
	for _, tc := range tests {
		assert.Equal(t, tc.want, tc.got, "%s moved: the header byte map is an ABI", tc.name)
	}
	assert.LessOrEqual(t, offGeometryCRC+4, ControlOffset, "the immutable header must end before the control area")
	assert.Zero(t, ControlOffset%128, "the control area must start on a 128-byte block")
	assert.Equal(t, HeaderSize, ControlOffset+ControlSize, "the control area must fill the header page")
}

func TestEncodeHeaderByteMap(t *testing.T) {
	g := Geometry{IndexSlots: 0x1000, DataBytes: 0x1_0000_0000, ReaderSlots: 0x0203, UniqueSlots: 0x040506, MaxRecord: 0x0708090a}
	h := Header{Version: LayoutVersion, Geometry: g, Created: time.Unix(0, 0x1122334455667788), CreatorPID: 0x01020304, PIDNamespace: 0xf0000a0b}
	page := make([]byte, HeaderSize)
	for i := range page {
		page[i] = 0xee // encodeHeader must write every byte it owns
	}
	encodeHeader(page, h)
	le := binary.LittleEndian
	// Literal offsets on purpose: this is the documented byte map.
	assert.Equal(t, "SHMRING\x00", string(page[0:8]), "magic")
	assert.Equal(t, uint32(8), le.Uint32(page[8:]), "version")
	assert.Equal(t, uint32(0), le.Uint32(page[12:]), "flags")
	assert.Equal(t, uint32(0x1000), le.Uint32(page[16:]), "index slots")
	assert.Equal(t, uint32(0x0203), le.Uint32(page[20:]), "reader slots")
	assert.Equal(t, uint64(0x1_0000_0000), le.Uint64(page[24:]), "data bytes")
	assert.Equal(t, uint32(0x040506), le.Uint32(page[32:]), "unique slots")
	assert.Equal(t, uint32(0x0708090a), le.Uint32(page[36:]), "max record")
	assert.Equal(t, uint64(0x1122334455667788), le.Uint64(page[40:]), "created ns")
	assert.Equal(t, uint32(0x01020304), le.Uint32(page[48:]), "creator pid")
	assert.Equal(t, uint32(0xf0000a0b), le.Uint32(page[52:]), "PID namespace")
	assert.Equal(t, crc32.Checksum(page[:56], crc32.MakeTable(crc32.Castagnoli)), le.Uint32(page[56:]), "CRC32C of [0, 56)")
	for i := 60; i < HeaderSize; i++ {
		if page[i] != 0xee {
			t.Fatalf("encodeHeader wrote byte %d, beyond the immutable header", i)
		}
	}
}

func TestSections(t *testing.T) {
	tests := []struct {
		name string
		g    Geometry
		want Sections
	}{
		{
			name: "smallest",
			g:    testGeometry,
			want: Sections{
				ReadersOff: 4096, ReadersSize: 4096,
				UniqueOff: 8192, UniqueSize: 4096,
				IndexOff: 12288, IndexSize: 4096,
				DataOff: 16384, DataSize: 4096,
				FileSize: 20480,
			},
		},
		{
			name: "defaults",
			g:    Geometry{}.WithDefaults(),
			want: Sections{
				ReadersOff: 4096, ReadersSize: 4096,
				UniqueOff: 8192, UniqueSize: 32768 + 131072,
				IndexOff: 172032, IndexSize: 131072,
				DataOff: 303104, DataSize: 4 << 20,
				FileSize: 4497408,
			},
		},
		{
			name: "odd reader count rounds up, no unique table",
			g:    Geometry{IndexSlots: 256, DataBytes: 8192, ReaderSlots: 65, UniqueSlots: 0, MaxRecord: 100},
			want: Sections{
				ReadersOff: 4096, ReadersSize: 8192,
				UniqueOff: 12288, UniqueSize: 0,
				IndexOff: 12288, IndexSize: 4096,
				DataOff: 16384, DataSize: 8192,
				FileSize: 24576,
			},
		},
		{
			name: "largest",
			g:    largestGeometry,
			want: Sections{
				ReadersOff: 4096, ReadersSize: 262144,
				UniqueOff: 266240, UniqueSize: 134217728 + 536870912,
				IndexOff: 671354880, IndexSize: 536870912,
				DataOff: 1208225792, DataSize: 4294967296,
				FileSize: 5503193088,
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			require.NoError(t, tc.g.Validate(), "the table holds valid geometries only")
			s := tc.g.Sections()
			assert.Equal(t, tc.want, s)
			for _, off := range []uint64{s.ReadersOff, s.UniqueOff, s.IndexOff, s.DataOff, s.FileSize} {
				assert.Zero(t, off%PageSize, "every section starts on a page boundary: %d", off)
			}
		})
	}
}

func TestGeometryValidate(t *testing.T) {
	base := Geometry{IndexSlots: 1024, DataBytes: 1 << 20, ReaderSlots: 8, UniqueSlots: 64, MaxRecord: 4096}
	require.NoError(t, base.Validate())
	with := func(f func(*Geometry)) Geometry { g := base; f(&g); return g }
	tests := []struct {
		name string
		g    Geometry
		bad  string // substring of the error, "" when valid
	}{
		{"base", base, ""},
		{"index slots min", with(func(g *Geometry) { g.IndexSlots = MinIndexSlots }), ""},
		{"index slots max", with(func(g *Geometry) { g.IndexSlots = MaxIndexSlots }), ""},
		{"index slots zero", with(func(g *Geometry) { g.IndexSlots = 0 }), "index slots"},
		{"index slots below min, power of two", with(func(g *Geometry) { g.IndexSlots = MinIndexSlots / 2 }), "index slots"},
		{"index slots not power of two", with(func(g *Geometry) { g.IndexSlots = 1000 }), "index slots"},
		{"index slots min+1", with(func(g *Geometry) { g.IndexSlots = MinIndexSlots + 1 }), "index slots"},
		{"index slots above max", with(func(g *Geometry) { g.IndexSlots = MaxIndexSlots * 2 }), "index slots"},
		{"data bytes min", with(func(g *Geometry) { g.DataBytes = MinDataBytes; g.MaxRecord = 2048 }), ""},
		{"data bytes max", with(func(g *Geometry) { g.DataBytes = MaxDataBytes }), ""},
		{"data bytes zero", with(func(g *Geometry) { g.DataBytes = 0 }), "data bytes"},
		{"data bytes half a page", with(func(g *Geometry) { g.DataBytes = PageSize / 2; g.MaxRecord = 1 }), "data bytes"},
		{"data bytes pages, not power of two", with(func(g *Geometry) { g.DataBytes = 3 * PageSize }), "data bytes"},
		{"data bytes above max", with(func(g *Geometry) { g.DataBytes = MaxDataBytes * 2 }), "data bytes"},
		{"data bytes huge", with(func(g *Geometry) { g.DataBytes = 1 << 63 }), "data bytes"},
		{"reader slots one", with(func(g *Geometry) { g.ReaderSlots = 1 }), ""},
		{"reader slots not power of two", with(func(g *Geometry) { g.ReaderSlots = 3 }), ""},
		{"reader slots max", with(func(g *Geometry) { g.ReaderSlots = MaxReaderSlots }), ""},
		{"reader slots zero", with(func(g *Geometry) { g.ReaderSlots = 0 }), "reader slots"},
		{"reader slots above max", with(func(g *Geometry) { g.ReaderSlots = MaxReaderSlots + 1 }), "reader slots"},
		{"unique slots zero", with(func(g *Geometry) { g.UniqueSlots = 0 }), ""},
		{"unique slots not power of two", with(func(g *Geometry) { g.UniqueSlots = 7 }), ""},
		{"unique slots max", with(func(g *Geometry) { g.UniqueSlots = MaxUniqueSlots }), ""},
		{"unique slots above max", with(func(g *Geometry) { g.UniqueSlots = MaxUniqueSlots + 1 }), "unique slots"},
		{"max record one", with(func(g *Geometry) { g.MaxRecord = 1 }), ""},
		{"max record half the data ring", with(func(g *Geometry) { g.MaxRecord = 1 << 19 }), ""},
		{"max record zero", with(func(g *Geometry) { g.MaxRecord = 0 }), "max record"},
		{"max record over half the data ring", with(func(g *Geometry) { g.MaxRecord = 1<<19 + 1 }), "max record"},
		{"max record the whole data ring", with(func(g *Geometry) { g.MaxRecord = 1 << 20 }), "max record"},
		{"max record above half of the largest ring", Geometry{IndexSlots: 16, DataBytes: MaxDataBytes, ReaderSlots: 1, MaxRecord: 1<<31 + 1}, "max record"},
		// An index word keeps 20 lap bits: (N + 4096) * (MaxRecord + 8) < 2^42.
		{"max record half of the largest ring: too many position bits", Geometry{IndexSlots: 16, DataBytes: MaxDataBytes, ReaderSlots: 1, MaxRecord: 1 << 31}, "position bits"},
		{"largest max record for 16 index slots", Geometry{IndexSlots: 16, DataBytes: MaxDataBytes, ReaderSlots: 1, MaxRecord: (1<<42-1)/(16+4096) - 8}, ""},
		{"one byte more: 43 position bits", Geometry{IndexSlots: 16, DataBytes: MaxDataBytes, ReaderSlots: 1, MaxRecord: (1<<42-1)/(16+4096) - 7}, "43 position bits"},
		{"largest index slots, largest max record for them", largestGeometry, ""},
		{"largest index slots, max record doubled", with(func(g *Geometry) { *g = largestGeometry; g.MaxRecord *= 2 }), "position bits"},
		{"zero geometry", Geometry{}, "index slots"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.g.Validate()
			if tc.bad == "" {
				assert.NoError(t, err, "geometry %+v should be valid", tc.g)
				return
			}
			require.Error(t, err, "geometry %+v should be refused", tc.g)
			assert.Contains(t, err.Error(), tc.bad, "the error should name the offending field")
		})
	}
}

func TestGeometryWithDefaults(t *testing.T) {
	tests := []struct {
		name   string
		in     Geometry
		expect Geometry
	}{
		{"zero", Geometry{}, Geometry{IndexSlots: DefaultIndexSlots, DataBytes: DefaultDataBytes, ReaderSlots: DefaultReaderSlots, UniqueSlots: DefaultUniqueSlots, MaxRecord: DefaultDataBytes / 4}},
		{"data bytes given: max record follows it", Geometry{DataBytes: 1 << 16}, Geometry{IndexSlots: DefaultIndexSlots, DataBytes: 1 << 16, ReaderSlots: DefaultReaderSlots, UniqueSlots: DefaultUniqueSlots, MaxRecord: 1 << 14}},
		// A quarter, 2^30, would need 45 position bits; 2^27 needs 42.
		{"largest data ring", Geometry{DataBytes: MaxDataBytes}, Geometry{IndexSlots: DefaultIndexSlots, DataBytes: MaxDataBytes, ReaderSlots: DefaultReaderSlots, UniqueSlots: DefaultUniqueSlots, MaxRecord: 1 << 27}},
		{"largest index and data rings", Geometry{IndexSlots: MaxIndexSlots, DataBytes: MaxDataBytes}, Geometry{IndexSlots: MaxIndexSlots, DataBytes: MaxDataBytes, ReaderSlots: DefaultReaderSlots, UniqueSlots: DefaultUniqueSlots, MaxRecord: 1 << 15}},
		{"all given are kept", testGeometry, testGeometry},
		{"max record given is kept", Geometry{MaxRecord: 7}, Geometry{IndexSlots: DefaultIndexSlots, DataBytes: DefaultDataBytes, ReaderSlots: DefaultReaderSlots, UniqueSlots: DefaultUniqueSlots, MaxRecord: 7}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := tc.in.WithDefaults()
			assert.Equal(t, tc.expect, got)
			assert.NoError(t, got.Validate(), "defaults must give a valid geometry")
			assert.Equal(t, got, got.WithDefaults(), "WithDefaults is idempotent")
		})
	}
}

func TestDecodeHeaderRoundTrip(t *testing.T) {
	for _, g := range []Geometry{testGeometry, Geometry{}.WithDefaults(), largestGeometry} {
		for _, created := range []time.Time{time.Unix(0, 0), time.Unix(0, 1_700_000_000_123_456_789), time.Unix(0, -1), time.Now()} {
			in := Header{Version: LayoutVersion, Geometry: g, Created: created, CreatorPID: 0x7fff_fff0, PIDNamespace: 0xffff_fffe}
			page := make([]byte, HeaderSize)
			encodeHeader(page, in)
			got, err := DecodeHeader(page)
			require.NoError(t, err, "a freshly encoded header must decode")
			assert.Equal(t, in.Version, got.Version)
			assert.Equal(t, in.Geometry, got.Geometry)
			assert.Equal(t, in.CreatorPID, got.CreatorPID)
			assert.Equal(t, in.PIDNamespace, got.PIDNamespace)
			assert.True(t, in.Created.Equal(got.Created), "created %v, decoded %v", in.Created, got.Created)

			// Longer input: only the first page is the header.
			long := append(page, make([]byte, 100)...)
			got2, err := DecodeHeader(long)
			require.NoError(t, err)
			assert.Equal(t, got.Geometry, got2.Geometry)
		}
	}
}

func TestDecodeHeaderIgnoresControlArea(t *testing.T) {
	// The control area and the reserved bytes after the CRC change while the
	// ring runs; the header must still decode.
	page := validPage(testGeometry)
	for i := geometryEnd + 4; i < HeaderSize; i++ {
		page[i] = byte(i*31 + 7)
	}
	h, err := DecodeHeader(page)
	require.NoError(t, err)
	assert.Equal(t, testGeometry, h.Geometry)
}

func TestDecodeHeaderErrors(t *testing.T) {
	valid := validPage(testGeometry)
	mutate := func(f func(b []byte)) []byte {
		b := append([]byte(nil), valid...)
		f(b)
		return b
	}
	type decodeCase struct {
		name string
		in   []byte
		want error
		msg  string
	}
	tests := []decodeCase{
		{"nil", nil, ErrTruncated, "empty"},
		{"empty", []byte{}, ErrTruncated, "empty"},
		{"one byte", []byte{'S'}, ErrTruncated, "1 bytes"},
		{"one byte, not magic", []byte{'X'}, ErrNotRing, "magic"},
		{"seven bytes of magic", []byte("SHMRING"), ErrTruncated, "7 bytes"},
		{"four bytes of magic", []byte("SHMR"), ErrTruncated, "4 bytes"},
		{"four bytes, not magic", []byte("SHMX"), ErrNotRing, "magic"},
		{"flags set, valid CRC", mutate(func(b []byte) { b[offFlags] = 1; fixCRC(b) }), ErrCorrupt, "reserved"},
		{"garbage", []byte("this is not a ring at all, just some text in a file\n"), ErrNotRing, "magic"},
		{"zero page", make([]byte, HeaderSize), ErrNotRing, "magic"},
		{"magic last byte flipped", mutate(func(b []byte) { b[7] = 1 }), ErrNotRing, "magic"},
		{"magic alone", []byte("SHMRING\x00"), ErrTruncated, "header is 8 bytes"},
		{"short with magic", valid[:100], ErrTruncated, "header is 100 bytes"},
		{"one byte short", valid[:HeaderSize-1], ErrTruncated, "want 4096"},
		{"short with magic and wrong version", mutate(func(b []byte) { b[offVersion] = 9 })[:64], ErrTruncated, "header is 64 bytes"},
		{"wrong version, valid CRC", mutate(func(b []byte) { b[offVersion] = 9; fixCRC(b) }), ErrVersion, "layout version 9"},
		{"wrong version, stale CRC", mutate(func(b []byte) { b[offVersion] = 9 }), ErrVersion, "layout version 9"},
		{"previous layout (unique expiry in wall time)", mutate(func(b []byte) { b[offVersion] = 6; fixCRC(b) }), ErrVersion, "layout version 6"},
		{"previous layout (unique follow-ups decided when polled)", mutate(func(b []byte) { b[offVersion] = 5; fixCRC(b) }), ErrVersion, "layout version 5"},
		{"previous layout (no unique follow-ups)", mutate(func(b []byte) { b[offVersion] = 4; fixCRC(b) }), ErrVersion, "layout version 4"},
		{"previous layout (CRC32C record checksums)", mutate(func(b []byte) { b[offVersion] = 3; fixCRC(b) }), ErrVersion, "layout version 3"},
		{"previous layout (32-byte index entries)", mutate(func(b []byte) { b[offVersion] = 1; fixCRC(b) }), ErrVersion, "layout version 1, this build reads 8"},
		{"version zero", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[offVersion:], 0); fixCRC(b) }), ErrVersion, "layout version 0"},
		{"wrong version and bad geometry", mutate(func(b []byte) { b[offVersion] = 9; b[offIndexSlots] = 3; fixCRC(b) }), ErrVersion, "layout version 9"},
		{"CRC byte flipped", mutate(func(b []byte) { b[offGeometryCRC] ^= 1 }), ErrCorrupt, "checksum"},
		{"bad geometry, valid CRC", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[offIndexSlots:], 17); fixCRC(b) }), ErrCorrupt, "geometry"},
		{"max record too large, valid CRC", mutate(func(b []byte) { binary.LittleEndian.PutUint32(b[offMaxRecord:], 4096); fixCRC(b) }), ErrCorrupt, "max record"},
		{"data bytes zero, valid CRC", mutate(func(b []byte) { binary.LittleEndian.PutUint64(b[offDataBytes:], 0); fixCRC(b) }), ErrCorrupt, "data bytes"},
		{"bad geometry, stale CRC", mutate(func(b []byte) { b[offIndexSlots] = 3 }), ErrCorrupt, "checksum"},
	}
	// Every byte under the CRC after the magic and the version.
	for off := offFlags; off < geometryEnd; off++ {
		tests = append(tests, decodeCase{fmt.Sprintf("flipped byte %d", off), mutate(func(b []byte) { b[off] ^= 0x10 }), ErrCorrupt, "checksum"})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var (
				h   Header
				err error
			)
			require.NotPanics(t, func() { h, err = DecodeHeader(tc.in) })
			assertOnlySentinel(t, err, tc.want)
			assert.Contains(t, err.Error(), tc.msg)
			assert.Equal(t, Header{}, h, "a failed decode returns the zero Header")
		})
	}
}

func TestErrorsWrap(t *testing.T) {
	err := error(&PathError{Op: "open", Path: "/x/ring", Err: reasonf(ErrCorrupt, "size %d", 3)})
	assert.Equal(t, "shm: open /x/ring: size 3 (corrupt region)", err.Error())
	assert.ErrorIs(t, err, ErrCorrupt)
	var pe *PathError
	require.True(t, errors.As(err, &pe))
	assert.Equal(t, "/x/ring", pe.Path)
}
