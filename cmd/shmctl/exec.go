package main

import (
	"bufio"
	"bytes"
	"encoding/base64"
	"fmt"
	"io"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/workerpool"
)

// ExecReport is what `exec --json` prints.
type ExecReport struct {
	Path     string             `json:"path"`
	Action   string             `json:"action"`
	ID       string             `json:"id"`
	Seq      uint64             `json:"seq"`
	Master   int                `json:"master"`   // the pid of the master the workers' acks name; 0: none did
	Expected []ExecWorkerID     `json:"expected"` // null: no master answered
	Workers  []ExecWorkerReport `json:"workers"`
	Missing  []ExecWorkerID     `json:"missing"`
	Exited   int                `json:"exited"`
	Failed   int                `json:"failed"`
	Elapsed  float64            `json:"elapsed_seconds"`
	OK       bool               `json:"ok"`
}

// ExecWorkerID names a worker in an ExecReport.
type ExecWorkerID struct {
	Index int `json:"index"`
	PID   int `json:"pid"`
}

// ExecWorkerReport is one worker's answer.
type ExecWorkerReport struct {
	ExecWorkerID
	Acked        bool   `json:"acked"`
	Exited       bool   `json:"exited"`
	Status       int    `json:"status"`
	Error        string `json:"error,omitempty"`
	Output       string `json:"output"`
	OutputBase64 string `json:"output_base64,omitempty"` // instead of output, when it is not UTF-8
}

func execCmd(stdout io.Writer) *cobra.Command {
	var (
		asJSON     bool
		minWorkers int
		timeout    time.Duration
	)
	cmd := &cobra.Command{
		Use:   "exec PATH NAME [ARGS...]",
		Short: "Ask every worker of a workerpool on the ring to run a registered action; report each one's output and exit status",
		Long: `exec posts a request on the ring for every worker of the workerpool that shares it to run
the action NAME with ARGS, then prints, as they arrive, each worker's ack, its output
and its exit status, and a summary. The pool's master says which workers it expects.
Exit 1 if a worker did not answer before --timeout, fewer than --min exited, or any
action exited with a non-zero status; the error names the missing workers.
ARGS that start with '-' go after "--", or they are taken for flags of exec.`,
		Example: `  shmctl exec /dev/shm/app.events stats
  shmctl exec /dev/shm/app.events grep -- -v users
  shmctl exec /dev/shm/app.events purge users --min 4 --timeout 5s --json`,
		Args: args(cobra.MinimumNArgs(2)),
		RunE: func(cmd *cobra.Command, a []string) error {
			path, name := a[0], a[1]
			if name == "" {
				return usageError{fmt.Errorf("exec %s: NAME must not be empty", path)}
			}
			if minWorkers < 0 || timeout <= 0 {
				return usageError{fmt.Errorf("exec %s: --min must be 0 or more and --timeout positive", path)}
			}
			// An observer: no reader slot, no started/stopping, no part
			// in unique claims. Its poller delivers the answers.
			bus, err := events.Open(events.Options{Path: path, Observe: true, MustExist: true})
			if err != nil {
				return err
			}
			defer bus.Close()
			opts := workerpool.ExecOptions{MinWorkers: minWorkers, Timeout: timeout}
			if !asJSON {
				opts.OnAck = func(w workerpool.WorkerID) { fmt.Fprintf(stdout, "%v: ack\n", w) }
				opts.OnOutput = func(w workerpool.WorkerID, data []byte) { printOutput(stdout, w, data) }
				opts.OnExit = func(w workerpool.WorkerID, status int, msg string) {
					if msg != "" {
						fmt.Fprintf(stdout, "%v: exit %d: %s\n", w, status, msg)
					} else {
						fmt.Fprintf(stdout, "%v: exit %d\n", w, status)
					}
				}
			}
			var res *workerpool.ExecResult
			var execErr error
			if err := guard(path, func() error {
				res, execErr = workerpool.Exec(cmd.Context(), bus, name, a[2:], opts)
				return nil
			}); err != nil {
				return err
			}
			if res == nil {
				return fmt.Errorf("exec %s %s: %w", path, name, execErr)
			}
			if asJSON {
				if err := writeJSON(stdout, execReport(path, res, execErr == nil)); err != nil {
					return err
				}
			} else {
				fmt.Fprintf(stdout, "done: %d workers exited", res.Exited())
				if res.Expected != nil {
					fmt.Fprintf(stdout, " of %d expected", len(res.Expected))
				}
				fmt.Fprintf(stdout, ", %d failed, %d missing, in %v\n", len(res.Failed()), len(res.Missing), res.Elapsed.Round(time.Millisecond))
			}
			if execErr != nil {
				return fmt.Errorf("exec %s: %w", path, execErr)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print one JSON report at the end instead of lines as answers arrive")
	cmd.Flags().IntVar(&minWorkers, "min", 0, "fail unless at least this many workers exit (0: as many as the master expects)")
	cmd.Flags().DurationVar(&timeout, "timeout", workerpool.DefaultExecTimeout, "give up on the workers that have not answered after this long (also each action's deadline)")
	return cmd
}

// printOutput prints a worker's output, one prefixed line per line.
func printOutput(w io.Writer, id workerpool.WorkerID, data []byte) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, len(data)+1)
	for sc.Scan() {
		fmt.Fprintf(w, "%v> %s\n", id, sc.Text())
	}
}

func execReport(path string, res *workerpool.ExecResult, ok bool) ExecReport {
	rep := ExecReport{
		Path: path, Action: res.Action, ID: res.ID, Seq: res.Seq, Master: res.Master,
		Workers: []ExecWorkerReport{}, Missing: []ExecWorkerID{},
		Exited: res.Exited(), Failed: len(res.Failed()), Elapsed: res.Elapsed.Seconds(), OK: ok,
	}
	if res.Expected != nil {
		rep.Expected = []ExecWorkerID{}
		for _, w := range res.Expected {
			rep.Expected = append(rep.Expected, ExecWorkerID{w.Index, w.PID})
		}
	}
	for _, w := range res.Missing {
		rep.Missing = append(rep.Missing, ExecWorkerID{w.Index, w.PID})
	}
	for _, w := range res.Workers {
		wr := ExecWorkerReport{
			ExecWorkerID: ExecWorkerID{w.Index, w.PID},
			Acked:        w.Acked, Exited: w.Exited, Status: w.Status, Error: w.Error,
		}
		if utf8.Valid(w.Output) {
			wr.Output = string(w.Output)
		} else {
			wr.OutputBase64 = base64.StdEncoding.EncodeToString(w.Output)
		}
		rep.Workers = append(rep.Workers, wr)
	}
	return rep
}
