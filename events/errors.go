package events

import (
	"errors"

	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

var (
	// ErrClosed: the bus is closed. It is os.ErrClosed, like shm.ErrClosed.
	ErrClosed = shm.ErrClosed
	// ErrTooBig: the encoded event (source, name, key and data, plus a
	// 24-byte header) is larger than the ring's largest record, or a
	// source, name or key is longer than MaxNameLen. It is ring.ErrTooBig.
	ErrTooBig = ring.ErrTooBig
	// ErrNoSource: an event was posted with an empty source.
	ErrNoSource = errors.New("events: empty source")
	// ErrNoName: an event was posted with an empty name.
	ErrNoName = errors.New("events: empty event name")
	// ErrNoUnique: PostUnique was given an empty unique key.
	ErrNoUnique = errors.New("events: empty unique key")
	// ErrUniqueTableFull: every entry of the region's unique table holds a
	// key that is still live, so a new key could not be posted. Create the
	// region with more UniqueSlots, or use a shorter Timeout.
	ErrUniqueTableFull = errors.New("events: unique table full")
	// ErrUniqueLockHeld: a live process held the unique table's lock for
	// longer than WaitMax (it is stopped, or the machine is overloaded), so
	// a unique event could not be posted. Posting it again is safe.
	ErrUniqueLockHeld = errors.New("events: unique table lock held too long by a live process")
	// ErrAbandoned: the event was not published because readers gave up on
	// its entry before this process committed it (the process was stalled
	// for longer than WaitMax mid-post). Posting it again is safe.
	ErrAbandoned = ring.ErrAbandoned
	// ErrOptions: an Options field is out of range.
	ErrOptions = errors.New("events: invalid options")
)

// The region's open errors, re-exported so that callers of Open need import
// only this package. Errors from Open wrap them (and a *shm.PathError).
var (
	ErrNotRing      = shm.ErrNotRing
	ErrVersion      = shm.ErrVersion
	ErrCorrupt      = shm.ErrCorrupt
	ErrTruncated    = shm.ErrTruncated
	ErrPIDNamespace = shm.ErrPIDNamespace
)
