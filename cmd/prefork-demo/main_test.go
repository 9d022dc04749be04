package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/internal/lines"
)

// End-to-end tests of the built demo: a master and its workers on a
// loopback port, driven over HTTP as the README shows.

var demoBin string

// waitLong bounds every wait; nothing relies on it for correctness.
const waitLong = 60 * time.Second

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "prefork-demo-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	demoBin = filepath.Join(dir, "prefork-demo")
	if out, err := exec.Command("go", "build", "-race", "-o", demoBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build: %v\n%s", err, out)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

var startLine = regexp.MustCompile(`^prefork-demo: master pid (\d+), listening on (http://\S+), (\d+) workers, ring (\S+)$`)

type demoProc struct {
	cmd     *exec.Cmd
	url     string
	ring    string
	workers string // as the start line says
	stderr  *lines.Text
	done    chan struct{}
}

func startDemo(t *testing.T, args ...string) *demoProc {
	t.Helper()
	cmd := exec.Command(demoBin, append([]string{"--addr", "127.0.0.1:0", "--workers", "2"}, args...)...)
	stdout, err := cmd.StdoutPipe()
	require.NoError(t, err)
	stderr := &lines.Text{}
	cmd.Stderr = stderr
	require.NoError(t, cmd.Start())
	d := &demoProc{cmd: cmd, stderr: stderr, done: make(chan struct{})}
	lines := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			lines <- sc.Text()
		}
		close(lines)
		_ = cmd.Wait()
		close(d.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-d.done:
		case <-time.After(waitLong):
			_ = cmd.Process.Kill()
			<-d.done
		}
	})
	select {
	case l, ok := <-lines:
		require.True(t, ok, "the demo exited before it listened: %s", stderr.String())
		m := startLine.FindStringSubmatch(l)
		require.NotNil(t, m, "start line: %q", l)
		d.url, d.workers, d.ring = m[2], m[3], m[4]
	case <-time.After(waitLong):
		t.Fatalf("the demo printed no start line within %v", waitLong)
	}
	go func() {
		for range lines {
		}
	}()
	return d
}

func getJSON(t *testing.T, method, url string, v any) int {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	require.NoError(t, err)
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(body, v), "%s %s: %s", method, url, body)
	return resp.StatusCode
}

type statsReply struct {
	Workers []workerStats
	Missing []string
	Agree   bool
	Error   string
}

// waitStats polls /stats until both workers answer.
func waitStats(t *testing.T, d *demoProc) statsReply {
	t.Helper()
	deadline := time.Now().Add(waitLong)
	for {
		var st statsReply
		code := getJSON(t, "GET", d.url+"/stats", &st)
		if code == http.StatusOK && len(st.Workers) == 2 {
			return st
		}
		require.True(t, time.Now().Before(deadline), "/stats never had both workers: %d %+v", code, st)
	}
}

