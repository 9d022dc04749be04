package bench

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"
	"unsafe"

	hdrhistogram "github.com/HdrHistogram/hdrhistogram-go"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/shm"
)

// Now returns CLOCK_MONOTONIC in nanoseconds. The monotonic reading inside a
// time.Time counts from the start of its process, so it cannot be compared
// across processes; this clock is the same in every process of the machine,
// so a stamp taken by a sender can be subtracted from a reading taken by a
// receiver. It is read from the CPU's time-stamp counter where
// internal/clock can (about 20 ns, fenced), else through the vDSO; no
// system call either way.
func Now() int64 { return clock.Mono() }

// Latency is a histogram of latencies in nanoseconds: HDR buckets with three
// significant digits from 1 ns to a minute (so quantiles are within 0.1 %),
// plus the exact minimum and maximum. The zero value is empty and ready to
// use. A Latency is not safe for concurrent use.
type Latency struct {
	h        *hdrhistogram.Histogram
	min, max int64
	clamped  int64
}

const (
	latencyHighest = int64(time.Minute)
	latencyDigits  = 3
)

func (l *Latency) hist() *hdrhistogram.Histogram {
	if l.h == nil {
		l.h = hdrhistogram.New(1, latencyHighest, latencyDigits)
	}
	return l.h
}

// Record adds a sample of ns nanoseconds. A negative sample (clocks that
// disagree) or one beyond a minute is recorded at the nearer bound and
// counted by Clamped, so that it shows instead of vanishing.
func (l *Latency) Record(ns int64) {
	if ns < 0 {
		ns = 0
		l.clamped++
	} else if ns > latencyHighest {
		ns = latencyHighest
		l.clamped++
	}
	h := l.hist()
	if h.TotalCount() == 0 || ns < l.min {
		l.min = ns
	}
	l.max = max(l.max, ns)
	_ = h.RecordValue(ns) // cannot fail: ns is within the histogram's range
}

// Count returns the number of samples recorded.
func (l *Latency) Count() int64 {
	if l.h == nil {
		return 0
	}
	return l.h.TotalCount()
}

// Min and Max return the exact smallest and largest samples (0 when empty).
func (l *Latency) Min() time.Duration { return time.Duration(l.min) }
func (l *Latency) Max() time.Duration { return time.Duration(l.max) }

// Clamped returns how many samples were out of range (see Record).
func (l *Latency) Clamped() int64 { return l.clamped }

// Quantile returns the latency below or at which a fraction q (0 to 1) of
// the samples lie, to within 0.1 %, and never beyond the exact Min and Max.
// It returns 0 when nothing was recorded.
func (l *Latency) Quantile(q float64) time.Duration {
	if l.Count() == 0 {
		return 0
	}
	// The library takes a percentile, 0 to 100, whatever its method's name says.
	v := l.h.ValueAtPercentile(q * 100)
	return time.Duration(min(max(v, l.min), l.max))
}

// Merge adds every sample of o to l.
func (l *Latency) Merge(o *Latency) {
	if o.Count() == 0 {
		l.clamped += o.clamped
		return
	}
	h := l.hist()
	if h.TotalCount() == 0 || o.min < l.min {
		l.min = o.min
	}
	l.max = max(l.max, o.max)
	l.clamped += o.clamped
	h.Merge(o.h) // drops nothing: both have the same range
}

// Summary is the short form of a Latency: count, quantiles and maximum. In
// JSON the durations are integers of nanoseconds.
type Summary struct {
	Count   int64         `json:"count"`
	P50     time.Duration `json:"p50_ns"`
	P90     time.Duration `json:"p90_ns"`
	P99     time.Duration `json:"p99_ns"`
	P999    time.Duration `json:"p99_9_ns"`
	Max     time.Duration `json:"max_ns"`
	Clamped int64         `json:"clamped,omitempty"`
}

// Summary returns l's summary.
func (l *Latency) Summary() Summary {
	return Summary{
		Count: l.Count(),
		P50:   l.Quantile(0.50), P90: l.Quantile(0.90), P99: l.Quantile(0.99), P999: l.Quantile(0.999),
		Max:     l.Max(),
		Clamped: l.clamped,
	}
}

