package main

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/internal/lines"
	"github.com/shmring/shmring/internal/proc"
	"github.com/shmring/shmring/shm"
)

// End-to-end tests: each runs the built shmctl binary against real rings
// under t.TempDir(), with buses in this process (and, where a second
// process is needed, the test binary re-executed as a helper) on the same
// files.

// shmctlBin is the binary TestMain builds.
var shmctlBin string

const (
	// e2eRoleEnv selects a helper role when the test binary runs as a child.
	e2eRoleEnv = "SHMCTL_TEST_ROLE"
	// e2eRingEnv is the helper's ring path.
	e2eRingEnv = "SHMCTL_TEST_RING"

	// e2eRunTimeout bounds one shmctl run that is expected to finish.
	e2eRunTimeout = 20 * time.Second
	// e2eWait bounds every wait for a condition (a line, a child).
	e2eWait = 20 * time.Second
)

func TestMain(m *testing.M) {
	if os.Getenv(e2eRoleEnv) != "" {
		os.Exit(m.Run()) // a helper child: only TestHelperProcess runs
	}
	os.Exit(e2eBuildAndRun(m))
}

func e2eBuildAndRun(m *testing.M) int {
	root := e2eModuleRoot()
	dir, err := os.MkdirTemp("", "shmctl-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "shmctl tests:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	shmctlBin = filepath.Join(dir, "shmctl")
	cmd := exec.Command("go", "build", "-o", shmctlBin, "./cmd/shmctl")
	cmd.Dir = root
	if out, err := cmd.CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "shmctl tests: go build ./cmd/shmctl: %v\n%s", err, out)
		return 1
	}
	return m.Run()
}

// e2eModuleRoot is the directory of go.mod; the package directory is cmd/shmctl.
func e2eModuleRoot() string {
	if out, err := exec.Command("go", "env", "GOMOD").Output(); err == nil {
		if gomod := strings.TrimSpace(string(out)); gomod != "" && gomod != os.DevNull {
			return filepath.Dir(gomod)
		}
	}
	abs, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		return filepath.Join("..", "..")
	}
	return abs
}

// TestHelperProcess is the body of the helper child: a reader that opens a
// bus on the ring named in its environment, says "ready" and blocks until
// its stdin closes (or it is killed).
func TestHelperProcess(t *testing.T) {
	if os.Getenv(e2eRoleEnv) == "pool" {
		helperPool()
	}
	if os.Getenv(e2eRoleEnv) != "reader" {
		return
	}
	bus, err := events.Open(events.Options{Path: os.Getenv(e2eRingEnv), Mode: events.Manual, MustExist: true})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(1)
	}
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin)
	_ = bus.Close()
	os.Exit(0)
}

// ---------------------------------------------------------------------------
// Running shmctl.

// runTool runs shmctl with args and returns its output and exit code.
func runTool(t *testing.T, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	return runToolStdin(t, "", args...)
}

// runToolStdin is runTool with stdin as the process's standard input.
func runToolStdin(t *testing.T, stdin string, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), e2eRunTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, shmctlBin, args...)
	cmd.Stdin = strings.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &errb
	cmd.WaitDelay = 2 * time.Second
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Errorf("shmctl %s: still running after %v (killed)\nstdout: %s\nstderr: %s", strings.Join(args, " "), e2eRunTimeout, out.String(), errb.String())
		return out.String(), errb.String(), -1
	}
	code = 0
	if err != nil {
		var ee *exec.ExitError
		if !errors.As(err, &ee) {
			t.Fatalf("shmctl %s: %v", strings.Join(args, " "), err)
		}
		code = ee.ExitCode()
	}
	return out.String(), errb.String(), code
}

// mustRunTool runs shmctl and requires exit 0.
func mustRunTool(t *testing.T, args ...string) string {
	t.Helper()
	out, errOut, code := runTool(t, args...)
	require.Equal(t, 0, code, "shmctl %s\nstdout: %s\nstderr: %s", strings.Join(args, " "), out, errOut)
	return out
}

// assertErrorLine checks a failure's stderr: exactly one line, starting with
// "shmctl: ", naming path (if not empty), with no trace of a panic.
func assertErrorLine(t *testing.T, stderr, path string, what string) {
	t.Helper()
	assertNoPanic(t, stderr, what)
	line := strings.TrimSuffix(stderr, "\n")
	assert.NotEmpty(t, line, "%s: no error message on stderr", what)
	assert.NotContains(t, line, "\n", "%s: stderr is not one line: %q", what, stderr)
	assert.True(t, strings.HasPrefix(line, "shmctl: "), "%s: stderr does not start with \"shmctl: \": %q", what, stderr)
	if path != "" {
		assert.Contains(t, line, path, "%s: the error does not name the path", what)
	}
}

// assertFaultLines checks the stderr of a following tool whose ring was
// truncated under it: its last line is the tool's error, naming the path.
// Before it, the bus may have logged the fault it met (when the truncation
// caught its poller awake): each such line is an events error naming the path.
func assertFaultLines(t *testing.T, stderr, path, what string) {
	t.Helper()
	lines := strings.Split(strings.TrimSuffix(stderr, "\n"), "\n")
	assertErrorLine(t, lines[len(lines)-1]+"\n", path, what)
	for _, l := range lines[:len(lines)-1] {
		assert.Contains(t, l, "ERROR events: ", "%s: a line that is neither the error nor the bus's log: %q", what, l)
		assert.Contains(t, l, path, "%s: the bus's log line does not name the path", what)
	}
	assertNoPanic(t, stderr, what)
}

func assertNoPanic(t *testing.T, s, what string) {
	t.Helper()
	assert.NotContains(t, s, "goroutine ", "%s: output has a goroutine trace", what)
	assert.NotContains(t, strings.ToLower(s), "panic", "%s: output mentions a panic", what)
}

// decodeJSONLines decodes one JSON object per non-empty line.
func decodeJSONLines(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal([]byte(line), &m), "line %q", line)
		objs = append(objs, m)
	}
	return objs
}

func assertKeys(t *testing.T, m map[string]any, what string, keys ...string) {
	t.Helper()
	for _, k := range keys {
		assert.Contains(t, m, k, "%s: key %q missing in %v", what, k, m)
	}
}

// ---------------------------------------------------------------------------
// Processes in the background.

// bgProcess is a child process whose output lines are collected as they come.
type bgProcess struct {
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	out    *lines.Buffer // stdout
	errOut *lines.Buffer // stderr
	done   chan struct{} // closed once both streams ended and the process is reaped
}

