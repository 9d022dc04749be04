package bench

import (
	"encoding/binary"
	"fmt"
)

// Every message the scenarios send, over every transport, starts with the
// same 16 bytes, and is padded with zeros to the payload size:
//
//	offset  size  field
//	0       8     stamp: the sender's Now() just before the send, little endian
//	8       8     tag: producer id (16 bits) << 48 | sequence (48 bits)
//
// A producer numbers its messages 0, 1, 2, ... and ends with one message
// whose sequence is endSeq. A reader checks every producer's sequence: a gap
// is a loss, a step back is a fault of order. Every reader also hashes the
// tags in the order it received them, so that readers of a transport with a
// global order can be compared.

const (
	// MinSize is the smallest payload a scenario can send: the header.
	MinSize = 16

	seqBits = 48
	seqMask = 1<<seqBits - 1
	endSeq  = seqMask
)

func putFrame(msg []byte, stamp int64, id int, seq uint64) {
	binary.LittleEndian.PutUint64(msg, uint64(stamp))
	binary.LittleEndian.PutUint64(msg[8:], uint64(id)<<seqBits|seq&seqMask)
}

func readFrame(msg []byte) (stamp int64, id int, seq uint64) {
	tag := binary.LittleEndian.Uint64(msg[8:])
	return int64(binary.LittleEndian.Uint64(msg)), int(tag >> seqBits), tag & seqMask
}

// ReaderResult is what one reader process reports at the end of a run.
type ReaderResult struct {
	Received  uint64   `json:"received"`   // messages received, end markers excluded
	Disorder  uint64   `json:"disorder"`   // messages that came after a later one of the same producer
	Malformed uint64   `json:"malformed"`  // messages of the wrong size or an unknown producer
	OrderHash uint64   `json:"order_hash"` // FNV-1a of the tags in the order received
	EndNs     int64    `json:"end_ns"`     // Now() when the last end marker arrived
	Latency   *Latency `json:"latency"`
	// Counters are the transport's own counts (the bus's lost and
	// abandoned events, say).
	Counters map[string]int64 `json:"counters,omitempty"`
}

// verifier checks a reader's messages and records their latencies.
type verifier struct {
	size      int
	next      []uint64 // per producer: the sequence expected next
	ended     []bool
	endsLeft  int
	sample    uint64 // record the latency of one message in sample
	res       ReaderResult
	lastStamp int64
}

func newVerifier(producers, size, sample int) *verifier {
	return &verifier{
		size:     size,
		next:     make([]uint64, producers),
		ended:    make([]bool, producers),
		endsLeft: producers,
		sample:   uint64(max(sample, 1)),
		res:      ReaderResult{Latency: new(Latency), OrderHash: fnvOffset},
	}
}

const (
	fnvOffset = 14695981039346656037
	fnvPrime  = 1099511628211
)

// add takes one message just received; it returns false once every
// producer's end marker has arrived. It reads the clock only for the
// messages it samples (and the end markers): a clock read costs tens of
// nanoseconds, more than some transports take per message.
func (v *verifier) add(msg []byte) bool {
	if len(msg) != v.size {
		v.res.Malformed++
		return v.endsLeft > 0
	}
	stamp, id, seq := readFrame(msg)
	if id >= len(v.next) {
		v.res.Malformed++
		return v.endsLeft > 0
	}
	if seq == endSeq {
		if !v.ended[id] {
			v.ended[id] = true
			v.endsLeft--
			if v.endsLeft == 0 {
				v.res.EndNs = Now()
			}
		}
		return v.endsLeft > 0
	}
	// A gap is a loss, which the harness counts as sent - received; a
	// step back (a duplicate, or a reordering) is a fault.
	if seq < v.next[id] {
		v.res.Disorder++
	} else {
		v.next[id] = seq + 1
	}
	v.res.Received++
	tag := binary.LittleEndian.Uint64(msg[8:])
	v.res.OrderHash = (v.res.OrderHash ^ tag) * fnvPrime
	if seq%v.sample == 0 {
		v.res.Latency.Record(Now() - stamp)
	}
	return true
}

// done reports whether every end marker has arrived.
func (v *verifier) done() bool { return v.endsLeft == 0 }

// result returns the reader's result; a reader that stopped before every
// end marker arrived (it was told to, the markers were lost) ends now.
func (v *verifier) result(now int64) ReaderResult {
	if v.res.EndNs == 0 {
		v.res.EndNs = now
	}
	return v.res
}

// ProducerResult is what one producer process reports.
type ProducerResult struct {
	Sent    uint64 `json:"sent"`    // messages sent, end marker excluded
	Dropped uint64 `json:"dropped"` // messages the transport refused (counted, not resent)
	Behind  uint64 `json:"behind"`  // at a rate: sends a whole period late

	StartNs int64 `json:"start_ns"` // Now() at the first send
	EndNs   int64 `json:"end_ns"`   // Now() after the end marker
}

func (r ProducerResult) String() string {
	return fmt.Sprintf("sent=%d dropped=%d", r.Sent, r.Dropped)
}
