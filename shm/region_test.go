package shm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// testOpts are Options that create the smallest ring.
func testOpts() Options { return Options{Geometry: testGeometry} }

// createRing creates a small ring in a fresh directory and closes it,
// returning its path.
func createRing(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "ring")
	r, err := Create(path, testOpts())
	require.NoError(t, err)
	require.NoError(t, r.Close())
	return path
}

// assertNoTempFiles checks that no ".NAME.tmp-*" file is left in dir.
func assertNoTempFiles(t *testing.T, dir string) {
	t.Helper()
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	for _, e := range entries {
		assert.False(t, strings.HasPrefix(e.Name(), ".") && strings.Contains(e.Name(), ".tmp-"),
			"temporary file %s left in %s", e.Name(), dir)
	}
}

// requirePathError checks that err is a *PathError for path whose message
// names the path, and returns it.
func requirePathError(t *testing.T, err error, path string) *PathError {
	t.Helper()
	require.Error(t, err)
	var pe *PathError
	require.True(t, errors.As(err, &pe), "error %q (%T) should be a *shm.PathError", err, err)
	assert.Equal(t, path, pe.Path)
	assert.Contains(t, err.Error(), path, "the message should name the file")
	return pe
}

// within runs f in a goroutine and fails the test if it does not return
// within d (a blocking open of a FIFO, say). A panic in f fails the test.
func within(t *testing.T, d time.Duration, what string, f func()) {
	t.Helper()
	done := make(chan any, 1)
	go func() {
		defer func() { done <- recover() }()
		f()
	}()
	select {
	case p := <-done:
		require.Nil(t, p, "%s panicked", what)
	case <-time.After(d):
		t.Fatalf("%s did not return within %v", what, d)
	}
}

func sameHeader(t *testing.T, want, got Header) {
	t.Helper()
	assert.Equal(t, want.Version, got.Version)
	assert.Equal(t, want.Geometry, got.Geometry)
	assert.Equal(t, want.CreatorPID, got.CreatorPID)
	assert.True(t, want.Created.Equal(got.Created), "created %v, got %v", want.Created, got.Created)
}

func TestCreateThenOpen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	before := time.Now()
	r, err := Create(path, testOpts())
	require.NoError(t, err)
	after := time.Now()
	defer r.Close()

	h := r.Header()
	assert.Equal(t, uint32(LayoutVersion), h.Version)
	assert.Equal(t, testGeometry, h.Geometry)
	assert.Equal(t, testGeometry, r.Geometry())
	assert.Equal(t, os.Getpid(), h.CreatorPID)
	assert.False(t, h.Created.Before(before) || h.Created.After(after),
		"created %v should be between %v and %v", h.Created, before, after)
	assert.Equal(t, path, r.Path())

	secs := testGeometry.Sections()
	assert.Equal(t, secs, r.Sections())
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, int64(secs.FileSize), fi.Size(), "file size must match the geometry")
	assert.Len(t, r.Control(), ControlSize)
	assert.Equal(t, ControlSize, cap(r.Control()), "Control must not reach past the header page")
	assert.Len(t, r.Readers(), int(secs.ReadersSize))
	assert.Len(t, r.Unique(), int(secs.UniqueSize))
	assert.Len(t, r.Index(), int(secs.IndexSize))
	assert.Len(t, r.Data(), int(2*secs.DataSize))

	r2, err := Open(path, Options{})
	require.NoError(t, err)
	defer r2.Close()
	sameHeader(t, h, r2.Header())
	assert.Equal(t, secs, r2.Sections())

	// Two mappings of one file share memory in every section.
	for name, pair := range map[string][2][]byte{
		"control": {r.Control(), r2.Control()},
		"readers": {r.Readers(), r2.Readers()},
		"unique":  {r.Unique(), r2.Unique()},
		"index":   {r.Index(), r2.Index()},
		"data":    {r.Data(), r2.Data()},
	} {
		pair[0][len(pair[0])-1] = 0x5a
		assert.Equal(t, byte(0x5a), pair[1][len(pair[1])-1], "%s: a write through one mapping is seen by the other", name)
	}
	assertNoTempFiles(t, dir)
}

