package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/events"
)

// The events series: one-way latency of the event bus between two processes.
// The sender stamps Now() into the event's data and Publishes it; the
// receiver's handler reads the clock first thing, records the difference
// and acknowledges over the Link. Paced like the floors: one event in
// flight.
//
// In Wake mode the sender waits, before it stamps, until the receiver's bus
// has announced that it sleeps (its reader-registry slot shows Waiting) and
// no thread of the receiving process is running, so each sample measures a
// wake-up, as the futex floor does. The receiver counts under "awake" the
// samples during which none of its threads blocked. In Spin mode the
// receiver's poller never sleeps, as the cache-line floor's receiver.

// Source and name of the events the series send.
const (
	eventsSource = "bench"
	eventsName   = "latency"
)

// EventsPayload is the data size of the events the series send (the first
// 8 bytes carry the stamp).
const EventsPayload = 64

// EventsReceive is the receiving side of an events series: it opens the bus
// at path in mode, measures n events and acknowledges each.
func EventsReceive(l *Link, path string, mode events.Mode, n int) (*Result, error) {
	bus, err := events.Open(events.Options{Path: path, Mode: mode})
	if err != nil {
		return nil, err
	}
	defer bus.Close()
	prefault(bus.Ring()) // the first touch of a page is a fault, not latency
	lat := new(Latency)
	done := make(chan error, 1)
	i, last, awake := 0, int64(0), int64(0)
	switches, err := processSwitches()
	if err != nil {
		return nil, err
	}
	bus.Register(func(e *events.Event) {
		now := Now()
		if i >= n || len(e.Data) < 8 {
			return
		}
		stamp := int64(binary.LittleEndian.Uint64(e.Data))
		i++
		if err := nextStamp(stamp, last, i); err != nil {
			done <- err
			return
		}
		last = stamp
		lat.Record(now - stamp)
		if mode == events.Wake {
			// A system call per sample: only where "awake" means something.
			if s, err := processSwitches(); err == nil {
				if s == switches {
					awake++
				}
				switches = s
			}
		}
		l.Ack(i)
		if i == n {
			done <- nil
		}
	}, eventsSource, eventsName)
	l.pid.Store(int32(os.Getpid())) // ordered before Ready's store
	l.Ready()
	select {
	case err := <-done:
		if err != nil {
			return nil, err
		}
	case <-time.After(l.Timeout + time.Duration(n)*time.Millisecond):
		return nil, fmt.Errorf("bench: events receiver got %d of %d samples", i, n)
	}
	st := bus.Stats()
	counters := map[string]int64{"lost": int64(st.Lost), "abandoned": int64(st.Abandoned)}
	if mode == events.Wake {
		counters["awake"] = awake
	}
	return &Result{Latency: lat, Counters: counters}, nil
}

// EventsSend is the sending side of an events series: n events on the bus
// at path. wake says the receiver runs in Wake mode (see above).
func EventsSend(l *Link, path string, wake bool, n int) error {
	if err := l.WaitReady(); err != nil {
		return err
	}
	bus, err := events.Open(events.Options{Path: path, Mode: events.Manual})
	if err != nil {
		return err
	}
	defer bus.Close()
	prefault(bus.Ring())
	pid := int(l.pid.Load()) // after WaitReady: stored before Ready
	threads, err := newProcessThreads(pid)
	if err != nil {
		return err
	}
	defer threads.close()
	data := make([]byte, EventsPayload)
	for i := 1; i <= n; i++ {
		if err := l.WaitAck(i - 1); err != nil {
			return err
		}
		if wake {
			if err := l.waitBusAsleep(bus, threads); err != nil {
				return err
			}
		}
		binary.LittleEndian.PutUint64(data, uint64(Now()))
		if _, err := bus.Publish(eventsSource, eventsName, data); err != nil {
			return err
		}
	}
	return l.WaitAck(n)
}

// waitBusAsleep waits until the receiver's bus announces that it sleeps
// and no thread of its process is running. It must be about as quick as the
// futex floor's check of one thread: in a VM, how long a CPU has been idle
// decides how long waking it takes (tens of microseconds more after a
// millisecond), so a slower check would be measured as latency.
func (l *Link) waitBusAsleep(bus *events.Bus, threads *processThreads) error {
	if err := l.spin("announcement of sleep", func() bool {
		// The sender's own bus never sleeps (Manual), so any sleeper is
		// the receiver. Counters reads the registry without system calls.
		return bus.Ring().Counters().Waiters > 0
	}); err != nil {
		return err
	}
	var serr error
	err := l.spin("sleep of the receiving process", func() bool {
		asleep, err := threads.asleep()
		serr = err
		return asleep || err != nil
	})
	return errors.Join(err, serr)
}

// processThreads watches the states of a process's threads through their
// /proc stat files, kept open between checks.
type processThreads struct {
	pid   int
	files []*threadStat
}

func newProcessThreads(pid int) (*processThreads, error) {
	p := &processThreads{pid: pid}
	return p, p.reopen()
}

func (p *processThreads) reopen() error {
	p.close()
	dir := fmt.Sprintf("/proc/%d/task", p.pid)
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("bench: the events series needs the receiver's thread states: %w", err)
	}
	for _, t := range tasks {
		f, err := os.Open(filepath.Join(dir, t.Name(), "stat"))
		if err != nil {
			continue // the thread exited
		}
		p.files = append(p.files, &threadStat{f: f})
	}
	return nil
}

func (p *processThreads) close() {
	for _, t := range p.files {
		t.f.Close()
	}
	p.files = nil
}

// asleep reports whether no thread is running or runnable. A thread that
// exited, or one started since the last listing, makes it list them again.
func (p *processThreads) asleep() (bool, error) {
	for _, t := range p.files {
		s, err := t.state()
		if err != nil {
			return false, p.reopen()
		}
		if s == 'R' {
			return false, nil
		}
	}
	return true, nil
}

// processSwitches returns how often the process's threads have blocked.
func processSwitches() (int64, error) {
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		return 0, fmt.Errorf("bench: getrusage: %w", err)
	}
	return ru.Nvcsw, nil
}