func (s Summary) String() string {
	out := fmt.Sprintf("n=%d p50=%v p90=%v p99=%v p99.9=%v max=%v", s.Count, s.P50, s.P90, s.P99, s.P999, s.Max)
	if s.Clamped != 0 {
		out += fmt.Sprintf(" clamped=%d", s.Clamped)
	}
	return out
}

func (l *Latency) String() string { return l.Summary().String() }

// latencyJSON is the whole of a Latency, so that a receiving process can hand
// its samples to another one that merges or summarizes them: the histogram in
// the HdrHistogram V2 compressed encoding (base64), which other HdrHistogram
// tools also read, and the exact extremes.
type latencyJSON struct {
	Count   int64  `json:"count"`
	Min     int64  `json:"min_ns"`
	Max     int64  `json:"max_ns"`
	Clamped int64  `json:"clamped"`
	Hist    string `json:"hdr,omitempty"`
}

func (l *Latency) MarshalJSON() ([]byte, error) {
	j := latencyJSON{Count: l.Count(), Min: l.min, Max: l.max, Clamped: l.clamped}
	if j.Count > 0 {
		enc, err := l.h.Encode(hdrhistogram.V2CompressedEncodingCookieBase)
		if err != nil {
			return nil, err
		}
		j.Hist = string(enc)
	}
	return json.Marshal(j)
}

func (l *Latency) UnmarshalJSON(data []byte) error {
	var j latencyJSON
	if err := json.Unmarshal(data, &j); err != nil {
		return err
	}
	var got Latency
	if j.Count > 0 {
		h, err := hdrhistogram.Decode([]byte(j.Hist))
		if err != nil {
			return fmt.Errorf("latency histogram: %w", err)
		}
		if dropped := got.hist().Merge(h); dropped != 0 || got.h.TotalCount() != j.Count {
			return fmt.Errorf("latency histogram: %d samples, %d out of range, want %d", h.TotalCount(), dropped, j.Count)
		}
		if j.Min < 0 || j.Min > j.Max || j.Max > latencyHighest {
			return fmt.Errorf("latency histogram: min %d, max %d out of range", j.Min, j.Max)
		}
		got.min, got.max = j.Min, j.Max
	}
	got.clamped = j.Clamped
	*l = got
	return nil
}

// Result is what the receiving side of a one-way series reports: the
// latencies it measured and any counters worth reporting next to them.
type Result struct {
	Latency  *Latency         `json:"latency"`
	Counters map[string]int64 `json:"counters,omitempty"`
}

// A Link is the shared memory over which the two processes of a one-way
// latency series pace their samples: one sample in flight, the next sent
// only after the receiver has acknowledged the last. The floors also carry
// their messages in it. A Link serves one run; make a fresh one for the next.
//
// Every word that one side writes and the other reads sits alone in a
// 128-byte block (a cache line and its adjacent-line prefetch partner), so
// the only line transfers are those a protocol means to make.
type Link struct {
	// Timeout bounds every wait for the other side: a peer that died or
	// stopped makes the waiting side fail instead of waiting for ever.
	Timeout time.Duration

	unmap func() error

	msg    *atomic.Int64  // the stamp of the sample in flight; the sender writes it
	ack    *atomic.Uint64 // samples received so far; the receiver writes it
	ready  *atomic.Uint32 // 1 once the receiver waits for samples; futex word
	wake   *atomic.Uint32 // futex word of the futex floor; the sender bumps it
	parked *atomic.Uint32 // futex floor: 1 = the receiver is going to sleep
	pid    *atomic.Int32  // futex floor: the receiving process and thread, so
	tid    *atomic.Int32  // that the sender can see when it is asleep
}

const (
	blockBytes = 128
	offMsg     = 0 * blockBytes
	offAck     = 1 * blockBytes
	offReady   = 1*blockBytes + 8 // written by the receiver, like ack
	offWake    = 2 * blockBytes
	offParked  = 3 * blockBytes
	offPid     = 4 * blockBytes
	offTid     = 4*blockBytes + 4

	// LinkBytes is the size of the shared memory a Link needs.
	LinkBytes = 5 * blockBytes

	// DefaultTimeout is a Link's Timeout unless changed.
	DefaultTimeout = 10 * time.Second
)