func TestOpenOrCreate(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	r1, err := OpenOrCreate(path, testOpts())
	require.NoError(t, err, "OpenOrCreate creates a missing file")
	defer r1.Close()
	assert.Equal(t, testGeometry, r1.Geometry())
	assert.Equal(t, os.Getpid(), r1.Header().CreatorPID)

	other := Options{Geometry: Geometry{IndexSlots: 64, DataBytes: 8192, ReaderSlots: 2, MaxRecord: 8}}
	r2, err := OpenOrCreate(path, other)
	require.NoError(t, err, "OpenOrCreate opens an existing file")
	defer r2.Close()
	sameHeader(t, r1.Header(), r2.Header())
	assert.Equal(t, testGeometry, r2.Geometry(), "an existing file's geometry comes from its header, not the options")
	assertNoTempFiles(t, dir)
}

func TestCreateExisting(t *testing.T) {
	path := createRing(t)
	want, err := os.ReadFile(path)
	require.NoError(t, err)

	_, err = Create(path, testOpts())
	pe := requirePathError(t, err, path)
	assert.Equal(t, "create", pe.Op)
	assert.ErrorIs(t, err, fs.ErrExist)

	got, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(want, got), "a failed Create must not touch the existing file")
	assertNoTempFiles(t, filepath.Dir(path))

	// An existing file that is not a ring is not replaced either.
	junk := filepath.Join(filepath.Dir(path), "junk")
	require.NoError(t, os.WriteFile(junk, []byte("keep me"), 0o600))
	_, err = Create(junk, testOpts())
	requirePathError(t, err, junk)
	assert.ErrorIs(t, err, fs.ErrExist)
	b, err := os.ReadFile(junk)
	require.NoError(t, err)
	assert.Equal(t, "keep me", string(b))
	assertNoTempFiles(t, filepath.Dir(path))
}

func TestCreateErrors(t *testing.T) {
	dir := t.TempDir()
	plain := filepath.Join(dir, "plain")
	require.NoError(t, os.WriteFile(plain, nil, 0o600))
	tests := []struct {
		name string
		path string
		opts Options
		want error
		msg  string
	}{
		{"invalid geometry", filepath.Join(dir, "ring"), Options{Geometry: Geometry{IndexSlots: 17}}, ErrGeometry, "index slots 17"},
		{"max record too large", filepath.Join(dir, "ring"), Options{Geometry: Geometry{DataBytes: 4096, MaxRecord: 4096}}, ErrGeometry, "max record"},
		{"missing directory", filepath.Join(dir, "nodir", "ring"), testOpts(), fs.ErrNotExist, filepath.Join(dir, "nodir") + " does not exist"},
		{"parent is a file", filepath.Join(plain, "ring"), testOpts(), fs.ErrNotExist, plain + " is not a directory"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			for name, f := range map[string]func(string, Options) (*Region, error){"Create": Create, "OpenOrCreate": OpenOrCreate} {
				var err error
				require.NotPanics(t, func() { _, err = f(tc.path, tc.opts) })
				requirePathError(t, err, tc.path)
				assert.ErrorIs(t, err, tc.want, "%s", name)
				assert.Contains(t, err.Error(), tc.msg, "%s", name)
				_, serr := os.Lstat(tc.path)
				assert.Error(t, serr, "%s: nothing may be created at %s", name, tc.path)
			}
		})
	}
	assertNoTempFiles(t, dir)
}

// corruptCase is a file that Open must refuse.
type corruptCase struct {
	name  string
	setup func(t *testing.T, dir string) string // returns the path to open
	want  error
	msg   string // substring of the error besides the path; {dir} is the path's directory
	// file is true when the path holds a regular file that OpenOrCreate
	// must refuse and leave as it is.
	file bool
}

// ringBytes returns the bytes of a fresh small ring file.
func ringBytes(t *testing.T) []byte {
	t.Helper()
	b, err := os.ReadFile(createRing(t))
	require.NoError(t, err)
	return b
}

func writeFile(t *testing.T, path string, b []byte) string {
	t.Helper()
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}

