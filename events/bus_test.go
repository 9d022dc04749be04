package events

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/shmring/shmring/internal/clock"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// quietLogger discards the bus's logs (handler panics are expected in some
// tests) while keeping them countable.
type countingHandler struct {
	slog.Handler
	n *atomic.Int64
}

func (h countingHandler) Enabled(context.Context, slog.Level) bool { return true }

func (h countingHandler) Handle(ctx context.Context, r slog.Record) error {
	h.n.Add(1)
	return nil
}

func quietLogger() (*slog.Logger, *atomic.Int64) {
	n := new(atomic.Int64)
	return slog.New(countingHandler{slog.DiscardHandler, n}), n
}

func openBus(t *testing.T, opts Options) *Bus {
	t.Helper()
	if opts.Path == "" {
		opts.Path = filepath.Join(t.TempDir(), "bus")
	}
	if opts.Logger == nil {
		opts.Logger, _ = quietLogger()
	}
	b, err := Open(opts)
	require.NoError(t, err)
	t.Cleanup(func() {
		b.Close()
		<-b.Done() // a poller that Close left to finish must not outlive the test
	})
	return b
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// recorder is a handler that keeps "source/name/data" of what it saw.
type recorder struct {
	mu   sync.Mutex
	seen []string
}

func (r *recorder) handle(e *Event) {
	r.mu.Lock()
	r.seen = append(r.seen, e.Source+"/"+e.Name+"/"+string(e.Data))
	r.mu.Unlock()
}

func (r *recorder) get() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.seen...)
}

func TestOpenErrors(t *testing.T) {
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage")
	require.NoError(t, os.WriteFile(garbage, bytes.Repeat([]byte("not a ring "), 1000), 0o600))
	empty := filepath.Join(dir, "empty")
	require.NoError(t, os.WriteFile(empty, nil, 0o600))

	cases := []struct {
		name string
		opts Options
		want error
	}{
		{"no path", Options{}, ErrOptions},
		{"negative timeout", Options{Path: filepath.Join(dir, "a"), Timeout: -1}, ErrOptions},
		{"negative wait max", Options{Path: filepath.Join(dir, "a"), WaitMax: -time.Second}, ErrOptions},
		{"bad mode", Options{Path: filepath.Join(dir, "a"), Mode: Mode(42)}, ErrOptions},
		{"negative size", Options{Path: filepath.Join(dir, "a"), Size: -1}, ErrOptions},
		{"garbage file", Options{Path: garbage}, ErrNotRing},
		{"empty file", Options{Path: empty}, ErrTruncated},
		{"directory", Options{Path: dir}, nil},
		{"missing directory", Options{Path: filepath.Join(dir, "no", "such", "ring")}, os.ErrNotExist},
		{"size not a power of two", Options{Path: filepath.Join(dir, "b"), Size: 5000}, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := Open(c.opts)
			require.Error(t, err)
			require.Nil(t, b)
			if c.want != nil {
				require.ErrorIs(t, err, c.want)
			}
			if c.opts.Path != "" {
				assert.Contains(t, err.Error(), c.opts.Path, "the error names the path")
			}
		})
	}
}

func TestPostRunsOwnEventBeforeReturning(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	var rec recorder
	b.Register(rec.handle, "")
	res, err := b.Post("app", "hello", []byte("world"))
	require.NoError(t, err)
	require.Equal(t, Done, res)
	// Manual mode and a reader started at Latest before Open's own post:
	// the bus sees its own "started" too.
	require.Equal(t, []string{"shmring/started/", "app/hello/world"}, rec.get())
	st := b.Stats()
	assert.Equal(t, uint64(2), st.Posted)
	assert.Equal(t, uint64(2), st.Received)
	assert.Equal(t, uint64(2), st.Handled)
	assert.Equal(t, uint64(0), st.Lag)
	assert.Equal(t, b.Ring().Next(), b.Cursor())
}

func TestRegisterFilters(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	var all, src, named recorder
	b.Register(all.handle, "")
	b.Register(src.handle, "a")
	b.Register(named.handle, "a", "x", "y")
	for _, ev := range [][2]string{{"a", "x"}, {"a", "z"}, {"b", "x"}, {"a", "y"}} {
		_, err := b.Post(ev[0], ev[1], nil)
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"shmring/started/", "a/x/", "a/z/", "b/x/", "a/y/"}, all.get())
	assert.Equal(t, []string{"a/x/", "a/z/", "a/y/"}, src.get())
	assert.Equal(t, []string{"a/x/", "a/y/"}, named.get())
}

func TestUnregister(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	var first, second recorder
	var reg2 *Registration
	// The first handler unregisters the second one from inside dispatch:
	// the second must not run for that very event.
	b.Register(func(e *Event) {
		first.handle(e)
		if string(e.Data) == "stop" {
			assert.True(t, reg2.Unregister())
		}
	}, "t")
	reg2 = b.Register(second.handle, "t")
	for _, d := range []string{"1", "stop", "2"} {
		_, err := b.Post("t", "e", []byte(d))
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"t/e/1", "t/e/stop", "t/e/2"}, first.get())
	assert.Equal(t, []string{"t/e/1"}, second.get())
	assert.False(t, reg2.Unregister(), "a second Unregister reports false")
}

func TestRegisterContext(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	ctx, cancel := context.WithCancel(context.Background())
	var rec recorder
	reg := b.RegisterContext(ctx, rec.handle, "t")
	_, err := b.Post("t", "e", []byte("1"))
	require.NoError(t, err)
	cancel()
	waitFor(t, "the registration to end", func() bool { return !reg.active.Load() })
	_, err = b.Post("t", "e", []byte("2"))
	require.NoError(t, err)
	assert.Equal(t, []string{"t/e/1"}, rec.get())
	assert.False(t, reg.Unregister())
}

func TestRecursivePost(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	var rec recorder
	var inner Result
	b.Register(func(e *Event) {
		rec.handle(e)
		if e.Name == "outer" {
			var err error
			inner, err = b.Post("t", "inner", nil)
			assert.NoError(t, err)
			rec.handle(&Event{Source: "after", Name: "inner-post"})
		}
	}, "t")
	res, err := b.Post("t", "outer", nil)
	require.NoError(t, err)
	assert.Equal(t, Done, res)
	assert.Equal(t, Recursive, inner)
	// The inner event ran in the same (outer) poll, after the handler that
	// posted it returned.
	assert.Equal(t, []string{"t/outer/", "after/inner-post/", "t/inner/"}, rec.get())
	assert.Equal(t, uint64(0), b.Stats().Lag)
}