// NewLink returns a Link on mem, which must be shared by both processes
// (MAP_SHARED: the futex floor sleeps on a word of it), zeroed, at least
// LinkBytes long and 8-byte aligned.
func NewLink(mem []byte) (*Link, error) {
	if len(mem) < LinkBytes {
		return nil, fmt.Errorf("bench: link needs %d bytes, got %d", LinkBytes, len(mem))
	}
	if uintptr(unsafe.Pointer(&mem[0]))%8 != 0 {
		return nil, errors.New("bench: link memory is not 8-byte aligned")
	}
	p := func(off int) unsafe.Pointer { return unsafe.Pointer(&mem[off]) }
	return &Link{
		Timeout: DefaultTimeout,
		msg:     (*atomic.Int64)(p(offMsg)),
		ack:     (*atomic.Uint64)(p(offAck)),
		ready:   (*atomic.Uint32)(p(offReady)),
		wake:    (*atomic.Uint32)(p(offWake)),
		parked:  (*atomic.Uint32)(p(offParked)),
		pid:     (*atomic.Int32)(p(offPid)),
		tid:     (*atomic.Int32)(p(offTid)),
	}, nil
}

// CreateLink creates the file path (which must not exist, mode 0600) and
// maps it as a Link. Put it in /dev/shm where that exists, so that no disk
// writeback touches the pages.
func CreateLink(path string) (*Link, error) {
	return mapLink(path, os.O_RDWR|os.O_CREATE|os.O_EXCL)
}

// OpenLink maps the Link file that CreateLink made.
func OpenLink(path string) (*Link, error) { return mapLink(path, os.O_RDWR) }

func mapLink(path string, flag int) (*Link, error) {
	f, err := os.OpenFile(path, flag|unix.O_NOFOLLOW, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close() // the mapping outlives the descriptor
	size := os.Getpagesize()
	if flag&os.O_CREATE != 0 {
		if err := f.Truncate(int64(size)); err != nil {
			return nil, err
		}
	} else if fi, err := f.Stat(); err != nil {
		return nil, err
	} else if fi.Size() < int64(size) {
		return nil, fmt.Errorf("bench: link file %s is %d bytes, want %d", path, fi.Size(), size)
	}
	mem, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("bench: map %s: %w", path, err)
	}
	l, err := NewLink(mem)
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	l.unmap = func() error { return unix.Munmap(mem) }
	return l, nil
}

// Close unmaps a Link from CreateLink or OpenLink; the file stays. It does
// nothing to a Link from NewLink.
func (l *Link) Close() error {
	if l.unmap == nil {
		return nil
	}
	err := l.unmap()
	*l = Link{}
	return err
}

// Ready is the receiver's call once it waits for samples (after any setup
// that must not be timed).
func (l *Link) Ready() {
	l.ready.Store(1) // pairs with WaitReady's load: the receiver's setup, such as pid and tid, is visible
	shm.Wake(l.ready)
}

// WaitReady is the sender's wait for the receiver's Ready. It sleeps on a
// futex, so it leaves the CPU to a receiver that is still starting.
func (l *Link) WaitReady() error {
	deadline := Now() + int64(l.Timeout)
	for l.ready.Load() == 0 { // pairs with Ready's store
		left := deadline - Now()
		if left <= 0 {
			return fmt.Errorf("bench: receiver not ready within %v", l.Timeout)
		}
		if err := shm.Wait(l.ready, 0, time.Duration(left)); err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			return err
		}
	}
	return nil
}

// Ack is the receiver's acknowledgement of samples 1 to i.
func (l *Link) Ack(i int) {
	l.ack.Store(uint64(i)) // release: pairs with WaitAck; everything the receiver did with sample i comes first
}

// WaitAck spins until the receiver has acknowledged sample i (1-based; 0
// returns at once). Spinning keeps the pacing itself out of the way of the
// latencies: the receiver of every series runs on a core of its own.
func (l *Link) WaitAck(i int) error {
	var a uint64
	err := l.spin("acknowledgement", func() bool {
		a = l.ack.Load() // acquire: pairs with Ack's store
		return a >= uint64(i)
	})
	if err == nil && a != uint64(i) {
		err = fmt.Errorf("bench: receiver acknowledged sample %d, only %d were sent", a, i)
	}
	return err
}

