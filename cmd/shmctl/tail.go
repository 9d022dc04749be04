package main

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/events"
	"github.com/shmring/shmring/shm"
)

// TailEvent is one line of `tail --json`.
type TailEvent struct {
	Seq        uint64    `json:"seq"`
	Time       time.Time `json:"time"`
	PID        int       `json:"pid"`
	Source     string    `json:"source"`
	Name       string    `json:"name"`
	Unique     string    `json:"unique,omitempty"`
	FollowUp   bool      `json:"follow_up,omitempty"` // a unique event within Timeout of its key's winner: no process runs it
	Data       *string   `json:"data,omitempty"`
	DataBase64 string    `json:"data_base64,omitempty"`
}

// followUntilDone waits until the command is interrupted or the bus stops
// on its own (its file truncated under it). It also notices a truncation
// while the ring is idle, which no read would meet.
func followUntilDone(ctx context.Context, path string, bus *events.Bus) error {
	want := int64(bus.Ring().Region().Sections().FileSize)
	check := time.NewTicker(time.Second)
	defer check.Stop()
	for {
		select {
		case <-ctx.Done(): // SIGINT or SIGTERM
			return nil
		case <-bus.Done():
			return fmt.Errorf("tail %s: %w", path, bus.Err())
		case <-check.C:
			if fi, err := os.Stat(path); err == nil && fi.Size() < want {
				return fmt.Errorf("tail %s: file truncated to %d bytes, the ring needs %d: %w", path, fi.Size(), want, shm.ErrTruncated)
			}
		}
	}
}

// lockWithin takes mu unless that takes longer than d.
func lockWithin(mu *sync.Mutex, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for !mu.TryLock() {
		if time.Now().After(deadline) {
			return false
		}
		time.Sleep(time.Millisecond)
	}
	return true
}

func parseFrom(s string) (events.StartAt, error) {
	switch s {
	case "latest":
		return events.Latest, nil
	case "oldest":
		return events.Oldest, nil
	}
	seq, err := strconv.ParseUint(s, 10, 64)
	if err != nil {
		return events.StartAt{}, usageError{fmt.Errorf("--from %q: want latest, oldest or a sequence number", s)}
	}
	return events.AtSeq(seq), nil
}

func tailCmd(stdout io.Writer) *cobra.Command {
	var from, source, name string
	var follow, asJSON bool
	cmd := &cobra.Command{
		Use:   "tail PATH",
		Short: "Print events from the ring, and follow new ones with --follow",
		Long: "tail prints the events in the ring from --from on. With --follow it then waits for new ones, " +
			"woken by the ring's futex. It only watches: it takes no reader slot and no part in unique claims.",
		Args: args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			start, err := parseFrom(from)
			if err != nil {
				return err
			}
			mode := events.Manual
			if follow {
				mode = events.Wake
			}
			out := bufio.NewWriter(stdout)
			var mu sync.Mutex // the poller goroutine prints; the caller flushes
			var werr error
			handler := func(e *events.Event) {
				if (source != "" && e.Source != source) || (name != "" && e.Name != name) {
					return
				}
				mu.Lock()
				defer mu.Unlock()
				if werr == nil {
					werr = printEvent(out, e, asJSON)
				}
				if follow && werr == nil {
					werr = out.Flush()
				}
			}
			bus, err := events.Open(events.Options{
				Path: a[0], Mode: mode, StartAt: start, Observe: true, MustExist: true,
				Setup: func(b *events.Bus) { b.Register(handler, "") },
			})
			if err != nil {
				return err
			}
			var runErr error
			if follow {
				runErr = followUntilDone(cmd.Context(), a[0], bus)
			} else if _, err := bus.Poll(); err != nil {
				runErr = err
			}
			closeErr := bus.Close()
			// A handler blocked on a full pipe holds mu: do not wait for it
			// for ever, or a signal could not end the command.
			if !lockWithin(&mu, time.Second) {
				return errors.Join(runErr, fmt.Errorf("tail %s: output blocked", a[0]))
			}
			defer mu.Unlock()
			if werr == nil {
				werr = out.Flush()
			}
			if werr != nil {
				return errors.Join(runErr, fmt.Errorf("tail %s: write: %w", a[0], werr))
			}
			if runErr != nil {
				return runErr
			}
			return closeErr
		},
	}
	f := cmd.Flags()
	f.StringVar(&from, "from", "latest", "where to start: latest, oldest, or a sequence number")
	f.BoolVarP(&follow, "follow", "f", false, "wait for new events until interrupted")
	f.StringVar(&source, "source", "", "only events of this source")
	f.StringVar(&name, "name", "", "only events with this name")
	f.BoolVar(&asJSON, "json", false, "print one JSON object per event")
	return cmd
}

func printEvent(w io.Writer, e *events.Event, asJSON bool) error {
	if asJSON {
		te := TailEvent{Seq: e.Seq, Time: e.Posted, PID: e.PID, Source: e.Source, Name: e.Name, Unique: e.Unique, FollowUp: e.FollowUp}
		if utf8.Valid(e.Data) { // JSON escapes the rest of what text can hold
			s := string(e.Data)
			te.Data = &s
		} else {
			te.DataBase64 = base64.StdEncoding.EncodeToString(e.Data)
		}
		b, err := json.Marshal(te)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(w, "%s\n", b)
		return err
	}
	data := strconv.Quote(string(e.Data)) // escapes control characters
	if !utf8.Valid(e.Data) {
		data = "base64:" + base64.StdEncoding.EncodeToString(e.Data)
	}
	unique := ""
	if e.Unique != "" {
		unique = " unique=" + strconv.Quote(e.Unique)
		if e.FollowUp {
			unique += " follow-up"
		}
	}
	_, err := fmt.Fprintf(w, "%d %s pid %d %s/%s%s %s\n", e.Seq, e.Posted.Format(time.RFC3339Nano), e.PID, e.Source, e.Name, unique, data)
	return err
}