func TestPostLocal(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	a := openBus(t, Options{Path: path, Mode: Manual})
	other := openBus(t, Options{Path: path, Mode: Manual})
	var ra, ro recorder
	var local *Event
	a.Register(func(e *Event) {
		ra.handle(e)
		if e.Local {
			local = e.Clone()
		}
	}, "t")
	other.Register(ro.handle, "t")
	next := a.Ring().Next()
	data := []byte("mine")
	res, err := a.PostLocal("t", "l", data)
	require.NoError(t, err)
	assert.Equal(t, Done, res)
	data[0] = 'X' // the bus kept its own copy
	assert.Equal(t, next, a.Ring().Next(), "PostLocal does not touch the ring")
	_, err = other.Poll()
	require.NoError(t, err)
	assert.Equal(t, []string{"t/l/mine"}, ra.get())
	assert.Empty(t, ro.get())
	require.NotNil(t, local)
	assert.Equal(t, uint64(0), local.Seq)
	assert.Equal(t, os.Getpid(), local.PID)
	assert.Equal(t, uint64(1), a.Stats().Local)
}

func TestHandlerPanic(t *testing.T) {
	logger, logs := quietLogger()
	b := openBus(t, Options{Mode: Manual, Logger: logger})
	var after recorder
	b.Register(func(e *Event) {
		if string(e.Data) == "boom" {
			panic("handler failed")
		}
	}, "t")
	b.Register(after.handle, "t")
	for _, d := range []string{"boom", "fine"} {
		_, err := b.Post("t", "e", []byte(d))
		require.NoError(t, err)
	}
	assert.Equal(t, []string{"t/e/boom", "t/e/fine"}, after.get())
	assert.Equal(t, uint64(1), b.Stats().HandlerPanics)
	assert.Equal(t, int64(1), logs.Load(), "the panic is logged")
}

func TestPostErrors(t *testing.T) {
	b := openBus(t, Options{Mode: Manual, Size: 1 << 16})
	_, err := b.Post("", "n", nil)
	assert.ErrorIs(t, err, ErrNoSource)
	_, err = b.Post("s", "", nil)
	assert.ErrorIs(t, err, ErrNoName)
	_, err = b.PostUnique("s", "n", nil, "")
	assert.ErrorIs(t, err, ErrNoUnique)
	_, err = b.PostLocal("", "n", nil)
	assert.ErrorIs(t, err, ErrNoSource)
	_, err = b.Post(strings.Repeat("s", MaxNameLen+1), "n", nil)
	assert.ErrorIs(t, err, ErrTooBig)

	max := b.MaxData("s", "n", "")
	require.Equal(t, 1<<14-headerSize-2, max)
	_, err = b.Publish("s", "n", make([]byte, max))
	require.NoError(t, err)
	_, err = b.Publish("s", "n", make([]byte, max+1))
	require.ErrorIs(t, err, ErrTooBig)
	assert.Contains(t, err.Error(), "at most")

	require.NoError(t, b.Close())
	require.NoError(t, b.Close(), "Close is idempotent")
	for name, f := range map[string]func() error{
		"post":    func() error { _, err := b.Post("s", "n", nil); return err },
		"publish": func() error { _, err := b.Publish("s", "n", nil); return err },
		"unique":  func() error { _, err := b.PostUnique("s", "n", nil, "k"); return err },
		"local":   func() error { _, err := b.PostLocal("s", "n", nil); return err },
		"poll":    func() error { _, err := b.Poll(); return err },
		"json":    func() error { _, err := b.PostJSON("s", "n", 1); return err },
		"ring":    func() error { _, err := b.Ring().Append([]byte("x")); return err },
		"unique table": func() error {
			_, _, err := b.Unique()
			return err
		},
	} {
		assert.ErrorIs(t, f(), ErrClosed, name)
	}
	// What has no error to return still answers, from what the bus kept.
	st := b.Stats()
	assert.Equal(t, uint64(3), st.Posted, "started, the publish above and stopping")
	assert.Zero(t, st.Lag)
	reg := b.Register(func(*Event) {}, "")
	assert.False(t, reg.Unregister(), "registering on a closed bus is inert")
	_, open := <-b.Subscribe(context.Background(), 1, "")
	assert.False(t, open, "a subscription on a closed bus is closed")
}

func TestJSON(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	type purge struct {
		Key string `json:"key"`
		TTL int    `json:"ttl"`
	}
	var got purge
	b.Register(func(e *Event) { require.NoError(t, e.JSON(&got)) }, "cache", "purge")
	_, err := b.PostJSON("cache", "purge", purge{Key: "users", TTL: 30})
	require.NoError(t, err)
	assert.Equal(t, purge{Key: "users", TTL: 30}, got)
	_, err = b.PostJSON("cache", "purge", func() {})
	assert.Error(t, err, "an unencodable value is an error, not a post")
	var bad purge
	assert.Error(t, (&Event{Data: []byte("{")}).JSON(&bad))
}

func TestSubscribeDropsAndCloses(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	ctx, cancel := context.WithCancel(context.Background())
	ch := b.Subscribe(ctx, 3, "t")
	for i := range 10 {
		_, err := b.Post("t", "e", []byte{byte('0' + i)})
		require.NoError(t, err)
	}
	st := b.Stats()
	assert.Equal(t, uint64(7), st.Dropped)
	for _, want := range []string{"0", "1", "2"} {
		e := <-ch
		assert.Equal(t, want, string(e.Data), "the subscriber owns a copy")
		assert.False(t, e.Local)
	}
	cancel()
	waitFor(t, "the channel to close", func() bool {
		select {
		case _, ok := <-ch:
			return !ok
		default:
			return false
		}
	})
	ch2 := b.Subscribe(context.Background(), 1, "")
	require.NoError(t, b.Close())
	for range ch2 { // drains what was delivered; ends because Close closed it
	}
}

func TestUniqueInOneProcess(t *testing.T) {
	// Two buses on one file compete exactly as two processes would: the
	// table lives in the region.
	path := filepath.Join(t.TempDir(), "bus")
	a := openBus(t, Options{Path: path, Mode: Manual, Timeout: 200 * time.Millisecond})
	c := openBus(t, Options{Path: path, Mode: Manual, Timeout: 200 * time.Millisecond})
	var runs atomic.Int64
	a.Register(func(*Event) { runs.Add(1) }, "cache", "purge")
	c.Register(func(*Event) { runs.Add(1) }, "cache", "purge")

	_, err := a.PostUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	_, err = c.Poll()
	require.NoError(t, err)
	require.Equal(t, int64(1), runs.Load(), "exactly one bus ran it")

	// A follow-up within Timeout is ignored by both.
	_, err = c.PostUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	_, err = a.Poll()
	require.NoError(t, err)
	require.Equal(t, int64(1), runs.Load())
	assert.Equal(t, uint64(3), a.Stats().UniqueIgnored+c.Stats().UniqueIgnored)

	// Another key is independent.
	_, err = c.PostUnique("cache", "purge", nil, "groups")
	require.NoError(t, err)
	_, err = a.Poll()
	require.NoError(t, err)
	require.Equal(t, int64(2), runs.Load())

	// After Timeout the key runs again, once.
	waitFor(t, "the key to expire", func() bool {
		before := runs.Load()
		_, err := a.PostUnique("cache", "purge", nil, "users")
		require.NoError(t, err)
		_, err = c.Poll()
		require.NoError(t, err)
		return runs.Load() > before
	})
	assert.Equal(t, int64(3), runs.Load())
	st, live, err := a.Unique()
	require.NoError(t, err)
	assert.Equal(t, uint64(3), st.Claims)
	assert.Equal(t, 2, st.Used)
	assert.NotEmpty(t, live)
}