// startProcess starts name with args; the process is killed and reaped when the
// test ends.
func startProcess(t *testing.T, env []string, name string, args ...string) *bgProcess {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), env...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr, err := cmd.StderrPipe()
	require.NoError(t, err)
	stdin, err := cmd.StdinPipe()
	require.NoError(t, err)
	require.NoError(t, cmd.Start())
	p := &bgProcess{cmd: cmd, stdin: stdin, out: lines.New(), errOut: lines.New(), done: make(chan struct{})}
	go p.out.Scan(stdout)
	go p.errOut.Scan(stderr)
	go func() {
		<-p.out.Ended()
		<-p.errOut.Ended()
		_ = cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(p.kill)
	return p
}

// startTool starts shmctl in the background.
func startTool(t *testing.T, args ...string) *bgProcess {
	t.Helper()
	return startProcess(t, nil, shmctlBin, args...)
}

// startHelperReader starts the helper child as a reader of path and waits until
// its bus is open.
func startHelperReader(t *testing.T, path string) *bgProcess {
	t.Helper()
	p := startProcess(t, []string{e2eRoleEnv + "=reader", e2eRingEnv + "=" + path},
		os.Args[0], "-test.run=^TestHelperProcess$")
	_, ok := p.waitLine(e2eWait, func(l string) bool { return l == "ready" })
	require.True(t, ok, "helper reader never became ready; stderr: %s", p.stderrText())
	return p
}

// kill sends SIGKILL and waits until the process is reaped. The signal
// comes before stdin closes: a helper that saw its stdin end first would
// close its bus cleanly (freeing its reader slot), not die.
func (p *bgProcess) kill() {
	_ = p.cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	_ = p.stdin.Close()
}

// waitLine waits up to timeout for a stdout line, after those already
// consumed, that satisfies match; it consumes lines up to it.
func (p *bgProcess) waitLine(timeout time.Duration, match func(string) bool) (string, bool) {
	line, err := p.out.Next(match, timeout)
	return line, err == nil
}

// waitAnyLine is waitLine over stdout and stderr together, consuming nothing.
func (p *bgProcess) waitAnyLine(timeout time.Duration, match func(string) bool) (string, bool) {
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		// The channels before the lines: a line in between closes them.
		outChanged, errChanged := p.out.Changed(), p.errOut.Changed()
		ended := false
		select {
		case <-p.done: // every line is in: this is the last look
			ended = true
		default:
		}
		for _, l := range append(p.out.All(), p.errOut.All()...) {
			if match(l) {
				return l, true
			}
		}
		if ended {
			return "", false
		}
		select {
		case <-outChanged:
		case <-errChanged:
		case <-p.done:
		case <-timer.C:
			return "", false
		}
	}
}

func (p *bgProcess) stdoutLines() []string { return p.out.All() }

func (p *bgProcess) stderrText() string { return strings.Join(p.errOut.All(), "\n") }

// ---------------------------------------------------------------------------
// Rings and buses.

// Geometry of the rings the tests make.
const (
	e2eSlots       = 256
	e2eDataBytes   = 1 << 16
	e2eUniqueSlots = 32
)

// newTestRing creates an empty ring (created by this process) and returns its path.
func newTestRing(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "test.ring")
	r, err := shm.Create(path, shm.Options{Geometry: shm.Geometry{
		IndexSlots: e2eSlots, DataBytes: e2eDataBytes, UniqueSlots: e2eUniqueSlots,
	}})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	return path
}

// openTestBus opens a Manual bus on path (which must exist), closed at cleanup.
func openTestBus(t *testing.T, path string, opts events.Options) *events.Bus {
	t.Helper()
	opts.Path = path
	opts.Mode = events.Manual
	opts.MustExist = true
	b, err := events.Open(opts)
	require.NoError(t, err)
	t.Cleanup(func() { _ = b.Close() })
	return b
}

func publishEvent(t *testing.T, b *events.Bus, source, name string, data []byte) uint64 {
	t.Helper()
	seq, err := b.Publish(source, name, data)
	require.NoError(t, err)
	return seq
}

// eventRecorder collects clones of the events a handler sees.
type eventRecorder struct {
	mu  sync.Mutex
	evs []*events.Event
}

func (r *eventRecorder) handle(e *events.Event) {
	r.mu.Lock()
	r.evs = append(r.evs, e.Clone())
	r.mu.Unlock()
}

func (r *eventRecorder) bySeq(seq uint64) *events.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, e := range r.evs {
		if e.Seq == seq {
			return e
		}
	}
	return nil
}

// tailLine is one line of tail --json.
type tailLine struct {
	Seq        uint64  `json:"seq"`
	Time       string  `json:"time"`
	PID        int     `json:"pid"`
	Source     string  `json:"source"`
	Name       string  `json:"name"`
	Unique     *string `json:"unique"`
	FollowUp   bool    `json:"follow_up"`
	Data       *string `json:"data"`
	DataBase64 *string `json:"data_base64"`
}

func parseTailLines(t *testing.T, out string) []tailLine {
	t.Helper()
	var evs []tailLine
	for _, line := range strings.Split(out, "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		var e tailLine
		require.NoError(t, json.Unmarshal([]byte(line), &e), "tail line %q", line)
		evs = append(evs, e)
	}
	return evs
}

func strOrAbsent(p *string) string {
	if p == nil {
		return "<absent>"
	}
	return *p
}

// ---------------------------------------------------------------------------
// The tests.

func TestCreate(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()

	path := filepath.Join(dir, "a.ring")
	out := mustRunTool(t, "create", path, "--size", "65536", "--slots", "256", "--mode", "0640")
	assert.True(t, strings.HasPrefix(out, "created "+path), "stdout %q", out)
	fi, err := os.Stat(path)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o640), fi.Mode().Perm())
	h, err := shm.ReadHeader(path, shm.Options{})
	require.NoError(t, err)
	assert.Equal(t, uint32(256), h.Geometry.IndexSlots)
	assert.Equal(t, uint64(65536), h.Geometry.DataBytes)

	// Defaults: mode 0600, the default geometry.
	def := filepath.Join(dir, "default.ring")
	out = mustRunTool(t, "create", def)
	assert.True(t, strings.HasPrefix(out, "created "+def), "stdout %q", out)
	fi, err = os.Stat(def)
	require.NoError(t, err)
	assert.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
	h, err = shm.ReadHeader(def, shm.Options{})
	require.NoError(t, err)
	assert.Equal(t, uint32(shm.DefaultIndexSlots), h.Geometry.IndexSlots)
	assert.Equal(t, uint64(shm.DefaultDataBytes), h.Geometry.DataBytes)

	// An existing path is refused and left alone.
	before, err := os.ReadFile(path)
	require.NoError(t, err)
	out, errOut, code := runTool(t, "create", path, "--size", "4096", "--slots", "16")
	assert.Equal(t, 1, code, "create over an existing ring; stdout %q", out)
	assertErrorLine(t, errOut, path, "create over an existing ring")
	after, err := os.ReadFile(path)
	require.NoError(t, err)
	assert.True(t, bytes.Equal(before, after), "create over an existing ring changed it")

	// An impossible geometry fails without leaving a file.
	bad := filepath.Join(dir, "bad.ring")
	_, errOut, code = runTool(t, "create", bad, "--size", "1000")
	assert.NotEqual(t, 0, code, "create --size 1000 (not a power of two)")
	assertNoPanic(t, errOut, "create --size 1000")
	assert.True(t, strings.HasPrefix(errOut, "shmctl: "), "create --size 1000: stderr %q", errOut)
	assert.NoFileExists(t, bad)
}

