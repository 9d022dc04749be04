package events

import (
	"context"
	"slices"
	"sync"
	"sync/atomic"
)

// Handler handles one event. See Event for how long e may be used.
type Handler func(e *Event)

// Registration is one handler's registration, returned by Register.
type Registration struct {
	bus    *Bus
	fn     Handler
	source string
	names  []string
	active atomic.Bool
	stop   func() bool // stops RegisterContext's watch; nil otherwise
	sub    bool        // a Subscribe channel's feeder: counts its own deliveries
}

func (r *Registration) matches(e *Event) bool {
	if r.source == "" {
		return true
	}
	if r.source != e.Source {
		return false
	}
	return len(r.names) == 0 || slices.Contains(r.names, e.Name)
}

// Register calls h for every event of source with one of names: every
// event when source is "", every event of source when names is empty.
// Handlers run in the order they were registered, on the goroutine that
// polls (the poller's, or the caller of Poll and Post in Manual mode), one
// event at a time. A handler that panics is recovered, logged and counted
// in Stats.HandlerPanics; the other handlers and events go on.
//
// On a closed bus Register returns a Registration that never runs.
func (b *Bus) Register(h Handler, source string, names ...string) *Registration {
	return b.register(h, false, source, names...)
}

func (b *Bus) register(h Handler, sub bool, source string, names ...string) *Registration {
	r := &Registration{bus: b, fn: h, source: source, names: slices.Clone(names), sub: sub}
	if h == nil {
		return r
	}
	b.regMu.Lock()
	defer b.regMu.Unlock()
	if b.closed.Load() {
		return r
	}
	r.active.Store(true)
	old := *b.handlers.Load()
	next := append(slices.Clip(old), r)
	b.handlers.Store(&next) // dispatch loads it with the next event
	return r
}

// RegisterContext is Register with a lifetime: the handler is unregistered
// when ctx ends (shortly after: by a goroutine that context.AfterFunc
// starts, so an event polled at that moment may still reach it). It is the Go form of the model's register_weak: tie a
// handler to the life of whatever owns ctx.
func (b *Bus) RegisterContext(ctx context.Context, h Handler, source string, names ...string) *Registration {
	r := b.Register(h, source, names...)
	if r.active.Load() {
		stop := context.AfterFunc(ctx, func() { r.unregister() })
		b.regMu.Lock()
		r.stop = stop
		if b.closed.Load() {
			stop() // the bus closed meanwhile; its teardown may have missed us
			r.stop = nil
		}
		b.regMu.Unlock()
	}
	return r
}

// Unregister stops delivery to the handler: no call starts after it returns
// (a call already running, on another goroutine, may finish). It reports
// whether the handler was registered; a second Unregister returns false.
func (r *Registration) Unregister() bool {
	r.bus.regMu.Lock()
	stop := r.stop
	r.stop = nil
	r.bus.regMu.Unlock()
	if stop != nil {
		stop()
	}
	return r.unregister()
}

func (r *Registration) unregister() bool {
	b := r.bus
	b.regMu.Lock()
	defer b.regMu.Unlock()
	// Cleared first: a dispatch holding the old list checks it per call.
	if !r.active.Swap(false) {
		return false
	}
	old := *b.handlers.Load()
	next := make([]*Registration, 0, len(old))
	for _, o := range old {
		if o != r {
			next = append(next, o)
		}
	}
	b.handlers.Store(&next)
	return true
}

// subscription is a channel fed by a handler that never blocks.
type subscription struct {
	mu     sync.Mutex
	ch     chan *Event
	closed bool
	stop   func() bool // stops the watch on the subscriber's context
}

func (s *subscription) send(e *Event) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return true // nothing to deliver to any more; not a drop
	}
	select {
	case s.ch <- e:
		return true
	default:
		return false
	}
}

func (s *subscription) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.closed {
		s.closed = true
		close(s.ch)
	}
}

// Subscribe delivers matching events (as Register matches them) on a
// channel with room for buffer events. Each event on it is a copy the
// receiver owns. When the channel is full the event is dropped for this
// channel only and counted in Stats.Dropped: a slow consumer never holds up
// the bus. The channel is closed when ctx ends or the bus closes.
func (b *Bus) Subscribe(ctx context.Context, buffer int, source string, names ...string) <-chan *Event {
	s := &subscription{ch: make(chan *Event, max(buffer, 0))}
	b.regMu.Lock()
	if b.closed.Load() {
		b.regMu.Unlock()
		s.close()
		return s.ch
	}
	b.subs[s] = struct{}{}
	b.regMu.Unlock()
	reg := b.register(func(e *Event) {
		if s.send(e.Clone()) {
			b.countHandled() // under pollMu, as every handler call
		} else {
			b.stats.dropped.Add(1)
		}
	}, true, source, names...)
	stop := context.AfterFunc(ctx, func() {
		reg.Unregister()
		b.regMu.Lock()
		delete(b.subs, s)
		b.regMu.Unlock()
		s.close()
	})
	b.regMu.Lock()
	s.stop = stop
	if b.closed.Load() {
		// The bus closed meanwhile: its teardown may have run before stop
		// was set, and would not release ctx's hold on us.
		stop()
		s.stop = nil
	}
	b.regMu.Unlock()
	return s.ch
}
