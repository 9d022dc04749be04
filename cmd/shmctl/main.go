// Command shmctl is the operator's tool for a live shmring event ring: make
// one, look inside, watch events go by, post one, check it for damage, serve
// its metrics, remove it.
//
//	shmctl create /dev/shm/app.events
//	shmctl info /dev/shm/app.events
//	shmctl tail --follow /dev/shm/app.events
//	shmctl exec /dev/shm/app.events stats
//
// Exit codes: 0 ok, 1 failure, 2 usage error. Errors are one line on stderr.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/shmring/shmring/ring"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	// The first signal asks the command to finish; a second one kills it
	// (the default action, restored once the first has arrived).
	context.AfterFunc(ctx, stop)
	code := run(ctx, os.Args[1:], os.Stdin, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// usageError marks a mistake in the command line (exit code 2).
type usageError struct{ err error }

func (e usageError) Error() string { return e.err.Error() }
func (e usageError) Unwrap() error { return e.err }

// failed is an error already reported in the command's output (verify's
// problems): exit 1 without another message.
var errFailed = errors.New("failed")

// run executes one command line and returns the exit code.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	root := newRoot(stdin, stdout)
	root.SetArgs(args)
	root.SetOut(stdout)
	root.SetErr(stderr)
	err := root.ExecuteContext(ctx)
	switch {
	case err == nil:
		return 0
	case errors.Is(err, errFailed):
		return 1
	case isUsage(err):
		fmt.Fprintf(stderr, "shmctl: %v (see shmctl --help)\n", oneLine(err))
		return 2
	default:
		fmt.Fprintf(stderr, "shmctl: %v\n", oneLine(err))
		return 1
	}
}

func isUsage(err error) bool {
	var u usageError
	if errors.As(err, &u) {
		return true
	}
	// Cobra's own command-line errors carry no type.
	msg := err.Error()
	for _, p := range []string{"unknown command", "unknown flag", "unknown shorthand", "flag needs an argument", "invalid argument", "accepts ", "requires "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// guard runs f, turning a memory fault in the mapped ring (its file was
// truncated under us) into an error naming path. The setting it changes is
// per goroutine, so every goroutine that reads the ring needs its own.
func guard(path string, f func() error) (err error) {
	defer func() {
		if err != nil && errors.Is(err, ring.ErrFault) {
			err = fmt.Errorf("%s: %w", path, err)
		}
	}()
	defer ring.RecoverFault(debug.SetPanicOnFault(true), &err)
	return f()
}

func oneLine(err error) string { return strings.ReplaceAll(err.Error(), "\n", "; ") }

// args wraps a cobra argument check so that its failure is a usage error.
func args(check cobra.PositionalArgs) cobra.PositionalArgs {
	return func(cmd *cobra.Command, a []string) error {
		if err := check(cmd, a); err != nil {
			return usageError{err}
		}
		return nil
	}
}

func newRoot(stdin io.Reader, stdout io.Writer) *cobra.Command {
	root := &cobra.Command{
		Use:           "shmctl",
		Short:         "Inspect and operate a shmring event ring",
		Long:          "shmctl inspects and operates a shmring event ring: a file-backed region shared by the processes of one machine.",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return usageError{err} })
	root.AddCommand(
		createCmd(stdout),
		infoCmd(stdout),
		readersCmd(stdout),
		tailCmd(stdout),
		postCmd(stdin, stdout),
		execCmd(stdout),
		verifyCmd(stdout),
		statsCmd(stdout),
		serveCmd(stdout),
		rmCmd(stdout),
	)
	return root
}