type infoDoc struct {
	Path     string `json:"path"`
	Version  int    `json:"version"`
	Geometry struct {
		IndexSlots  uint64 `json:"index_slots"`
		DataBytes   uint64 `json:"data_bytes"`
		ReaderSlots uint64 `json:"reader_slots"`
		UniqueSlots uint64 `json:"unique_slots"`
		MaxRecord   uint64 `json:"max_record"`
	} `json:"geometry"`
	CreatedAt  string  `json:"created_at"`
	CreatorPID int     `json:"creator_pid"`
	PIDNS      uint32  `json:"pid_namespace"`
	Next       uint64  `json:"next"`
	Oldest     uint64  `json:"oldest"`
	Held       uint64  `json:"held"`
	Fill       float64 `json:"fill"`
	Counters   struct {
		Posted      uint64 `json:"posted"`
		Abandoned   uint64 `json:"abandoned"`
		TooBig      uint64 `json:"too_big"`
		LateCommits uint64 `json:"late_commits"`
		Waiters     uint64 `json:"waiters"`
	} `json:"counters"`
	Readers struct {
		Live int `json:"live"`
		Dead int `json:"dead"`
	} `json:"readers"`
	Unique struct {
		Entries int    `json:"entries"`
		Used    int    `json:"used"`
		Live    int    `json:"live"`
		Claims  uint64 `json:"claims"`
		Full    uint64 `json:"full"`
		Steals  uint64 `json:"steals"`
		Keys    []struct {
			Hash        json.RawMessage `json:"hash"`
			Key         string          `json:"key"`
			Seq         uint64          `json:"seq"`
			PID         int             `json:"pid"`
			RemainingMS float64         `json:"remaining_ms"`
		} `json:"keys"`
	} `json:"unique"`
}

func infoOf(t *testing.T, path string) (infoDoc, map[string]any) {
	t.Helper()
	out := mustRunTool(t, "info", path, "--json")
	var info infoDoc
	require.NoError(t, json.Unmarshal([]byte(out), &info), "info --json: %s", out)
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &raw))
	return info, raw
}

func TestInfo(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{Timeout: time.Minute}) // seq 0: started
	var rec eventRecorder
	bus.Register(rec.handle, "jobs")
	_, err := bus.PostUnique("jobs", "run", []byte("x"), "key-1") // seq 1, claimed by this process
	require.NoError(t, err)
	require.NotNil(t, rec.bySeq(1), "the bus did not run its own unique event")
	publishEvent(t, bus, "app", "a", []byte("one")) // seq 2
	publishEvent(t, bus, "app", "b", []byte("two")) // seq 3
	_, err = bus.Publish("app", "big", make([]byte, e2eDataBytes/2))
	require.ErrorIs(t, err, events.ErrTooBig)

	info, raw := infoOf(t, path)
	assertKeys(t, raw, "info", "path", "version", "geometry", "created_at", "creator_pid",
		"next", "oldest", "held", "fill", "counters", "readers", "unique")
	for _, sub := range []struct {
		key  string
		keys []string
	}{
		{"geometry", []string{"index_slots", "data_bytes", "reader_slots", "unique_slots", "max_record"}},
		{"counters", []string{"posted", "abandoned", "too_big", "late_commits", "waiters"}},
		{"readers", []string{"live", "dead"}},
		{"unique", []string{"entries", "used", "live", "claims", "full", "steals", "keys"}},
	} {
		m, ok := raw[sub.key].(map[string]any)
		if assert.True(t, ok, "info %q is not an object: %v", sub.key, raw[sub.key]) {
			assertKeys(t, m, "info "+sub.key, sub.keys...)
		}
	}

	assert.Equal(t, path, info.Path)
	assert.Equal(t, shm.LayoutVersion, info.Version)
	assert.Equal(t, uint64(e2eSlots), info.Geometry.IndexSlots)
	assert.Equal(t, uint64(e2eDataBytes), info.Geometry.DataBytes)
	assert.Equal(t, uint64(shm.DefaultReaderSlots), info.Geometry.ReaderSlots)
	assert.Equal(t, uint64(e2eUniqueSlots), info.Geometry.UniqueSlots)
	assert.Equal(t, uint64(e2eDataBytes/4), info.Geometry.MaxRecord)
	created, err := time.Parse(time.RFC3339, info.CreatedAt)
	if assert.NoError(t, err, "created_at %q", info.CreatedAt) {
		assert.WithinDuration(t, time.Now(), created, 5*time.Minute)
	}
	assert.Equal(t, os.Getpid(), info.CreatorPID)
	assert.Equal(t, proc.PIDNamespace(), info.PIDNS)
	assert.Equal(t, uint64(4), info.Next, "info must not post to the ring")
	assert.Equal(t, uint64(0), info.Oldest)
	assert.Equal(t, uint64(4), info.Held)
	assert.Greater(t, info.Fill, 0.0)
	assert.LessOrEqual(t, info.Fill, 1.0)
	assert.Equal(t, uint64(4), info.Counters.Posted)
	assert.Equal(t, uint64(0), info.Counters.Abandoned)
	assert.Equal(t, uint64(1), info.Counters.TooBig)
	assert.Equal(t, uint64(0), info.Counters.LateCommits)
	assert.Equal(t, uint64(0), info.Counters.Waiters)
	assert.Equal(t, 1, info.Readers.Live)
	assert.Equal(t, 0, info.Readers.Dead)
	assert.Equal(t, e2eUniqueSlots-1, info.Unique.Entries)
	assert.Equal(t, 1, info.Unique.Used)
	assert.Equal(t, 1, info.Unique.Live)
	assert.Equal(t, uint64(1), info.Unique.Claims)
	assert.Equal(t, uint64(0), info.Unique.Full)
	assert.Equal(t, uint64(0), info.Unique.Steals)
	if assert.Len(t, info.Unique.Keys, 1) {
		k := info.Unique.Keys[0]
		assert.NotEmpty(t, k.Hash)
		assert.Equal(t, "key-1", k.Key, "the key's text, from its event still in the ring")
		assert.Equal(t, uint64(1), k.Seq)
		assert.Equal(t, os.Getpid(), k.PID)
		assert.Greater(t, k.RemainingMS, 0.0)
		assert.LessOrEqual(t, k.RemainingMS, float64(time.Minute/time.Millisecond))
	}

	// Text.
	out := mustRunTool(t, "info", path)
	assert.Contains(t, out, path)
	assert.Regexp(t, `(?i)next\D{0,30}\b4\b`, out, "text info does not show the next sequence (4)")
	assert.Regexp(t, `key "key-1"\s+seq 1, pid \d+`, out, "text info names the live key")
}

