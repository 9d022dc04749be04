package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/shmring/shmring/internal/lines"
)

// The harness runs every side of a scenario in a process of its own: it
// re-executes its own binary (shmbench, or a test binary) with the role to
// play in the environment. A binary that runs the harness calls ServeChild
// first thing in main (a test binary, in TestMain), before it parses flags.
//
// A child talks to the harness in lines on stdout: "ready" once it is set up,
// then "result <JSON>" at the end. The harness releases children that wait
// for it by closing their stdin, which releases them all at once.

const envChild = "SHMBENCH_CHILD"

// childRole is the body of a child. extra are the files the harness handed
// down (descriptors 3, 4, ...).
type childRole func(args []string, extra []*os.File) (any, error)

// childRoles are the roles a child can play, filled in by the files that
// define them.
var childRoles = map[string]childRole{}

// ServeChild plays the role the harness named in the environment, and exits;
// in a process that the harness did not start, it returns at once.
func ServeChild() {
	name := os.Getenv(envChild)
	if name == "" {
		return
	}
	role, ok := childRoles[name]
	if !ok {
		fmt.Fprintf(os.Stderr, "shmbench: unknown child role %q\n", name)
		os.Exit(3)
	}
	n, _ := parseInt(os.Getenv(envChild + "_FILES"))
	extra := make([]*os.File, n)
	for i := range extra {
		extra[i] = os.NewFile(uintptr(3+i), fmt.Sprintf("fd%d", 3+i))
	}
	res, err := role(os.Args[1:], extra)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shmbench: %s: %v\n", name, err)
		os.Exit(1)
	}
	out, err := json.Marshal(res)
	if err != nil {
		fmt.Fprintf(os.Stderr, "shmbench: %s: result: %v\n", name, err)
		os.Exit(1)
	}
	fmt.Printf("result %s\n", out)
	os.Exit(0)
}

// childReady tells the harness that the child is set up.
func childReady() { fmt.Println("ready") }

// waitRelease blocks until the harness closes the child's stdin (or dies).
func waitRelease() { _, _ = io.Copy(io.Discard, os.Stdin) }

// child is a running child process, seen from the harness.
type child struct {
	role  string
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *lines.Buffer

	stderr lines.Text // written by exec's copier until done is closed
	done   chan struct{}
	err    error
}

// startChild starts exe as a child playing role with args; extra become its
// descriptors 3, 4, ... (the harness's copies stay open: close them).
func startChild(exe, role string, args []string, extra ...*os.File) (*child, error) {
	cmd := exec.Command(exe, args...)
	cmd.Env = append(os.Environ(), envChild+"="+role, fmt.Sprintf("%s_FILES=%d", envChild, len(extra)))
	cmd.ExtraFiles = extra
	// A child must not outlive the harness, whatever kills it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	c := &child{role: role, cmd: cmd, out: lines.New(), done: make(chan struct{})}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	if c.stdin, err = cmd.StdinPipe(); err != nil {
		return nil, err
	}
	cmd.Stderr = &c.stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("bench: start %s: %w", role, err)
	}
	go func() {
		c.out.Scan(stdout)
		c.err = cmd.Wait()
		close(c.done)
	}()
	return c, nil
}

func (c *child) stderrText() string { return strings.TrimSpace(c.stderr.String()) }

// expect waits up to timeout for a line that starts with prefix and returns
// the rest of it.
func (c *child) expect(prefix string, timeout time.Duration) (string, error) {
	line, err := c.out.Expect(prefix, timeout)
	switch {
	case errors.Is(err, lines.ErrEnded):
		<-c.done // for the exit status
		return "", fmt.Errorf("bench: %s exited (%v) before saying %q: %s", c.role, c.err, strings.TrimSpace(prefix), c.stderrText())
	case err != nil:
		return "", fmt.Errorf("bench: %s did not say %q within %v: %s", c.role, strings.TrimSpace(prefix), timeout, c.stderrText())
	}
	return strings.TrimPrefix(line, prefix), nil
}

// result waits for the child's result and decodes it into v.
func (c *child) result(v any, timeout time.Duration) error {
	line, err := c.expect("result ", timeout)
	if err != nil {
		return err
	}
	if err := json.Unmarshal([]byte(line), v); err != nil {
		return fmt.Errorf("bench: %s result: %w", c.role, err)
	}
	return nil
}

// release closes the child's stdin: a child in waitRelease goes on.
func (c *child) release() { _ = c.stdin.Close() }

// stop kills the child if it still runs and reaps it.
func (c *child) stop() {
	_ = c.stdin.Close()
	select {
	case <-c.done:
	default:
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

// wait waits up to timeout for the child to exit by itself.
func (c *child) wait(timeout time.Duration) error {
	select {
	case <-c.done:
	case <-time.After(timeout):
		c.stop()
		return fmt.Errorf("bench: %s still running after %v, killed", c.role, timeout)
	}
	if c.err != nil {
		return fmt.Errorf("bench: %s: %v: %s", c.role, c.err, c.stderrText())
	}
	return nil
}

// group is the children of one run, stopped together: when the run ends,
// or at once when the harness is interrupted.
type group struct {
	exe string

	mu       sync.Mutex
	children []*child
	stopped  bool
}

var errStopped = errors.New("bench: interrupted")

func (g *group) start(role string, args []string, extra ...*os.File) (*child, error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return nil, errStopped
	}
	c, err := startChild(g.exe, role, args, extra...)
	if err != nil {
		return nil, err
	}
	g.children = append(g.children, c)
	return c, nil
}

// stop kills and reaps every child still running; no child starts after.
func (g *group) stop() {
	g.mu.Lock()
	g.stopped = true
	children := g.children
	g.mu.Unlock()
	for _, c := range children {
		c.stop()
	}
}

// readyAll waits for "ready" from each of cs.
func readyAll(cs []*child, timeout time.Duration) error {
	var errs []error
	for _, c := range cs {
		if _, err := c.expect("ready", timeout); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func parseInt(s string) (int, error) {
	var n int
	_, err := fmt.Sscanf(s, "%d", &n)
	return n, err
}