// A process that reads old events (it started at Oldest, or polled late)
// decides every unique event as the processes that polled on time did: a
// follow-up stays ignored after the key's timeout has passed, because what
// counts is when the events were posted, not when they are polled.
func TestUniqueReplayDecidesAsOnTime(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	const timeout = 20 * time.Millisecond
	a := openBus(t, Options{Path: path, Mode: Manual, Timeout: timeout})
	var runsA, runsLate atomic.Int64
	a.Register(func(*Event) { runsA.Add(1) }, "cache", "purge")

	_, err := a.PostUnique("cache", "purge", []byte("first"), "users")
	require.NoError(t, err)
	_, err = a.PostUnique("cache", "purge", []byte("follow-up"), "users")
	require.NoError(t, err)
	require.Equal(t, int64(1), runsA.Load(), "the follow-up is ignored")
	followUpPosted := clock.WallNano()

	// Well after the key expired, a new process replays the ring.
	waitFor(t, "the key to expire", func() bool { return clock.WallNano() > followUpPosted+int64(timeout) })
	late := openBus(t, Options{Path: path, Mode: Manual, Timeout: timeout, StartAt: Oldest,
		Setup: func(b *Bus) { b.Register(func(*Event) { runsLate.Add(1) }, "cache", "purge") }})
	_, err = late.Poll()
	require.NoError(t, err)
	assert.Zero(t, runsLate.Load(), "the late reader runs neither the winner nor its follow-up")
	assert.Equal(t, uint64(2), late.Stats().UniqueIgnored)

	// A new event after the timeout runs once, wherever it is polled.
	_, err = late.PostUnique("cache", "purge", []byte("again"), "users")
	require.NoError(t, err)
	_, err = a.Poll()
	require.NoError(t, err)
	assert.Equal(t, int64(1), runsA.Load()+runsLate.Load()-1, "exactly one more run")
}

func TestUniqueSkippedWithoutHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	poster := openBus(t, Options{Path: path, Mode: Manual})
	worker := openBus(t, Options{Path: path, Mode: Manual})
	var runs atomic.Int64
	worker.Register(func(*Event) { runs.Add(1) }, "cache")
	// The poster has no handler for it, polls first, and must not claim it.
	_, err := poster.PostUnique("cache", "purge", nil, "k")
	require.NoError(t, err)
	_, err = worker.Poll()
	require.NoError(t, err)
	assert.Equal(t, int64(1), runs.Load())
	assert.Equal(t, uint64(0), poster.Stats().UniqueRun)
	assert.Equal(t, uint64(1), worker.Stats().UniqueRun)
}

func TestUniqueTableFull(t *testing.T) {
	// Three table entries: a header and two keys. Keys do not expire
	// within the test, so a third key finds no room.
	b := openBus(t, Options{Mode: Manual, UniqueSlots: 3, Timeout: time.Hour})
	var runs atomic.Int64
	b.Register(func(*Event) { runs.Add(1) }, "t")
	for _, k := range []string{"k1", "k2"} {
		_, err := b.PostUnique("t", "e", nil, k)
		require.NoError(t, err)
	}
	next := b.Ring().Next()
	_, err := b.PostUnique("t", "e", nil, "k3")
	require.ErrorIs(t, err, ErrUniqueTableFull)
	assert.Contains(t, err.Error(), b.Path())
	assert.Equal(t, next, b.Ring().Next(), "nothing was posted")
	// A known key still gets its decision (ignored: within Timeout).
	_, err = b.PostUnique("t", "e", nil, "k1")
	require.NoError(t, err)
	assert.Equal(t, int64(2), runs.Load())
}

func TestUniqueEntryReusedOnceExpired(t *testing.T) {
	// Two key entries: once a key has expired its entry serves a new key,
	// though its winner is still in the ring. A process that replays the
	// ring from there runs none of them again: each winner's claim says
	// who took it.
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Manual, UniqueSlots: 3, Timeout: time.Millisecond})
	var runs atomic.Int64
	b.Register(func(*Event) { runs.Add(1) }, "t")
	for _, k := range []string{"k1", "k2"} {
		_, err := b.PostUnique("t", "e", nil, k)
		require.NoError(t, err)
	}
	waitFor(t, "k1 and k2 to expire", func() bool {
		_, live, err := b.Unique()
		require.NoError(t, err)
		return len(live) == 0
	})
	_, err := b.PostUnique("t", "e", nil, "k3")
	require.NoError(t, err)
	assert.Equal(t, int64(3), runs.Load())
	assert.Equal(t, uint64(3), b.Stats().UniqueRun)

	var replayed atomic.Int64
	late := openBus(t, Options{Path: path, Mode: Manual, StartAt: Oldest,
		Setup: func(b *Bus) { b.Register(func(*Event) { replayed.Add(1) }, "t") }})
	_, err = late.Poll()
	require.NoError(t, err)
	assert.Zero(t, replayed.Load())
	assert.Equal(t, uint64(3), late.Stats().UniqueIgnored)
}

// A follow-up is marked as such when it is posted, so a process that reads
// it late ignores it as the others did, even after its key's entry went to
// another key. Here the winner has left the ring, its follow-up (posted
// within the timeout) has not, a lagging process has read the winner but
// not the follow-up, and the key has expired when a new key takes the only
// entry.
func TestUniqueFollowUpIgnoredAfterItsEntryIsReused(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	const timeout = 20 * time.Millisecond
	opts := Options{Path: path, Mode: Manual, UniqueSlots: 2, Slots: 16, Timeout: timeout}
	poster := openBus(t, opts) // no handlers: it takes no part in claims
	a := openBus(t, opts)
	lagging := openBus(t, opts)
	var runsA, runsLagging atomic.Int64
	a.Register(func(*Event) { runsA.Add(1) }, "cache", "purge")
	lagging.Register(func(*Event) { runsLagging.Add(1) }, "cache", "purge")

	winner, err := poster.PublishUnique("cache", "purge", []byte("winner"), "users")
	require.NoError(t, err)
	_, err = a.Poll()
	require.NoError(t, err)
	_, err = lagging.Poll() // reads the winner, which a ran
	require.NoError(t, err)
	require.Equal(t, int64(1), runsA.Load())

	// One event between them, so that the follow-up stays in the ring
	// while one more is posted after the winner has left it.
	_, err = poster.Publish("filler", "tick", nil)
	require.NoError(t, err)
	followUp, err := poster.PublishUnique("cache", "purge", []byte("follow-up"), "users")
	require.NoError(t, err)
	followUpPosted := clock.WallNano()
	for poster.Ring().Oldest() <= winner {
		_, err := poster.Publish("filler", "tick", nil)
		require.NoError(t, err)
	}
	require.LessOrEqual(t, poster.Ring().Oldest(), followUp, "the follow-up is still in the ring")
	waitFor(t, "the key to expire", func() bool { return clock.WallNano() > followUpPosted+int64(timeout) })

	_, err = poster.PublishUnique("cache", "purge", nil, "groups")
	require.NoError(t, err, "the expired key's entry serves the new key")
	_, keys, err := poster.Unique()
	require.NoError(t, err)
	require.Len(t, keys, 1)
	assert.Equal(t, "groups", keys[0].Key)

	require.LessOrEqual(t, poster.Ring().Oldest(), followUp, "the follow-up is still in the ring")
	_, err = lagging.Poll()
	require.NoError(t, err)
	_, err = a.Poll()
	require.NoError(t, err)
	assert.Equal(t, uint64(2), lagging.Stats().UniqueIgnored, "the lagging process ignored the winner, which a ran, and the follow-up")
	assert.Equal(t, int64(2), runsA.Load()+runsLagging.Load(), "the winner and the new key, once each; the follow-up nowhere")
}

