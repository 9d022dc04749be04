package shm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
	"unsafe"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/internal/proc"
	"github.com/shmring/shmring/internal/testproc"
)

// TestHelperProcess is the entry point of the child processes of this
// package's tests; in a normal run it returns at once.
func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		"open-race":   runOpenRace,
		"open-denied": runOpenDenied,
		"futex-wait":  runFutexWait,
		"open-pidns":  runOpenPIDNamespace,
	})
}

// waitFor polls cond every interval until it holds or timeout passes.
func waitFor(t *testing.T, timeout, interval time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %v", what, timeout)
		}
		<-tick.C
	}
}

// dataSlot is the i-th 8-byte word of the data ring.
func dataSlot(r *Region, i int) *atomic.Uint64 {
	return (*atomic.Uint64)(unsafe.Pointer(&r.Data()[i*8]))
}

// runOpenRace: path slot n. Waits for the barrier, opens or creates the
// ring, publishes its pid in data slot `slot`, waits until all n slots are
// filled and prints what it saw.
func runOpenRace(args []string) error {
	path := args[0]
	slot, err := strconv.Atoi(args[1])
	if err != nil {
		return err
	}
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return err
	}
	fmt.Println("ready")
	testproc.WaitStdinClosed()
	r, err := OpenOrCreate(path, Options{Geometry: testGeometry})
	if err != nil {
		return err
	}
	defer r.Close()
	dataSlot(r, slot).Store(uint64(os.Getpid()))

	pids := make([]string, n)
	deadline := time.Now().Add(30 * time.Second)
	tick := time.NewTicker(time.Millisecond)
	defer tick.Stop()
	for {
		full := true
		for i := range n {
			v := dataSlot(r, i).Load()
			full = full && v != 0
			pids[i] = strconv.FormatUint(v, 10)
		}
		if full {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("slots still not all filled after 30s: %v", pids)
		}
		<-tick.C
	}
	h := r.Header()
	g := h.Geometry
	fmt.Printf("result pid=%d created=%d creator=%d geometry=%d/%d/%d/%d/%d pids=%s\n",
		os.Getpid(), h.Created.UnixNano(), h.CreatorPID,
		g.IndexSlots, g.DataBytes, g.ReaderSlots, g.UniqueSlots, g.MaxRecord, strings.Join(pids, ","))
	return nil
}

func TestConcurrentFirstOpenAcrossProcesses(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	const n = 8
	procs := make([]*testproc.Proc, n)
	want := make([]string, n)
	for i := range n {
		procs[i] = testproc.Start(t, "open-race", path, strconv.Itoa(i), strconv.Itoa(n))
		want[i] = strconv.Itoa(procs[i].Pid())
	}
	for _, p := range procs {
		_, err := p.Expect("ready", 30*time.Second)
		require.NoError(t, err)
	}
	for _, p := range procs {
		require.NoError(t, p.Stdin.Close()) // release them all at once
	}

	type result struct {
		pid, creator   int
		created        int64
		geometry, pids string
	}
	results := make([]result, n)
	for i, p := range procs {
		line, err := p.Expect("result ", 60*time.Second)
		require.NoError(t, err)
		r := &results[i]
		_, err = fmt.Sscanf(line, "result pid=%d created=%d creator=%d geometry=%s pids=%s", &r.pid, &r.created, &r.creator, &r.geometry, &r.pids)
		require.NoError(t, err, "child %d printed %q", i, line)
	}
	for i, p := range procs {
		require.NoError(t, p.Wait(30*time.Second), "child %d", i)
	}

	g := testGeometry
	wantGeometry := fmt.Sprintf("%d/%d/%d/%d/%d", g.IndexSlots, g.DataBytes, g.ReaderSlots, g.UniqueSlots, g.MaxRecord)
	for i, r := range results {
		assert.Equal(t, procs[i].Pid(), r.pid, "child %d", i)
		assert.Equal(t, results[0].created, r.created, "child %d saw another creation time: two files were created", i)
		assert.Equal(t, results[0].creator, r.creator, "child %d saw another creator", i)
		assert.Equal(t, wantGeometry, r.geometry, "child %d", i)
		assert.Equal(t, strings.Join(want, ","), r.pids, "child %d should see every child's pid in its slot", i)
	}
	assert.Contains(t, want, strconv.Itoa(results[0].creator), "the creator is one of the children")

	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	assert.Equal(t, []string{"ring"}, names, "exactly one ring file and no temporary files")

	r, err := Open(path, Options{})
	require.NoError(t, err)
	defer r.Close()
	assert.Equal(t, results[0].creator, r.Header().CreatorPID)
	assert.Equal(t, results[0].created, r.Header().Created.UnixNano())
	for i := range n {
		assert.Equal(t, want[i], strconv.FormatUint(dataSlot(r, i).Load(), 10), "slot %d in the file", i)
	}
}

