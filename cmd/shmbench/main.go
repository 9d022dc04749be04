// Command shmbench measures how fast an event gets from one process to
// others through shmring, next to what the processes would otherwise use,
// in one run on one machine: a cache line and a futex (the floors), a
// broker relaying over unix sockets, a pipe per reader, and Go channels in
// one process. It prints a table; --json and --plot write the same run for
// machines and for eyes.
//
//	go run ./cmd/shmbench            # the default run, under a minute
//	go run ./cmd/shmbench --quick    # seconds
//	go run ./cmd/shmbench --size 16,256,4096,65536 --readers 1,2,4,8
package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/bench"
)

func main() {
	bench.ServeChild() // a child of the harness never gets past this
	cmd := newCommand(os.Stdout, os.Stderr)
	if err := cmd.Execute(); err != nil {
		var fail errFailedRows
		if !errors.As(err, &fail) {
			fmt.Fprintf(os.Stderr, "shmbench: %v\n", err)
		}
		var usage errUsage
		if errors.As(err, &usage) {
			os.Exit(2)
		}
		os.Exit(1)
	}
}

type errUsage struct{ error }

func (e errUsage) Unwrap() error { return e.error }

// errFailedRows: the report was written, and says what failed.
type errFailedRows struct{ n int }

func (e errFailedRows) Error() string { return fmt.Sprintf("%d rows failed", e.n) }

// byteSize is a flag's count of bytes: an integer, or one with a binary
// suffix (4096, 4KiB, 64MiB, 1GiB).
type byteSize int

func (b *byteSize) String() string { return strconv.Itoa(int(*b)) }

func (b *byteSize) Type() string { return "bytes" }

func (b *byteSize) Set(s string) error {
	num, shift := s, 0
	for i, unit := range []string{"KiB", "MiB", "GiB"} {
		if n, ok := strings.CutSuffix(s, unit); ok {
			num, shift = strings.TrimSpace(n), 10*(i+1)
			break
		}
	}
	n, err := strconv.ParseUint(num, 10, 63-shift)
	if err != nil {
		return errors.New("want a count of bytes such as 67108864 or 64MiB")
	}
	*b = byteSize(n << shift)
	return nil
}

func newCommand(stdout, stderr io.Writer) *cobra.Command {
	var (
		cfg      bench.Config
		asJSON   bool
		plot     string
		quiet    bool
		duration time.Duration
	)
	cmd := &cobra.Command{
		Use:   "shmbench",
		Short: "Cross-process latency and throughput of shmring, with baselines measured in the same run",
		Long: `shmbench measures one-way latency and throughput between processes of this
machine: shmring's event bus in its Spin, Wake and Timer modes and its bare
ring, next to the floors (a shared cache line, a futex, a bare SPSC ring) and
the baselines (a broker relaying over unix sockets, a pipe per reader, Go
channels in one process). Every reader checks the count and order of what it
received; a row that lost events says so.`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(args) > 0 {
				return errUsage{fmt.Errorf("unexpected argument %q (every setting is a flag; see --help)", args[0])}
			}
			return nil
		},
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg.Duration = duration
			if !quiet {
				cfg.Progress = stderr
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), os.Interrupt, syscall.SIGTERM)
			defer stop()
			rep, runErr := bench.Run(ctx, cfg)
			if rep == nil {
				return errUsage{runErr}
			}
			rep.Command = "shmbench " + strings.Join(os.Args[1:], " ")
			if plot != "" {
				if err := bench.Plot(rep, plot); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rep); err != nil {
					return err
				}
			} else if err := rep.WriteTable(stdout); err != nil {
				return err
			}
			if runErr != nil {
				// Interrupted: the report above has the rows measured before.
				return fmt.Errorf("interrupted: %w", runErr)
			}
			failed := 0
			for _, r := range rep.Rows {
				if r.Failed() {
					failed++
				}
			}
			if failed > 0 {
				fmt.Fprintf(stderr, "shmbench: %d rows failed their checks\n", failed)
				return errFailedRows{failed}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.BoolVar(&cfg.Quick, "quick", false, "a short run, for a smoke test (seconds)")
	f.BoolVar(&asJSON, "json", false, "write the report as JSON instead of a table")
	f.StringVar(&plot, "plot", "", "write a latency CDF of every series to this PNG file")
	f.BoolVarP(&quiet, "quiet", "q", false, "no progress lines on stderr")
	f.DurationVar(&duration, "duration", 0, "how long producers send in each run (default 250ms, 100ms with --quick)")
	f.IntSliceVar(&cfg.Readers, "readers", nil, "reader process counts (default 1,4 for throughput, 1 for latency)")
	f.IntSliceVar(&cfg.Producers, "producers", nil, "producer counts of the several-producers rows (default 2)")
	f.IntSliceVar(&cfg.Sizes, "size", nil, "payload sizes in bytes, 16 or more (default 64)")
	f.StringSliceVar(&cfg.Modes, "mode", nil, "event bus reader modes: spin, wake, timer (default all)")
	f.StringSliceVar(&cfg.Series, "series", nil, "only these series (e.g. events/wake,broker/unix,floor/futex)")
	f.IntVar(&cfg.Rate, "rate", 0, "offered rate of the latency rows, events/s per producer (default 10000)")
	f.IntVar(&cfg.Repeat, "repeat", 0, "runs per throughput row; the table shows the median (default 3)")
	f.IntVar(&cfg.Samples, "samples", 0, "samples per paced latency series (default 20000)")
	f.IntVar(&cfg.Rounds, "rounds", 0, "rounds the paced series take their samples in, each series in turn (default 5)")
	f.DurationVar(&cfg.Interval, "interval", 0, "Timer mode's poll period (default 1ms)")
	f.StringVar(&cfg.Dir, "dir", "", "where the runs' rings live (default /dev/shm)")
	f.Var((*byteSize)(&cfg.RingBytes), "ring-bytes", "data bytes of the ring and events series' rings, a power of two such as 4MiB (default 64MiB, more for the largest sizes)")
	f.IntVar(&cfg.RingSlots, "ring-slots", 0, "index slots of the ring and events series' rings, a power of two (default 1048576)")
	cmd.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return errUsage{err} })
	cmd.SetOut(stdout)
	cmd.SetErr(stderr)
	return cmd
}
