package main

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/internal/testproc"
	"github.com/shmring/shmring/workerpool"
)

// helperPool is the helper child as a workerpool master with two workers
// (the same binary again, in the same role) on the ring named in its
// environment. It exits when the pool stops (SIGTERM).
func helperPool() {
	err := workerpool.Run(context.Background(), workerpool.Config{
		Workers: 2,
		Bus:     events.Options{Path: os.Getenv(e2eRingEnv)},
		Logger:  slog.New(slog.NewTextHandler(os.Stderr, nil)),
		Actions: map[string]workerpool.Action{
			"echo": func(_ context.Context, args []string, out io.Writer) error {
				_, err := fmt.Fprintln(out, strings.Join(args, " "))
				return err
			},
			"fail": func(_ context.Context, _ []string, out io.Writer) error {
				fmt.Fprintln(out, "failing")
				return exitStatus(3)
			},
		},
		Main: func(ctx context.Context, w *workerpool.Worker) error {
			<-ctx.Done()
			return nil
		},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, "helper pool:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

type exitStatus int

func (e exitStatus) Error() string { return fmt.Sprintf("status %d", int(e)) }
func (e exitStatus) ExitCode() int { return int(e) }

// startPool starts the helper pool on path, waits until both workers answer
// an exec, and returns the master's pid.
func startPool(t *testing.T, path string) int {
	t.Helper()
	p := startProcess(t, []string{e2eRoleEnv + "=pool", e2eRingEnv + "=" + path},
		os.Args[0], "-test.run=^TestHelperProcess$")
	// Stop the pool with SIGTERM before the generic SIGKILL cleanup, so
	// that the master stops its workers.
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(e2eWait):
		}
	})
	deadline := time.Now().Add(e2eWait)
	for {
		_, _, code := runTool(t, "exec", path, "echo", "--min", "2", "--timeout", "2s")
		if code == 0 {
			return p.cmd.Process.Pid
		}
		require.True(t, time.Now().Before(deadline), "the pool never had two workers answering; stderr: %s", p.stderrText())
	}
}

func TestExec(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pool.events")
	master := startPool(t, path)

	out := mustRunTool(t, "exec", path, "echo", "a", "b c", "--json")
	var rep ExecReport
	require.NoError(t, json.Unmarshal([]byte(out), &rep), "one JSON object: %s", out)
	var raw map[string]any
	require.NoError(t, json.Unmarshal([]byte(out), &raw))
	assertKeys(t, raw, "exec --json", "path", "action", "id", "seq", "master", "expected", "workers", "missing", "exited", "failed", "elapsed_seconds", "ok")
	assert.Equal(t, path, rep.Path)
	assert.True(t, rep.OK)
	assert.Equal(t, master, rep.Master, "the master the acks name")
	assert.Len(t, rep.Expected, 2, "the master expects both workers")
	assert.Empty(t, rep.Missing)
	require.Len(t, rep.Workers, 2)
	for i, w := range rep.Workers {
		assert.Equal(t, i, w.Index)
		assert.True(t, w.Acked && w.Exited)
		assert.Zero(t, w.Status)
		assert.Equal(t, "a b c\n", w.Output)
	}

	// Arguments that look like flags go after "--".
	out = mustRunTool(t, "exec", path, "echo", "--json", "--", "-n", "x")
	require.NoError(t, json.Unmarshal([]byte(out), &rep), "one JSON object: %s", out)
	for _, w := range rep.Workers {
		assert.Equal(t, "-n x\n", w.Output, "the action got the arguments after --")
	}

	// Lines as the answers arrive, then a summary.
	out = mustRunTool(t, "exec", path, "echo", "hello")
	for _, w := range rep.Workers {
		name := fmt.Sprintf("worker %d (pid %d)", w.Index, w.PID)
		assert.Contains(t, out, name+": ack\n")
		assert.Contains(t, out, name+"> hello\n")
		assert.Contains(t, out, name+": exit 0\n")
	}
	assert.Regexp(t, regexp.MustCompile(`(?m)^done: 2 workers exited of 2 expected, 0 failed, 0 missing, in \S+$`), out)

	// A failing action: exit 1, one error line naming the path and the workers.
	out, errOut, code := runTool(t, "exec", path, "fail")
	assert.Equal(t, 1, code, "stdout: %s stderr: %s", out, errOut)
	assertErrorLine(t, errOut, path, "exec fail")
	assert.Contains(t, errOut, "status 3")
	assert.Contains(t, out, "> failing\n")
	out, errOut, code = runTool(t, "exec", path, "no-such-action", "--json")
	assert.Equal(t, 1, code)
	assertErrorLine(t, errOut, path, "exec unknown")
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.False(t, rep.OK)
	assert.Equal(t, 2, rep.Failed)
	for _, w := range rep.Workers {
		assert.Equal(t, workerpool.StatusUnknownAction, w.Status)
	}

	// More workers required than there are.
	_, errOut, code = runTool(t, "exec", path, "echo", "--min", "3", "--timeout", "1s")
	assert.Equal(t, 1, code)
	assertErrorLine(t, errOut, path, "exec --min 3")
	assert.Contains(t, errOut, "at least 3 required")

	// A worker that does not answer (stopped) is named.
	silent := rep.Workers[1]
	require.NoError(t, syscall.Kill(silent.PID, syscall.SIGSTOP))
	t.Cleanup(func() { _ = syscall.Kill(silent.PID, syscall.SIGCONT) })
	// SIGSTOP takes effect asynchronously: a thread still running could
	// answer the next request.
	testproc.WaitStopped(t, silent.PID, e2eWait)
	out, errOut, code = runTool(t, "exec", path, "echo", "x", "--timeout", "1s", "--json")
	assert.Equal(t, 1, code)
	name := fmt.Sprintf("worker 1 (pid %d)", silent.PID)
	assertErrorLine(t, errOut, path, "exec with a stopped worker")
	assert.Contains(t, errOut, "no answer from "+name)
	require.NoError(t, json.Unmarshal([]byte(out), &rep))
	assert.Equal(t, []ExecWorkerID{{Index: 1, PID: silent.PID}}, rep.Missing)
	assert.Equal(t, 1, rep.Exited)
	require.NoError(t, syscall.Kill(silent.PID, syscall.SIGCONT))
}

func TestExecErrors(t *testing.T) {
	dir := t.TempDir()
	missing := filepath.Join(dir, "missing.events")
	_, errOut, code := runTool(t, "exec", missing, "echo")
	assert.Equal(t, 1, code)
	assertErrorLine(t, errOut, missing, "exec on a missing ring")
	_, errOut, code = runTool(t, "exec", missing)
	assert.Equal(t, 2, code, "NAME is required")
	assertNoPanic(t, errOut, "exec without NAME")
	_, _, code = runTool(t, "exec", missing, "echo", "--min", "-1")
	assert.Equal(t, 2, code)
	_, _, code = runTool(t, "exec", missing, "echo", "--timeout", "0s")
	assert.Equal(t, 2, code)

	// A ring with no pool: nobody says whom to expect.
	ring := filepath.Join(dir, "lonely.events")
	mustRunTool(t, "create", ring)
	_, errOut, code = runTool(t, "exec", ring, "echo", "--timeout", "200ms")
	assert.Equal(t, 1, code)
	assertErrorLine(t, errOut, ring, "exec without a master")
	assert.Contains(t, errOut, "no master answered")
}