func openErrorCases() []corruptCase {
	fileWith := func(f func(t *testing.T, b []byte) []byte) func(t *testing.T, dir string) string {
		return func(t *testing.T, dir string) string {
			return writeFile(t, filepath.Join(dir, "ring"), f(t, ringBytes(t)))
		}
	}
	return []corruptCase{
		{name: "missing file", want: fs.ErrNotExist, msg: "no such file",
			setup: func(t *testing.T, dir string) string { return filepath.Join(dir, "nope") }},
		{name: "missing directory", want: fs.ErrNotExist, msg: "directory {dir} does not exist",
			setup: func(t *testing.T, dir string) string { return filepath.Join(dir, "nodir", "ring") }},
		{name: "directory", want: ErrNotRegular, msg: "is a directory",
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "sub")
				require.NoError(t, os.Mkdir(p, 0o700))
				return p
			}},
		{name: "symlink", want: ErrSymlink,
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "link")
				require.NoError(t, os.Symlink(createRing(t), p))
				return p
			}},
		{name: "dangling symlink", want: ErrSymlink,
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "link")
				require.NoError(t, os.Symlink(filepath.Join(dir, "nowhere"), p))
				return p
			}},
		{name: "fifo", want: ErrNotRegular,
			setup: func(t *testing.T, dir string) string {
				p := filepath.Join(dir, "fifo")
				require.NoError(t, unix.Mkfifo(p, 0o600))
				return p
			}},
		{name: "char device", want: ErrNotRegular, msg: "file type",
			setup: func(t *testing.T, dir string) string { return "/dev/null" }},
		{name: "garbage", want: ErrNotRing, msg: "magic", file: true,
			setup: func(t *testing.T, dir string) string {
				return writeFile(t, filepath.Join(dir, "ring"), bytes.Repeat([]byte("garbage!"), 3000))
			}},
		{name: "zero length", want: ErrTruncated, msg: "empty", file: true,
			setup: func(t *testing.T, dir string) string { return writeFile(t, filepath.Join(dir, "ring"), nil) }},
		{name: "half a header", want: ErrTruncated, msg: "header is 2048 bytes", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { return b[:HeaderSize/2] })},
		{name: "header only", want: ErrTruncated, msg: "file is 4096 bytes", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { return b[:HeaderSize] })},
		{name: "one byte short", want: ErrTruncated, msg: "file is 20479 bytes", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { return b[:len(b)-1] })},
		{name: "extra bytes", want: ErrCorrupt, msg: "file is 20481 bytes", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { return append(b, 0) })},
		{name: "extra page", want: ErrCorrupt, msg: "file is 24576 bytes", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { return append(b, make([]byte, PageSize)...) })},
		{name: "wrong version", want: ErrVersion, msg: "layout version 99", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte {
				binary.LittleEndian.PutUint32(b[offVersion:], 99)
				fixCRC(b)
				return b
			})},
		{name: "bad CRC", want: ErrCorrupt, msg: "checksum", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte { b[offCreatedNs] ^= 1; return b })},
		{name: "bad geometry", want: ErrCorrupt, msg: "geometry", file: true,
			setup: fileWith(func(t *testing.T, b []byte) []byte {
				binary.LittleEndian.PutUint32(b[offReaderSlots:], 0)
				fixCRC(b)
				return b
			})},
	}
}

func TestOpenErrors(t *testing.T) {
	for _, tc := range openErrorCases() {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			path := tc.setup(t, dir)
			var before []byte
			if tc.file {
				var err error
				before, err = os.ReadFile(path)
				require.NoError(t, err)
			}
			msg := strings.ReplaceAll(tc.msg, "{dir}", filepath.Dir(path))
			check := func(op string, err error) {
				t.Helper()
				requirePathError(t, err, path)
				assert.ErrorIs(t, err, tc.want, "%s", op)
				assert.Contains(t, err.Error(), msg, "%s", op)
			}
			var (
				r   *Region
				err error
			)
			within(t, 10*time.Second, "Open", func() { r, err = Open(path, Options{}) })
			assert.Nil(t, r)
			check("Open", err)
			within(t, 10*time.Second, "ReadHeader", func() { _, err = ReadHeader(path, Options{}) })
			check("ReadHeader", err)
			if tc.file {
				within(t, 10*time.Second, "OpenOrCreate", func() { r, err = OpenOrCreate(path, testOpts()) })
				assert.Nil(t, r)
				check("OpenOrCreate", err)
				within(t, 10*time.Second, "Remove", func() { err = Remove(path) })
				check("Remove", err)
				after, rerr := os.ReadFile(path)
				require.NoError(t, rerr, "a refused file stays in place")
				assert.True(t, bytes.Equal(before, after), "a refused file must be left as it was")
			}
			assertNoTempFiles(t, dir)
		})
	}
}

