package ring

// Test-only access to the append path's pause points.

// HookPoint names a point inside an append.
type HookPoint = hookPoint

const (
	// HookClaimed: the sequence number is claimed, the commit CAS on its
	// index word not tried yet (nor the record's checksum written).
	HookClaimed = hookClaimed
)

// SetHook installs f to run at each hook point of every append on r. Set it
// before appending; it is not synchronised.
func SetHook(r *Ring, f func(point HookPoint, seq uint64)) { r.hook = f }
