package lines

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestNextConsumesUpToTheMatch(t *testing.T) {
	r, w := io.Pipe()
	b := New()
	go b.Scan(r)
	go func() {
		io.WriteString(w, "one\nready\nresult {\"x\":1}\nlast\n")
		w.Close()
	}()
	line, err := b.Expect("result ", time.Minute)
	require.NoError(t, err)
	assert.Equal(t, `result {"x":1}`, line)
	line, err = b.Next(func(l string) bool { return l == "last" }, time.Minute)
	require.NoError(t, err)
	assert.Equal(t, "last", line)
	_, err = b.Expect("ready", time.Minute)
	assert.ErrorIs(t, err, ErrEnded, "ready was consumed on the way to result")
	<-b.Ended()
	assert.Equal(t, []string{"one", "ready", `result {"x":1}`, "last"}, b.All())
}

func TestTimeoutAndLongLines(t *testing.T) {
	r, w := io.Pipe()
	defer w.Close()
	b := New()
	go b.Scan(r)
	_, err := b.Expect("never", 10*time.Millisecond)
	assert.ErrorIs(t, err, ErrTimeout)

	long := strings.Repeat("x", 1<<20)
	go io.WriteString(w, long+"\n")
	line, err := b.Expect("x", time.Minute)
	require.NoError(t, err)
	assert.Len(t, line, 1<<20)
}

func TestChangedClosesOnTheNextLine(t *testing.T) {
	r, w := io.Pipe()
	defer w.Close()
	b := New()
	go b.Scan(r)
	changed := b.Changed()
	select {
	case <-changed:
		t.Fatal("closed before any line")
	default:
	}
	go io.WriteString(w, "one\n")
	select {
	case <-changed:
	case <-time.After(time.Minute):
		t.Fatal("not closed by a line")
	}
	assert.Equal(t, []string{"one"}, b.All())
}

func TestTextConcurrentWriters(t *testing.T) {
	var text Text
	var wg sync.WaitGroup
	for i := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 100 {
				fmt.Fprintf(&text, "%d\n", i)
				_ = text.String() // read while others write
			}
		}()
	}
	wg.Wait()
	got := strings.Split(strings.TrimSpace(text.String()), "\n")
	assert.Len(t, got, 400, "every write is kept whole")
	counts := map[string]int{}
	for _, l := range got {
		counts[l]++
	}
	assert.Equal(t, map[string]int{"0": 100, "1": 100, "2": 100, "3": 100}, counts)
}
