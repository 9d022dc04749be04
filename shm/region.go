package shm

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/internal/proc"
)

// Options control how a region file is opened or created. The zero value
// means: default geometry, mode 0600, refuse symbolic links, refuse files
// owned by another user.
type Options struct {
	// Geometry is used only when a new file is created; zero fields take
	// their defaults. An existing file's geometry always comes from its header.
	Geometry Geometry
	// Perm is the mode of a new file; default 0600. The umask is not applied.
	Perm os.FileMode
	// FollowSymlinks lets the last path element be a symbolic link.
	FollowSymlinks bool
	// AllowForeignOwner lets a file owned by another user be opened.
	AllowForeignOwner bool
}

// Region is a mapped region file. The data ring is mapped twice, back to back,
// so that a record that wraps around its end is still contiguous in memory.
//
// A Region's byte slices stay valid until Close; using them afterwards faults.
// Callers that share a Region between goroutines must stop those goroutines
// before closing it.
type Region struct {
	path    string
	file    *os.File
	header  Header
	secs    Sections
	base    unsafe.Pointer
	mapLen  uintptr
	mem     []byte // [0, FileSize+DataBytes): the file, then the data ring again
	closeMu sync.Mutex
	closed  bool
}

// Open maps an existing region file, validating its header and size.
func Open(path string, opts Options) (*Region, error) {
	r, err := openExisting(path, opts)
	if err != nil {
		return nil, &PathError{Op: "open", Path: path, Err: err}
	}
	return r, nil
}

// Create makes a new region file with opts.Geometry and maps it. It fails
// with fs.ErrExist if the path exists.
func Create(path string, opts Options) (*Region, error) {
	r, err := create(path, opts)
	if err != nil {
		return nil, &PathError{Op: "create", Path: path, Err: err}
	}
	return r, nil
}

// OpenOrCreate opens the region at path, creating it first if it does not
// exist. Any number of processes may call it at once on the same path: the
// file is initialised in a private temporary file and linked into place, so
// exactly one creator wins and every caller maps that one file.
func OpenOrCreate(path string, opts Options) (*Region, error) {
	// A bounded loop: the file may vanish between a failed create and our
	// open (somebody removed it); try a few times, then report.
	var err error
	for range 4 {
		var r *Region
		r, err = openExisting(path, opts)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, &PathError{Op: "open", Path: path, Err: err}
		}
		r, err = create(path, opts)
		if err == nil {
			return r, nil
		}
		if !errors.Is(err, fs.ErrExist) {
			return nil, &PathError{Op: "create", Path: path, Err: err}
		}
	}
	return nil, &PathError{Op: "open", Path: path, Err: err}
}

// ReadHeader reads and validates the header of the region file at path
// without mapping it.
func ReadHeader(path string, opts Options) (Header, error) {
	f, err := openFile(path, opts, unix.O_RDONLY)
	if err != nil {
		return Header{}, &PathError{Op: "read", Path: path, Err: err}
	}
	defer f.Close()
	h, _, err := readAndCheckHeader(f)
	if err != nil {
		return Header{}, &PathError{Op: "read", Path: path, Err: err}
	}
	return h, nil
}

// Remove deletes the region file at path after checking that it is one.
func Remove(path string) error {
	if _, err := ReadHeader(path, Options{AllowForeignOwner: true}); err != nil {
		return err
	}
	if err := os.Remove(path); err != nil {
		return &PathError{Op: "remove", Path: path, Err: err}
	}
	return nil
}