type readerDoc struct {
	Slot      int    `json:"slot"`
	PID       int    `json:"pid"`
	Alive     bool   `json:"alive"`
	Cursor    uint64 `json:"cursor"`
	Lag       uint64 `json:"lag"`
	Received  uint64 `json:"received"`
	Lost      uint64 `json:"lost"`
	Abandoned uint64 `json:"abandoned"`
	Corrupt   uint64 `json:"corrupt"`
	LastSeen  any    `json:"last_seen"`
	Waiting   any    `json:"waiting"`
}

func readersOf(t *testing.T, path string) ([]readerDoc, []map[string]any) {
	t.Helper()
	out := mustRunTool(t, "readers", path, "--json")
	var rs []readerDoc
	require.NoError(t, json.Unmarshal([]byte(out), &rs), "readers --json: %s", out)
	var raw []map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &raw))
	return rs, raw
}

func TestReaders(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{})
	publishEvent(t, bus, "app", "a", []byte("1"))
	_, err := bus.Poll()
	require.NoError(t, err)
	publishEvent(t, bus, "app", "b", []byte("2")) // not yet polled

	child := startHelperReader(t, path)
	childPID := child.cmd.Process.Pid
	child.kill()

	rs, raw := readersOf(t, path)
	for i, m := range raw {
		assertKeys(t, m, fmt.Sprintf("readers[%d]", i), "slot", "pid", "alive", "cursor", "lag",
			"received", "lost", "abandoned", "corrupt", "last_seen", "waiting")
	}
	var mine, dead *readerDoc
	for i := range rs {
		switch rs[i].PID {
		case os.Getpid():
			mine = &rs[i]
		case childPID:
			dead = &rs[i]
		}
	}
	if assert.NotNil(t, mine, "no reader with this process's pid %d in %+v", os.Getpid(), rs) {
		assert.True(t, mine.Alive)
		assert.Equal(t, bus.Cursor(), mine.Cursor)
		assert.Equal(t, bus.Ring().Next()-bus.Cursor(), mine.Lag)
		assert.Equal(t, uint64(2), mine.Received) // started, app/a
		assert.Equal(t, uint64(0), mine.Lost)
		assert.Equal(t, uint64(0), mine.Abandoned)
		assert.Equal(t, uint64(0), mine.Corrupt)
	}
	if assert.NotNil(t, dead, "no reader with the dead child's pid %d in %+v", childPID, rs) {
		assert.False(t, dead.Alive)
	}

	info, _ := infoOf(t, path)
	assert.Equal(t, 1, info.Readers.Live)
	assert.Equal(t, 1, info.Readers.Dead)

	out := mustRunTool(t, "readers", path)
	assert.Contains(t, out, strconv.Itoa(os.Getpid()))
	assert.Contains(t, out, strconv.Itoa(childPID))
}

func TestTail(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{}) // seq 0: shmring/started
	s1 := publishEvent(t, bus, "app", "a", []byte("one"))
	s2 := publishEvent(t, bus, "app", "b", []byte("two"))
	s3 := publishEvent(t, bus, "other", "a", []byte("three"))
	bin := []byte{0xff, 0x00, 0xfe, 'x'}
	s4 := publishEvent(t, bus, "bin", "blob", bin)

	out := mustRunTool(t, "tail", path, "--from", "oldest", "--json")
	evs := parseTailLines(t, out)
	require.Len(t, evs, 5, "tail --from oldest --json:\n%s", out)
	assert.Equal(t, uint64(0), evs[0].Seq)
	assert.Equal(t, events.Source, evs[0].Source)
	assert.Equal(t, events.EventStarted, evs[0].Name)
	assert.Equal(t, os.Getpid(), evs[0].PID)
	want := []struct {
		seq          uint64
		source, name string
		data         string
	}{{s1, "app", "a", "one"}, {s2, "app", "b", "two"}, {s3, "other", "a", "three"}}
	for i, w := range want {
		e := evs[i+1]
		assert.Equal(t, w.seq, e.Seq, "event %d", i+1)
		assert.Equal(t, w.source, e.Source, "event %d", i+1)
		assert.Equal(t, w.name, e.Name, "event %d", i+1)
		assert.Equal(t, os.Getpid(), e.PID, "event %d", i+1)
		assert.Equal(t, w.data, strOrAbsent(e.Data), "event %d", i+1)
		assert.Nil(t, e.DataBase64, "event %d: text data as base64", i+1)
		assert.Nil(t, e.Unique, "event %d: unique should be omitted", i+1)
		ts, err := time.Parse(time.RFC3339Nano, e.Time)
		if assert.NoError(t, err, "event %d time %q", i+1, e.Time) {
			assert.WithinDuration(t, time.Now(), ts, 5*time.Minute)
		}
	}
	for i, m := range decodeJSONLines(t, out) {
		assertKeys(t, m, fmt.Sprintf("tail line %d", i), "seq", "time", "pid", "source", "name")
		assert.NotContains(t, m, "unique", "tail line %d", i)
	}
	// Binary data.
	assert.Equal(t, s4, evs[4].Seq)
	assert.Nil(t, evs[4].Data, "binary data given as text: %q", strOrAbsent(evs[4].Data))
	assert.Equal(t, "/wD+eA==", strOrAbsent(evs[4].DataBase64))

	// --from SEQ.
	evs = parseTailLines(t, mustRunTool(t, "tail", path, "--from", strconv.FormatUint(s2, 10), "--json"))
	var seqs []uint64
	for _, e := range evs {
		seqs = append(seqs, e.Seq)
	}
	assert.Equal(t, []uint64{s2, s3, s4}, seqs, "tail --from %d", s2)

	// Default --from latest: nothing old.
	out = mustRunTool(t, "tail", path, "--json")
	assert.Empty(t, strings.TrimSpace(out), "tail without --from printed old events")

	// Filters.
	filtered := func(args ...string) []uint64 {
		t.Helper()
		evs := parseTailLines(t, mustRunTool(t, append([]string{"tail", path, "--from", "oldest", "--json"}, args...)...))
		var seqs []uint64
		for _, e := range evs {
			seqs = append(seqs, e.Seq)
		}
		return seqs
	}
	assert.Equal(t, []uint64{s1, s2}, filtered("--source", "app"), "--source app")
	assert.Equal(t, []uint64{s1, s3}, filtered("--name", "a"), "--name a")
	assert.Equal(t, []uint64{s2}, filtered("--source", "app", "--name", "b"), "--source app --name b")
	assert.Empty(t, filtered("--source", "nobody"), "--source nobody")

	// UTF-8 text with line breaks and tabs is still text.
	text := "{\"key\":\"users\"}\nline two\tend\n"
	s5 := publishEvent(t, bus, "txt", "multi", []byte(text))
	evs = parseTailLines(t, mustRunTool(t, "tail", path, "--from", "oldest", "--json", "--source", "txt"))
	if assert.Len(t, evs, 1) {
		assert.Equal(t, s5, evs[0].Seq)
		assert.Equal(t, text, strOrAbsent(evs[0].Data), "UTF-8 text with newlines should be \"data\", got data_base64 %s", strOrAbsent(evs[0].DataBase64))
	}

	// Text output.
	out = mustRunTool(t, "tail", path, "--from", "oldest")
	assert.Contains(t, out, "app")
	assert.Contains(t, out, "three")

	// tail only watches: nothing posted, no reader slot taken.
	info, _ := infoOf(t, path)
	assert.Equal(t, s5+1, info.Next, "tail posted to the ring")
	assert.Equal(t, 1, info.Readers.Live+info.Readers.Dead, "tail left a reader slot behind")
}

