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
	"sort"
	"strings"
	"syscall"

	"github.com/redis/go-redis/v9"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	redis.SetLogger(quietLogger{}) // our errors say what failed; go-redis' pool chatter does not help
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

type command struct {
	name    string
	summary string
	run     func(ctx context.Context, m *Main, args []string) error
}

var commands = map[string]*command{}

func register(c *command) { commands[c.name] = c }

// Run runs the command named by args[0].
func (m *Main) Run(ctx context.Context, args []string) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		m.usage()
		if len(args) == 0 {
			return withCode(ExitUsage, errors.Join(errUsage, errQuiet))
		}
		return nil
	}
	c, ok := commands[args[0]]
	if !ok {
		return usagef("unknown command %q (run \"graflow help\")", args[0])
	}
	return c.run(ctx, m, args[1:])
}

func (m *Main) usage() {
	fmt.Fprintln(m.Stderr, "graflow: event-sourced workflows on Redis Streams\n\nUsage: graflow <command> [flags]\n\nCommands:")
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		fmt.Fprintf(m.Stderr, "  %-10s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(m.Stderr, "\nEvery command takes --redis URL (default $REDIS_URL, else redis://127.0.0.1:6379)\nand --namespace NS (default $GRAFLOW_NAMESPACE, else \"graflow\"). \"graflow <command> -h\" for its flags.")
}

type quietLogger struct{}

func (quietLogger) Printf(context.Context, string, ...any) {}

func trimLower(s string) string { return strings.ToLower(strings.TrimSpace(s)) }