func openFile(path string, opts Options, mode int) (*os.File, error) {
	flags := mode | unix.O_CLOEXEC | unix.O_NONBLOCK | unix.O_NOCTTY
	if !opts.FollowSymlinks {
		flags |= unix.O_NOFOLLOW
	}
	// Refuse a non-regular file before opening it: opening a device or FIFO
	// can have side effects.
	fi, err := os.Lstat(path)
	if err == nil && fi.Mode()&fs.ModeSymlink != 0 {
		if !opts.FollowSymlinks {
			return nil, ErrSymlink
		}
		fi, err = os.Stat(path)
	}
	if err != nil {
		return nil, explainMissing(path, err)
	}
	if !fi.Mode().IsRegular() {
		if fi.IsDir() {
			return nil, fmt.Errorf("is a directory: %w", ErrNotRegular)
		}
		return nil, fmt.Errorf("file type %v: %w", fi.Mode().Type(), ErrNotRegular)
	}
	fd, err := unix.Open(path, flags, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ELOOP) && !opts.FollowSymlinks:
			return nil, ErrSymlink
		case errors.Is(err, unix.EISDIR):
			return nil, fmt.Errorf("is a directory: %w", ErrNotRegular)
		}
		return nil, explainMissing(path, &fs.PathError{Op: "open", Path: path, Err: err})
	}
	f := os.NewFile(uintptr(fd), path)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		if st.Mode&unix.S_IFMT == unix.S_IFDIR {
			return nil, fmt.Errorf("is a directory: %w", ErrNotRegular)
		}
		return nil, ErrNotRegular
	}
	if !opts.AllowForeignOwner && int(st.Uid) != os.Geteuid() {
		f.Close()
		return nil, fmt.Errorf("owner uid %d, we are %d: %w", st.Uid, os.Geteuid(), ErrForeignOwner)
	}
	// The descriptor was opened non-blocking only to be safe against a FIFO
	// swapped in; regular files ignore the flag, so leave it.
	return f, nil
}

// explainMissing turns ENOENT into an error that says whether the directory
// itself is missing.
func explainMissing(path string, err error) error {
	if !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, unix.ENOTDIR) {
		return err
	}
	dir := filepath.Dir(path)
	if fi, derr := os.Stat(dir); derr != nil {
		return fmt.Errorf("directory %s does not exist: %w", dir, fs.ErrNotExist)
	} else if !fi.IsDir() {
		return fmt.Errorf("%s is not a directory: %w", dir, fs.ErrNotExist)
	}
	return fmt.Errorf("no such file: %w", fs.ErrNotExist)
}

// readAndCheckHeader validates the header and the file size against it.
func readAndCheckHeader(f *os.File) (Header, Sections, error) {
	fi, err := f.Stat()
	if err != nil {
		return Header{}, Sections{}, err
	}
	buf := make([]byte, HeaderSize)
	n, err := f.ReadAt(buf, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		return Header{}, Sections{}, err
	}
	h, err := DecodeHeader(buf[:n])
	if err != nil {
		return Header{}, Sections{}, err
	}
	secs := h.Geometry.Sections()
	switch size := uint64(fi.Size()); {
	case size < secs.FileSize:
		return Header{}, Sections{}, reasonf(ErrTruncated, "file is %d bytes, its header says %d", size, secs.FileSize)
	case size > secs.FileSize:
		return Header{}, Sections{}, reasonf(ErrCorrupt, "file is %d bytes, its header says %d", size, secs.FileSize)
	}
	return h, secs, nil
}

func openExisting(path string, opts Options) (*Region, error) {
	f, err := openFile(path, opts, unix.O_RDWR)
	if err != nil {
		return nil, err
	}
	h, secs, err := readAndCheckHeader(f)
	if err == nil {
		err = checkPIDNamespace(h)
	}
	if err != nil {
		f.Close()
		return nil, err
	}
	return mapRegion(path, f, h, secs)
}

// checkPIDNamespace refuses a region created in another PID namespace than
// this process's (ErrPIDNamespace). Where either is unknown (no /proc), it
// cannot tell, and lets it be.
func checkPIDNamespace(h Header) error {
	if own := proc.PIDNamespace(); h.PIDNamespace != 0 && own != 0 && h.PIDNamespace != own {
		return reasonf(ErrPIDNamespace, "created by pid %d in PID namespace %d, this process is in %d", h.CreatorPID, h.PIDNamespace, own)
	}
	return nil
}

