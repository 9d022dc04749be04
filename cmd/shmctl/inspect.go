package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/ring"
	"github.com/shmring/shmring/shm"
)

// openRing opens an existing ring for inspection: it never creates a file.
func openRing(path string) (*ring.Ring, error) {
	region, err := shm.Open(path, shm.Options{})
	if err != nil {
		return nil, err
	}
	return ring.New(region), nil
}

// readRing opens the ring at path, runs read on it with memory faults
// turned into errors (guard), and closes it.
func readRing(path string, read func(*ring.Ring) error) error {
	r, err := openRing(path)
	if err != nil {
		return err
	}
	defer r.Close()
	return guard(path, func() error { return read(r) })
}

// Info is what `info --json` prints, and /status serves as "info".
type Info struct {
	Path       string       `json:"path"`
	Version    uint32       `json:"version"`
	Geometry   GeometryInfo `json:"geometry"`
	CreatedAt  time.Time    `json:"created_at"`
	CreatorPID int          `json:"creator_pid"`
	// PIDNamespace is the inode of the creator's PID namespace, which every
	// process that opens the ring must share; 0 if it was not known.
	PIDNamespace uint32      `json:"pid_namespace"`
	Next         uint64      `json:"next"`
	Oldest       uint64      `json:"oldest"`
	Held         uint64      `json:"held"`
	Fill         float64     `json:"fill"`
	Counters     CounterInfo `json:"counters"`
	Readers      struct {
		Live int `json:"live"`
		Dead int `json:"dead"`
	} `json:"readers"`
	Unique UniqueInfo `json:"unique"`
}

// GeometryInfo is the ring's shape, fixed at creation.
type GeometryInfo struct {
	IndexSlots  uint32 `json:"index_slots"`
	DataBytes   uint64 `json:"data_bytes"`
	ReaderSlots uint32 `json:"reader_slots"`
	UniqueSlots uint32 `json:"unique_slots"`
	MaxRecord   uint32 `json:"max_record"`
}

// CounterInfo are the ring-wide counters.
type CounterInfo struct {
	Posted      uint64 `json:"posted"`
	Abandoned   uint64 `json:"abandoned"`
	TooBig      uint64 `json:"too_big"`
	LateCommits uint64 `json:"late_commits"`
	Waiters     uint32 `json:"waiters"`
}

// UniqueInfo is the unique table's state.
type UniqueInfo struct {
	Entries int         `json:"entries"`
	Used    int         `json:"used"`
	Live    int         `json:"live"`
	Claims  uint64      `json:"claims"`
	Full    uint64      `json:"full"`
	Steals  uint64      `json:"steals"`
	Keys    []UniqueKey `json:"keys"`
}

// UniqueKey is one live unique key. The table keeps its hash; Key is its
// text while the winning event is still in the ring, else "".
type UniqueKey struct {
	Hash        string `json:"hash"`
	Key         string `json:"key,omitempty"`
	Posting     bool   `json:"posting,omitempty"` // its winner is being posted (or its poster died doing so): no seq yet
	Seq         uint64 `json:"seq"`
	PID         int    `json:"pid"`
	RemainingMS int64  `json:"remaining_ms"`
}

// ReaderRow is one registered reader, as `readers --json` prints it.
type ReaderRow struct {
	Slot      int       `json:"slot"`
	PID       int       `json:"pid"`
	Alive     bool      `json:"alive"`
	Cursor    uint64    `json:"cursor"`
	Lag       uint64    `json:"lag"`
	Received  uint64    `json:"received"`
	Lost      uint64    `json:"lost"`
	Abandoned uint64    `json:"abandoned"`
	Corrupt   uint64    `json:"corrupt"`
	LastSeen  time.Time `json:"last_seen"`
	Waiting   bool      `json:"waiting"`
}

