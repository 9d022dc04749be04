package ring

import (
	"time"

	"github.com/shmring/shmring/internal/proc"
)

// ReaderInfo is a snapshot of one registry slot.
type ReaderInfo struct {
	Slot      int
	PID       int
	Alive     bool // the owning process still runs (same pid and start time)
	Cursor    uint64
	Received  uint64
	Lost      uint64
	Abandoned uint64
	Corrupt   uint64
	Heartbeat time.Time // when the reader published its counters, within a millisecond of the last time
	Waiting   bool      // asleep on the ring's futex
}

// claimSlot takes a free registry slot for this process, reclaiming slots of
// dead processes on the way.
func (r *Ring) claimSlot() (int, uint64, error) {
	me := uint64(proc.Self())
	for pass := 0; pass < 2; pass++ {
		for i := range r.slots {
			s := &r.slots[i]
			owner := s.owner.Load() // acquire: pairs with the release of a slot in Reader.Close
			if owner != 0 {
				if pass == 0 || !r.reclaim(i, owner) {
					continue
				}
			}
			// Full barrier: the slot is ours before we reset its counters;
			// observers may briefly see the previous owner's numbers.
			if s.owner.CompareAndSwap(0, me) {
				s.received.Store(0)
				s.lost.Store(0)
				s.abandoned.Store(0)
				s.corrupt.Store(0)
				s.waiting.Store(0)
				return i, me, nil
			}
		}
	}
	return -1, 0, ErrNoReaderSlot
}

// reclaim frees slot i if its owner (as read: owner) is dead. It reports
// whether it freed it. (A reader that died asleep left at most the ring's
// sleeping flag set, which costs the next producer one spare wake-up.)
func (r *Ring) reclaim(i int, owner uint64) bool {
	if proc.Owner(owner).Alive() {
		return false
	}
	// Full barrier: only one reclaimer wins.
	return r.slots[i].owner.CompareAndSwap(owner, 0)
}

// Reclaim frees the registry slots of readers whose processes have died and
// returns how many it freed (none once the ring is closed).
func (r *Ring) Reclaim() int {
	if r.closed.Load() {
		return 0
	}
	n := 0
	for i := range r.slots {
		if owner := r.slots[i].owner.Load(); owner != 0 && r.reclaim(i, owner) {
			n++
		}
	}
	return n
}

// Readers returns the registry's occupied slots; nil once the ring is
// closed.
func (r *Ring) Readers() []ReaderInfo {
	if r.closed.Load() {
		return nil
	}
	var out []ReaderInfo
	for i := range r.slots {
		s := &r.slots[i]
		owner := s.owner.Load() // acquire: pairs with the claim CAS
		if owner == 0 {
			continue
		}
		out = append(out, ReaderInfo{
			Slot:      i,
			PID:       proc.Owner(owner).PID(),
			Alive:     proc.Owner(owner).Alive(),
			Cursor:    s.cursor.Load(),
			Received:  s.received.Load(),
			Lost:      s.lost.Load(),
			Abandoned: s.abandoned.Load(),
			Corrupt:   s.corrupt.Load(),
			Heartbeat: time.Unix(0, int64(s.heartbeat.Load())),
			Waiting:   s.waiting.Load() != 0,
		})
	}
	return out
}
