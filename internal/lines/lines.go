// Package lines keeps the lines a child process writes to a pipe, for a
// parent that waits for particular ones: the harness in package bench and
// the multi-process tests (internal/testproc) both talk to their children
// this way.
package lines

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"strings"
	"sync"
	"time"
)

var (
	// ErrEnded: the stream ended before a matching line came.
	ErrEnded = errors.New("lines: the stream ended")
	// ErrTimeout: no matching line came in time.
	ErrTimeout = errors.New("lines: timed out")
)

// MaxLine is the longest line kept whole (a child's JSON result, say).
const MaxLine = 64 << 20

// Buffer is the lines read from one stream so far, and a position: the
// lines before it were consumed by Next. Its methods are safe for
// concurrent use.
type Buffer struct {
	mu      sync.Mutex
	all     []string
	pos     int
	changed chan struct{} // closed and replaced when a line arrives
	ended   chan struct{} // closed when the stream has ended
}

// New returns an empty Buffer; Scan fills it.
func New() *Buffer {
	return &Buffer{changed: make(chan struct{}), ended: make(chan struct{})}
}

// Scan reads r to its end, keeping each line, then marks the stream ended.
// Run it on a goroutine of its own, once.
func (b *Buffer) Scan(r io.Reader) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), MaxLine)
	for sc.Scan() {
		b.mu.Lock()
		b.all = append(b.all, sc.Text())
		close(b.changed)
		b.changed = make(chan struct{})
		b.mu.Unlock()
	}
	_, _ = io.Copy(io.Discard, r) // after an over-long line: let the writer finish
	close(b.ended)
}

// Ended is closed once the stream has ended and every line is in.
func (b *Buffer) Ended() <-chan struct{} { return b.ended }

// Changed returns a channel that is closed when the next line arrives: for
// a caller that waits on several Buffers at once. Take it before looking at
// All, so that a line arriving in between is not missed.
func (b *Buffer) Changed() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.changed
}

// Next waits up to timeout for a line, after those consumed, that match
// accepts, and consumes the lines up to it. It fails with ErrEnded or
// ErrTimeout.
func (b *Buffer) Next(match func(string) bool, timeout time.Duration) (string, error) {
	deadline := time.NewTimer(timeout)
	defer deadline.Stop()
	for {
		b.mu.Lock()
		for ; b.pos < len(b.all); b.pos++ {
			if line := b.all[b.pos]; match(line) {
				b.pos++
				b.mu.Unlock()
				return line, nil
			}
		}
		changed := b.changed
		b.mu.Unlock()
		select {
		case <-changed:
		case <-b.ended:
			b.mu.Lock()
			more := b.pos < len(b.all)
			b.mu.Unlock()
			if !more {
				return "", ErrEnded
			}
		case <-deadline.C:
			return "", ErrTimeout
		}
	}
}

// Expect is Next for the first line that starts with prefix.
func (b *Buffer) Expect(prefix string, timeout time.Duration) (string, error) {
	return b.Next(func(l string) bool { return strings.HasPrefix(l, prefix) }, timeout)
}

// All returns every line read so far, consumed or not.
func (b *Buffer) All() []string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]string(nil), b.all...)
}

// Text keeps everything written to it, for a stream that is not read line
// by line (a child's stderr, quoted in an error). Its methods are safe for
// concurrent use: exec's copier writes while the parent reads.
type Text struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

// Write appends p; it never fails.
func (t *Text) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.Write(p)
}

// String returns what was written so far.
func (t *Text) String() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.buf.String()
}
