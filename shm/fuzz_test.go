package shm

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// FuzzDecodeHeader feeds DecodeHeader arbitrary bytes, and the same bytes
// with a valid checksum so that the fuzzer gets past the CRC into the
// version and geometry checks.
//
// An input is (prefix, size): the bytes decoded are prefix followed by zeros
// up to size bytes (prefix alone if it is longer). Only the first 60 bytes
// of a header page carry meaning, and Go's minimizer is quadratic in the
// length of a []byte (golang/go#48820), so a page-sized input would stall
// the fuzzer for the whole -fuzzminimizetime on every new interesting input.
//
// Seeds are in testdata/fuzz/FuzzDecodeHeader (TestDecodeHeaderSeeds says
// what each one is).
func FuzzDecodeHeader(f *testing.F) {
	f.Add(validPage(testGeometry)[:geometryEnd+4], uint16(HeaderSize))
	f.Add(validPage(Geometry{}.WithDefaults())[:geometryEnd+4], uint16(HeaderSize+1))
	f.Fuzz(func(t *testing.T, prefix []byte, size uint16) {
		b := fuzzInput(prefix, size)
		checkDecodeHeader(t, b)
		if len(b) >= geometryEnd+4 {
			fixCRC(b)
			checkDecodeHeader(t, b)
		}
	})
}

// fuzzInput is prefix zero-padded to size bytes (a fresh slice).
func fuzzInput(prefix []byte, size uint16) []byte {
	b := make([]byte, max(len(prefix), int(size)))
	copy(b, prefix)
	return b
}

// checkDecodeHeader checks the properties of DecodeHeader on any input.
func checkDecodeHeader(t *testing.T, b []byte) {
	in := append([]byte(nil), b...)
	h, err := DecodeHeader(b)
	if !bytes.Equal(in, b) {
		t.Fatalf("DecodeHeader modified its input")
	}
	if err != nil {
		n := 0
		for _, s := range []error{ErrNotRing, ErrTruncated, ErrVersion, ErrCorrupt} {
			if errors.Is(err, s) {
				n++
			}
		}
		if n != 1 {
			t.Fatalf("error %q wraps %d of ErrNotRing, ErrTruncated, ErrVersion, ErrCorrupt; want exactly one", err, n)
		}
		if h != (Header{}) {
			t.Fatalf("failed decode returned a non-zero header %+v", h)
		}
		return
	}
	if len(b) < HeaderSize {
		t.Fatalf("decoded a header from %d bytes, fewer than a header page", len(b))
	}
	if h.Version != LayoutVersion {
		t.Fatalf("decoded version %d", h.Version)
	}
	if verr := h.Geometry.Validate(); verr != nil {
		t.Fatalf("decoded an invalid geometry %+v: %v", h.Geometry, verr)
	}
	s := h.Geometry.Sections()
	if s.DataOff%PageSize != 0 || s.FileSize != s.DataOff+h.Geometry.DataBytes || s.FileSize < HeaderSize {
		t.Fatalf("decoded geometry %+v gives impossible sections %+v", h.Geometry, s)
	}

	// Re-encoding reproduces the header byte for byte: the decoder accepts
	// no header with non-zero reserved fields.
	page := make([]byte, HeaderSize)
	encodeHeader(page, h)
	if !bytes.Equal(page[:geometryEnd+4], b[:geometryEnd+4]) {
		t.Fatalf("re-encoded header differs:\n%x\n%x", page[:geometryEnd+4], b[:geometryEnd+4])
	}
	h2, err := DecodeHeader(page)
	if err != nil {
		t.Fatalf("re-encoded header does not decode: %v", err)
	}
	if h2.Version != h.Version || h2.Geometry != h.Geometry || h2.CreatorPID != h.CreatorPID || h2.PIDNamespace != h.PIDNamespace || h2.Created.UnixNano() != h.Created.UnixNano() {
		t.Fatalf("re-decoded %+v, first decoded %+v", h2, h)
	}
}

// TestDecodeHeaderSeeds pins what each seed in the corpus is, so that the
// corpus keeps covering every path of DecodeHeader.
func TestDecodeHeaderSeeds(t *testing.T) {
	want := map[string]error{
		"valid-header":      nil,
		"valid-header-long": nil,
		"empty":             ErrTruncated,
		"garbage":           ErrNotRing,
		"truncated-header":  ErrTruncated,
		"wrong-version":     ErrVersion,
		"bad-crc":           ErrCorrupt,
		"bad-geometry":      ErrCorrupt,
	}
	dir := filepath.Join("testdata", "fuzz", "FuzzDecodeHeader")
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	seen := map[string]bool{}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		require.NoError(t, err)
		in := parseCorpusEntry(t, e.Name(), string(b))
		wantErr, named := want[e.Name()]
		if !named {
			// A crasher the fuzzer found: it must not fail any more.
			checkDecodeHeader(t, in)
			continue
		}
		seen[e.Name()] = true
		_, err = DecodeHeader(in)
		if wantErr == nil {
			assert.NoError(t, err, "seed %s", e.Name())
		} else {
			assertOnlySentinel(t, err, wantErr)
		}
		checkDecodeHeader(t, in)
	}
	for name := range want {
		assert.True(t, seen[name], "seed %s is missing from %s", name, dir)
	}
}

// parseCorpusEntry reads a "go test fuzz v1" file holding a []byte and a
// uint16 and returns the input they stand for.
func parseCorpusEntry(t *testing.T, name, s string) []byte {
	t.Helper()
	lines := strings.Split(strings.TrimSpace(s), "\n")
	require.Len(t, lines, 3, "%s: want a header line and two values", name)
	require.Equal(t, "go test fuzz v1", lines[0], "%s", name)
	require.True(t, strings.HasPrefix(lines[1], "[]byte(") && strings.HasSuffix(lines[1], ")"), "%s: want a []byte first", name)
	prefix, err := strconv.Unquote(lines[1][len("[]byte(") : len(lines[1])-1])
	require.NoError(t, err, "%s", name)
	require.True(t, strings.HasPrefix(lines[2], "uint16(") && strings.HasSuffix(lines[2], ")"), "%s: want a uint16 second", name)
	size, err := strconv.ParseUint(lines[2][len("uint16("):len(lines[2])-1], 0, 16)
	require.NoError(t, err, "%s", name)
	return fuzzInput([]byte(prefix), uint16(size))
}