// spin calls cond until it is true, or fails after l.Timeout. The clock is
// read once per 1024 calls, so that the loop stays a load and a branch.
func (l *Link) spin(what string, cond func() bool) error {
	deadline := Now() + int64(l.Timeout)
	for n := 1; !cond(); n++ {
		if n%1024 == 0 && Now() > deadline {
			return fmt.Errorf("bench: no %s within %v", what, l.Timeout)
		}
	}
	return nil
}

// nextStamp checks that a received stamp is a new sample: stamps increase
// strictly, and with one sample in flight anything else is a protocol error.
func nextStamp(stamp, last int64, i int) error {
	if stamp <= last {
		return fmt.Errorf("bench: sample %d carries stamp %d, not after the previous %d", i, stamp, last)
	}
	return nil
}

// The futex floor: the least one-way latency of a wake-up of a sleeping
// process through a shared futex, the mechanism of the events bus's wake
// mode. The receiver announces in parked that it is going to sleep and
// sleeps in FUTEX_WAIT on wake. The sender waits until the receiving thread
// is asleep in the kernel (its state in /proc), stores a stamp in msg, bumps
// wake and FUTEX_WAKEs; the receiver reads the clock as soon as the wait
// returns, records the difference and acknowledges.
//
// The receiver's Result counts under "awake" the samples during which its
// thread did not leave the CPU (no voluntary context switch): those did not
// measure a wake-up. Waiting for the sleep keeps them rare.

// FutexSend is the sending side of the futex floor: n samples over l.
func FutexSend(l *Link, n int) error {
	if err := l.WaitReady(); err != nil {
		return err
	}
	// Both loads come after WaitReady's load of ready, which saw the
	// receiver's Ready, stored after pid and tid.
	stat, err := openThreadStat(l.pid.Load(), l.tid.Load())
	if err != nil {
		return err
	}
	defer stat.f.Close()
	for i := 1; i <= n; i++ {
		if err := l.WaitAck(i - 1); err != nil {
			return err
		}
		// The receiver reads wake before it sets parked, so once parked is
		// 1 any bump of wake from here on ends its sleep (or prevents it).
		if err := l.spin("announcement of sleep", func() bool {
			return l.parked.Load() == 1 // acquire: pairs with the receiver's store after its load of wake
		}); err != nil {
			return err
		}
		if err := l.waitAsleep(stat); err != nil {
			return err
		}
		// Clear the announcement for the next sample now, while the
		// receiver sleeps and cannot look at it.
		l.parked.Store(0) // ordered before the wake below, so the receiver sees 0 until it announces again
		// Take the lines of msg and wake into this core's cache first: the
		// receiver read them last, and without this the timed stores below
		// would each wait for its core to give a line up. Adding 0 changes
		// nothing a sleeping receiver could notice, and orders nothing.
		l.msg.Add(0)
		l.wake.Add(0)
		l.msg.Store(Now()) // ordered before the bump of wake, which the receiver sees first
		l.wake.Add(1)      // the value FUTEX_WAIT compares against; a receiver not yet asleep does not sleep
		shm.Wake(l.wake)   // the system call after the bump, so a waiter cannot miss it
	}
	return l.WaitAck(n)
}

// waitAsleep waits until the receiving thread is in an interruptible sleep.
// Between its announcement and its wake-up the thread's only such sleep is
// FUTEX_WAIT, bar a sleep inside the Go runtime (its loop does not allocate,
// so that is rare).
func (l *Link) waitAsleep(stat *threadStat) error {
	var serr error
	err := l.spin("sleep of the receiver", func() bool {
		s, err := stat.state()
		if err != nil {
			serr = err
			return true
		}
		return s == 'S'
	})
	if serr != nil {
		return serr
	}
	return err
}

type threadStat struct {
	f   *os.File
	buf [512]byte
}