func TestOpenRefusesNonRegularWithoutOpeningIt(t *testing.T) {
	// Opening a FIFO has side effects (it releases a writer blocked in
	// open), so a FIFO must be refused before it is opened. inotify reports
	// every open of the watched file.
	dir := t.TempDir()
	fifo := filepath.Join(dir, "fifo")
	require.NoError(t, unix.Mkfifo(fifo, 0o600))
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(fifo, link))
	ring := createRing(t)

	opens := func(path string, f func()) int {
		fd, err := unix.InotifyInit1(unix.IN_NONBLOCK | unix.IN_CLOEXEC)
		require.NoError(t, err)
		defer unix.Close(fd)
		_, err = unix.InotifyAddWatch(fd, path, unix.IN_OPEN)
		require.NoError(t, err)
		f()
		n := 0
		buf := make([]byte, 4096)
		for {
			m, err := unix.Read(fd, buf)
			if errors.Is(err, unix.EAGAIN) {
				return n
			}
			require.NoError(t, err)
			for off := 0; off+unix.SizeofInotifyEvent <= m; {
				mask := binary.LittleEndian.Uint32(buf[off+4:])
				if mask&unix.IN_OPEN != 0 {
					n++
				}
				off += unix.SizeofInotifyEvent + int(binary.LittleEndian.Uint32(buf[off+12:]))
			}
		}
	}

	// Control: the watch sees an open of a ring file.
	assert.Positive(t, opens(ring, func() {
		_, err := ReadHeader(ring, Options{})
		require.NoError(t, err)
	}), "inotify should see ReadHeader open the ring")

	assert.Zero(t, opens(fifo, func() {
		_, err := Open(fifo, Options{})
		assert.ErrorIs(t, err, ErrNotRegular)
		_, err = ReadHeader(fifo, Options{})
		assert.ErrorIs(t, err, ErrNotRegular)
		_, err = OpenOrCreate(fifo, testOpts())
		assert.ErrorIs(t, err, ErrNotRegular)
		_, err = Open(link, Options{FollowSymlinks: true})
		assert.ErrorIs(t, err, ErrNotRegular)
		assert.ErrorIs(t, Remove(fifo), ErrNotRegular)
	}), "a FIFO must be refused without being opened")
	_, err := os.Lstat(fifo)
	assert.NoError(t, err, "Remove must leave a refused FIFO in place")
}

func TestSymlinks(t *testing.T) {
	ring := createRing(t)
	want, err := ReadHeader(ring, Options{})
	require.NoError(t, err)
	dir := t.TempDir()
	link := filepath.Join(dir, "link")
	require.NoError(t, os.Symlink(ring, link))

	_, err = Open(link, Options{})
	requirePathError(t, err, link)
	assert.ErrorIs(t, err, ErrSymlink)
	_, err = OpenOrCreate(link, testOpts())
	assert.ErrorIs(t, err, ErrSymlink, "OpenOrCreate must not follow a link either")
	assert.ErrorIs(t, Remove(link), ErrSymlink)

	r, err := Open(link, Options{FollowSymlinks: true})
	require.NoError(t, err, "FollowSymlinks opens through a link")
	defer r.Close()
	assert.Equal(t, link, r.Path())
	sameHeader(t, want, r.Header())
	h, err := ReadHeader(link, Options{FollowSymlinks: true})
	require.NoError(t, err)
	sameHeader(t, want, h)

	dangling := filepath.Join(dir, "dangling")
	require.NoError(t, os.Symlink(filepath.Join(dir, "nowhere"), dangling))
	_, err = Open(dangling, Options{FollowSymlinks: true})
	requirePathError(t, err, dangling)
	assert.ErrorIs(t, err, fs.ErrNotExist)
}

func withUmask(t *testing.T, mask int) {
	t.Helper()
	old := syscall.Umask(mask)
	t.Cleanup(func() { syscall.Umask(old) })
}