// A key won again after it expired keeps ignoring the follow-ups of its new
// winner, whichever process polls first and whenever: here the new winner
// and its follow-up are both posted before any process polls either, and
// the process that runs the winner closes before it reads the follow-up.
func TestUniqueFollowUpOfNewWinnerIgnoredByLateReader(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	const timeout = 50 * time.Millisecond
	opts := Options{Path: path, Mode: Manual, Slots: 16, Timeout: timeout}
	poster := openBus(t, opts)
	a := openBus(t, opts)
	var runsA atomic.Int64
	a.Register(func(e *Event) {
		runsA.Add(1)
		if string(e.Data) == "again" {
			go a.Close() // a stops right after running the new winner
		}
	}, "cache", "purge")

	_, err := poster.PostUnique("cache", "purge", []byte("first"), "users")
	require.NoError(t, err)
	firstPosted := clock.WallNano()
	_, err = a.Poll()
	require.NoError(t, err)
	waitFor(t, "the key to expire", func() bool { return clock.WallNano() > firstPosted+int64(timeout) })
	again, err := poster.PublishUnique("cache", "purge", []byte("again"), "users")
	require.NoError(t, err)
	for range 2 { // room for the late bus's own "started" once again has left the ring
		_, err = poster.Publish("filler", "tick", nil)
		require.NoError(t, err)
	}
	followUp, err := poster.PublishUnique("cache", "purge", []byte("follow-up"), "users")
	require.NoError(t, err)
	followUpPosted := clock.WallNano()
	if _, err = a.Poll(); err != nil {
		require.ErrorIs(t, err, ErrClosed, "the handler's Close may end the poll")
	}
	require.Equal(t, int64(2), runsA.Load(), "a ran the first winner and the new one")
	<-a.Done()

	for poster.Ring().Oldest() <= again {
		_, err := poster.Publish("filler", "tick", nil)
		require.NoError(t, err)
	}
	require.LessOrEqual(t, poster.Ring().Oldest(), followUp, "the follow-up is still in the ring")
	waitFor(t, "the key to expire again", func() bool { return clock.WallNano() > followUpPosted+int64(timeout) })
	var runsLate atomic.Int64
	late := openBus(t, Options{Path: path, Mode: Manual, Timeout: timeout, StartAt: Oldest,
		Setup: func(b *Bus) { b.Register(func(*Event) { runsLate.Add(1) }, "cache", "purge") }})
	_, err = late.Poll()
	require.NoError(t, err)
	assert.Equal(t, uint64(1), late.Stats().UniqueIgnored, "the late bus read the follow-up")
	assert.Zero(t, runsLate.Load(), "the follow-up, posted within Timeout of the new winner, runs nowhere")
}

// Events that share a unique key but are handled in different processes
// each run once when they are posted more than Timeout apart, whichever
// process polls first: a process without a handler for an event takes no
// part in deciding who runs it, and whether it is a follow-up was decided
// when it was posted.
func TestUniqueKeySharedAcrossNamesRunsEach(t *testing.T) {
	for _, first := range []string{"purger", "refresher"} {
		t.Run(first+" polls first", func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bus")
			const timeout = 20 * time.Millisecond
			opts := Options{Path: path, Mode: Manual, Timeout: timeout}
			poster := openBus(t, opts)
			purger, refresher := openBus(t, opts), openBus(t, opts)
			var purges, refreshes atomic.Int64
			purger.Register(func(*Event) { purges.Add(1) }, "cache", "purge")
			refresher.Register(func(*Event) { refreshes.Add(1) }, "cache", "refresh")

			_, err := poster.PublishUnique("cache", "purge", nil, "users")
			require.NoError(t, err)
			posted := clock.WallNano()
			waitFor(t, "the key to expire", func() bool { return clock.WallNano() > posted+int64(timeout) })
			_, err = poster.PublishUnique("cache", "refresh", nil, "users")
			require.NoError(t, err)

			order := []*Bus{purger, refresher}
			if first == "refresher" {
				order = []*Bus{refresher, purger}
			}
			for _, b := range order {
				_, err = b.Poll()
				require.NoError(t, err)
			}
			assert.Equal(t, int64(1), purges.Load(), "the purge ran once")
			assert.Equal(t, int64(1), refreshes.Load(), "the refresh ran once")
		})
	}
}

// A live key's text comes from its winning event while that is in the
// ring; afterwards only the hash is known.
func TestUniqueKeyText(t *testing.T) {
	b := openBus(t, Options{Mode: Manual, Slots: 16, Timeout: time.Hour})
	b.Register(func(*Event) {}, "cache")
	_, err := b.PostUnique("cache", "refresh", nil, "users:42")
	require.NoError(t, err)
	_, keys, err := b.Unique()
	require.NoError(t, err)
	require.Len(t, keys, 1)
	assert.Equal(t, "users:42", keys[0].Key)
	assert.Equal(t, keyHash("users:42"), keys[0].Hash)
	assert.Equal(t, os.Getpid(), keys[0].PID)

	for b.Ring().Oldest() <= keys[0].Seq {
		_, err := b.Publish("filler", "tick", nil)
		require.NoError(t, err)
	}
	_, keys, err = b.Unique()
	require.NoError(t, err)
	require.Len(t, keys, 1)
	assert.Empty(t, keys[0].Key, "the winning event has left the ring")
	assert.Equal(t, keyHash("users:42"), keys[0].Hash)
	assert.Empty(t, b.Ring().Readers()[1:], "looking keys up registered no reader")
}

func TestLappedBusCountsLoss(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	slow := openBus(t, Options{Path: path, Mode: Manual, Slots: 16})
	fast := openBus(t, Options{Path: path, Mode: Manual})
	var n atomic.Int64
	slow.Register(func(e *Event) {
		if e.Source == "t" {
			n.Add(1)
		}
	}, "")
	for range 100 {
		_, err := fast.Publish("t", "e", []byte("x"))
		require.NoError(t, err)
	}
	_, err := slow.Poll()
	require.NoError(t, err)
	st := slow.Stats()
	// Two "started" events precede the 100 (slow's own and fast's).
	assert.Equal(t, uint64(102), st.Received+st.Lost+st.Abandoned)
	assert.Equal(t, uint64(n.Load()), st.Received)
	assert.LessOrEqual(t, st.Received, uint64(16))
	assert.Equal(t, slow.Ring().Next(), slow.Cursor())
}