func openThreadStat(pid, tid int32) (*threadStat, error) {
	if pid <= 0 || tid <= 0 {
		return nil, fmt.Errorf("bench: receiver published pid %d tid %d", pid, tid)
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/task/%d/stat", pid, tid))
	if err != nil {
		return nil, fmt.Errorf("bench: the futex floor needs the receiver's thread state: %w", err)
	}
	return &threadStat{f: f}, nil
}

// state returns the thread's state letter; the kernel renders the file
// afresh on every read from offset 0.
func (s *threadStat) state() (byte, error) {
	n, err := s.f.ReadAt(s.buf[:], 0)
	if n == 0 {
		return 0, fmt.Errorf("bench: read %s: %v", s.f.Name(), err)
	}
	// "tid (comm) S ...": comm may hold spaces and parentheses.
	i := bytes.LastIndexByte(s.buf[:n], ')')
	if i < 0 || i+2 >= n {
		return 0, fmt.Errorf("bench: unexpected %s: %q", s.f.Name(), s.buf[:n])
	}
	return s.buf[i+2], nil
}

// FutexReceive is the receiving side of the futex floor: it measures n
// samples from l and acknowledges each.
func FutexReceive(l *Link, n int) (*Result, error) {
	// One thread for the whole run: the sender watches its state.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	l.pid.Store(int32(os.Getpid())) // both ordered before Ready's store
	l.tid.Store(int32(unix.Gettid()))
	switches, err := voluntarySwitches()
	if err != nil {
		return nil, err
	}
	lat := new(Latency)
	awake := int64(0)
	last := int64(0)
	l.Ready()
	for i := 1; i <= n; i++ {
		gen := l.wake.Load() // before parked's store: a sample sent after the announcement moves wake past gen
		l.parked.Store(1)    // the announcement; ordered after the load of wake (Go's atomics are sequentially consistent)
		deadline := Now() + int64(l.Timeout)
		var now int64
		for {
			err := shm.Wait(l.wake, gen, time.Duration(max(deadline-Now(), 1)))
			// The clock first: the load below waits for the sender's line.
			now = Now()
			if l.wake.Load() != gen { // pairs with the sender's bump, after its store of msg
				break
			}
			if err != nil && (!errors.Is(err, os.ErrDeadlineExceeded) || Now() > deadline) {
				return nil, fmt.Errorf("bench: waiting for sample %d: %w", i, err)
			}
		}
		stamp := l.msg.Load() // the sender stored it before bumping wake
		if err := nextStamp(stamp, last, i); err != nil {
			return nil, err
		}
		last = stamp
		lat.Record(now - stamp)
		// One count serves as the end of this sample's wait and the start
		// of the next one's, and stays out of the timed path.
		s, err := voluntarySwitches()
		if err != nil {
			return nil, err
		}
		if s == switches {
			awake++
		}
		switches = s
		l.Ack(i)
	}
	return &Result{Latency: lat, Counters: map[string]int64{"awake": awake}}, nil
}

// voluntarySwitches returns how often the calling thread has given up the
// CPU by blocking.
func voluntarySwitches() (int64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_THREAD, &ru); err != nil {
		return 0, fmt.Errorf("bench: getrusage: %w", err)
	}
	return ru.Nvcsw, nil
}

// The cache-line floor: the least one-way latency the hardware allows
// between two processes. The receiver spins on msg; the sender stores a
// stamp there; the receiver reads the clock as soon as it sees a new stamp,
// records the difference and acknowledges in another block. What is timed
// is the sender's clock read and store, the line's move to the receiver's
// core, and the receiver's clock read.

// CachelineSend is the sending side of the cache-line floor.
func CachelineSend(l *Link, n int) error {
	if err := l.WaitReady(); err != nil {
		return err
	}
	for i := 1; i <= n; i++ {
		if err := l.WaitAck(i - 1); err != nil {
			return err
		}
		l.msg.Store(Now()) // the one store the receiver spins on; after the load of the ack, so one sample is in flight
	}
	return l.WaitAck(n)
}

// CachelineReceive is the receiving side of the cache-line floor.
func CachelineReceive(l *Link, n int) (*Result, error) {
	lat := new(Latency)
	last := l.msg.Load() // 0 in a fresh Link; before Ready, after which the sender may store
	l.Ready()
	for i := 1; i <= n; i++ {
		deadline := Now() + int64(l.Timeout)
		var stamp int64
		for spins := 1; ; spins++ {
			if stamp = l.msg.Load(); stamp != last { // acquire: pairs with the sender's store
				break
			}
			if spins%1024 == 0 && Now() > deadline {
				return nil, fmt.Errorf("bench: no sample %d within %v", i, l.Timeout)
			}
		}
		now := Now()
		if err := nextStamp(stamp, last, i); err != nil {
			return nil, err
		}
		last = stamp
		lat.Record(now - stamp)
		l.Ack(i)
	}
	return &Result{Latency: lat}, nil
}
