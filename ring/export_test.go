package ring

// Test-only access to the append path's pause points.

// HookPoint names a point inside an append.
type HookPoint = hookPoint

const (
	// HookClaimed: the sequence number is claimed, the index entry untouched.
	HookClaimed = hookClaimed
	// HookBusy: the entry is marked busy(seq), its fields not written.
	HookBusy = hookBusy
)

// SetHook installs f to run at each hook point of every append on r. Set it
// before appending; it is not synchronised.
func SetHook(r *Ring, f func(point HookPoint, seq uint64)) { r.hook = f }