func TestCreateMode(t *testing.T) {
	withUmask(t, 0o022)
	tests := []struct {
		perm os.FileMode
		want os.FileMode
	}{
		{0, 0o600},
		{0o600, 0o600},
		{0o660, 0o660},
		{0o666, 0o666},
		{0o640, 0o640},
		{0o604, 0o604},
		{0o400, 0o400},
	}
	for _, tc := range tests {
		t.Run(tc.want.String(), func(t *testing.T) {
			for name, f := range map[string]func(string, Options) (*Region, error){"Create": Create, "OpenOrCreate": OpenOrCreate} {
				dir := t.TempDir()
				path := filepath.Join(dir, "ring")
				opts := testOpts()
				opts.Perm = tc.perm
				r, err := f(path, opts)
				require.NoError(t, err, name)
				require.NoError(t, r.Close())
				fi, err := os.Stat(path)
				require.NoError(t, err)
				assert.Equal(t, tc.want, fi.Mode().Perm(), "%s with Perm %v under umask 022", name, tc.perm)
				assert.True(t, fi.Mode().IsRegular())
				assertNoTempFiles(t, dir)
			}
		})
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to change file owners and credentials")
	}
}

const nobody = 65534

func TestForeignOwner(t *testing.T) {
	requireRoot(t)
	path := createRing(t)
	want, err := ReadHeader(path, Options{})
	require.NoError(t, err)
	require.NoError(t, os.Chown(path, nobody, nobody))

	_, err = Open(path, Options{})
	requirePathError(t, err, path)
	assert.ErrorIs(t, err, ErrForeignOwner)
	assert.Contains(t, err.Error(), "uid 65534")
	_, err = OpenOrCreate(path, testOpts())
	requirePathError(t, err, path)
	assert.ErrorIs(t, err, ErrForeignOwner, "OpenOrCreate must refuse, not replace, a foreign file")
	_, err = ReadHeader(path, Options{})
	assert.ErrorIs(t, err, ErrForeignOwner)

	r, err := Open(path, Options{AllowForeignOwner: true})
	require.NoError(t, err, "AllowForeignOwner opens a foreign file")
	sameHeader(t, want, r.Header())
	require.NoError(t, r.Close())
	h, err := ReadHeader(path, Options{AllowForeignOwner: true})
	require.NoError(t, err)
	sameHeader(t, want, h)

	require.NoError(t, Remove(path), "Remove checks the header, not the owner")
	_, err = os.Lstat(path)
	assert.ErrorIs(t, err, fs.ErrNotExist)
}

func TestDataDoubleMapping(t *testing.T) {
	g := testGeometry
	g.DataBytes = 2 * PageSize
	path := filepath.Join(t.TempDir(), "ring")
	r, err := Create(path, Options{Geometry: g})
	require.NoError(t, err)
	defer r.Close()
	d := int(g.DataBytes)
	data := r.Data()
	require.Len(t, data, 2*d)
	require.Equal(t, 2*d, cap(data), "Data must not reach past the mirror")

	// Low half to mirror.
	for i := range d {
		data[i] = byte(i*7 + 1)
	}
	for i := range d {
		if data[i+d] != byte(i*7+1) {
			t.Fatalf("byte %d written at %d reads %#x at %d", byte(i*7+1), i, data[i+d], i+d)
		}
	}
	// Mirror to low half.
	for i := range d {
		data[d+i] = byte(i*13 + 5)
	}
	for i := range d {
		if data[i] != byte(i*13+5) {
			t.Fatalf("byte %d written at %d reads %#x at %d", byte(i*13+5), d+i, data[i], i)
		}
	}
	// A record that wraps around the end is contiguous.
	rec := []byte("0123456789abcdef")
	copy(data[d-8:], rec)
	assert.Equal(t, rec[8:], data[0:8], "the part past the end lands at the start")
	assert.Equal(t, rec[:8], data[2*d-8:2*d], "the part before the end appears at the end of the mirror")

	// The file holds one copy, at DataOff.
	f, err := os.Open(path)
	require.NoError(t, err)
	defer f.Close()
	onDisk := make([]byte, d)
	_, err = f.ReadAt(onDisk, int64(r.Sections().DataOff))
	require.NoError(t, err)
	assert.Equal(t, data[:d], onDisk, "the data ring in the file matches the mapping")

	// Another process's view (another mapping) sees it too, through both copies.
	r2, err := Open(path, Options{})
	require.NoError(t, err)
	defer r2.Close()
	assert.Equal(t, data[:d], r2.Data()[:d])
	assert.Equal(t, data[:d], r2.Data()[d:])
	r2.Data()[2*d-1] = 0xa5
	assert.Equal(t, byte(0xa5), data[d-1], "a write to the other mapping's mirror reaches ours")
}

