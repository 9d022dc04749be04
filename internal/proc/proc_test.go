package proc

import (
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestParseStat(t *testing.T) {
	tests := []struct {
		name  string
		in    string
		state byte
		start uint64
		bad   bool
	}{
		{"plain", "42 (sh) S 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 98765 1000 10", 'S', 98765, false},
		{"comm with spaces and parens", "42 (a) b) (c) R 1 42 42 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 555 1000 10", 'R', 555, false},
		{"zombie", "7 (x) Z 1 7 7 0 -1 0 0 0 0 0 0 0 0 0 20 0 1 0 12 0 0", 'Z', 12, false},
		{"no paren", "42 sh S 1", 0, 0, true},
		{"short", "42 (sh) S 1 2 3", 0, 0, true},
		{"empty", "", 0, 0, true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			state, start, err := parseStat([]byte(tc.in))
			if tc.bad {
				assert.Error(t, err)
				return
			}
			require.NoError(t, err)
			assert.Equal(t, tc.state, state)
			assert.Equal(t, tc.start, start)
		})
	}
}

func TestAlive(t *testing.T) {
	self := SelfStartTime()
	require.NotZero(t, self, "this process has a start time")
	assert.True(t, Alive(os.Getpid(), uint32(self)))
	assert.False(t, Alive(os.Getpid(), uint32(self)+1), "a different start time is a different process")
	assert.False(t, Alive(0, 0))

	cmd := exec.Command("true")
	require.NoError(t, cmd.Run())
	assert.False(t, Alive(cmd.Process.Pid, 0), "an exited, reaped child is not alive")
}

func TestOwnerWord(t *testing.T) {
	w := OwnerOf(123456, 0x1_2345_6789)
	assert.Equal(t, 123456, w.PID())
	assert.Equal(t, uint32(0x2345_6789), w.Start())
	assert.True(t, Self().Alive())
	assert.Equal(t, os.Getpid(), Self().PID())
}

func TestStopped(t *testing.T) {
	cmd := exec.Command("sleep", "60")
	require.NoError(t, cmd.Start())
	defer func() {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
	}()
	stopped, err := Stopped(cmd.Process.Pid)
	require.NoError(t, err)
	assert.False(t, stopped, "a sleeping process is not stopped")
	require.NoError(t, cmd.Process.Signal(syscall.SIGSTOP))
	deadline := time.Now().Add(30 * time.Second)
	for !stopped && time.Now().Before(deadline) {
		stopped, err = Stopped(cmd.Process.Pid)
		require.NoError(t, err)
	}
	assert.True(t, stopped, "every thread shows 'T' after SIGSTOP")
	_, err = Stopped(-1)
	assert.Error(t, err, "no such process")
}