// runOpenDenied: path readable. Runs as another user; reports how each
// entry point fails on path (mode 0600, owned by root) and on readable
// (mode 0644, owned by root).
func runOpenDenied(args []string) error {
	path, readable := args[0], args[1]
	report := func(op, p string, err error) {
		var pe *PathError
		msg := "<nil>"
		if err != nil {
			msg = err.Error()
		}
		fmt.Printf("op=%s euid=%d perm=%t foreign=%t patherr=%t msg=%q\n", op, os.Geteuid(),
			errors.Is(err, fs.ErrPermission), errors.Is(err, ErrForeignOwner),
			errors.As(err, &pe) && pe.Path == p && strings.Contains(msg, p), msg)
	}
	_, err := Open(path, Options{})
	report("open", path, err)
	_, err = Open(path, Options{AllowForeignOwner: true})
	report("open-foreign", path, err)
	_, err = OpenOrCreate(path, Options{AllowForeignOwner: true, Geometry: testGeometry})
	report("openorcreate", path, err)
	_, err = ReadHeader(path, Options{AllowForeignOwner: true})
	report("readheader", path, err)
	report("remove", path, Remove(path))
	_, err = ReadHeader(readable, Options{AllowForeignOwner: true})
	report("readheader-readable", readable, err)
	_, err = ReadHeader(readable, Options{})
	report("readheader-readable-owner", readable, err)
	_, err = Open(readable, Options{AllowForeignOwner: true})
	report("open-readable", readable, err)
	return nil
}

func TestOpenWithoutPermission(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	// The other user must reach the files: the test directories are 0700.
	require.NoError(t, os.Chmod(filepath.Dir(dir), 0o755))
	require.NoError(t, os.Chmod(dir, 0o755))
	path := filepath.Join(dir, "ring")
	r, err := Create(path, testOpts())
	require.NoError(t, err)
	require.NoError(t, r.Close())
	readable := filepath.Join(dir, "readable")
	r, err = Create(readable, Options{Geometry: testGeometry, Perm: 0o644})
	require.NoError(t, err)
	require.NoError(t, r.Close())

	// The test binary sits in a directory only root may enter; run a copy.
	exe, err := os.Executable()
	require.NoError(t, err)
	bin := filepath.Join(dir, "shm.test")
	copyFile(t, exe, bin, 0o755)

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "-test.run=^TestHelperProcess$", "--", path, readable)
	cmd.Env = append(os.Environ(), "SHMRING_TESTPROC_ROLE=open-denied")
	cmd.Dir = dir
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: nobody, Gid: nobody}}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output() // waits for, and so reaps, the child
	require.NoError(t, err, "child failed; stderr: %s", stderr.String())

	type report struct {
		euid                     int
		perm, foreign, pathError bool
		msg                      string
	}
	got := map[string]report{}
	for line := range strings.Lines(string(out)) {
		var op string
		var r report
		_, err := fmt.Sscanf(line, "op=%s euid=%d perm=%t foreign=%t patherr=%t msg=%q", &op, &r.euid, &r.perm, &r.foreign, &r.pathError, &r.msg)
		require.NoError(t, err, "child printed %q", line)
		got[op] = r
	}
	for _, op := range []string{"open", "open-foreign", "openorcreate", "readheader", "remove"} {
		r, ok := got[op]
		require.True(t, ok, "child did not report %s; output: %s", op, out)
		assert.Equal(t, nobody, r.euid, "%s: the child must run as nobody", op)
		assert.True(t, r.perm, "%s of a 0600 root file as nobody: want fs.ErrPermission, got %s", op, r.msg)
		assert.True(t, r.pathError, "%s: want a *PathError naming the file, got %s", op, r.msg)
	}
	assert.Equal(t, "<nil>", got["readheader-readable"].msg, "ReadHeader needs only read access")
	assert.True(t, got["readheader-readable-owner"].foreign, "the owner check applies to ReadHeader: %s", got["readheader-readable-owner"].msg)
	assert.True(t, got["open-readable"].perm, "Open maps read-write, so a 0644 file is denied: %s", got["open-readable"].msg)

	b, err := os.ReadFile(path)
	require.NoError(t, err, "a denied Remove leaves the file")
	_, err = DecodeHeader(b)
	assert.NoError(t, err)
	entries, err := os.ReadDir(dir)
	require.NoError(t, err)
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	slices.Sort(names)
	assert.Equal(t, []string{"readable", "ring", "shm.test"}, names, "the denied child created nothing")
}