func TestCloseIdempotent(t *testing.T) {
	path := createRing(t)
	r, err := Open(path, Options{})
	require.NoError(t, err)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = r.Close() })
	}
	wg.Wait()
	for i, err := range errs {
		assert.NoError(t, err, "Close %d", i)
	}
	assert.NoError(t, r.Close(), "Close after Close")
	for name, section := range map[string]func() []byte{
		"Control": r.Control, "Readers": r.Readers, "Unique": r.Unique, "Index": r.Index, "Data": r.Data,
	} {
		assert.Nil(t, section(), "%s after Close", name)
	}
	assert.ErrorIs(t, r.Prefault(), ErrClosed)
	_, err = os.Stat(path)
	assert.NoError(t, err, "Close leaves the file")
}

// A slice kept past Close faults, where it would otherwise reach whatever
// the process maps at those addresses next: Close leaves them reserved, with
// no access, until the Region is garbage, and then gives them back.
func TestClosedRegionKeepsItsAddressesUntilGarbage(t *testing.T) {
	r, err := Open(createRing(t), Options{})
	require.NoError(t, err)
	data := r.Data()
	data[0] = 1
	addr := uintptr(unsafe.Pointer(&data[0]))
	require.NoError(t, r.Close())
	r = nil // the last reference: data points outside Go's heap

	perm, mapped := mappingAt(t, addr)
	require.True(t, mapped, "the addresses are still reserved")
	assert.Equal(t, "---p", perm, "and nothing may touch them")
	func() {
		defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
		defer func() {
			p := recover()
			require.NotNil(t, p, "a read of a closed region must fault")
			f, ok := p.(interface{ Addr() uintptr })
			require.True(t, ok, "a fault, not another panic: %v", p)
			assert.Equal(t, addr, f.Addr())
		}()
		faultSink = atomic.LoadUint32((*uint32)(unsafe.Pointer(&data[0])))
	}()

	deadline := time.Now().Add(10 * time.Second)
	for {
		runtime.GC() // the cleanup runs once a collection finds the Region unreachable
		if perm, mapped := mappingAt(t, addr); !mapped || perm != "---p" {
			break
		}
		require.True(t, time.Now().Before(deadline), "the reservation outlived its Region")
		runtime.Gosched()
	}
}

var faultSink uint32

// mappingAt returns the permissions of the mapping that holds addr, from
// /proc/self/maps, and whether there is one.
func mappingAt(t *testing.T, addr uintptr) (string, bool) {
	t.Helper()
	maps, err := os.ReadFile("/proc/self/maps")
	require.NoError(t, err)
	for _, line := range strings.Split(string(maps), "\n") {
		var lo, hi uintptr
		var perm string
		if _, err := fmt.Sscanf(line, "%x-%x %s", &lo, &hi, &perm); err == nil && lo <= addr && addr < hi {
			return perm, true
		}
	}
	return "", false
}

func TestRemove(t *testing.T) {
	t.Run("region", func(t *testing.T) {
		path := createRing(t)
		r, err := Open(path, Options{})
		require.NoError(t, err)
		require.NoError(t, r.Remove())
		_, err = os.Lstat(path)
		assert.ErrorIs(t, err, fs.ErrNotExist, "Region.Remove deletes the file")
		assert.NoError(t, r.Close(), "Close after Remove")
		err = r.Remove()
		requirePathError(t, err, path)
		assert.ErrorIs(t, err, fs.ErrNotExist, "a second Remove has nothing to delete")
	})
	t.Run("path", func(t *testing.T) {
		path := createRing(t)
		r, err := Open(path, Options{})
		require.NoError(t, err)
		defer r.Close()
		require.NoError(t, Remove(path))
		_, err = os.Lstat(path)
		assert.ErrorIs(t, err, fs.ErrNotExist, "Remove deletes a ring file")
		r.Data()[0] = 1 // the mapping outlives the name
		assert.Equal(t, byte(1), r.Data()[r.Geometry().DataBytes])
	})
	t.Run("not a ring", func(t *testing.T) {
		path := writeFile(t, filepath.Join(t.TempDir(), "notes.txt"), []byte("precious"))
		err := Remove(path)
		requirePathError(t, err, path)
		assert.ErrorIs(t, err, ErrNotRing)
		b, rerr := os.ReadFile(path)
		require.NoError(t, rerr, "Remove must leave a non-ring file in place")
		assert.Equal(t, "precious", string(b))
	})
	t.Run("missing", func(t *testing.T) {
		path := filepath.Join(t.TempDir(), "ring")
		err := Remove(path)
		requirePathError(t, err, path)
		assert.ErrorIs(t, err, fs.ErrNotExist)
	})
}