func TestResumeAtCursor(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	poster := openBus(t, Options{Path: path, Mode: Manual})
	first, err := Open(Options{Path: path, Mode: Manual})
	require.NoError(t, err)
	var seen1 []string
	first.Register(func(e *Event) { seen1 = append(seen1, string(e.Data)) }, "t")
	for _, d := range []string{"a", "b"} {
		_, err := poster.Publish("t", "e", []byte(d))
		require.NoError(t, err)
	}
	_, err = first.Poll()
	require.NoError(t, err)
	cursor := first.Cursor()
	require.NoError(t, first.Close())
	for _, d := range []string{"c", "d"} {
		_, err := poster.Publish("t", "e", []byte(d))
		require.NoError(t, err)
	}
	second := openBus(t, Options{Path: path, Mode: Manual, StartAt: AtSeq(cursor)})
	var seen2 []string
	second.Register(func(e *Event) { seen2 = append(seen2, string(e.Data)) }, "t")
	_, err = second.Poll()
	require.NoError(t, err)
	assert.Equal(t, []string{"a", "b"}, seen1)
	assert.Equal(t, []string{"c", "d"}, seen2)
	assert.Equal(t, uint64(0), second.Stats().Lost)
}

func TestModesDeliver(t *testing.T) {
	for _, mode := range []Mode{Wake, Timer, Spin} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bus")
			rx := openBus(t, Options{Path: path, Mode: mode, Interval: 5 * time.Millisecond})
			tx := openBus(t, Options{Path: path, Mode: Manual})
			var rec recorder
			rx.Register(rec.handle, "t")
			_, err := tx.Publish("t", "e", []byte("hi"))
			require.NoError(t, err)
			waitFor(t, "delivery without a Poll", func() bool { return len(rec.get()) == 1 })
			assert.Equal(t, []string{"t/e/hi"}, rec.get())
		})
	}
}

func TestCloseFromHandler(t *testing.T) {
	for _, mode := range []Mode{Manual, Wake} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bus")
			b, err := Open(Options{Path: path, Mode: mode})
			require.NoError(t, err)
			closed := make(chan error, 1)
			b.Register(func(e *Event) { closed <- b.Close() }, "t", "quit")
			tx := openBus(t, Options{Path: path, Mode: Manual})
			_, err = tx.Publish("t", "quit", nil)
			require.NoError(t, err)
			if mode == Manual {
				_, err := b.Poll()
				require.ErrorIs(t, err, ErrClosed)
			}
			select {
			case err := <-closed:
				require.NoError(t, err)
			case <-time.After(10 * time.Second):
				t.Fatal("Close from a handler deadlocked")
			}
			waitFor(t, "the region to be released", func() bool { return closedRing(b) })
			_, err = b.Post("t", "x", nil)
			require.ErrorIs(t, err, ErrClosed)
			// The stopping event reached the other bus.
			var names []string
			tx.Register(func(e *Event) { names = append(names, e.Name) }, Source)
			_, err = tx.Poll()
			require.NoError(t, err)
			assert.Contains(t, names, EventStopping)
		})
	}
}

var ringReaderOptsForTest = ring.ReaderOptions{Unregistered: true}

// closedRing reports whether the bus's ring has been closed.
func closedRing(b *Bus) bool {
	_, err := b.ring.NewReader(ringReaderOptsForTest)
	return errors.Is(err, ErrClosed)
}

// Close waits for the posts in flight and fails the later ones; every
// event posted is counted in Stats.Posted, and no other.
func TestConcurrentPostersAndClose(t *testing.T) {
	for _, how := range []string{"Post", "Publish"} {
		t.Run(how, func(t *testing.T) {
			b := openBus(t, Options{})
			var wg sync.WaitGroup
			var ok atomic.Uint64
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						var err error
						if how == "Post" {
							_, err = b.Post("t", "e", []byte("x"))
						} else {
							_, err = b.Publish("t", "e", []byte("x"))
						}
						if errors.Is(err, ErrAbandoned) {
							// Stalled between claim and commit while the
							// others went a whole index round: not posted,
							// and safe to post again.
							continue
						}
						if err != nil {
							assert.ErrorIs(t, err, ErrClosed)
							return
						}
						ok.Add(1)
					}
				}()
			}
			waitFor(t, "some posts", func() bool { return b.Stats().Posted > 100 })
			require.NoError(t, b.Close())
			wg.Wait()
			// Open posted "started", Close "stopping". A Post whose poll
			// found the bus closed had posted its event.
			posted := b.Stats().Posted
			if how == "Publish" {
				assert.Equal(t, ok.Load()+2, posted)
			} else {
				assert.GreaterOrEqual(t, posted, ok.Load()+2)
				assert.LessOrEqual(t, posted, ok.Load()+2+4)
			}
		})
	}
}

func TestSetupSeesOwnStarted(t *testing.T) {
	var rec recorder
	openBus(t, Options{Setup: func(b *Bus) { b.Register(rec.handle, Source) }})
	waitFor(t, "the bus's own started event", func() bool { return len(rec.get()) == 1 })
	assert.Equal(t, []string{"shmring/started/"}, rec.get())
}

func TestCursorAndStatsInsideHandler(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	slow := openBus(t, Options{Path: path, Mode: Manual, Slots: 16})
	fast := openBus(t, Options{Path: path, Mode: Manual})
	type snap struct {
		seq, cursor, lost uint64
	}
	var snaps []snap
	slow.Register(func(e *Event) {
		snaps = append(snaps, snap{e.Seq, slow.Cursor(), slow.Stats().Lost})
	}, "t")
	for range 40 {
		_, err := fast.Publish("t", "e", nil)
		require.NoError(t, err)
	}
	_, err := slow.Poll()
	require.NoError(t, err)
	require.NotEmpty(t, snaps)
	for _, s := range snaps {
		// In a handler the cursor is past the event being handled, and
		// every earlier sequence is accounted for.
		assert.Equal(t, s.seq+1, s.cursor)
	}
	first := snaps[0]
	assert.Positive(t, first.lost, "the lap is counted before the first surviving event runs")
}

func TestCloseWhilePollRunsHandlersThatPost(t *testing.T) {
	// A handler that posts, on a poll running in another goroutine, while
	// Close releases the bus: neither may wait for the other.
	for round := range 50 {
		b, err := Open(Options{Path: filepath.Join(t.TempDir(), "bus"), Mode: Manual})
		require.NoError(t, err)
		b.Register(func(e *Event) {
			b.Publish("t", "echo", nil)
			b.Stats()
		}, "t", "e")
		done := make(chan struct{})
		go func() {
			defer close(done)
			for {
				if _, err := b.Post("t", "e", nil); err != nil {
					return
				}
			}
		}()
		waitFor(t, "some posts", func() bool { return b.Stats().Handled > uint64(round%5) })
		closed := make(chan error, 1)
		go func() { closed <- b.Close() }()
		select {
		case err := <-closed:
			require.NoError(t, err)
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close deadlocked with a poll's handler", round)
		}
		<-done
	}
}