func copyFile(t *testing.T, from, to string, mode os.FileMode) {
	t.Helper()
	src, err := os.Open(from)
	require.NoError(t, err)
	defer src.Close()
	dst, err := os.OpenFile(to, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	require.NoError(t, err)
	_, err = io.Copy(dst, src)
	require.NoError(t, err)
	require.NoError(t, dst.Close())
	require.NoError(t, os.Chmod(to, mode))
}

// runOpenPIDNamespace: path dir. Runs in a PID namespace of its own and
// reports how each entry point treats path, a region created outside it,
// and whether a region it creates itself in dir opens.
func runOpenPIDNamespace(args []string) error {
	path, dir := args[0], args[1]
	fmt.Printf("ns %d\n", proc.PIDNamespace())
	report := func(op string, err error) {
		var pe *PathError
		fmt.Printf("op=%s pidns=%t patherr=%t msg=%q\n", op, errors.Is(err, ErrPIDNamespace),
			errors.As(err, &pe) && pe.Path == path, fmt.Sprint(err))
	}
	_, err := Open(path, Options{})
	report("open", err)
	_, err = OpenOrCreate(path, Options{Geometry: testGeometry})
	report("openorcreate", err)
	h, err := ReadHeader(path, Options{})
	report("readheader", err)
	fmt.Printf("creator-ns %d\n", h.PIDNamespace)
	own, err := Create(filepath.Join(dir, "own"), Options{Geometry: testGeometry})
	if err != nil {
		return err
	}
	defer own.Close()
	again, err := Open(filepath.Join(dir, "own"), Options{})
	if err != nil {
		return err
	}
	fmt.Printf("own-ns %d\n", again.Header().PIDNamespace)
	return again.Close()
}

// A process of another PID namespace may not share a region: the process
// ids in its reader table and locks would name other processes there, or
// none, and live readers' slots would be reclaimed as dead ones'.
func TestOpenRefusesAnotherPIDNamespace(t *testing.T) {
	own := proc.PIDNamespace()
	if own == 0 {
		t.Skip("this process's PID namespace is unknown (no /proc)")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "ring")
	r, err := Create(path, Options{Geometry: testGeometry})
	require.NoError(t, err)
	require.NoError(t, r.Close())
	assert.Equal(t, own, r.Header().PIDNamespace)
	childDir := filepath.Join(dir, "child")
	require.NoError(t, os.Mkdir(childDir, 0o700))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^TestHelperProcess$", "--", path, childDir)
	cmd.Env = append(os.Environ(), "SHMRING_TESTPROC_ROLE=open-pidns")
	attr := &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID}
	if uid, gid := os.Geteuid(), os.Getegid(); uid != 0 {
		// Without root, a user namespace of its own lets the child have a
		// PID namespace; it keeps our ids, so the file stays its own.
		attr.Cloneflags |= syscall.CLONE_NEWUSER
		attr.UidMappings = []syscall.SysProcIDMap{{ContainerID: uid, HostID: uid, Size: 1}}
		attr.GidMappings = []syscall.SysProcIDMap{{ContainerID: gid, HostID: gid, Size: 1}}
	}
	cmd.SysProcAttr = attr
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output() // waits for, and so reaps, the child
	if err != nil && (errors.Is(err, syscall.EPERM) || errors.Is(err, syscall.EINVAL) || errors.Is(err, syscall.ENOSPC)) {
		t.Skipf("cannot start a process in a PID namespace of its own here: %v", err)
	}
	require.NoError(t, err, "child failed; stderr: %s", stderr.String())

	var childNS, creatorNS, ownNS uint32
	ops := map[string]string{}
	for line := range strings.Lines(string(out)) {
		switch {
		case strings.HasPrefix(line, "ns "):
			_, err = fmt.Sscanf(line, "ns %d", &childNS)
		case strings.HasPrefix(line, "creator-ns "):
			_, err = fmt.Sscanf(line, "creator-ns %d", &creatorNS)
		case strings.HasPrefix(line, "own-ns "):
			_, err = fmt.Sscanf(line, "own-ns %d", &ownNS)
		case strings.HasPrefix(line, "op="):
			op, rest, _ := strings.Cut(strings.TrimPrefix(line, "op="), " ")
			ops[op] = strings.TrimSpace(rest)
		}
		require.NoError(t, err, line)
	}
	require.NotZero(t, childNS, "the child knows its namespace; output: %s", out)
	require.NotEqual(t, own, childNS, "the child runs in a PID namespace of its own")
	for _, op := range []string{"open", "openorcreate"} {
		require.Contains(t, ops, op)
		assert.Contains(t, ops[op], "pidns=true patherr=true", "%s is refused with ErrPIDNamespace, naming the path", op)
		assert.Contains(t, ops[op], fmt.Sprintf("PID namespace %d, this process is in %d", own, childNS), op)
	}
	assert.Contains(t, ops["readheader"], "pidns=false", "reading the header alone maps nothing and is allowed")
	assert.Equal(t, own, creatorNS, "the header names the creator's namespace")
	assert.Equal(t, childNS, ownNS, "a region created in the child's namespace opens there")
}