func TestReadHeader(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	r, err := Create(path, testOpts())
	require.NoError(t, err)
	want := r.Header()
	// The header is there while the creator has it mapped, and after.
	h, err := ReadHeader(path, Options{})
	require.NoError(t, err)
	sameHeader(t, want, h)
	require.NoError(t, r.Close())

	// A read-only file: ReadHeader opens it read-only.
	require.NoError(t, os.Chmod(path, 0o400))
	h, err = ReadHeader(path, Options{})
	require.NoError(t, err)
	sameHeader(t, want, h)

	// It checks the size against the header, like Open.
	require.NoError(t, os.Truncate(path, HeaderSize))
	_, err = ReadHeader(path, Options{})
	requirePathError(t, err, path)
	assert.ErrorIs(t, err, ErrTruncated)
}

func TestConcurrentCreateInProcess(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	const n = 8
	var wg sync.WaitGroup
	errs := make([]error, n)
	regions := make([]*Region, n)
	start := make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			regions[i], errs[i] = Create(path, testOpts())
		})
	}
	close(start)
	wg.Wait()
	won := 0
	for i, err := range errs {
		if err == nil {
			won++
			require.NoError(t, regions[i].Close())
			continue
		}
		requirePathError(t, err, path)
		assert.ErrorIs(t, err, fs.ErrExist, "a losing Create reports fs.ErrExist")
	}
	assert.Equal(t, 1, won, "exactly one Create wins")
	assertNoTempFiles(t, dir)

	// OpenOrCreate from many goroutines at once on a fresh path: all map the
	// one file.
	path2 := filepath.Join(dir, "ring2")
	start = make(chan struct{})
	for i := range n {
		wg.Go(func() {
			<-start
			regions[i], errs[i] = OpenOrCreate(path2, testOpts())
		})
	}
	close(start)
	wg.Wait()
	for i := range n {
		require.NoError(t, errs[i])
		defer regions[i].Close()
		sameHeader(t, regions[0].Header(), regions[i].Header())
	}
	regions[0].Control()[0] = 42
	for i := range n {
		assert.Equal(t, byte(42), regions[i].Control()[0], "every OpenOrCreate maps the same file")
	}
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"ring", "ring2"}, names, "only the ring files are left in the directory")
}

func TestPrefault(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ring")
	r, err := Create(path, Options{Geometry: Geometry{IndexSlots: 1024, DataBytes: 1 << 20}})
	require.NoError(t, err)
	copy(r.Data(), "kept")
	require.NoError(t, r.Prefault())
	// Writing every page now takes no page faults (a few stray ones from
	// the runtime are allowed; without Prefault it would be 512).
	faults := func() int64 {
		var ru unix.Rusage
		require.NoError(t, unix.Getrusage(unix.RUSAGE_THREAD, &ru))
		return ru.Minflt
	}
	runtime.LockOSThread()
	before := faults()
	data := r.Data()
	for off := 8; off < len(data); off += os.Getpagesize() {
		data[off] = 1
	}
	took := faults() - before
	runtime.UnlockOSThread()
	assert.Less(t, took, int64(32), "page faults after Prefault")
	// Nothing else changed, and the mirror still shows the data ring's bytes.
	assert.Equal(t, "kept", string(r.Data()[:4]))
	assert.Equal(t, "kept", string(r.Data()[1<<20:][:4]))
	require.NoError(t, r.Close())
	assert.ErrorIs(t, r.Prefault(), ErrClosed)
}