func TestPurgeRefreshesOnceAndAllAgree(t *testing.T) {
	ring := filepath.Join(t.TempDir(), "demo.events")
	d := startDemo(t, "--ring", ring)
	require.Equal(t, ring, d.ring)
	waitStats(t, d)

	var purge struct {
		Key      string `json:"key"`
		PurgeSeq uint64 `json:"purge_seq"`
		Entry    entry  `json:"entry"`
	}
	for _, key := range []string{"users", "items"} {
		require.Equal(t, http.StatusOK, getJSON(t, "POST", d.url+"/purge?key="+key, &purge))
		assert.Equal(t, origin(key, purge.PurgeSeq), purge.Entry.Value, "the answering worker has the new value")
	}
	// A second purge of the key at once is coalesced with the first.
	var again struct {
		Entry entry `json:"entry"`
	}
	code := getJSON(t, "POST", d.url+"/purge?key=items", &again)
	if code == http.StatusAccepted {
		assert.Equal(t, purge.Entry, again.Entry, "the first purge's value stands")
	}
	// Every worker that answers a GET has the same value: the set events
	// reached all of them before /stats's request did.
	st := waitStats(t, d)
	assert.True(t, st.Agree, "workers agree: %+v", st)
	var fetches, keys uint64
	for _, w := range st.Workers {
		fetches += w.Fetches
		keys += uint64(w.Keys)
		assert.Zero(t, w.Lost)
	}
	if code == http.StatusAccepted {
		assert.Equal(t, uint64(2), fetches, "each purge (burst) fetched from the origin exactly once, in one worker")
	} else { // the machine was slow enough for the unique timeout to pass
		assert.Equal(t, uint64(3), fetches, "each purge fetched from the origin exactly once, in one worker")
		purge.Entry = again.Entry
	}
	assert.Equal(t, uint64(4), keys, "both workers hold both keys")
	for range 10 {
		var got struct {
			Entry entry `json:"entry"`
		}
		require.Equal(t, http.StatusOK, getJSON(t, "GET", d.url+"/cache?key=items", &got))
		assert.Equal(t, purge.Entry, got.Entry)
	}

	// A reload replaces both workers; the new ones rebuild their caches
	// from the "set" events still in the ring.
	old := map[int]bool{}
	for _, w := range st.Workers {
		old[w.PID] = true
	}
	require.NoError(t, d.cmd.Process.Signal(syscall.SIGHUP))
	deadline := time.Now().Add(waitLong)
	for {
		st = waitStats(t, d)
		if !old[st.Workers[0].PID] && !old[st.Workers[1].PID] {
			break
		}
		require.True(t, time.Now().Before(deadline), "the workers were not replaced: %+v", st)
	}
	assert.True(t, st.Agree, "the new workers agree: %+v", st)
	for _, w := range st.Workers {
		assert.Equal(t, 2, w.Keys, "worker %d rebuilt its cache", w.Index)
		assert.Zero(t, w.Fetches, "worker %d fetched nothing from the origin: replayed purges are not run again", w.Index)
	}
	var got struct {
		Entry entry `json:"entry"`
	}
	require.Equal(t, http.StatusOK, getJSON(t, "GET", d.url+"/cache?key=items", &got))
	assert.Equal(t, purge.Entry, got.Entry)

	require.NoError(t, d.cmd.Process.Signal(syscall.SIGTERM))
	select {
	case <-d.done:
	case <-time.After(waitLong):
		t.Fatal("the demo did not stop")
	}
	assert.Equal(t, 0, d.cmd.ProcessState.ExitCode(), "stderr: %s", d.stderr.String())
	_, err := os.Stat(ring)
	assert.ErrorIs(t, err, os.ErrNotExist, "the ring it created is removed on exit")
}

// --workers 0 starts one worker per CPU, and the start line says how many.
func TestZeroWorkersMeansOnePerCPU(t *testing.T) {
	d := startDemo(t, "--workers", "0")
	assert.Equal(t, strconv.Itoa(runtime.NumCPU()), d.workers)
}

// The stats snapshots of the first requests (sequence numbers below
// maxSnaps) are not all evicted at once when the table fills.
func TestSnapshotsNearTheStartOfTheRing(t *testing.T) {
	bus, err := events.Open(events.Options{Path: filepath.Join(t.TempDir(), "s.events"), Mode: events.Manual})
	require.NoError(t, err)
	defer bus.Close()
	d := &demo{}
	d.setup(bus)
	for seq := uint64(1); seq <= maxSnaps+1; seq++ {
		d.snapshot(&events.Event{Seq: seq})
	}
	_, ok := d.snaps[maxSnaps]
	assert.True(t, ok, "the previous request's snapshot is kept")
	assert.GreaterOrEqual(t, len(d.snaps), maxSnaps/2, "recent snapshots are kept")
	assert.LessOrEqual(t, len(d.snaps), maxSnaps+1, "the table stays bounded")
}

func TestUsageAndListenErrors(t *testing.T) {
	out, err := exec.Command(demoBin, "--workers", "-1", "--ring", filepath.Join(t.TempDir(), "x.events")).CombinedOutput()
	require.Error(t, err)
	assert.Equal(t, 2, err.(*exec.ExitError).ExitCode())
	assert.Contains(t, string(out), "Workers is negative")

	ring := filepath.Join(t.TempDir(), "x.events")
	out, err = exec.Command(demoBin, "--addr", "127.0.0.1:0", "--workers", "66", "--ring", ring).CombinedOutput()
	require.Error(t, err)
	assert.Equal(t, 2, err.(*exec.ExitError).ExitCode(), "more workers than the ring has reader slots: %s", out)
	assert.Contains(t, string(out), "reader slots")
	_, err = os.Stat(ring)
	assert.ErrorIs(t, err, os.ErrNotExist, "the ring it created is removed")

	out, err = exec.Command(demoBin, "--addr", "127.0.0.1:99999", "--ring", filepath.Join(t.TempDir(), "x.events")).CombinedOutput()
	require.Error(t, err)
	assert.Equal(t, 1, err.(*exec.ExitError).ExitCode())
	assert.True(t, strings.Contains(string(out), "listen 127.0.0.1:99999"), "%s", out)
}
