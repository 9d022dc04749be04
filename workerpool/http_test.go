package workerpool_test

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/shmring/shmring/workerpool"
)

// ServeHTTP drains: requests in hand when its context ends are answered,
// and so is a request that arrives, on a connection accepted before, after
// the drain began (http.Server.Shutdown alone closes that one unanswered).
func TestServeHTTPAnswersEveryAcceptedConnection(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	addr := ln.Addr().String()

	release := make(chan struct{})
	inHandler := make(chan struct{}, 16)
	states := make(chan http.ConnState, 64)
	// Once the test has counted what it needs, nobody reads states: the
	// server's ConnState must not block on it.
	statesDone := make(chan struct{})
	defer close(statesDone)
	srv := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if r.URL.Path == "/slow" {
				inHandler <- struct{}{}
				<-release
			}
			fmt.Fprint(w, "ok")
		}),
		ConnState: func(_ net.Conn, s http.ConnState) {
			select {
			case states <- s:
			case <-statesDone:
			}
		},
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- workerpool.ServeHTTP(ctx, srv, ln) }()

	// Three requests in the handler...
	client := &http.Client{Transport: &http.Transport{DisableKeepAlives: true}}
	var wg sync.WaitGroup
	codes := make(chan int, 3)
	for range 3 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			resp, err := client.Get("http://" + addr + "/slow")
			if !assert.NoError(t, err) {
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			codes <- resp.StatusCode
		}()
	}
	for range 3 {
		<-inHandler
	}
	// ...and a connection accepted whose request is not sent yet.
	idle, err := net.Dial("tcp", addr)
	require.NoError(t, err)
	defer idle.Close()
	for news := 0; news < 4; { // the three slow ones and this one
		if <-states == http.StateNew {
			news++
		}
	}

	cancel()
	// The listener closes: new connections are refused (in a pool, they
	// wait in the queue for the other workers instead).
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			break
		}
		c.Close()
		require.True(t, time.Now().Before(deadline), "the listener was not closed")
	}
	_, err = fmt.Fprintf(idle, "GET /late HTTP/1.1\r\nHost: x\r\n\r\n")
	require.NoError(t, err)
	resp, err := http.ReadResponse(bufio.NewReader(idle), nil)
	require.NoError(t, err, "the request sent after the drain began is answered")
	assert.Equal(t, http.StatusOK, resp.StatusCode)
	assert.True(t, resp.Close, "keep-alives are off during the drain")

	close(release)
	wg.Wait()
	close(codes)
	for c := range codes {
		assert.Equal(t, http.StatusOK, c, "requests in hand are answered")
	}
	require.NoError(t, <-served)
}
