package main

import (
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/events"
)

func postCmd(stdin io.Reader, stdout io.Writer) *cobra.Command {
	var (
		unique  string
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "post PATH SOURCE NAME [DATA | -]",
		Short: "Post one event (data from the argument, or stdin with -) and print its sequence number",
		Args:  args(cobra.RangeArgs(3, 4)),
		RunE: func(cmd *cobra.Command, a []string) error {
			if a[1] == "" || a[2] == "" {
				return usageError{fmt.Errorf("post %s: SOURCE and NAME must not be empty", a[0])}
			}
			if timeout <= 0 {
				return usageError{fmt.Errorf("post %s: --timeout must be positive", a[0])}
			}
			// An observer posts no started/stopping events of its own.
			bus, err := events.Open(events.Options{Path: a[0], Mode: events.Manual, Observe: true, MustExist: true, Timeout: timeout})
			if err != nil {
				return err
			}
			defer bus.Close()
			var data []byte
			if len(a) == 4 {
				data = []byte(a[3])
				if a[3] == "-" {
					// Read at most one byte more than fits, to say so.
					limit := bus.MaxData(a[1], a[2], unique)
					if data, err = io.ReadAll(io.LimitReader(stdin, int64(limit)+1)); err != nil {
						return fmt.Errorf("post %s: read stdin: %w", a[0], err)
					}
					if len(data) > limit {
						return fmt.Errorf("post %s: stdin holds more than the %d data bytes an event %s/%s can carry: %w",
							a[0], limit, a[1], a[2], events.ErrTooBig)
					}
				}
			}
			var seq uint64
			if unique != "" {
				seq, err = bus.PublishUnique(a[1], a[2], data, unique)
			} else {
				seq, err = bus.Publish(a[1], a[2], data)
			}
			if err != nil {
				return err
			}
			_, err = fmt.Fprintln(stdout, seq)
			return err
		},
	}
	cmd.Flags().StringVar(&unique, "unique", "", "post as a unique event with this key: exactly one process runs it")
	cmd.Flags().DurationVar(&timeout, "timeout", events.DefaultTimeout, "with --unique, if the event wins its key: how long later events with the key are ignored (use the workers' Options.Timeout)")
	return cmd
}