// inspect describes r; rows are its readers, as readerRows returns them
// (read once: listing them checks each owner's process in /proc).
func inspect(r *ring.Ring, rows []ReaderRow) (Info, error) {
	region := r.Region()
	h := region.Header()
	g := h.Geometry
	c := r.Counters()
	info := Info{
		Path:    region.Path(),
		Version: h.Version,
		Geometry: GeometryInfo{
			IndexSlots: g.IndexSlots, DataBytes: g.DataBytes, ReaderSlots: g.ReaderSlots,
			UniqueSlots: g.UniqueSlots, MaxRecord: g.MaxRecord,
		},
		CreatedAt:    h.Created,
		CreatorPID:   h.CreatorPID,
		PIDNamespace: h.PIDNamespace,
		Next:         c.Next,
		Oldest:       r.Oldest(),
		Counters: CounterInfo{
			Posted: c.Next, Abandoned: c.Abandoned, TooBig: c.TooBig,
			LateCommits: c.LateCommits, Waiters: c.Waiters,
		},
	}
	if info.Next > info.Oldest {
		info.Held = info.Next - info.Oldest
	}
	info.Fill = float64(info.Held) / float64(g.IndexSlots)
	info.Readers.Live, info.Readers.Dead = countAlive(rows)
	st, keys, err := events.UniqueTable(r)
	if err != nil {
		return info, err
	}
	info.Unique = UniqueInfo{Entries: st.Entries, Used: st.Used, Live: st.Live, Claims: st.Claims, Full: st.Full, Steals: st.Steals, Keys: []UniqueKey{}}
	for _, k := range keys {
		info.Unique.Keys = append(info.Unique.Keys, UniqueKey{
			Hash: fmt.Sprintf("%016x", k.Hash), Key: k.Key, Seq: k.Seq, Posting: k.Posting, PID: k.PID, RemainingMS: k.Remaining.Milliseconds(),
		})
	}
	return info, nil
}

// countAlive counts the rows whose process runs, and the others.
func countAlive(rows []ReaderRow) (live, dead int) {
	for _, row := range rows {
		if row.Alive {
			live++
		} else {
			dead++
		}
	}
	return live, dead
}

func readerRows(r *ring.Ring) []ReaderRow {
	next := r.Next()
	rows := []ReaderRow{}
	for _, rd := range r.Readers() {
		row := ReaderRow{
			Slot: rd.Slot, PID: rd.PID, Alive: rd.Alive, Cursor: rd.Cursor,
			Received: rd.Received, Lost: rd.Lost, Abandoned: rd.Abandoned, Corrupt: rd.Corrupt,
			LastSeen: rd.Heartbeat, Waiting: rd.Waiting,
		}
		if next > rd.Cursor {
			row.Lag = next - rd.Cursor
		}
		rows = append(rows, row)
	}
	return rows
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func infoCmd(stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "info PATH",
		Short: "Show a ring's geometry, position, counters and live unique keys",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			var info Info
			if err := readRing(a[0], func(r *ring.Ring) (err error) { info, err = inspect(r, readerRows(r)); return err }); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdout, info)
			}
			return printInfo(stdout, info)
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func printInfo(w io.Writer, i Info) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	g := i.Geometry
	fmt.Fprintf(tw, "path\t%s\n", i.Path)
	fmt.Fprintf(tw, "layout version\t%d\n", i.Version)
	fmt.Fprintf(tw, "geometry\t%d index slots, %d data bytes, %d reader slots, %d unique slots, records up to %d bytes\n",
		g.IndexSlots, g.DataBytes, g.ReaderSlots, g.UniqueSlots, g.MaxRecord)
	fmt.Fprintf(tw, "created\t%s by pid %d (PID namespace %d)\n", i.CreatedAt.Format(time.RFC3339), i.CreatorPID, i.PIDNamespace)
	fmt.Fprintf(tw, "next sequence\t%d\n", i.Next)
	fmt.Fprintf(tw, "oldest valid\t%d (%d held, %.1f%% of the index)\n", i.Oldest, i.Held, 100*i.Fill)
	c := i.Counters
	fmt.Fprintf(tw, "counters\tposted %d, abandoned %d, too big %d, late commits %d, asleep now %d\n",
		c.Posted, c.Abandoned, c.TooBig, c.LateCommits, c.Waiters)
	fmt.Fprintf(tw, "readers\t%d live, %d dead\n", i.Readers.Live, i.Readers.Dead)
	u := i.Unique
	fmt.Fprintf(tw, "unique table\t%d of %d entries used, %d live; %d claims, %d refused full, %d locks taken from dead holders\n",
		u.Used, u.Entries, u.Live, u.Claims, u.Full, u.Steals)
	for _, k := range u.Keys {
		name := k.Hash
		if k.Key != "" {
			name = strconv.Quote(k.Key)
		}
		if k.Posting {
			fmt.Fprintf(tw, "  key %s\tbeing posted by pid %d, %dms left\n", name, k.PID, k.RemainingMS)
			continue
		}
		fmt.Fprintf(tw, "  key %s\tseq %d, pid %d, %dms left\n", name, k.Seq, k.PID, k.RemainingMS)
	}
	return tw.Flush()
}