func create(path string, opts Options) (*Region, error) {
	g := opts.Geometry.WithDefaults()
	if err := g.Validate(); err != nil {
		return nil, fmt.Errorf("%v: %w", err, ErrGeometry)
	}
	perm := opts.Perm.Perm()
	if perm == 0 {
		perm = 0o600
	}
	dir, base := filepath.Dir(path), filepath.Base(path)
	if fi, err := os.Stat(dir); err != nil {
		return nil, explainMissing(path, err)
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory: %w", dir, fs.ErrNotExist)
	}
	tmp := filepath.Join(dir, "."+base+".tmp-"+randomSuffix())
	f, err := os.OpenFile(tmp, os.O_RDWR|os.O_CREATE|os.O_EXCL, perm)
	if err != nil {
		return nil, err
	}
	// The temporary name is private to us; whatever happens it goes away.
	defer os.Remove(tmp)
	ok := false
	defer func() {
		if !ok {
			f.Close()
		}
	}()
	if err := f.Chmod(perm); err != nil {
		return nil, err
	}
	h := Header{Version: LayoutVersion, Geometry: g, Created: time.Now(), CreatorPID: os.Getpid(), PIDNamespace: proc.PIDNamespace()}
	secs := g.Sections()
	if err := f.Truncate(int64(secs.FileSize)); err != nil {
		return nil, err
	}
	// Reserve the pages now, so that a full tmpfs is an error here rather
	// than a SIGBUS on first touch. Filesystems without fallocate keep a
	// sparse file.
	if err := unix.Fallocate(int(f.Fd()), 0, 0, int64(secs.FileSize)); err != nil &&
		!errors.Is(err, unix.EOPNOTSUPP) && !errors.Is(err, unix.ENOSYS) {
		return nil, fmt.Errorf("reserve %d bytes: %w", secs.FileSize, err)
	}
	page := make([]byte, HeaderSize)
	encodeHeader(page, h)
	if _, err := f.WriteAt(page, 0); err != nil {
		return nil, err
	}
	// Publishing by link is atomic and fails if the path exists, so a
	// concurrent opener sees either no file or a complete header.
	if err := os.Link(tmp, path); err != nil {
		var le *os.LinkError
		if errors.As(err, &le) {
			return nil, le.Err
		}
		return nil, err
	}
	ok = true // from here mapRegion owns f
	return mapRegion(path, f, h, secs)
}

func randomSuffix() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return fmt.Sprintf("%d-%s", os.Getpid(), hex.EncodeToString(b[:]))
}

// mapRegion maps the file and then its data section a second time right
// after the first mapping:
//
//	base                        base+FileSize             base+FileSize+D
//	| header | tables | index | data ring | data ring again |
func mapRegion(path string, f *os.File, h Header, secs Sections) (*Region, error) {
	fd := int(f.Fd())
	total := uintptr(secs.FileSize + secs.DataSize)
	// Reserve the whole range first so that both file mappings land in it.
	base, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("reserve %d bytes of address space: %w", total, err)
	}
	fail := func(what string, err error) (*Region, error) {
		_ = unix.MunmapPtr(base, total)
		f.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	const prot = unix.PROT_READ | unix.PROT_WRITE
	if _, err := unix.MmapPtr(fd, 0, base, uintptr(secs.FileSize), prot, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		return fail("map file", err)
	}
	mirror := unsafe.Add(base, secs.FileSize)
	if _, err := unix.MmapPtr(fd, int64(secs.DataOff), mirror, uintptr(secs.DataSize), prot, unix.MAP_SHARED|unix.MAP_FIXED); err != nil {
		return fail("map data ring mirror", err)
	}
	return &Region{
		path:   path,
		file:   f,
		header: h,
		secs:   secs,
		base:   base,
		mapLen: total,
		mem:    unsafe.Slice((*byte)(base), total),
	}, nil
}