func TestTailFollow(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{})
	publishEvent(t, bus, "app", "old", []byte("old-data"))

	p := startTool(t, "tail", path, "--follow", "--json")
	isPing := func(l string) bool { return strings.Contains(l, "ping-") }
	// tail --follow starts at the newest event whenever it gets going: post
	// until it shows one.
	deadline := time.Now().Add(e2eWait)
	var first string
	for i := 0; first == ""; i++ {
		require.True(t, time.Now().Before(deadline), "tail --follow printed no event posted after it started; stdout %q, stderr %q", p.stdoutLines(), p.stderrText())
		publishEvent(t, bus, "app", "ping", []byte(fmt.Sprintf("ping-%d", i)))
		first, _ = p.waitLine(200*time.Millisecond, isPing)
	}
	var e tailLine
	require.NoError(t, json.Unmarshal([]byte(first), &e), "line %q", first)
	assert.Equal(t, "app", e.Source)
	assert.Equal(t, "ping", e.Name)
	assert.Equal(t, os.Getpid(), e.PID)

	// And it keeps following.
	seq := publishEvent(t, bus, "app", "after", []byte("after-data"))
	line, ok := p.waitLine(e2eWait, func(l string) bool { return strings.Contains(l, "after-data") })
	require.True(t, ok, "tail --follow missed an event; stdout %q, stderr %q", p.stdoutLines(), p.stderrText())
	require.NoError(t, json.Unmarshal([]byte(line), &e))
	assert.Equal(t, seq, e.Seq)
	assert.Equal(t, "after", e.Name)

	var last uint64
	for i, l := range p.stdoutLines() {
		assert.NotContains(t, l, "old-data", "tail --follow (from latest) printed an old event")
		var e tailLine
		if assert.NoError(t, json.Unmarshal([]byte(l), &e), "line %q", l) && i > 0 {
			assert.Greater(t, e.Seq, last, "tail --follow out of order")
		}
		last = e.Seq
	}
}

func TestTailDoesNotClaimUnique(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	poster := openTestBus(t, path, events.Options{Timeout: time.Minute}) // no handlers: does not compete
	worker := openTestBus(t, path, events.Options{Timeout: time.Minute})
	var rec eventRecorder
	worker.Register(rec.handle, "jobs")
	from := poster.Ring().Next()

	p := startTool(t, "tail", path, "--follow", "--json", "--from", strconv.FormatUint(from, 10))
	seq, err := poster.PublishUnique("jobs", "run", []byte("payload"), "key-1")
	require.NoError(t, err)

	line, ok := p.waitLine(e2eWait, func(l string) bool { return strings.Contains(l, "payload") })
	require.True(t, ok, "tail --follow did not show the unique event; stdout %q, stderr %q", p.stdoutLines(), p.stderrText())
	var e tailLine
	require.NoError(t, json.Unmarshal([]byte(line), &e))
	assert.Equal(t, seq, e.Seq)
	assert.Equal(t, "key-1", strOrAbsent(e.Unique))
	assert.Equal(t, "payload", strOrAbsent(e.Data))

	// A follow-up within the timeout is marked as one.
	followUp, err := poster.PublishUnique("jobs", "run", []byte("again"), "key-1")
	require.NoError(t, err)

	// A one-shot tail sees both.
	evs := parseTailLines(t, mustRunTool(t, "tail", path, "--from", "oldest", "--json", "--source", "jobs"))
	if assert.Len(t, evs, 2, "one-shot tail") {
		assert.Equal(t, "key-1", strOrAbsent(evs[0].Unique))
		assert.False(t, evs[0].FollowUp)
		assert.Equal(t, followUp, evs[1].Seq)
		assert.True(t, evs[1].FollowUp)
	}
	out := mustRunTool(t, "tail", path, "--from", strconv.FormatUint(followUp, 10), "--source", "jobs")
	assert.Contains(t, out, `unique="key-1" follow-up "again"`)

	// Both tails have seen it; the worker still runs it.
	_, err = worker.Poll()
	require.NoError(t, err)
	got := rec.bySeq(seq)
	require.NotNil(t, got, "the worker did not run the unique event after tail saw it (stats %+v)", worker.Stats())
	assert.Equal(t, "key-1", got.Unique)
	assert.Equal(t, uint64(1), worker.Stats().UniqueRun)
	assert.Equal(t, uint64(1), worker.Stats().UniqueIgnored, "the follow-up")
}

