package bench

import (
	"errors"
	"os"
	"sync"
)

// The channel baseline: the in-process broker model, for a program that
// keeps its workers as goroutines of one process. Producer goroutines send
// each message, in a buffer of its own, to a broker goroutine over one
// channel; the broker passes it to every reader goroutine's channel. The
// channels are buffered (1024), so a slow reader holds the broker back;
// nothing is dropped. One child process runs all of it; GOMAXPROCS is the
// machine's.

func init() {
	childRoles["chan"] = runChanChild
}

// chanResult is the one child's report of a channel run.
type chanResult struct {
	Producers []ProducerResult `json:"producers"`
	Readers   []ReaderResult   `json:"readers"`
}

const chanBuffer = 1024

func runChanChild(args []string, _ []*os.File) (any, error) {
	spec, err := parseChildSpec(args)
	if err != nil {
		return nil, err
	}
	in := make(chan []byte, chanBuffer)
	outs := make([]chan []byte, spec.Readers)
	for i := range outs {
		outs[i] = make(chan []byte, chanBuffer)
	}
	res := chanResult{
		Producers: make([]ProducerResult, spec.Producers),
		Readers:   make([]ReaderResult, spec.Readers),
	}
	var readers, producers sync.WaitGroup
	for i, out := range outs {
		readers.Add(1)
		go func() {
			defer readers.Done()
			v := newVerifier(spec.Producers, spec.Size, spec.Sample)
			for msg := range out {
				if !v.add(msg) {
					break
				}
			}
			res.Readers[i] = v.result(Now())
			for range out { // let the broker finish
			}
		}()
	}
	go func() {
		for msg := range in {
			for _, out := range outs {
				out <- msg
			}
		}
		for _, out := range outs {
			close(out)
		}
	}()
	childReady()
	waitRelease()
	errs := make([]error, spec.Producers)
	for id := range spec.Producers {
		producers.Add(1)
		go func() {
			defer producers.Done()
			s := *spec
			s.ID = id
			res.Producers[id], errs[id] = produce(func(msg []byte) error {
				// The message is the producer's scratch buffer: each
				// send hands over a copy that readers share.
				in <- append([]byte(nil), msg...)
				return nil
			}, &s, true)
		}()
	}
	producers.Wait()
	close(in)
	readers.Wait()
	return res, errors.Join(errs...)
}
