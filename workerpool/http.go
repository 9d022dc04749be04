package workerpool

import (
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
)

// ServeHTTP serves srv on lns until ctx ends, then drains: it stops
// accepting, lets every connection it has accepted finish its request (with
// keep-alives off, so each closes after its response), then shuts srv down.
// It is the body of a worker's Main for an HTTP server; the pool's sockets
// stay open in the master and the other workers, so connections that this
// worker no longer accepts wait in the kernel's queue for them.
//
// Server.Shutdown alone is not enough: a connection accepted just before it
// whose request is read after it began is closed without an answer. A
// connection that never sends a request keeps the drain waiting; the
// master's grace period bounds that (or set srv.ReadHeaderTimeout).
//
// It returns nil after a drain, or the first error of Serve.
func ServeHTTP(ctx context.Context, srv *http.Server, lns ...net.Listener) error {
	tr := &connTracker{conns: map[net.Conn]http.ConnState{}, changed: make(chan struct{})}
	prev := srv.ConnState
	srv.ConnState = func(c net.Conn, s http.ConnState) {
		tr.set(c, s)
		if prev != nil {
			prev(c, s)
		}
	}
	served := make(chan error, len(lns))
	dls := make([]*drainListener, len(lns))
	for i, ln := range lns {
		dls[i] = &drainListener{Listener: ln}
		go func() { served <- srv.Serve(dls[i]) }()
	}
	var err error
	running := len(lns)
	select {
	case <-ctx.Done():
	case err = <-served: // a listener failed: stop serving on all
		running--
	}
	srv.SetKeepAlivesEnabled(false) // also closes idle keep-alive connections
	for _, l := range dls {
		l.drain()
	}
	for range running {
		if e := <-served; err == nil && !errors.Is(e, errDraining) && !errors.Is(e, http.ErrServerClosed) {
			err = e
		}
	}
	if errors.Is(err, errDraining) || errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	tr.waitQuiet()
	return errors.Join(err, srv.Shutdown(context.Background()))
}

// errDraining is what a drained listener's Accept returns.
var errDraining = errors.New("workerpool: listener drained")

// drainListener is a listener whose Accept stops without setting the
// server's shutdown flag, which would make it drop requests it then reads.
type drainListener struct {
	net.Listener
	once sync.Once
	mu   sync.Mutex
	done bool
}

// Accept returns errDraining once drain has closed the listener.
func (l *drainListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		l.mu.Lock()
		defer l.mu.Unlock()
		if l.done {
			return nil, errDraining
		}
	}
	// A connection accepted as the drain began is served all the same:
	// Serve tracks it before it calls Accept again.
	return c, err
}

func (l *drainListener) drain() {
	l.once.Do(func() {
		l.mu.Lock()
		l.done = true
		l.mu.Unlock()
		l.Listener.Close()
	})
}

// Close is called by Serve on its way out; the drain closed it already.
func (l *drainListener) Close() error {
	l.drain()
	return nil
}

// connTracker follows the server's connections through ConnState.
type connTracker struct {
	mu      sync.Mutex
	conns   map[net.Conn]http.ConnState
	changed chan struct{}
}

func (t *connTracker) set(c net.Conn, s http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if s == http.StateClosed || s == http.StateHijacked {
		delete(t.conns, c)
	} else {
		t.conns[c] = s
	}
	close(t.changed)
	t.changed = make(chan struct{})
}

// waitQuiet waits until no connection is new or active: each has answered
// its request (idle ones Shutdown closes).
func (t *connTracker) waitQuiet() {
	for {
		t.mu.Lock()
		busy := false
		for _, s := range t.conns {
			if s == http.StateNew || s == http.StateActive {
				busy = true
				break
			}
		}
		ch := t.changed
		t.mu.Unlock()
		if !busy {
			return
		}
		<-ch
	}
}
