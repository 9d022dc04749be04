package bench

import (
	"os"
)

// The pipe baseline: one pipe per reader, and a single producer that
// writes every message into each pipe in turn, one write(2) per message and
// reader. A full pipe blocks the producer; nothing is dropped. The harness
// makes the pipes and hands the ends down: reader i gets the read end of
// pipe i as descriptor 3, the producer gets every write end as 3, 4, ...

// preparePipes makes one pipe per reader.
func preparePipes(r *runEnv) error {
	for range r.spec.Readers {
		rd, wr, err := os.Pipe()
		if err != nil {
			return err
		}
		r.closeAfterStart = append(r.closeAfterStart, rd, wr)
		r.readerFiles = append(r.readerFiles, []*os.File{rd})
		r.producerFiles = append(r.producerFiles, wr)
	}
	return nil
}

type pipeSender struct{ pipes []*os.File }

func newPipeSender(_ *childSpec, extra []*os.File) (sender, error) {
	return &pipeSender{pipes: extra}, nil
}

func (p *pipeSender) send(msg []byte) error {
	for _, f := range p.pipes {
		if _, err := f.Write(msg); err != nil {
			return err
		}
	}
	return nil
}

func (p *pipeSender) close() error {
	for _, f := range p.pipes {
		f.Close()
	}
	return nil
}

type pipeReceiver struct{ stream }

func newPipeReceiver(s *childSpec, extra []*os.File) (receiver, error) {
	return &pipeReceiver{stream{r: extra[0], size: s.Size}}, nil
}
