package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"

	"github.com/shmring/shmring/ring"
)

// StatsTick is one line of `stats --json`.
type StatsTick struct {
	Time          time.Time  `json:"time"`
	Next          uint64     `json:"next"`
	PostedPerS    float64    `json:"posted_per_s"`
	LostPerS      float64    `json:"lost_per_s"`
	AbandonedPerS float64    `json:"abandoned_per_s"`
	Readers       []LagEntry `json:"readers"`
	LiveReaders   int        `json:"live_readers"`
	AsleepReaders uint32     `json:"asleep_readers"`
}

// LagEntry is one reader's lag in a tick.
type LagEntry struct {
	PID   int    `json:"pid"`
	Alive bool   `json:"alive"`
	Lag   uint64 `json:"lag"`
}

// statsSample is one reading of the ring. lost is per reader identity
// (slot and pid), so that a reader leaving or a slot changing hands does not
// read as a change in the others' losses.
type statsSample struct {
	at        time.Time
	next      uint64
	abandoned uint64
	lost      map[[2]int]uint64
}

func sample(path string, r *ring.Ring) (statsSample, []ReaderRow, error) {
	var s statsSample
	var rs []ReaderRow
	err := guard(path, func() error {
		c := r.Counters()
		s = statsSample{at: time.Now(), next: c.Next, abandoned: c.Abandoned, lost: map[[2]int]uint64{}}
		rs = readerRows(r)
		for _, rd := range rs {
			s.lost[[2]int{rd.Slot, rd.PID}] = rd.Lost
		}
		return nil
	})
	return s, rs, err
}

// delta is cur - prev, or 0 if the counter went backwards (a damaged word).
func delta(cur, prev uint64) uint64 {
	if cur < prev {
		return 0
	}
	return cur - prev
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

func statsCmd(stdout io.Writer) *cobra.Command {
	var interval time.Duration
	var count int
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats PATH",
		Short: "Show live rates (posted/s, lost/s) and each reader's lag",
		Long:  "stats samples the ring every --interval. On a terminal it redraws in place; piped, it prints one line per tick.",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if interval <= 0 {
				return usageError{fmt.Errorf("--interval %v: want a positive duration", interval)}
			}
			r, err := openRing(a[0])
			if err != nil {
				return err
			}
			defer r.Close()
			tty := isTerminal(stdout) && !asJSON
			prev, _, err := sample(a[0], r)
			if err != nil {
				return err
			}
			tick := time.NewTicker(interval)
			defer tick.Stop()
			for n := 0; count <= 0 || n < count; n++ {
				select {
				case <-cmd.Context().Done():
					return nil
				case <-tick.C:
				}
				cur, readers, err := sample(a[0], r)
				if err != nil {
					return err
				}
				dt := cur.at.Sub(prev.at).Seconds()
				t := StatsTick{
					Time: cur.at, Next: cur.next,
					PostedPerS:    float64(delta(cur.next, prev.next)) / dt,
					AbandonedPerS: float64(delta(cur.abandoned, prev.abandoned)) / dt,
					Readers:       []LagEntry{},
				}
				lost := uint64(0)
				for id, l := range cur.lost {
					lost += delta(l, prev.lost[id]) // a new reader counts from 0
				}
				t.LostPerS = float64(lost) / dt
				for _, rd := range readers {
					e := LagEntry{PID: rd.PID, Alive: rd.Alive, Lag: rd.Lag}
					if rd.Alive {
						t.LiveReaders++
					}
					if rd.Waiting {
						t.AsleepReaders++
					}
					t.Readers = append(t.Readers, e)
				}
				prev = cur
				if err := printTick(stdout, t, asJSON, tty, a[0]); err != nil {
					return err
				}
			}
			return nil
		},
	}
	f := cmd.Flags()
	f.DurationVar(&interval, "interval", time.Second, "sampling period")
	f.IntVar(&count, "count", 0, "stop after this many ticks (0: until interrupted)")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per tick")
	return cmd
}

func printTick(w io.Writer, t StatsTick, asJSON, tty bool, path string) error {
	if asJSON {
		b, err := json.Marshal(t)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	var lags []string
	for _, r := range t.Readers {
		dead := ""
		if !r.Alive {
			dead = " (dead)"
		}
		lags = append(lags, fmt.Sprintf("pid %d lag %d%s", r.PID, r.Lag, dead))
	}
	line := fmt.Sprintf("%s next %d  posted/s %.0f  lost/s %.0f  abandoned/s %.0f  readers %d live, %d asleep",
		t.Time.Format("15:04:05"), t.Next, t.PostedPerS, t.LostPerS, t.AbandonedPerS, t.LiveReaders, t.AsleepReaders)
	if !tty {
		if len(lags) > 0 {
			line += "  [" + strings.Join(lags, ", ") + "]"
		}
		_, err := fmt.Fprintln(w, line)
		return err
	}
	// Redraw in place: home the cursor, clear, draw.
	_, err := fmt.Fprintf(w, "\033[H\033[2J%s\n%s\n  %s\n", path, line, strings.Join(lags, "\n  "))
	return err
}