func TestUniqueTimeoutForever(t *testing.T) {
	b := openBus(t, Options{Mode: Manual, Timeout: time.Duration(1<<63 - 1)})
	var runs atomic.Int64
	b.Register(func(*Event) { runs.Add(1) }, "t")
	for range 3 {
		_, err := b.PostUnique("t", "e", nil, "k")
		require.NoError(t, err)
	}
	assert.Equal(t, int64(1), runs.Load(), "a Timeout of for ever must not wrap into the past")
	assert.Equal(t, uint64(2), b.Stats().UniqueIgnored)
}

func TestPostErrorsNamePath(t *testing.T) {
	b := openBus(t, Options{Mode: Manual, Size: 1 << 16})
	_, err := b.Publish("s", "n", make([]byte, 1<<15))
	require.ErrorIs(t, err, ErrTooBig)
	assert.Contains(t, err.Error(), b.Path())
}

func TestObserverBus(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	worker := openBus(t, Options{Path: path, Mode: Manual})
	var runs atomic.Int64
	worker.Register(func(*Event) { runs.Add(1) }, "cache")
	next := worker.Ring().Next()
	readers := len(worker.Ring().Readers())

	obs := openBus(t, Options{Path: path, Mode: Manual, Observe: true, StartAt: Oldest})
	assert.Equal(t, next, obs.Ring().Next(), "an observer posts no started event")
	assert.Len(t, obs.Ring().Readers(), readers, "an observer takes no registry slot")
	var seen []string
	obs.Register(func(e *Event) { seen = append(seen, e.Name+":"+e.Unique) }, "cache")

	seq, err := obs.PublishUnique("cache", "refresh", nil, "k")
	require.NoError(t, err)
	_, err = obs.Poll()
	require.NoError(t, err)
	_, err = worker.Poll()
	require.NoError(t, err)
	assert.Equal(t, int64(1), runs.Load(), "the observer did not take the unique event from the worker")
	assert.Equal(t, []string{"refresh:k"}, seen)
	assert.Zero(t, obs.Stats().UniqueRun+obs.Stats().UniqueIgnored)

	st, keys, err := UniqueTable(obs.Ring())
	require.NoError(t, err)
	assert.Equal(t, uint64(1), st.Claims)
	require.Len(t, keys, 1)
	assert.Equal(t, seq, keys[0].Seq)
	assert.Equal(t, keyHash("k"), keys[0].Hash)
	assert.Equal(t, "k", keys[0].Key, "read from the winning event")

	next = obs.Ring().Next()
	require.NoError(t, obs.Close())
	assert.Equal(t, next, worker.Ring().Next(), "an observer posts no stopping event")
}

func TestDecodeExported(t *testing.T) {
	rec := make([]byte, encodedSize("s", "n", "u", []byte("data")))
	encode(rec, "s", "n", "u", []byte("data"), 7, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano(), false)
	e, err := Decode(42, rec)
	require.NoError(t, err)
	rec[len(rec)-1] = 'X' // the event owns its bytes
	assert.Equal(t, &Event{Source: "s", Name: "n", Unique: "u", Data: []byte("data"), PID: 7, Seq: 42,
		Posted: time.Unix(0, time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC).UnixNano())}, e)
	_, err = Decode(1, []byte("garbage"))
	assert.ErrorIs(t, err, ErrMalformed)
}

func TestMustExist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	_, err := Open(Options{Path: path, MustExist: true})
	require.ErrorIs(t, err, os.ErrNotExist)
	_, statErr := os.Stat(path)
	require.ErrorIs(t, statErr, os.ErrNotExist, "MustExist creates nothing")
	openBus(t, Options{Path: path, Mode: Manual})
	b := openBus(t, Options{Path: path, Mode: Manual, MustExist: true})
	assert.Equal(t, path, b.Path())
}

func TestDoneAfterCloseAndAfterTruncation(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	select {
	case <-b.Done():
		t.Fatal("Done closed before Close")
	default:
	}
	require.NoError(t, b.Close())
	<-b.Done()
	assert.NoError(t, b.Err())

	// A Wake-mode bus whose file is truncated under it stops with ErrFault
	// the next time it reads: here, as soon as a handler it is running
	// returns. (Asleep on an idle ring it has nothing to read, and notices
	// nothing.)
	path := filepath.Join(t.TempDir(), "bus")
	inHandler, release := make(chan struct{}), make(chan struct{})
	w := openBus(t, Options{Path: path, Setup: func(b *Bus) {
		b.Register(func(*Event) { close(inHandler); <-release }, "t", "block")
	}})
	tx := openBus(t, Options{Path: path, Mode: Manual})
	_, err := tx.Publish("t", "block", nil)
	require.NoError(t, err)
	<-inHandler
	_, err = tx.Publish("t", "next", nil) // something for the drain to read on
	require.NoError(t, err)
	require.NoError(t, os.Truncate(path, 4096))
	close(release)
	select {
	case <-w.Done():
		assert.ErrorIs(t, w.Err(), ring.ErrFault)
	case <-time.After(10 * time.Second):
		t.Fatal("the bus did not stop after its file was truncated")
	}
	// A Manual bus gets the fault from Poll; a post gets it as an error,
	// and so does a look at the unique table. Stats has no error to give:
	// with the header page gone too, it leaves Lag at zero.
	_, err = tx.Poll()
	assert.ErrorIs(t, err, ring.ErrFault)
	assert.Contains(t, err.Error(), path, "the error names the file")
	_, err = tx.Publish("t", "e", nil)
	assert.ErrorIs(t, err, ring.ErrFault)
	assert.Contains(t, err.Error(), path, "the error names the file")
}

// skipFaultOnAtomicsUnderRace skips a test whose truncation the process
// meets first in an atomic operation: under the race detector that fault
// kills the process (see raceDetector). CI runs these without -race.
func skipFaultOnAtomicsUnderRace(t *testing.T) {
	t.Helper()
	if raceDetector {
		t.Skip("a fault inside the race detector's atomics cannot be recovered; run without -race")
	}
}

// Unique and Stats on a truncated file: an error, and a zero Lag, instead
// of a crash.
func TestUniqueAndStatsOnTruncatedFile(t *testing.T) {
	skipFaultOnAtomicsUnderRace(t)
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Manual})
	require.NoError(t, os.Truncate(path, 4096))
	_, _, err := b.Unique()
	assert.ErrorIs(t, err, ring.ErrFault)
	require.NoError(t, os.Truncate(path, 0))
	assert.Zero(t, b.Stats().Lag)
}