func TestPost(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{Timeout: time.Minute})
	var rec eventRecorder
	bus.Register(rec.handle, "cli")

	seqOf := func(out string) uint64 {
		t.Helper()
		require.Regexp(t, `^\d+\n?$`, out, "post must print its sequence number alone")
		seq, err := strconv.ParseUint(strings.TrimSpace(out), 10, 64)
		require.NoError(t, err)
		return seq
	}
	poll := func() {
		t.Helper()
		_, err := bus.Poll()
		require.NoError(t, err)
	}

	// DATA from the argument.
	next := bus.Ring().Next()
	seq := seqOf(mustRunTool(t, "post", path, "cli", "hello", "arg data"))
	assert.Equal(t, next, seq, "post's event is the next in the ring (post posts nothing else)")
	poll()
	e := rec.bySeq(seq)
	require.NotNil(t, e, "the bus did not receive the posted event")
	assert.Equal(t, "cli", e.Source)
	assert.Equal(t, "hello", e.Name)
	assert.Equal(t, "arg data", string(e.Data))
	assert.Empty(t, e.Unique)
	assert.NotZero(t, e.PID)
	assert.NotEqual(t, os.Getpid(), e.PID)

	// DATA from stdin, byte for byte.
	in := "line one\nline two\n\x00\xff"
	out, errOut, code := runToolStdin(t, in, "post", path, "cli", "piped", "-")
	require.Equal(t, 0, code, "post -: stderr %q", errOut)
	seq = seqOf(out)
	poll()
	e = rec.bySeq(seq)
	require.NotNil(t, e)
	assert.Equal(t, "piped", e.Name)
	assert.Equal(t, in, string(e.Data))

	// No DATA.
	seq = seqOf(mustRunTool(t, "post", path, "cli", "empty"))
	poll()
	e = rec.bySeq(seq)
	require.NotNil(t, e)
	assert.Empty(t, e.Data)

	// --unique: the bus's handler competes for it and wins.
	seq = seqOf(mustRunTool(t, "post", path, "cli", "job", "work", "--unique", "key-7"))
	poll()
	e = rec.bySeq(seq)
	require.NotNil(t, e, "the unique event did not run in the only process with a handler")
	assert.Equal(t, "key-7", e.Unique)
	assert.Equal(t, "work", string(e.Data))
	assert.Equal(t, uint64(1), bus.Stats().UniqueRun)

	// --timeout: the poster of a winner sets how long its key lasts.
	seqOf(mustRunTool(t, "post", path, "cli", "job", "--unique", "key-8", "--timeout", "1h"))
	_, keys, err := bus.Unique()
	require.NoError(t, err)
	var k8 *events.UniqueKey
	for i := range keys {
		if keys[i].Key == "key-8" {
			k8 = &keys[i]
		}
	}
	require.NotNil(t, k8, "key-8 is live: %+v", keys)
	assert.Greater(t, k8.Remaining, 59*time.Minute)
	_, errOut, code = runTool(t, "post", path, "cli", "job", "--unique", "key-9", "--timeout", "0s")
	assert.Equal(t, 2, code, "a zero --timeout is a usage error: %s", errOut)

	// An event larger than the ring takes is refused, with one line.
	next = bus.Ring().Next()
	out, errOut, code = runToolStdin(t, strings.Repeat("x", e2eDataBytes/2), "post", path, "cli", "big", "-")
	assert.Equal(t, 1, code, "post of a too-big event; stdout %q", out)
	assertErrorLine(t, errOut, path, "post of a too-big event")
	assert.Equal(t, next, bus.Ring().Next(), "a refused post took a sequence number")

	// A missing path is an error, and stays missing.
	missing := filepath.Join(t.TempDir(), "missing.ring")
	out, errOut, code = runTool(t, "post", missing, "cli", "hello", "x")
	assert.Equal(t, 1, code, "post to a missing ring; stdout %q", out)
	assertErrorLine(t, errOut, missing, "post to a missing ring")
	assert.NoFileExists(t, missing, "post created the missing ring")
}

// damageRecord flips one byte of the data of committed record seq. It reads
// the byte maps of shm/layout.go and ring/layout.go: the index word holds
// state (bits 62-63), lap (bits P-61) and the position's low P bits; the
// full position comes back from dataTail; the record starts with an 8-byte
// header whose first 4 bytes are its length.
func damageRecord(t *testing.T, path string, seq uint64) {
	t.Helper()
	r, err := shm.Open(path, shm.Options{})
	require.NoError(t, err)
	defer r.Close()
	g := r.Geometry()
	idx := r.Index()
	off := (seq % uint64(g.IndexSlots)) * shm.IndexEntrySize
	le := binary.LittleEndian
	word := le.Uint64(idx[off:])
	p := g.PositionBits()
	lapMask := uint64(1)<<(shm.IndexWordBits-p) - 1
	require.Equal(t, (seq/uint64(g.IndexSlots))&lapMask, word>>p&lapMask, "index entry holds another lap")
	require.Equal(t, uint64(2), word>>62, "record %d is not committed", seq)
	dataTail := le.Uint64(r.Control()[128:]) // ring/layout.go: dataTail at control offset 128
	posMask := uint64(1)<<p - 1
	pos := dataTail - (dataTail-word)&posMask
	data := r.Data()
	start := pos % g.DataBytes
	length := le.Uint32(data[start:])
	require.NotZero(t, length)
	data[start+shm.RecordHeaderSize+uint64(length)/2] ^= 0x5a
}

func TestVerify(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{})
	for i := range 5 {
		publishEvent(t, bus, "app", "e", []byte(fmt.Sprintf("record number %d with some bytes", i)))
	}
	require.NoError(t, bus.Close())

	out := mustRunTool(t, "verify", path)
	assert.Contains(t, strings.ToLower(out), "ok")
	out = mustRunTool(t, "verify", path, "--json")
	assert.True(t, isJSONOutput(out), "verify --json: %q", out)

	damageRecord(t, path, 3)
	out, errOut, code := runTool(t, "verify", path)
	assert.Equal(t, 1, code, "verify on a damaged ring; stdout %q stderr %q", out, errOut)
	assertNoPanic(t, out+errOut, "verify")
	assert.Contains(t, strings.ToLower(out+errOut), "checksum", "verify does not name the problem")
	if errOut != "" {
		assertErrorLine(t, errOut, "", "verify on a damaged ring")
	}

	out, errOut, code = runTool(t, "verify", path, "--json")
	assert.Equal(t, 1, code, "verify --json on a damaged ring; stdout %q stderr %q", out, errOut)
	assert.True(t, isJSONOutput(out), "verify --json: %q", out)
	assert.Contains(t, strings.ToLower(out+errOut), "checksum")
	var rep struct {
		Path     string `json:"path"`
		Checked  int    `json:"checked"`
		Problems []struct {
			Where string `json:"where"`
			What  string `json:"what"`
		} `json:"problems"`
	}
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, path, rep.Path)
	require.Len(t, rep.Problems, 1)
	assert.Contains(t, rep.Problems[0].Where, "index entry")
	assert.Contains(t, rep.Problems[0].What, "checksum")
}

// isJSONOutput reports whether out is one JSON value or one per line.
func isJSONOutput(out string) bool {
	out = strings.TrimSpace(out)
	if out == "" {
		return false
	}
	if json.Valid([]byte(out)) {
		return true
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" && !json.Valid([]byte(l)) {
			return false
		}
	}
	return true
}