func readersCmd(stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "readers PATH",
		Short: "List the readers registered on a ring (dead ones marked)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			var rows []ReaderRow
			if err := readRing(a[0], func(r *ring.Ring) error { rows = readerRows(r); return nil }); err != nil {
				return err
			}
			if asJSON {
				return writeJSON(stdout, rows)
			}
			tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "SLOT\tPID\tALIVE\tCURSOR\tLAG\tRECEIVED\tLOST\tABANDONED\tCORRUPT\tLAST SEEN\tASLEEP")
			for _, r := range rows {
				alive := "yes"
				if !r.Alive {
					alive = "DEAD"
				}
				seen := "-"
				if !r.LastSeen.IsZero() {
					seen = time.Since(r.LastSeen).Round(time.Millisecond).String() + " ago"
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%v\n", r.Slot, r.PID, alive, r.Cursor, r.Lag,
					r.Received, r.Lost, r.Abandoned, r.Corrupt, seen, r.Waiting)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func createCmd(stdout io.Writer) *cobra.Command {
	var size uint64
	var slots, readers, unique uint32
	var mode string
	cmd := &cobra.Command{
		Use:   "create PATH",
		Short: "Make a new ring file (never overwrites one)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			perm, err := strconv.ParseUint(mode, 8, 32)
			if err != nil || perm > 0o777 {
				return usageError{fmt.Errorf("--mode %q: want an octal file mode such as 0600", mode)}
			}
			region, err := shm.Create(a[0], shm.Options{
				Geometry: shm.Geometry{IndexSlots: slots, DataBytes: size, ReaderSlots: readers, UniqueSlots: unique},
				Perm:     os.FileMode(perm),
			})
			if errors.Is(err, shm.ErrGeometry) {
				return usageError{err}
			}
			if err != nil {
				return err
			}
			defer region.Close()
			g := region.Geometry()
			fmt.Fprintf(stdout, "created %s: %d index slots, %d data bytes, %d reader slots, %d unique slots, mode %04o\n",
				a[0], g.IndexSlots, g.DataBytes, g.ReaderSlots, g.UniqueSlots, perm)
			return nil
		},
	}
	f := cmd.Flags()
	f.Uint64Var(&size, "size", 0, "data bytes, a power of two (default 4 MiB)")
	f.Uint32Var(&slots, "slots", 0, "index slots: most events held at once, a power of two (default 16384)")
	f.Uint32Var(&readers, "readers", 0, "reader-registry slots (default 64)")
	f.Uint32Var(&unique, "unique", 0, "unique-table entries (default 1024)")
	f.StringVar(&mode, "mode", "0600", "file mode, octal")
	return cmd
}

func rmCmd(stdout io.Writer) *cobra.Command {
	var force bool
	cmd := &cobra.Command{
		Use:   "rm PATH",
		Short: "Remove a ring file (refuses while live readers are attached)",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			r, err := openRing(a[0])
			if err != nil {
				// A damaged ring of ours (its magic is there) may go with
				// --force; a file that is not a ring never does.
				if force && (errors.Is(err, shm.ErrTruncated) || errors.Is(err, shm.ErrCorrupt) || errors.Is(err, shm.ErrVersion)) {
					if rerr := os.Remove(a[0]); rerr != nil {
						return rerr
					}
					fmt.Fprintf(stdout, "removed %s (damaged: %v)\n", a[0], err)
					return nil
				}
				return err
			}
			live := 0
			gerr := guard(a[0], func() error { live, _ = countAlive(readerRows(r)); return nil })
			r.Close()
			if gerr != nil && !force {
				return gerr
			}
			if live > 0 && !force {
				return fmt.Errorf("%s: %d live readers attached (use --force to remove it anyway)", a[0], live)
			}
			// A reader may attach between the check and the unlink; it keeps
			// its mapping and the file's blocks until it closes.
			if gerr != nil {
				err = os.Remove(a[0])
			} else {
				err = shm.Remove(a[0])
			}
			if err != nil {
				return err
			}
			fmt.Fprintf(stdout, "removed %s\n", a[0])
			return nil
		},
	}
	cmd.Flags().BoolVar(&force, "force", false, "remove even while live readers are attached")
	return cmd
}