// A Spin-mode bus whose file is truncated under it stops with ErrFault, as
// a Wake-mode bus does, instead of taking the process down with SIGBUS.
func TestSpinBusStopsOnTruncation(t *testing.T) {
	skipFaultOnAtomicsUnderRace(t)
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Spin, Setup: func(b *Bus) {
		b.Register(func(*Event) {}, Source, EventStarted)
	}})
	// Handled is added when a poll ends: the poller has read its own
	// "started" and gone back to spinning on the ring.
	waitFor(t, "the poller to handle its started event", func() bool { return b.Stats().Handled == 1 })
	require.NoError(t, os.Truncate(path, 4096))
	select {
	case <-b.Done():
		assert.ErrorIs(t, b.Err(), ring.ErrFault)
	case <-time.After(10 * time.Second):
		t.Fatal("the bus did not stop after its file was truncated")
	}
}

// A unique post whose probe of the key table faults (the file was truncated
// in the middle of the unique section) must not leave the table's lock
// held: the holder is this live process, so no other process could take it
// over, and every later unique post anywhere would fail.
func TestUniqueFaultInPostReleasesLock(t *testing.T) {
	skipFaultOnAtomicsUnderRace(t)
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Manual, Slots: 16, WaitMax: 50 * time.Millisecond})
	secs := b.Ring().Region().Sections()
	require.Greater(t, secs.UniqueSize, uint64(4096), "the key table spans more than one page")
	// The key's entry lies beyond the unique section's first page.
	require.Greater(t, (1+keyHash("users")%uint64(len(b.uniq.entries)-1))*shm.UniqueSlotSize, uint64(4096))

	require.NoError(t, os.Truncate(path, int64(secs.UniqueOff+4096)))
	_, err := b.PublishUnique("cache", "purge", nil, "users")
	require.ErrorIs(t, err, ring.ErrFault)
	held := b.uniq.hdr.lock.Load() // the lock word's page is still mapped
	require.NoError(t, os.Truncate(path, int64(secs.FileSize)))

	assert.Zero(t, held, "the faulted post left the unique table's lock held by pid %d", held>>32)
	_, err = b.PublishUnique("cache", "purge", nil, "groups")
	assert.NoError(t, err, "a unique post once the file is whole again")
}

// A unique post whose append faults (the data ring was truncated away)
// posts nothing, so its key is left as it was: the first post of the key
// that reaches the ring is its winner, not a follow-up of nothing.
func TestUniqueFaultInAppendUndoesEntry(t *testing.T) {
	skipFaultOnAtomicsUnderRace(t)
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Manual, Slots: 16, Timeout: time.Hour})
	var runs atomic.Int64
	b.Register(func(*Event) { runs.Add(1) }, "cache", "purge")
	secs := b.Ring().Region().Sections()

	require.NoError(t, os.Truncate(path, int64(secs.DataOff)))
	_, err := b.PublishUnique("cache", "purge", nil, "users")
	require.ErrorIs(t, err, ring.ErrFault)
	require.NoError(t, os.Truncate(path, int64(secs.FileSize)))

	_, err = b.PostUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	assert.Equal(t, int64(1), runs.Load(), "the first event of the key that reached the ring ran")
	_, keys, err := b.Unique()
	require.NoError(t, err)
	for _, k := range keys {
		assert.False(t, k.Posting, "key %x is still marked as being posted", k.Hash)
	}
}

// A unique post that fails before its event is in the ring (too big)
// leaves the key as it was: posting it again, smaller, makes the winner.
func TestUniqueFailedPostUndoesEntry(t *testing.T) {
	b := openBus(t, Options{Mode: Manual, Timeout: time.Hour, Size: 1 << 16})
	var runs atomic.Int64
	b.Register(func(*Event) { runs.Add(1) }, "cache", "purge")
	_, err := b.PostUnique("cache", "purge", make([]byte, 1<<16), "users")
	require.ErrorIs(t, err, ErrTooBig)
	_, err = b.PostUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	assert.Equal(t, int64(1), runs.Load())
	assert.Equal(t, uint64(1), b.Stats().UniqueRun)
}

// A process with no handler for a unique event takes no part in deciding
// it, and counts neither the winner nor its follow-up.
func TestUniqueNoHandlerCountsNoDecision(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	opts := Options{Path: path, Mode: Manual, Timeout: time.Hour}
	x, y := openBus(t, opts), openBus(t, opts)
	y.Register(func(*Event) {}, "t4")
	for _, data := range []string{"winner", "follow-up"} {
		_, err := x.PostUnique("t4", "ev", []byte(data), "key")
		require.NoError(t, err)
	}
	_, err := y.Poll()
	require.NoError(t, err)
	xs := x.Stats()
	assert.Zero(t, xs.UniqueRun+xs.UniqueIgnored, "x has no handler for t4/ev")
	assert.Equal(t, uint64(1), y.Stats().UniqueRun)
	assert.Equal(t, uint64(1), y.Stats().UniqueIgnored)
}

// The claim word of a winner is taken over by the winner a whole index
// later as soon as a process claims that one. A process that read the
// first into its batch while it was in the ring, and reaches it only after
// a slow handler, cannot know whether another process ran it: it skips it
// and counts it in UniqueStale, not as another process's run.
func TestUniqueWinnerPastItsClaimWordIsCountedStale(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bus")
	const slots = 16
	opts := Options{Path: path, Mode: Manual, Slots: slots, Timeout: time.Hour}
	poster := openBus(t, opts)
	other := openBus(t, opts)
	var otherRuns atomic.Int64
	other.Register(func(*Event) { otherRuns.Add(1) }, "other", "x")

	entered, release := make(chan struct{}), make(chan struct{})
	var purges atomic.Int64
	slow := openBus(t, Options{Path: path, Mode: Manual, Slots: slots, Timeout: time.Hour, Setup: func(b *Bus) {
		b.Register(func(*Event) { close(entered); <-release }, "t", "slow")
		b.Register(func(*Event) { purges.Add(1) }, "cache", "purge")
	}})
	_, err := slow.Poll() // past its own "started"
	require.NoError(t, err)
	_, err = other.Poll()
	require.NoError(t, err)

	_, err = poster.Publish("t", "slow", nil)
	require.NoError(t, err)
	winner, err := poster.PublishUnique("cache", "purge", nil, "users")
	require.NoError(t, err)
	done := make(chan error, 1)
	go func() { _, err := slow.Poll(); done <- err }() // copies both, then blocks in the first handler
	<-entered
	for poster.Ring().Next() < winner+slots {
		_, err := poster.Publish("filler", "tick", nil)
		require.NoError(t, err)
	}
	_, err = poster.PublishUnique("other", "x", nil, "k2") // seq winner+16: the same claim word
	require.NoError(t, err)
	_, err = other.Poll()
	require.NoError(t, err)
	require.Equal(t, int64(1), otherRuns.Load())
	close(release)
	require.NoError(t, <-done)

	st := slow.Stats()
	assert.Zero(t, purges.Load(), "run nowhere rather than possibly twice")
	assert.Equal(t, uint64(1), st.UniqueStale)
	assert.Zero(t, st.UniqueIgnored)
	assert.Zero(t, st.Lost, "the slow bus was not lapped: it had copied the winner")
}

