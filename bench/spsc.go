package bench

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"runtime"
	"sync/atomic"
	"unsafe"

	"github.com/shmring/shmring/shm"
)

// The throughput floor: a bare single-producer, single-consumer ring of
// fixed-size slots between two processes. The writer publishes its head
// once per spscPublishEvery messages, the reader its tail likewise, and the
// reader copies each message out and checks nothing but a counter in it. No variable lengths, no
// ordering between producers, no loss accounting: what the hardware allows
// for the message size, and what shmring's ring is measured against.
//
// It lives in a shm region (the harness makes it): the control area holds
// the words, each in a 128-byte block of its own, the data area the slots.
//
//	control offset  word
//	0               head: messages written (the writer's)
//	128             tail: messages read (the reader's)
//	256             end: 1 + the number of messages, once the writer is done

const spscPublishEvery = 64

func init() {
	childRoles["spsc-writer"] = runSPSCWriter
	childRoles["spsc-reader"] = runSPSCReader
}

func spscPath(dir string) string { return filepath.Join(dir, "spsc") }

// spscSlot is the slot size for messages of size bytes: 8-byte aligned.
func spscSlot(size int) int { return (size + 7) &^ 7 }

func prepareSPSC(r *runEnv) error {
	slot := spscSlot(r.spec.Size)
	data := uint64(4 << 20)
	for data < uint64(64*slot) {
		data <<= 1
	}
	region, err := shm.Create(spscPath(r.spec.Dir), shm.Options{Geometry: shm.Geometry{IndexSlots: 16, DataBytes: data}})
	if err != nil {
		return err
	}
	return region.Close()
}

type spscRing struct {
	region          *shm.Region
	head, tail, end *atomic.Uint64
	slots           []byte
	slot            uint64
	mask            uint64
}

// openSPSC opens the ring of the run that args (a child's spec) names.
func openSPSC(args []string) (*childSpec, *spscRing, error) {
	spec, err := parseChildSpec(args)
	if err != nil {
		return nil, nil, err
	}
	region, err := shm.Open(spscPath(spec.Dir), shm.Options{})
	if err != nil {
		return nil, nil, err
	}
	_ = region.Prefault() // as the rings' children do
	ctl := region.Control()
	slot := uint64(spscSlot(spec.Size))
	n := region.Geometry().DataBytes / slot
	for n&(n-1) != 0 {
		n &= n - 1 // a power of two, for the mask
	}
	return spec, &spscRing{
		region: region,
		head:   (*atomic.Uint64)(unsafe.Pointer(&ctl[0])),
		tail:   (*atomic.Uint64)(unsafe.Pointer(&ctl[128])),
		end:    (*atomic.Uint64)(unsafe.Pointer(&ctl[256])),
		slots:  region.Data()[:n*slot],
		slot:   slot,
		mask:   n - 1,
	}, nil
}

func runSPSCWriter(args []string, _ []*os.File) (any, error) {
	spec, q, err := openSPSC(args)
	if err != nil {
		return nil, err
	}
	defer q.region.Close()
	head, tail, slots, mask, slot := q.head, q.tail, q.slots, q.mask, q.slot
	msg := make([]byte, slot)
	childReady()
	waitRelease()
	res := ProducerResult{StartNs: Now()}
	deadline := res.StartNs + int64(spec.Duration)
	limit := tail.Load() + mask + 1 // acquire: pairs with the reader's tail store; slots below limit are free
	var i uint64
	for ; ; i++ {
		if i%1024 == 0 && Now() > deadline {
			break
		}
		for i >= limit {
			runtime.Gosched()
			limit = tail.Load() + mask + 1
		}
		binary.LittleEndian.PutUint64(msg, i)
		copy(slots[(i&mask)*slot:], msg)
		if (i+1)%spscPublishEvery == 0 {
			head.Store(i + 1) // release: the messages before i+1 are written
		}
	}
	head.Store(i)      // release: every message is written
	q.end.Store(i + 1) // after head: a reader that sees end sees the final head
	res.Sent, res.EndNs = i, Now()
	return res, nil
}

func runSPSCReader(args []string, _ []*os.File) (any, error) {
	_, q, err := openSPSC(args)
	if err != nil {
		return nil, err
	}
	defer q.region.Close()
	head, tail, slots, mask, slot := q.head, q.tail, q.slots, q.mask, q.slot
	msg := make([]byte, slot)
	childReady()
	var res ReaderResult
	var i uint64
	for {
		h := head.Load() // acquire: pairs with the writer's head store
		if h == i {
			if e := q.end.Load(); e != 0 && e-1 == i { // pairs with the writer's end store, after its last head
				break
			}
			continue
		}
		for ; i < h; i++ {
			copy(msg, slots[(i&mask)*slot:])
			if binary.LittleEndian.Uint64(msg) != i {
				res.Disorder++
			}
			if (i+1)%spscPublishEvery == 0 {
				tail.Store(i + 1) // release: slots before i+1 may be reused
			}
		}
	}
	res.Received, res.EndNs = i, Now()
	return res, nil
}
