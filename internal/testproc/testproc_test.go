package testproc_test

import (
	"errors"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/internal/testproc"
)

func TestHelperProcess(t *testing.T) {
	testproc.Serve(map[string]testproc.Role{
		// lines prints a few lines, its arguments among them, and exits 0.
		"lines": func(args []string) error {
			fmt.Println("hello")
			fmt.Printf("args=%s\n", strings.Join(args, ","))
			fmt.Println("bye")
			return nil
		},
		// fail prints a line, writes to stderr and fails.
		"fail": func(args []string) error {
			fmt.Println("partial")
			fmt.Fprintln(os.Stderr, "boom-detail")
			return errors.New("exploded")
		},
		// block prints "ready", waits for its stdin to close and prints what
		// it read.
		"block": func(args []string) error {
			fmt.Println("ready")
			lines := testproc.WaitStdinClosed()
			fmt.Printf("stdin=%s\n", strings.Join(lines, ","))
			return nil
		},
	})
}

func TestLinesExpectWait(t *testing.T) {
	p := testproc.Start(t, "lines", "a", "b c")
	assert.Positive(t, p.Pid())
	assert.Equal(t, "lines", p.Role)

	line, err := p.Expect("args=", 30*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "args=a,b c", line, "the role gets the arguments given to Start")
	line, err = p.Expect("bye", 30*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "bye", line)
	require.NoError(t, p.Wait(30*time.Second), "a role that returns nil exits 0")

	assert.Equal(t, []string{"hello", "args=a,b c", "bye"}, p.Lines(), "Lines keeps every line, skipped ones too")
	_, err = p.Expect("hello", 30*time.Second)
	require.Error(t, err, "Expect does not go back to lines before the last match")
	assert.Contains(t, err.Error(), "exited", "once the child is gone Expect fails at once")
	assert.False(t, p.Kill(), "Kill of a child that exited by itself reports false")
}

func TestWaitReportsFailure(t *testing.T) {
	p := testproc.Start(t, "fail")
	_, err := p.Expect("partial", 30*time.Second)
	require.NoError(t, err)
	err = p.Wait(30 * time.Second)
	require.Error(t, err, "a role that returns an error exits non-zero")
	assert.Contains(t, err.Error(), "exit status 1")
	assert.Contains(t, err.Error(), "boom-detail", "Wait's error carries the child's stderr")
	assert.Contains(t, err.Error(), "exploded", "the role's error is printed to stderr")
	assert.Contains(t, p.Stderr(), "boom-detail")

	_, err = p.Expect("never printed", 30*time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "boom-detail", "Expect's error carries the child's stderr")
}

func TestUnknownRole(t *testing.T) {
	p := testproc.Start(t, "no-such-role")
	err := p.Wait(30 * time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "exit status 3")
	assert.Contains(t, err.Error(), `unknown role "no-such-role"`)
}

func TestStdinBarrier(t *testing.T) {
	p := testproc.Start(t, "block")
	_, err := p.Expect("ready", 30*time.Second)
	require.NoError(t, err)
	_, err = fmt.Fprintf(p.Stdin, "x\ny\n")
	require.NoError(t, err)
	require.NoError(t, p.Stdin.Close())
	line, err := p.Expect("stdin=", 30*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "stdin=x,y", line, "WaitStdinClosed returns the lines written before the close")
	require.NoError(t, p.Wait(30*time.Second))
}

func TestKill(t *testing.T) {
	p := testproc.Start(t, "block")
	_, err := p.Expect("ready", 30*time.Second)
	require.NoError(t, err)
	assert.True(t, p.Kill(), "a blocked child dies of SIGKILL")
	err = p.Wait(time.Second)
	require.Error(t, err)
	assert.Contains(t, err.Error(), "killed")
}

func TestWaitTimeoutKills(t *testing.T) {
	p := testproc.Start(t, "block")
	_, err := p.Expect("ready", 30*time.Second)
	require.NoError(t, err)
	err = p.Wait(50 * time.Millisecond)
	require.Error(t, err, "the child waits for its stdin, so it is still running")
	assert.Contains(t, err.Error(), "still running")
	require.NotNil(t, p.Cmd.ProcessState, "Wait reaped the child")
	assert.False(t, p.Cmd.ProcessState.Exited(), "Wait killed the child; it did not exit by itself")
}

func TestExpectTimeout(t *testing.T) {
	p := testproc.Start(t, "block")
	_, err := p.Expect("ready", 30*time.Second)
	require.NoError(t, err)
	_, err = p.Expect("stdin=", 20*time.Millisecond)
	require.Error(t, err, "the child prints nothing until its stdin closes")
	assert.Contains(t, err.Error(), "printed no")
	// The child is still there and goes on when released.
	require.NoError(t, p.Stdin.Close())
	line, err := p.Expect("stdin=", 30*time.Second)
	require.NoError(t, err)
	assert.Equal(t, "stdin=", line)
	require.NoError(t, p.Wait(30*time.Second))
}