// A unique post whose undo faults (the file was truncated between begin,
// which wrote the key's entry, and the undo of a failed append) still
// releases the table's lock: the holder is this live process, so nobody
// could take it over.
func TestUniqueFaultInUndoReleasesLock(t *testing.T) {
	skipFaultOnAtomicsUnderRace(t)
	path := filepath.Join(t.TempDir(), "bus")
	b := openBus(t, Options{Path: path, Mode: Manual, Slots: 16, Size: 1 << 16, WaitMax: 50 * time.Millisecond})
	secs := b.Ring().Region().Sections()
	require.Greater(t, secs.UniqueSize, uint64(4096), "the key table spans more than one page")
	require.Greater(t, (1+keyHash("users")%uint64(len(b.uniq.entries)-1))*shm.UniqueSlotSize, uint64(4096),
		"the key's entry lies beyond the page of the lock word")

	// Truncate the file to the lock word's page and back, over and over,
	// while posting an event too big for the ring: begin writes the key's
	// entry, the append fails at once (ErrTooBig), and the undo writes it
	// again, each of which may meet the truncation.
	var stop atomic.Bool
	toggled := make(chan struct{})
	go func() {
		defer close(toggled)
		for !stop.Load() {
			_ = os.Truncate(path, int64(secs.UniqueOff+4096))
			_ = os.Truncate(path, int64(secs.FileSize))
		}
	}()
	big := make([]byte, 1<<16)
	faults := 0
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline) && faults < 200; {
		_, err := b.PublishUnique("cache", "purge", big, "users")
		require.Error(t, err, "an event larger than the ring was posted")
		if errors.Is(err, ring.ErrFault) {
			faults++
		} else {
			require.ErrorIs(t, err, ErrTooBig)
		}
		// No post is in flight here: the lock must be free.
		require.Zero(t, b.uniq.hdr.lock.Load(), "a faulted unique post left the table's lock held (%d faults so far)", faults)
	}
	stop.Store(true)
	<-toggled
	require.NoError(t, os.Truncate(path, int64(secs.FileSize)))
	require.Positive(t, faults, "the truncations never met a post")
	_, err := b.PublishUnique("cache", "purge", nil, "groups")
	assert.NoError(t, err, "a unique post once the file is whole again")
}

// claimNeverCommitted claims a sequence number on b's ring, as a poster
// that died before its commit leaves one: seqTail is the first word of the
// control area (ring/layout.go).
func claimNeverCommitted(b *Bus) {
	(*atomic.Uint64)(unsafe.Pointer(&b.Ring().Region().Control()[0])).Add(1)
}

// A poster that dies between its claim and its commit holds the bus up for
// about WaitMax, in Spin mode as in Wake mode: the spinner, which looks at
// the claim counter only now and then, does so often enough that WaitMax,
// not WaitInterval, decides when the entry is skipped.
func TestDeadPosterSkippedAfterWaitMax(t *testing.T) {
	const waitMax, waitInterval = 50 * time.Millisecond, 5 * time.Second
	for _, mode := range []Mode{Wake, Spin} {
		t.Run(mode.String(), func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "bus")
			rx := openBus(t, Options{Path: path, Mode: mode, WaitMax: waitMax, WaitInterval: waitInterval})
			tx := openBus(t, Options{Path: path, Mode: Manual})
			got := make(chan time.Time, 1)
			rx.Register(func(e *Event) { got <- time.Now() }, "t")
			claimNeverCommitted(tx)
			start := time.Now()
			_, err := tx.Publish("t", "e", nil)
			require.NoError(t, err)
			select {
			case at := <-got:
				assert.Less(t, at.Sub(start), waitInterval, "skipped after WaitMax, not after WaitInterval")
			case <-time.After(2 * waitInterval):
				t.Fatal("the event after the dead entry was not handled")
			}
			assert.Equal(t, uint64(1), rx.Stats().Abandoned)
		})
	}
}

// A Spin-mode poller that has handled an event ends its drain at the next
// uncommitted entry without looking at the claim counter; the entry of a
// poster that died there is still skipped after WaitMax, and the events
// behind it are handled.
func TestSpinDeadPosterAfterAnEvent(t *testing.T) {
	const waitMax, waitInterval = 50 * time.Millisecond, 5 * time.Second
	path := filepath.Join(t.TempDir(), "bus")
	tx := openBus(t, Options{Path: path, Mode: Manual})
	_, err := tx.Publish("t", "before", nil)
	require.NoError(t, err)
	claimNeverCommitted(tx) // then an event behind it
	_, err = tx.Publish("t", "after", nil)
	require.NoError(t, err)

	got := make(chan string, 2)
	start := time.Now()
	rx := openBus(t, Options{Path: path, Mode: Spin, StartAt: Oldest, WaitMax: waitMax, WaitInterval: waitInterval,
		Setup: func(b *Bus) { b.Register(func(e *Event) { got <- e.Name }, "t") }})
	for _, want := range []string{"before", "after"} {
		select {
		case name := <-got:
			assert.Equal(t, want, name)
		case <-time.After(2 * waitInterval):
			t.Fatalf("%q was not handled", want)
		}
	}
	assert.Less(t, time.Since(start), waitInterval, "skipped after WaitMax, not after WaitInterval")
	assert.Equal(t, uint64(1), rx.Stats().Abandoned)
}

// TestHandleRecordSetsEveryField: the poll fills its reused Event field by
// field, so every field must be set for each record, whatever the event
// before it left there. A field added to Event and not set there fails.
func TestHandleRecordSetsEveryField(t *testing.T) {
	b := openBus(t, Options{Mode: Manual})
	var got Event
	b.Register(func(e *Event) { got = *e }, "src")

	// Leave a value in every field, as a local or unique event would.
	v := reflect.ValueOf(&b.ev).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString("stale")
		case reflect.Bool:
			f.SetBool(true)
		case reflect.Int:
			f.SetInt(-1)
		case reflect.Uint64:
			f.SetUint(1 << 60)
		case reflect.Slice:
			f.SetBytes([]byte("stale"))
		case reflect.Struct:
			f.Set(reflect.ValueOf(time.Unix(1, 0)))
		default:
			t.Fatalf("Event.%s: a field of kind %s this test cannot fill", v.Type().Field(i).Name, f.Kind())
		}
	}

	posted := time.Unix(0, 1_700_000_000_123_456_789)
	rec := make([]byte, encodedSize("src", "name", "", []byte("data")))
	encode(rec, "src", "name", "", []byte("data"), 42, posted.UnixNano(), false)
	b.handleRecord(ring.Record{Seq: 7, Data: rec})

	want := Event{Source: "src", Name: "name", Data: []byte("data"), PID: 42, Seq: 7, Posted: posted}
	assert.Equal(t, want, got)
}
