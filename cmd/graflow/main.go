// Command graflow runs Graflow workers and projectors, submits and inspects
// runs, and starts a local development stack ("graflow dev").
//
// The CLI is a thin layer: Main.Run parses arguments and calls the library;
// main maps the returned error to an exit code.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

func main() {
	ctx, stop := signalContext(context.Background())
	defer stop()
	redis.SetLogger(quietLogger{}) // our errors say what failed; go-redis' pool chatter does not help
	applyGCPolicy(os.Getenv)
	m := NewMain()
	err := withTracing(ctx, os.Getenv, os.Stderr, func() error { return m.Run(ctx, os.Args[1:]) })
	os.Exit(m.exitCode(ctx, err))
}

// Exit codes.
const (
	ExitOK      = 0
	ExitFailed  = 1 // the run (or check) failed
	ExitUsage   = 2 // bad arguments
	ExitError   = 3 // could not do what was asked (Redis down, run missing...)
	ExitTimeout = 4 // waited too long
	// ExitQuarantined: the run was set aside for good (run_quarantined:
	// the projector could not process it; see "graflow status RUN").
	ExitQuarantined = 5
	// ExitCancelled: the run was cancelled (graflow cancel).
	ExitCancelled = 6
)

// ExitError carries an exit code through Run's error.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func withCode(code int, err error) error {
	if err == nil {
		return nil
	}
	return &exitError{code: code, err: err}
}

// errUsage marks argument errors (exit code 2).
var errUsage = errors.New("usage")

func usagef(format string, args ...any) error {
	return withCode(ExitUsage, fmt.Errorf(format, args...))
}

// Main is the CLI. Its fields are the process's environment, replaceable in
// tests.
type Main struct {
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer
	Getenv func(string) string
	// Exe is the path of this binary, used to start worker processes.
	Exe string
}

// NewMain returns a Main wired to the process.
func NewMain() *Main {
	exe, _ := os.Executable()
	return &Main{Stdin: os.Stdin, Stdout: os.Stdout, Stderr: os.Stderr, Getenv: os.Getenv, Exe: exe}
}

// exitCode maps Run's error to the exit code and prints it. A cancellation
// is a clean exit only when ctx (the signal context) was cancelled: an
// error that merely wraps context.Canceled from an internal cancel is a
// failure and is printed.
func (m *Main) exitCode(ctx context.Context, err error) int {
	if err == nil {
		return ExitOK
	}
	var ee *exitError
	code := ExitError
	if errors.As(err, &ee) {
		code = ee.code
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		code = ExitOK
	}
	if code != ExitOK && !errors.Is(err, errQuiet) {
		fmt.Fprintf(m.Stderr, "graflow: %v\n", err)
	}
	return code
}

// errQuiet marks errors whose message was already printed.
var errQuiet = errors.New("already reported")

// runFunc runs a command with its positional arguments; its flags are
// already parsed into the variables its setup bound.
type runFunc func(ctx context.Context, args []string) error

// command is one verb. Its setup binds the verb's flags to fs and returns
// the function that runs it; c already holds the common flags (--redis,
// --namespace, --log-level...). A name with a space ("schedule add") is a
// subcommand of the first word, which must be registered too (with a nil
// setup when it only groups its subcommands).
type command struct {
	name    string
	summary string
	// long is the help text above the flags (default: summary).
	long    string
	aliases []string
	setup   func(m *Main, fs *pflag.FlagSet, c *common) runFunc
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// Run parses args with cobra (help, completion, --version, GRAFLOW_* env
// binding and value checks included) and runs the command they name.
func (m *Main) Run(ctx context.Context, args []string) error {
	if len(args) == 0 {
		root := m.rootCommand(ctx)
		root.SetOut(m.Stderr)
		_ = root.Usage()
		return withCode(ExitUsage, errors.Join(errUsage, errQuiet))
	}
	root := m.rootCommand(ctx)
	root.SetArgs(args)
	ran := false
	root.PersistentPreRunE = func(cmd *cobra.Command, _ []string) error {
		ran = true
		return m.bindEnv(cmd)
	}
	err := root.ExecuteContext(ctx)
	if err != nil && !ran {
		// cobra's own errors (unknown command, bad arguments) are usage
		// errors; flag errors already carry ExitUsage.
		var ee *exitError
		if !errors.As(err, &ee) {
			err = withCode(ExitUsage, fmt.Errorf("%w (run \"graflow help\")", err))
		}
	}
	return err
}

// signalContext returns a context cancelled by the first SIGINT or SIGTERM,
// with an *interrupted as its cause (context.Cause), so a command can tell
// an interrupt from its own cancellations and exit 128+signal.
func signalContext(parent context.Context) (context.Context, func()) {
	ctx, cancel := context.WithCancelCause(parent)
	ch := make(chan os.Signal, 1)
	signal.Notify(ch, os.Interrupt, syscall.SIGTERM)
	done := make(chan struct{})
	go func() {
		defer close(done)
		select {
		case s := <-ch:
			cancel(&interrupted{sig: s})
		case <-ctx.Done():
		}
	}()
	return ctx, func() {
		signal.Stop(ch)
		cancel(nil)
		<-done
	}
}

// interrupted is the cause of the signal context's cancellation.
type interrupted struct{ sig os.Signal }

func (e *interrupted) Error() string { return "interrupted by " + e.sig.String() }

// code is the shell's convention for a process killed by the signal:
// 128+n (130 for SIGINT, 143 for SIGTERM).
func (e *interrupted) code() int {
	if s, ok := e.sig.(syscall.Signal); ok {
		return 128 + int(s)
	}
	return 128 + int(syscall.SIGINT)
}

// interruption returns the signal that cancelled ctx, if one did.
func interruption(ctx context.Context) (*interrupted, bool) {
	var in *interrupted
	ok := ctx.Err() != nil && errors.As(context.Cause(ctx), &in)
	return in, ok
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func trimLower(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