// Path returns the path the region was opened with.
func (r *Region) Path() string { return r.path }

// Header returns the region's immutable header.
func (r *Region) Header() Header { return r.header }

// Geometry returns the region's geometry.
func (r *Region) Geometry() Geometry { return r.header.Geometry }

// Sections returns the region's section offsets.
func (r *Region) Sections() Sections { return r.secs }

// Control returns the control area of the header page (ControlSize bytes,
// 128-byte aligned). It and the other section accessors return nil once the
// region is closed.
func (r *Region) Control() []byte { return r.section(ControlOffset, ControlSize) }

// Readers returns the reader table.
func (r *Region) Readers() []byte { return r.section(r.secs.ReadersOff, r.secs.ReadersSize) }

// Unique returns the unique table.
func (r *Region) Unique() []byte { return r.section(r.secs.UniqueOff, r.secs.UniqueSize) }

// Index returns the index ring.
func (r *Region) Index() []byte { return r.section(r.secs.IndexOff, r.secs.IndexSize) }

// Data returns the data ring mapped twice: 2*DataBytes bytes in which byte
// i and byte i+DataBytes are the same memory.
func (r *Region) Data() []byte { return r.section(r.secs.DataOff, 2*r.secs.DataSize) }

// section returns mem[off:off+size]. The accessors are called when a ring
// is opened, not per record, so they take the lock rather than race Close.
func (r *Region) section(off, size uint64) []byte {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return nil
	}
	return r.mem[off : off+size : off+size]
}

// Prefault enters every page of the region into this process's page
// tables now, writable, without changing a byte (MADV_POPULATE_WRITE, Linux
// 5.14 or later). A process that does it before its hot loop takes no page
// faults there on first touches: a fresh ring faults once per page and
// process, a few microseconds each. On an older kernel it fails with an
// error wrapping EINVAL, and the region works as before.
func (r *Region) Prefault() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return ErrClosed
	}
	if err := unix.Madvise(r.mem, unix.MADV_POPULATE_WRITE); err != nil {
		return &PathError{Op: "prefault", Path: r.path, Err: err}
	}
	return nil
}

// Close unmaps the region and closes the file. It is idempotent.
//
// The file leaves the address space at once, but its addresses stay
// reserved, with no access allowed, until the Region itself is garbage. A
// call that races Close, which callers must not let happen, then faults on
// them (an error where the goroutine runs under debug.SetPanicOnFault)
// instead of reaching whatever the process would have mapped there next.
func (r *Region) Close() error {
	r.closeMu.Lock()
	defer r.closeMu.Unlock()
	if r.closed {
		return nil
	}
	r.closed = true
	r.mem = nil
	// One mapping over the whole range replaces both file mappings at once,
	// as the reservation they were made in (mapRegion).
	_, err := unix.MmapPtr(-1, 0, r.base, r.mapLen, unix.PROT_NONE,
		unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE|unix.MAP_FIXED)
	if err == nil {
		runtime.AddCleanup(r, releaseReservation, reservation{r.base, r.mapLen})
	} else {
		err = unix.MunmapPtr(r.base, r.mapLen)
	}
	if cerr := r.file.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return &PathError{Op: "close", Path: r.path, Err: err}
	}
	return nil
}

// reservation is the address range a closed Region keeps (see Close).
// Its base points outside Go's heap, so it does not keep the Region alive.
type reservation struct {
	base unsafe.Pointer
	len  uintptr
}

func releaseReservation(m reservation) { _ = unix.MunmapPtr(m.base, m.len) }

// Remove closes the region and deletes its file.
func (r *Region) Remove() error {
	cerr := r.Close()
	if err := os.Remove(r.path); err != nil {
		return &PathError{Op: "remove", Path: r.path, Err: err}
	}
	return cerr
}
