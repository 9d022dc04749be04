package bench

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// The broker baseline: the design of Kong's lua-resty-events. One broker
// process listens on a unix domain socket; every reader and every producer
// connects to it. The broker reads each producer's messages and writes
// every one to every reader, under one lock, so all readers see one global
// order. Its writes go through a buffer per reader, flushed whenever the
// producer it serves has nothing more waiting: one write per message when
// idle, large writes when busy, as a careful broker does. A reader that is
// slow holds the broker back (its socket buffer fills); nothing is dropped.
//
// A connection announces itself with one byte: 'R' for a reader, 'P' for a
// producer. Messages are the harness's frames, all of the run's size, so
// they need no length prefix.

func brokerPath(dir string) string { return filepath.Join(dir, "broker.sock") }

func init() {
	childRoles["broker"] = runBroker
}

// prepareBroker starts the broker process and waits until it listens.
func prepareBroker(r *runEnv) error {
	spec := r.spec
	c, err := r.group.start("broker", []string{spec.json()})
	if err != nil {
		return err
	}
	r.broker = c
	_, err = c.expect("ready", r.timeout)
	return err
}

// runBroker is the broker process. It relays until every producer has
// connected and hung up, then closes the readers' connections.
func runBroker(args []string, _ []*os.File) (any, error) {
	spec, err := parseChildSpec(args)
	if err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", brokerPath(spec.Dir))
	if err != nil {
		return nil, err
	}
	defer ln.Close()
	childReady()

	var (
		mu      sync.Mutex // held for each message's fan-out, so the order is global
		readers []*bufio.Writer
		conns   []net.Conn
		wg      sync.WaitGroup
		relayed uint64
		errs    = make(chan error, spec.Producers)
	)
	for accepted := 0; accepted < spec.Readers+spec.Producers; accepted++ {
		conn, err := ln.Accept()
		if err != nil {
			return nil, err
		}
		conns = append(conns, conn)
		var kind [1]byte
		if _, err := io.ReadFull(conn, kind[:]); err != nil {
			return nil, fmt.Errorf("broker: hello: %w", err)
		}
		switch kind[0] {
		case 'R':
			mu.Lock()
			readers = append(readers, bufio.NewWriterSize(conn, 256<<10))
			mu.Unlock()
		case 'P':
			wg.Add(1)
			go func() {
				defer wg.Done()
				in := bufio.NewReaderSize(conn, 256<<10)
				msg := make([]byte, spec.Size)
				for {
					if _, err := io.ReadFull(in, msg); err != nil {
						if !errors.Is(err, io.EOF) {
							errs <- fmt.Errorf("broker: read: %w", err)
						}
						return
					}
					mu.Lock()
					for _, w := range readers {
						if _, err := w.Write(msg); err != nil {
							mu.Unlock()
							errs <- fmt.Errorf("broker: write: %w", err)
							return
						}
					}
					relayed++
					// Nothing more waiting from this producer: send
					// what the readers' buffers hold now.
					if in.Buffered() == 0 {
						for _, w := range readers {
							if err := w.Flush(); err != nil {
								mu.Unlock()
								errs <- fmt.Errorf("broker: write: %w", err)
								return
							}
						}
					}
					mu.Unlock()
				}
			}()
		default:
			return nil, fmt.Errorf("broker: hello %q", kind[0])
		}
	}
	wg.Wait()
	close(errs)
	for _, w := range readers {
		if err := w.Flush(); err != nil {
			return nil, err
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if err := <-errs; err != nil {
		return nil, err
	}
	return map[string]uint64{"relayed": relayed}, nil
}

func dialBroker(dir string, kind byte) (net.Conn, error) {
	conn, err := net.DialTimeout("unix", brokerPath(dir), 10*time.Second)
	if err != nil {
		return nil, err
	}
	if _, err := conn.Write([]byte{kind}); err != nil {
		conn.Close()
		return nil, err
	}
	return conn, nil
}

// A producer writes each message as it is sent, as a client library's
// publish call does.
type brokerSender struct{ conn net.Conn }

func newBrokerSender(s *childSpec, _ []*os.File) (sender, error) {
	conn, err := dialBroker(s.Dir, 'P')
	if err != nil {
		return nil, err
	}
	return &brokerSender{conn: conn}, nil
}

func (b *brokerSender) send(msg []byte) error {
	_, err := b.conn.Write(msg)
	return err
}

func (b *brokerSender) close() error { return b.conn.Close() }

// A reader reads through a buffer, many messages per system call when they
// are there.
type brokerReceiver struct{ stream }

func newBrokerReceiver(s *childSpec, _ []*os.File) (receiver, error) {
	conn, err := dialBroker(s.Dir, 'R')
	if err != nil {
		return nil, err
	}
	return &brokerReceiver{stream{r: conn, size: s.Size}}, nil
}

// stream receives fixed-size messages from a byte stream (a socket, a
// pipe), which ends when its writer closes it.
type stream struct {
	r    io.ReadCloser
	size int
}

func (s *stream) receive(fn func([]byte) bool, _ <-chan struct{}) error {
	in := bufio.NewReaderSize(s.r, 256<<10)
	msg := make([]byte, s.size)
	for {
		if _, err := io.ReadFull(in, msg); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return err
		}
		if !fn(msg) {
			return nil
		}
	}
}

func (s *stream) counters() map[string]int64 { return nil }
func (s *stream) close() error               { return s.r.Close() }
