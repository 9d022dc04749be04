// Package events is an event bus between the processes of one machine, on
// a shared-memory ring (package ring): the semantics of Kong's
// lua-resty-worker-events, in Go, for prefork servers.
//
// Every process that opens the same file is on the same bus. Any process
// posts an event (a source, a name and opaque data); every process sees
// every event once, in the same order, its own included. An event posted
// with a unique key runs in exactly one process, and later events with the
// key are ignored everywhere until a timeout has passed. PostLocal reaches
// only the posting process.
//
//	bus, err := events.Open(events.Options{Path: "/dev/shm/app.events"})
//	defer bus.Close()
//	bus.Register(func(e *events.Event) { ... }, "cache", "purge")
//	res, err := bus.Post("cache", "purge", []byte("users"))
//
// Handlers run on one goroutine per bus, one event at a time: the poller
// goroutine, which by default sleeps on the region's futex and wakes within
// microseconds of a post (Mode Wake), or the caller of Poll and Post (Mode
// Manual). Nothing is lost silently: a process that falls behind by more
// than the ring holds learns how many events it missed (Stats.Lost), an
// event whose poster died mid-write is skipped after WaitMax and counted
// (Stats.Abandoned), and a slow Subscribe channel drops events for itself
// only, counted (Stats.Dropped).
//
// The wire format of an event and the unique table's byte map are
// documented next to the code that owns them, in codec.go and unique.go.
package events
