package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"

	"golang.org/x/sys/unix"
)

// The children of a throughput or rate run: producers and readers over one
// transport, each in a process of its own.

func init() {
	childRoles["producer"] = runProducerChild
	childRoles["reader"] = runReaderChild
}

func (s childSpec) json() string {
	out, _ := json.Marshal(s) // cannot fail: plain fields
	return string(out)
}

func parseChildSpec(args []string) (*childSpec, error) {
	if len(args) != 1 {
		return nil, fmt.Errorf("want one argument, the run's spec; got %d", len(args))
	}
	var s childSpec
	if err := json.Unmarshal([]byte(args[0]), &s); err != nil {
		return nil, fmt.Errorf("spec: %w", err)
	}
	if err := checkSize(s.Size); err != nil {
		return nil, err
	}
	if s.Producers < 1 || s.Readers < 1 || s.ID < 0 {
		return nil, fmt.Errorf("spec: %d producers, %d readers, id %d", s.Producers, s.Readers, s.ID)
	}
	return &s, nil
}

// childTransport parses a producer's or reader's spec and finds its
// transport.
func childTransport(args []string) (*childSpec, *transport, error) {
	spec, err := parseChildSpec(args)
	if err != nil {
		return nil, nil, err
	}
	t, ok := transports[spec.Transport]
	if !ok {
		return nil, nil, fmt.Errorf("unknown transport %q", spec.Transport)
	}
	return spec, t, nil
}

func runProducerChild(args []string, extra []*os.File) (any, error) {
	spec, t, err := childTransport(args)
	if err != nil {
		return nil, err
	}
	snd, err := t.newSender(spec, extra)
	if err != nil {
		return nil, err
	}
	childReady()
	waitRelease()
	res, err := produce(snd.send, spec, false)
	return res, errors.Join(err, snd.close())
}

// produce sends messages for spec.Duration, then the end marker. At a rate
// it keeps to a fixed schedule: it sleeps through most of each gap and
// spins through the rest, then stamps the message as it sends it. A send
// that falls a whole period behind the schedule (the transport held the
// producer up) is counted in Behind, so that a row whose producer could
// not keep its rate says so.
//
// shared says the producer is a goroutine among others (the channel
// baseline): it must yield while it waits. A producer process has its
// thread to itself, and pins it, so that the timer slack it sets stays.
func produce(send func([]byte) error, spec *childSpec, shared bool) (ProducerResult, error) {
	msg := make([]byte, spec.Size)
	var period int64
	if spec.Rate > 0 {
		period = int64(time.Second) / int64(spec.Rate)
		if !shared {
			// Sleep through most of each gap, leaving the CPU to the
			// readers (and a broker), on one thread whose sleeps end on
			// time: the default timer slack is 50µs.
			runtime.LockOSThread()
			defer runtime.UnlockOSThread()
			_ = unix.Prctl(unix.PR_SET_TIMERSLACK, 1, 0, 0, 0)
		}
	}
	res := ProducerResult{StartNs: Now()}
	deadline := res.StartNs + int64(spec.Duration)
	sample := uint64(max(spec.Sample, 1))
	for seq := uint64(0); ; seq++ {
		// At full speed, the clock is read only where it is needed: for
		// the messages the readers sample, and for the deadline.
		var stamp int64
		if period > 0 || seq%sample == 0 || seq%64 == 0 {
			stamp = Now()
			if stamp >= deadline {
				break
			}
		}
		if period > 0 {
			due := res.StartNs + int64(seq)*period
			for ; stamp < due; stamp = Now() {
				// A goroutine among others yields instead of sleeping:
				// time.Sleep overshoots by more than a period at 10k/s.
				switch left := due - stamp; {
				case left > pacingSpin && !shared:
					ts := unix.NsecToTimespec(left - pacingSpin)
					_ = unix.Nanosleep(&ts, nil)
				case shared:
					runtime.Gosched() // a reader or the broker may be waiting for this P
				}
			}
			if stamp-due > period {
				res.Behind++
			}
		}
		putFrame(msg, stamp, spec.ID, seq)
		switch err := send(msg); {
		case errors.Is(err, errDropped):
			res.Dropped++
		case err != nil:
			return res, err
		}
		res.Sent++
	}
	// The end marker must arrive: a transport that drops it is retried.
	for tries := 0; ; tries++ {
		putFrame(msg, Now(), spec.ID, endSeq)
		err := send(msg)
		if err == nil {
			break
		}
		if !errors.Is(err, errDropped) || tries == 100 {
			return res, fmt.Errorf("end marker: %w", err)
		}
	}
	res.EndNs = Now()
	return res, nil
}

// pacingSpin is how long before a message is due a producer at a rate
// stops sleeping and spins: more than a sleep's usual overshoot.
const pacingSpin = 50_000

func runReaderChild(args []string, extra []*os.File) (any, error) {
	spec, t, err := childTransport(args)
	if err != nil {
		return nil, err
	}
	rcv, err := t.newReceiver(spec, extra)
	if err != nil {
		return nil, err
	}
	v := newVerifier(spec.Producers, spec.Size, spec.Sample)
	// The harness closes stdin once every producer is done: a reader
	// whose end markers were lost stops when nothing more is waiting.
	stop := make(chan struct{})
	go func() {
		waitRelease()
		close(stop)
	}()
	childReady()
	err = rcv.receive(v.add, stop)
	counters := rcv.counters()
	// Closed before the results are read: a poller that calls v.add has
	// stopped.
	err = errors.Join(err, rcv.close())
	res := v.result(Now())
	res.Counters = counters
	return res, err
}
