package bench

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"

	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// The ring/spin series: one-way latency of the bare ring between two
// processes, paced like the floors. The sender stamps Now() into a 64-byte
// record and appends it; the receiver spins on the index word of its next
// record (Reader.Ready), as the event bus's Spin poller does, reads the
// record, reads the clock and acknowledges. Next to events/spin, it tells
// what the ring's layout costs from what the bus's work adds: encoding,
// decoding and dispatch.

// RingSpinReceive is the receiving side of ring/spin: it opens (creating)
// the ring at path, with the default geometry, and measures n records.
func RingSpinReceive(l *Link, path string, n int) (*Result, error) {
	r, err := ring.Open(path, ring.Options{})
	if err != nil {
		return nil, err
	}
	defer r.Close()
	prefault(r) // the first touch of a page is a fault, not latency
	rd, err := r.NewReader(ring.ReaderOptions{})
	if err != nil {
		return nil, err
	}
	defer rd.Close()
	lat := new(Latency)
	l.pid.Store(int32(os.Getpid())) // ordered before Ready's store
	l.Ready()
	var last int64
	for i := 1; i <= n; {
		// Lock-free loads of one index word, not Read: a Read of an empty
		// ring loads the claim counter, whose line the sender then waits
		// to take back.
		if err := l.spin("record", func() bool { return rd.Ready(rd.Cursor()) }); err != nil {
			return nil, fmt.Errorf("%w (after %d of %d samples)", err, i-1, n)
		}
		rec, err := rd.Read()
		switch {
		case errors.Is(err, ring.ErrEmpty), errors.Is(err, ring.ErrPending):
			continue // a lapped cursor moved on: spin again
		case err != nil:
			return nil, err
		}
		now := Now()
		if len(rec.Data) < 8 {
			return nil, fmt.Errorf("bench: record %d holds %d bytes, not a stamp", rec.Seq, len(rec.Data))
		}
		stamp := int64(binary.LittleEndian.Uint64(rec.Data))
		if err := nextStamp(stamp, last, i); err != nil {
			return nil, err
		}
		last = stamp
		lat.Record(now - stamp)
		l.Ack(i)
		i++
	}
	return &Result{Latency: lat, Counters: readerCounters(rd.Stats())}, nil
}

// RingSpinSend is the sending side of ring/spin: n records of
// EventsPayload bytes appended to the ring at path, one in flight.
func RingSpinSend(l *Link, path string, n int) error {
	if err := l.WaitReady(); err != nil {
		return err
	}
	region, err := shm.Open(path, shm.Options{}) // the receiver created it before Ready
	if err != nil {
		return err
	}
	r := ring.New(region)
	defer r.Close()
	prefault(r)
	msg := make([]byte, EventsPayload)
	for i := 1; i <= n; i++ {
		if err := l.WaitAck(i - 1); err != nil {
			return err
		}
		binary.LittleEndian.PutUint64(msg, uint64(Now()))
		if _, err := r.Append(msg); err != nil {
			return fmt.Errorf("bench: ring/spin sample %d: %w", i, err)
		}
	}
	return l.WaitAck(n)
}
