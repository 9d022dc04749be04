package shm

import (
	"errors"
	"fmt"
	"os"
)

// Errors a caller can test for with errors.Is. Every error returned by Open,
// Create and OpenOrCreate is a *PathError that names the file and wraps one of
// these or an os/fs error (fs.ErrNotExist, fs.ErrPermission, fs.ErrExist).
var (
	// ErrNotRing: the file is not a shmring region (no magic).
	ErrNotRing = errors.New("not a shmring region")
	// ErrVersion: the file has a layout version this build does not read.
	ErrVersion = errors.New("unsupported layout version")
	// ErrCorrupt: the header fails its checksum, holds an impossible geometry,
	// or the file size does not match it.
	ErrCorrupt = errors.New("corrupt region")
	// ErrTruncated: the file is shorter than its header says.
	ErrTruncated = errors.New("truncated region")
	// ErrSymlink: the path is a symbolic link and Options.FollowSymlinks is off.
	ErrSymlink = errors.New("path is a symbolic link")
	// ErrNotRegular: the path is a directory, device or other non-regular file.
	ErrNotRegular = errors.New("not a regular file")
	// ErrForeignOwner: the file belongs to another user and
	// Options.AllowForeignOwner is off.
	ErrForeignOwner = errors.New("file owned by another user")
	// ErrPIDNamespace: the file was created in another PID namespace. Its
	// readers and posters are told apart by process id, and a process id
	// names another process, or none, in another PID namespace: a live
	// reader's slot would be taken for a dead one's. Processes that share a
	// region must share their PID namespace too.
	ErrPIDNamespace = errors.New("region created in another PID namespace")
	// ErrGeometry: the requested geometry is invalid.
	ErrGeometry = errors.New("invalid geometry")
	// ErrClosed: the region has been closed. It is os.ErrClosed, so callers
	// may test for either.
	ErrClosed = os.ErrClosed
)

// PathError records an error and the region file it concerns.
type PathError struct {
	Op   string // "open", "create", "remove", ...
	Path string
	Err  error
}

func (e *PathError) Error() string { return "shm: " + e.Op + " " + e.Path + ": " + e.Err.Error() }

// Unwrap returns the underlying error.
func (e *PathError) Unwrap() error { return e.Err }

// reasonError carries a human reason and a sentinel.
type reasonError struct {
	reason   string
	sentinel error
}

func (e *reasonError) Error() string { return e.reason + " (" + e.sentinel.Error() + ")" }
func (e *reasonError) Unwrap() error { return e.sentinel }

func reasonf(sentinel error, format string, args ...any) error {
	return &reasonError{reason: fmt.Sprintf(format, args...), sentinel: sentinel}
}
