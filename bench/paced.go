package bench

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"

	"github.com/shmring/shmring/events"
)

// Paced latency series: one sample in flight over a Link, the next sent
// only once the receiver has acknowledged the last (see Link). The sending
// side runs in the harness, the receiving side in a child. These are the
// floors, and the event bus measured the way the floors are: in Wake mode,
// each sample waits until the receiver sleeps, so each measures a wake-up.

type pacedSeries struct {
	name  string
	spins bool
	send  func(l *Link, dir string, n int) error
	recv  func(l *Link, dir string, n int) (*Result, error)
}

var pacedSeriesList = []pacedSeries{
	{"floor/cacheline", true,
		func(l *Link, _ string, n int) error { return CachelineSend(l, n) },
		func(l *Link, _ string, n int) (*Result, error) { return CachelineReceive(l, n) }},
	{"floor/futex", false,
		func(l *Link, _ string, n int) error { return FutexSend(l, n) },
		func(l *Link, _ string, n int) (*Result, error) { return FutexReceive(l, n) }},
	{"ring/spin", true,
		func(l *Link, dir string, n int) error { return RingSpinSend(l, ringPath(dir), n) },
		func(l *Link, dir string, n int) (*Result, error) { return RingSpinReceive(l, ringPath(dir), n) }},
	{"events/spin", true,
		func(l *Link, dir string, n int) error { return EventsSend(l, pacedBus(dir), false, n) },
		func(l *Link, dir string, n int) (*Result, error) {
			return EventsReceive(l, pacedBus(dir), events.Spin, n)
		}},
	{"events/wake", false,
		func(l *Link, dir string, n int) error { return EventsSend(l, pacedBus(dir), true, n) },
		func(l *Link, dir string, n int) (*Result, error) {
			return EventsReceive(l, pacedBus(dir), events.Wake, n)
		}},
}

func pacedBus(dir string) string  { return filepath.Join(dir, "events") }
func pacedLink(dir string) string { return filepath.Join(dir, "link") }

func findPaced(name string) (pacedSeries, bool) {
	for _, s := range pacedSeriesList {
		if s.name == name {
			return s, true
		}
	}
	return pacedSeries{}, false
}

func init() {
	childRoles["paced"] = runPacedChild
}

// runPacedChild is the receiving side: args are series, dir and n.
func runPacedChild(args []string, _ []*os.File) (any, error) {
	if len(args) != 3 {
		return nil, fmt.Errorf("want series dir n, got %q", args)
	}
	s, ok := findPaced(args[0])
	if !ok {
		return nil, fmt.Errorf("unknown paced series %q", args[0])
	}
	n, err := strconv.Atoi(args[2])
	if err != nil {
		return nil, err
	}
	l, err := OpenLink(pacedLink(args[1]))
	if err != nil {
		return nil, err
	}
	defer l.Close()
	childReady()
	return s.recv(l, args[1], n)
}