func TestStats(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{})

	// A steady producer while stats runs.
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var posted atomic.Uint64
	wg.Add(1)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(2 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				if _, err := bus.Publish("load", "x", []byte("payload")); err == nil {
					posted.Add(1)
				}
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	out := mustRunTool(t, "stats", path, "--interval", "200ms", "--count", "3", "--json")
	ticks := decodeJSONLines(t, out)
	require.Len(t, ticks, 3, "stats --count 3 --json:\n%s", out)
	anyPosted := false
	for i, m := range ticks {
		assertKeys(t, m, fmt.Sprintf("stats tick %d", i), "time", "posted_per_s", "lost_per_s", "readers")
		if v, ok := m["posted_per_s"].(float64); ok && v > 0 {
			anyPosted = true
		}
		_, ok := m["lost_per_s"].(float64)
		assert.True(t, ok, "lost_per_s is not a number: %v", m["lost_per_s"])
		rs, ok := m["readers"].([]any)
		if !assert.True(t, ok, "readers is not an array: %v", m["readers"]) {
			continue
		}
		found := false
		for _, r := range rs {
			rm, ok := r.(map[string]any)
			if !assert.True(t, ok) {
				continue
			}
			assertKeys(t, rm, "stats reader", "pid", "lag")
			if pid, _ := rm["pid"].(float64); int(pid) == os.Getpid() {
				found = true
			}
		}
		assert.True(t, found, "stats tick %d does not list this process's reader: %v", i, rs)
	}
	assert.True(t, anyPosted, "no tick shows posted_per_s > 0 while %d events were posted:\n%s", posted.Load(), out)

	out = mustRunTool(t, "stats", path, "--interval", "200ms", "--count", "2")
	lines := 0
	for _, l := range strings.Split(out, "\n") {
		if strings.TrimSpace(l) != "" {
			lines++
		}
	}
	assert.Equal(t, 2, lines, "stats --count 2 (piped) should print one line per tick:\n%s", out)
}

