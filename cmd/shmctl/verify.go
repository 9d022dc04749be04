package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

func verifyCmd(stdout io.Writer) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "verify PATH",
		Short: "Check the header and every entry of a ring; exit 1 on any problem",
		Args:  args(cobra.ExactArgs(1)),
		RunE: func(cmd *cobra.Command, a []string) error {
			r, err := openRing(a[0])
			if err != nil {
				return err // the header checks are Open's
			}
			defer r.Close()
			rep, err := r.Verify()
			if err != nil {
				return err
			}
			if asJSON {
				if err := writeJSON(stdout, rep); err != nil {
					return err
				}
			} else {
				for _, p := range rep.Problems {
					fmt.Fprintf(stdout, "%s: %s: %s\n", a[0], p.Where, p.What)
				}
			}
			if len(rep.Problems) > 0 {
				if !asJSON {
					fmt.Fprintf(stdout, "%s: %d problems\n", a[0], len(rep.Problems))
				}
				return errFailed
			}
			if !asJSON {
				fmt.Fprintf(stdout, "%s: ok: %d committed records checked, next sequence %d, oldest %d\n", a[0], rep.Checked, rep.Next, rep.Oldest)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	return cmd
}
