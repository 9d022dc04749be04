// Command ringdemo starts several processes that share one ring: each
// appends a few records and reads every record, then the parent compares
// what they saw. It is the shortest way to watch the ring's guarantee: every
// process sees every record once, in the same order.
//
//	go run ./cmd/ringdemo [-workers 4] [-records 5] [-path FILE]
package main

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"time"

	"github.com/shmring/shmring/ring"
)

const envWorker = "SHMRING_RINGDEMO_WORKER"

// report is what a worker prints, as one JSON line, when it has seen
// everything.
type report struct {
	Worker   int      `json:"worker"`
	PID      int      `json:"pid"`
	Seen     int      `json:"seen"`
	Digest   string   `json:"digest"` // of every (seq, record) in the order seen
	First    []string `json:"first"`  // the first few records, for show
	Lost     uint64   `json:"lost"`
	Abandon  uint64   `json:"abandoned"`
	Appended []uint64 `json:"appended"` // sequence numbers of its own records
}

func main() {
	workers := flag.Int("workers", 4, "worker processes to start")
	records := flag.Int("records", 5, "records each worker appends")
	path := flag.String("path", "", "ring file (default: a new file in a temporary directory, removed at exit)")
	start := flag.Uint64("start", 0, "first sequence a worker reads (set by the parent)")
	flag.Parse()

	if w := os.Getenv(envWorker); w != "" {
		id, _ := strconv.Atoi(w)
		if err := runWorker(id, *path, *start, *workers, *records); err != nil {
			fmt.Fprintf(os.Stderr, "ringdemo worker %d: %v\n", id, err)
			os.Exit(1)
		}
		return
	}
	if err := runParent(*path, *workers, *records); err != nil {
		fmt.Fprintln(os.Stderr, "ringdemo:", err)
		os.Exit(1)
	}
}

func runParent(path string, workers, records int) error {
	if workers < 1 || records < 1 {
		return fmt.Errorf("-workers and -records must be at least 1")
	}
	if path == "" {
		dir, err := os.MkdirTemp("", "ringdemo")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		path = filepath.Join(dir, "demo.ring")
	}
	r, err := ring.Open(path, ring.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	start := r.Counters().Next
	g := r.Region().Geometry()
	fmt.Printf("ring %s: %d index slots, %d data bytes, next sequence %d\n", path, g.IndexSlots, g.DataBytes, start)

	self, err := os.Executable()
	if err != nil {
		return err
	}
	type child struct {
		cmd   *exec.Cmd
		stdin io.WriteCloser
		out   *bufio.Scanner
	}
	children := make([]child, workers)
	for i := range children {
		cmd := exec.Command(self, "-path", path, "-workers", strconv.Itoa(workers), "-records", strconv.Itoa(records),
			"-start", strconv.FormatUint(start, 10))
		cmd.Env = append(os.Environ(), envWorker+"="+strconv.Itoa(i))
		cmd.Stderr = os.Stderr
		stdin, err := cmd.StdinPipe()
		if err != nil {
			return err
		}
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			return err
		}
		if err := cmd.Start(); err != nil {
			return err
		}
		defer cmd.Process.Kill()
		children[i] = child{cmd, stdin, bufio.NewScanner(stdout)}
	}
	// Each worker prints "ready" once its reader is registered; then all
	// are released at once so their appends interleave.
	for i, c := range children {
		if !c.out.Scan() || c.out.Text() != "ready" {
			return fmt.Errorf("worker %d did not start: %v", i, c.cmd.Wait())
		}
	}
	for _, c := range children {
		c.stdin.Close()
	}
	reports := make([]report, workers)
	for i, c := range children {
		if !c.out.Scan() {
			return fmt.Errorf("worker %d: no report: %v", i, c.cmd.Wait())
		}
		if err := json.Unmarshal(c.out.Bytes(), &reports[i]); err != nil {
			return fmt.Errorf("worker %d: %v", i, err)
		}
		if err := c.cmd.Wait(); err != nil {
			return fmt.Errorf("worker %d: %v", i, err)
		}
	}

	fmt.Printf("\n%-7s %-8s %-5s %-8s %-9s %-13s %s\n", "worker", "pid", "seen", "lost", "abandoned", "order digest", "its own records got seq")
	same := true
	for _, rep := range reports {
		fmt.Printf("%-7d %-8d %-5d %-8d %-9d %-13s %v\n", rep.Worker, rep.PID, rep.Seen, rep.Lost, rep.Abandon, rep.Digest, rep.Appended)
		same = same && rep.Digest == reports[0].Digest && rep.Seen == workers*records
	}
	fmt.Printf("\nworker 0 saw, in order: %v ...\n", reports[0].First)
	if !same {
		return fmt.Errorf("the workers disagree")
	}
	fmt.Printf("all %d workers saw the same %d records in the same order\n", workers, workers*records)
	return nil
}

func runWorker(id int, path string, startSeq uint64, workers, records int) error {
	r, err := ring.Open(path, ring.Options{})
	if err != nil {
		return err
	}
	defer r.Close()
	rd, err := r.NewReader(ring.ReaderOptions{Start: ring.AtSeq(startSeq)})
	if err != nil {
		return err
	}
	defer rd.Close()
	fmt.Println("ready")
	_, _ = io.Copy(io.Discard, os.Stdin) // wait for the parent's go

	rep := report{Worker: id, PID: os.Getpid()}
	for k := 0; k < records; k++ {
		seq, err := r.Append([]byte(fmt.Sprintf("w%d#%d", id, k)))
		if err != nil {
			return err
		}
		rep.Appended = append(rep.Appended, seq)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h := sha256.New()
	for rep.Seen < workers*records {
		rec, err := rd.ReadContext(ctx)
		if err != nil {
			return fmt.Errorf("after %d records: %w", rep.Seen, err)
		}
		binary.Write(h, binary.LittleEndian, rec.Seq)
		h.Write(rec.Data)
		if len(rep.First) < 8 {
			rep.First = append(rep.First, string(rec.Data))
		}
		rep.Seen++
	}
	st := rd.Stats()
	rep.Lost, rep.Abandon = st.Lost, st.Abandoned
	rep.Digest = hex.EncodeToString(h.Sum(nil))[:12]
	return json.NewEncoder(os.Stdout).Encode(rep)
}
