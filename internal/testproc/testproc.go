// Package testproc runs parts of a test in separate processes by
// re-executing the test binary, in the os/exec TestHelperProcess style.
//
// A test package declares one helper entry point:
//
//	func TestHelperProcess(t *testing.T) {
//		testproc.Serve(map[string]testproc.Role{"producer": runProducer})
//	}
//
// Serve returns at once in a normal test run. A test starts a child with
// Start(t, "producer", args...); the child runs the role function with args
// and exits 0 if it returns nil. Children talk to the parent through lines on
// stdout (Proc.Expect, Proc.Lines) and through files; every child is killed
// and reaped when the test ends.
package testproc

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/shmring/shmring/internal/lines"
	"github.com/shmring/shmring/internal/proc"
)

const envRole = "SHMRING_TESTPROC_ROLE"

// Role is the body of a child process. args are those given to Start.
type Role func(args []string) error

// Serve runs the role named in the environment and exits; without one it
// returns at once. Call it from a TestHelperProcess test.
func Serve(roles map[string]Role) {
	name := os.Getenv(envRole)
	if name == "" {
		return
	}
	role, ok := roles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "testproc: unknown role %q\n", name)
		os.Exit(3)
	}
	args := os.Args
	for i, a := range args {
		if a == "--" {
			args = args[i+1:]
			break
		}
	}
	if err := role(args); err != nil {
		fmt.Fprintf(os.Stderr, "testproc: role %s: %v\n", name, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// WaitStdinClosed blocks the child until the parent closes its Stdin (or
// dies). Lines written to Stdin before that are returned.
func WaitStdinClosed() []string {
	var in []string
	sc := bufio.NewScanner(os.Stdin)
	for sc.Scan() {
		in = append(in, sc.Text())
	}
	return in
}

// Proc is a running child.
type Proc struct {
	Role string
	Cmd  *exec.Cmd
	// Stdin is the child's standard input. Closing it is a simple barrier:
	// children blocked in WaitStdinClosed all go on at once.
	Stdin io.WriteCloser

	stderr *lines.Text
	out    *lines.Buffer
	done   chan struct{}
	err    error
}

// Start starts the test binary as a child running role with args. The child
// is killed and reaped when the test ends.
func Start(t testing.TB, role string, args ...string) *Proc {
	t.Helper()
	cmd := exec.Command(os.Args[0], append([]string{"-test.run=^TestHelperProcess$", "--"}, args...)...)
	cmd.Env = append(os.Environ(), envRole+"="+role)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatalf("testproc: stdout pipe: %v", err)
	}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatalf("testproc: stdin pipe: %v", err)
	}
	p := &Proc{Stdin: stdin, Role: role, Cmd: cmd, stderr: &lines.Text{}, out: lines.New(), done: make(chan struct{})}
	cmd.Stderr = p.stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("testproc: start %s: %v", role, err)
	}
	go p.scan(stdout)
	t.Cleanup(func() {
		_ = stdin.Close()
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

func (p *Proc) scan(r io.Reader) {
	p.out.Scan(r)
	p.err = p.Cmd.Wait()
	close(p.done)
}

// Expect waits up to timeout for a stdout line that starts with prefix and
// returns it. Lines before it are skipped (they stay in Lines).
func (p *Proc) Expect(prefix string, timeout time.Duration) (string, error) {
	line, err := p.out.Expect(prefix, timeout)
	switch {
	case errors.Is(err, lines.ErrEnded):
		<-p.done // for the exit status
		return "", fmt.Errorf("testproc: %s exited (%v) before printing %q; stderr: %s", p.Role, p.err, prefix, p.Stderr())
	case err != nil:
		return "", fmt.Errorf("testproc: %s printed no %q within %v; stderr: %s", p.Role, prefix, timeout, p.Stderr())
	}
	return line, nil
}

// Wait waits up to timeout for the child to exit and returns its error (with
// its stderr when it failed).
func (p *Proc) Wait(timeout time.Duration) error {
	select {
	case <-p.done:
	case <-time.After(timeout):
		_ = p.Cmd.Process.Kill()
		<-p.done
		return fmt.Errorf("testproc: %s still running after %v, killed; stderr: %s", p.Role, timeout, p.Stderr())
	}
	if p.err != nil {
		return fmt.Errorf("testproc: %s: %v; stderr: %s", p.Role, p.err, p.Stderr())
	}
	return nil
}

// Kill sends SIGKILL and reaps the child. It reports whether the child died
// of that signal (false if it had exited already).
func (p *Proc) Kill() bool {
	_ = p.Cmd.Process.Signal(syscall.SIGKILL)
	<-p.done
	ws, ok := p.Cmd.ProcessState.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == syscall.SIGKILL
}

// Pid returns the child's process id.
func (p *Proc) Pid() int { return p.Cmd.Process.Pid }

// Lines returns every stdout line printed so far.
func (p *Proc) Lines() []string { return p.out.All() }

// Stderr returns what the child wrote to stderr so far.
func (p *Proc) Stderr() string { return p.stderr.String() }

// WaitStopped waits until every thread of process pid is stopped (after a
// SIGSTOP, which takes effect asynchronously), failing the test if that has
// not happened within timeout.
func WaitStopped(t testing.TB, pid int, timeout time.Duration) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		stopped, err := proc.Stopped(pid)
		if err != nil {
			t.Fatalf("testproc: is pid %d stopped: %v", pid, err)
		}
		if stopped {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("testproc: pid %d not stopped within %v", pid, timeout)
		}
		time.Sleep(time.Millisecond) // polling /proc, not waiting for an outcome
	}
}
