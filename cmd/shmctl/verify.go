package main

import (
	"fmt"
	"io"

	"github.com/spf13/cobra"
)

// VerifyReport is what `verify --json` prints.
type VerifyReport struct {
	Path    string `json:"path"`
	Next    uint64 `json:"next"`
	Oldest  uint64 `json:"oldest"`
	Checked int    `json:"checked"`
	Entries struct {
		Committed int `json:"committed"`
		Abandoned int `json:"abandoned"`
		Busy      int `json:"busy"`
		Empty     int `json:"empty"`
		Stale     int `json:"stale"`
	} `json:"entries"`
	Problems []VerifyProblem `json:"problems"`
}

// VerifyProblem is one problem verify found.
type VerifyProblem struct {
	Where string `json:"where"`
	What  string `json:"what"`
}

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
				return fmt.Errorf("verify %s: %w", a[0], err)
			}
			if asJSON {
				out := VerifyReport{Path: a[0], Next: rep.Next, Oldest: rep.Oldest, Checked: rep.Checked, Problems: []VerifyProblem{}}
				out.Entries.Committed, out.Entries.Abandoned = rep.Entries.Committed, rep.Entries.Abandoned
				out.Entries.Busy, out.Entries.Empty, out.Entries.Stale = rep.Entries.Busy, rep.Entries.Empty, rep.Entries.Stale
				for _, p := range rep.Problems {
					out.Problems = append(out.Problems, VerifyProblem{Where: p.Where, What: p.What})
				}
				if err := writeJSON(stdout, out); err != nil {
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