func TestServe(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	bus := openTestBus(t, path, events.Options{})
	publishEvent(t, bus, "app", "a", []byte("1"))

	p := startTool(t, "serve", path, "--addr", "127.0.0.1:0")
	re := regexp.MustCompile(`serving (http://\S+)`)
	line, ok := p.waitAnyLine(e2eWait, re.MatchString)
	require.True(t, ok, "serve printed no \"serving http://\" line; stdout %q, stderr %q", p.stdoutLines(), p.stderrText())
	base := strings.TrimRight(re.FindStringSubmatch(line)[1], "/")

	client := &http.Client{Timeout: 10 * time.Second}
	get := func(p string) (int, string, string) {
		t.Helper()
		resp, err := client.Get(base + p)
		require.NoError(t, err)
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		require.NoError(t, err)
		return resp.StatusCode, resp.Header.Get("Content-Type"), string(body)
	}

	code, _, body := get("/metrics")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, body, "shmring_posted_total")
	assert.Regexp(t, `(?m)^shmring_posted_total(\{[^}]*\})? 2(\.0+)?$`, body, "posted total should be 2 (started, app/a)")

	code, ctype, body := get("/status")
	assert.Equal(t, http.StatusOK, code)
	assert.Contains(t, ctype, "json")
	var status struct {
		Info    infoDoc     `json:"info"`
		Readers []readerDoc `json:"readers"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &status), "/status: %s", body)
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(body), &raw))
	assertKeys(t, raw, "/status", "info", "readers")
	assert.Equal(t, path, status.Info.Path)
	assert.Equal(t, uint64(e2eSlots), status.Info.Geometry.IndexSlots)
	assert.Equal(t, uint64(2), status.Info.Next)
	found := false
	for _, r := range status.Readers {
		if r.PID == os.Getpid() {
			found = true
			assert.True(t, r.Alive)
		}
	}
	assert.True(t, found, "/status readers lack this process: %+v", status.Readers)

	// Live numbers: a later event shows.
	publishEvent(t, bus, "app", "b", []byte("2"))
	_, _, body = get("/status")
	require.NoError(t, json.Unmarshal([]byte(body), &status))
	assert.Equal(t, uint64(3), status.Info.Next)
}

func TestRm(t *testing.T) {
	t.Parallel()

	t.Run("live reader in another process", func(t *testing.T) {
		t.Parallel()
		path := newTestRing(t)
		child := startHelperReader(t, path)
		out, errOut, code := runTool(t, "rm", path)
		assert.Equal(t, 1, code, "rm with a live reader; stdout %q", out)
		assertErrorLine(t, errOut, path, "rm with a live reader")
		assert.Contains(t, strings.ToLower(errOut), "live")
		assert.Contains(t, strings.ToLower(errOut), "reader")
		assert.FileExists(t, path)

		// Once it has died, it no longer holds the ring.
		child.kill()
		mustRunTool(t, "rm", path)
		assert.NoFileExists(t, path)
	})

	t.Run("force", func(t *testing.T) {
		t.Parallel()
		path := newTestRing(t)
		startHelperReader(t, path)
		mustRunTool(t, "rm", path, "--force")
		assert.NoFileExists(t, path)
	})

	t.Run("own bus", func(t *testing.T) {
		t.Parallel()
		path := newTestRing(t)
		bus := openTestBus(t, path, events.Options{})
		_, errOut, code := runTool(t, "rm", path)
		assert.Equal(t, 1, code, "rm with this process's bus attached")
		assertErrorLine(t, errOut, path, "rm with a live reader")
		assert.Contains(t, strings.ToLower(errOut), "live")
		assert.FileExists(t, path)

		require.NoError(t, bus.Close())
		mustRunTool(t, "rm", path)
		assert.NoFileExists(t, path)
	})

	t.Run("no readers", func(t *testing.T) {
		t.Parallel()
		path := newTestRing(t)
		mustRunTool(t, "rm", path)
		assert.NoFileExists(t, path)
	})
}

// TestBadPaths runs every subcommand on a file that is not a ring, a
// missing path and a directory.
func TestBadPaths(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	garbage := filepath.Join(dir, "garbage.bin")
	content := bytes.Repeat([]byte("not a ring"), 8<<10/len("not a ring")+1)[:8<<10]
	require.NoError(t, os.WriteFile(garbage, content, 0o600))
	missing := filepath.Join(dir, "missing.bin")
	missingDir := filepath.Join(dir, "nodir", "x.bin")
	directory := filepath.Join(dir, "adir")
	require.NoError(t, os.Mkdir(directory, 0o700))

	cmds := []struct {
		name string
		args func(path string) []string
	}{
		{"create", func(p string) []string { return []string{"create", p} }},
		{"info", func(p string) []string { return []string{"info", p} }},
		{"info --json", func(p string) []string { return []string{"info", p, "--json"} }},
		{"readers", func(p string) []string { return []string{"readers", p} }},
		{"tail", func(p string) []string { return []string{"tail", p, "--from", "oldest"} }},
		{"tail --follow", func(p string) []string { return []string{"tail", p, "--follow"} }},
		{"post", func(p string) []string { return []string{"post", p, "src", "name", "data"} }},
		{"verify", func(p string) []string { return []string{"verify", p} }},
		{"stats", func(p string) []string { return []string{"stats", p, "--interval", "100ms", "--count", "1"} }},
		{"serve", func(p string) []string { return []string{"serve", p, "--addr", "127.0.0.1:0"} }},
		{"rm", func(p string) []string { return []string{"rm", p} }},
		{"rm --force", func(p string) []string { return []string{"rm", p, "--force"} }},
	}
	cases := []struct {
		name  string
		path  func(cmd string) string
		cause []string // the error names one of these (lower case)
	}{
		{"garbage", func(string) string { return garbage }, []string{"not a", "magic", "shmring"}},
		{"missing", func(cmd string) string {
			if cmd == "create" {
				return missingDir
			}
			return missing
		}, []string{"no such", "not exist"}},
		{"directory", func(string) string { return directory }, []string{"directory"}},
	}
	t.Run("each", func(t *testing.T) {
		for _, c := range cmds {
			for _, k := range cases {
				t.Run(c.name+"/"+k.name, func(t *testing.T) {
					t.Parallel()
					path := k.path(c.name)
					args := c.args(path)
					out, errOut, code := runTool(t, args...)
					what := "shmctl " + strings.Join(args, " ")
					assert.Equal(t, 1, code, "%s; stdout %q stderr %q", what, out, errOut)
					assertErrorLine(t, errOut, path, what)
					assertNoPanic(t, out, what)
					cause := k.cause
					if c.name == "create" && k.name != "missing" {
						cause = []string{"exist", "directory"}
					}
					low := strings.ToLower(strings.ReplaceAll(errOut, path, ""))
					hit := false
					for _, s := range cause {
						hit = hit || strings.Contains(low, s)
					}
					assert.True(t, hit, "%s: the error does not give the cause (one of %q): %q", what, cause, errOut)
				})
			}
		}
	})
	// Nothing was created, removed or changed.
	got, err := os.ReadFile(garbage)
	require.NoError(t, err, "the garbage file was removed")
	assert.True(t, bytes.Equal(content, got), "the garbage file was changed")
	assert.NoFileExists(t, missing)
	assert.NoDirExists(t, filepath.Dir(missingDir))
	assert.DirExists(t, directory)
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	notCreated := filepath.Join(t.TempDir(), "x.ring")
	for _, args := range [][]string{
		{"no-such-command"},
		{"no-such-command", path},
		{"create"},
		{"info"},
		{"readers"},
		{"tail"},
		{"post"},
		{"post", path},
		{"post", path, "src"},
		{"verify"},
		{"stats"},
		{"serve"},
		{"rm"},
		{"info", path, "--no-such-flag"},
		{"tail", path, "--no-such-flag"},
		{"post", path, "src", "name", "data", "--no-such-flag"},
		{"create", notCreated, "--no-such-flag"},
		{"--no-such-flag"},
	} {
		what := "shmctl " + strings.Join(args, " ")
		out, errOut, code := runTool(t, args...)
		assert.Equal(t, 2, code, "%s; stdout %q stderr %q", what, out, errOut)
		assertNoPanic(t, out+errOut, what)
		first, _, _ := strings.Cut(errOut, "\n")
		assert.True(t, strings.HasPrefix(first, "shmctl: "), "%s: stderr does not start with \"shmctl: \": %q", what, errOut)
	}
	assert.NoFileExists(t, notCreated)
	info, _ := infoOf(t, path)
	assert.Equal(t, uint64(0), info.Next, "a usage error posted to the ring")
}

func TestHelp(t *testing.T) {
	t.Parallel()
	for _, sub := range []string{"create", "info", "readers", "tail", "post", "verify", "stats", "serve", "rm"} {
		out, errOut, code := runTool(t, sub, "--help")
		assert.Equal(t, 0, code, "%s --help; stderr %q", sub, errOut)
		assert.Contains(t, out, sub, "%s --help", sub)
		assertNoPanic(t, out+errOut, sub+" --help")
	}
	out, _, code := runTool(t, "--help")
	assert.Equal(t, 0, code)
	for _, sub := range []string{"create", "info", "readers", "tail", "post", "verify", "stats", "serve", "rm"} {
		assert.Contains(t, out, sub, "shmctl --help does not list %s", sub)
	}
}

// A ring file truncated under the tool is an error naming the path, never a
// crash: serve answers 500 and keeps serving, stats and tail --follow exit 1.
func TestTruncatedUnderTheTool(t *testing.T) {
	t.Parallel()
	path := newTestRing(t)
	serve := startTool(t, "serve", path, "--addr", "127.0.0.1:0")
	re := regexp.MustCompile(`serving (http://\S+)`)
	line, ok := serve.waitAnyLine(e2eWait, re.MatchString)
	require.True(t, ok, "serve printed no address; stderr %q", serve.stderrText())
	base := re.FindStringSubmatch(line)[1]
	stats := startTool(t, "stats", path, "--interval", "50ms")
	_, ok = stats.waitAnyLine(e2eWait, func(string) bool { return true })
	require.True(t, ok, "stats printed nothing; stderr %q", stats.stderrText())
	tail := startTool(t, "tail", path, "--follow")
	// Truncate only once tail is following: it has printed an event.
	bus := openTestBus(t, path, events.Options{Observe: true})
	for deadline := time.Now().Add(e2eWait); ; {
		publishEvent(t, bus, "app", "ping", nil)
		if _, ok = tail.waitAnyLine(100*time.Millisecond, func(l string) bool { return strings.Contains(l, "app/ping") }); ok {
			break
		}
		require.True(t, time.Now().Before(deadline), "tail --follow printed nothing; stderr %q", tail.stderrText())
	}
	require.NoError(t, bus.Close())

	require.NoError(t, os.Truncate(path, 4096))

	client := &http.Client{Timeout: 10 * time.Second}
	for _, p := range []string{"/metrics", "/status"} {
		resp, err := client.Get(base + p)
		require.NoError(t, err, "serve died on %s", p)
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		assert.Equal(t, http.StatusInternalServerError, resp.StatusCode, p)
		assert.Contains(t, string(body), path, p)
	}
	for name, p := range map[string]*bgProcess{"stats": stats, "tail --follow": tail} {
		select {
		case <-p.done:
		case <-time.After(e2eWait):
			t.Fatalf("%s did not stop after the truncation", name)
		}
		assert.Equal(t, 1, p.cmd.ProcessState.ExitCode(), name)
		assertFaultLines(t, p.stderrText(), path, name)
	}
}
