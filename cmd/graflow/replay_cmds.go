package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"io"
	"os"
	"strings"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/replay"
)

func init() {
	register(&command{name: "replay", summary: "rebuild a run from its log and print its timeline; \"replay verify RUN|--all\" checks live state and history", setup: runReplay,
		long: "graflow replay [--json] RUN\n       graflow replay verify [--json] RUN... | --all\n\nFolds RUN's log from the first event (the projector's own fold) and prints\nits timeline: per task its attempts, workers, claim/finish times, retries,\nreclaims, rejected results and why it became ready."})
	register(&command{name: "replay verify", summary: "check runs' live state against their logs, and their history invariants (RUN... | --all)", setup: runVerify,
		long: "graflow replay verify [--json] RUN... | --all\n\nRebuilds each run's state from its log and compares it field by field with\nthe live state in Redis, and checks the history invariants. Exit 0 when all\nhold, 1 with a report naming run, task, field and missing event otherwise."})
	register(&command{name: "export", summary: "write a run's log as JSON lines, one event per line (graflow export RUN > run.jsonl)", setup: runExport})
	register(&command{name: "import", summary: "rebuild a run from an export file (- for stdin) in --namespace; refuses to overwrite", setup: runImport})
	register(&command{name: "resume", summary: "re-dispatch an unfinished run's tasks whose queue messages are gone (after import)", setup: runResume})
}

// openClient connects and returns a client for the namespace and the
// function that closes its connection.
func (c *common) openClient(ctx context.Context) (*graflow.Client, func(), error) {
	r, err := c.connect(ctx)
	if err != nil {
		return nil, nil, err
	}
	cl, err := graflow.NewClient(graflow.Config{Redis: r, Namespace: c.namespace, NamespacePartitions: c.partitions})
	if err != nil {
		_ = r.Close()
		return nil, nil, withCode(ExitUsage, err)
	}
	return cl, func() { _ = r.Close() }, nil
}

// replayErr maps replay errors to exit codes.
func replayErr(err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, replay.ErrInvalidExport):
		return withCode(ExitUsage, err)
	case errors.Is(err, graflow.ErrRunNotFound), errors.Is(err, replay.ErrRunExists):
		return withCode(ExitError, err)
	}
	return err
}

func runReplay(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print the timeline as JSON")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 1 {
			return usagef("replay takes one run id (or \"replay verify\")")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		tl, err := rc.Timeline(ctx, pos[0])
		if err != nil {
			return replayErr(err)
		}
		if c.json {
			return printJSON(m.Stdout, tl)
		}
		return tl.WriteText(m.Stdout)
	}
}

func runVerify(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print the reports as JSON")
	all := fs.Bool("all", false, "verify every run of the namespace's run index")
	return func(ctx context.Context, args []string) error {
		runs := args
		if *all == (len(runs) > 0) {
			return usagef("replay verify takes run ids or --all")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		var reps []*replay.Report
		if *all {
			if reps, err = rc.VerifyAll(ctx); err != nil {
				return err
			}
		} else {
			for _, run := range runs {
				rep, err := rc.Verify(ctx, run)
				if err != nil {
					return replayErr(err)
				}
				reps = append(reps, rep)
			}
		}
		failed := 0
		for _, r := range reps {
			if !r.OK() {
				failed++
			}
		}
		if c.json {
			var v any = reps
			if !*all && len(reps) == 1 {
				v = reps[0]
			}
			if err := printJSON(m.Stdout, v); err != nil {
				return err
			}
		} else {
			w := bufio.NewWriter(m.Stdout)
			for _, r := range reps {
				checks := make([]string, len(r.Checks))
				for i, ch := range r.Checks {
					checks[i] = string(ch)
				}
				if r.OK() {
					fmt.Fprintf(w, "run %s: ok (%s, %d tasks, %d events; checked %s)\n", r.Run, r.Status, r.Tasks, r.Events, strings.Join(checks, ", "))
					continue
				}
				fmt.Fprintf(w, "run %s: FAILED, %d problem(s):\n", r.Run, len(r.Problems))
				for _, p := range r.Problems {
					fmt.Fprintf(w, "  %s\n", p)
				}
			}
			if *all {
				fmt.Fprintf(w, "verified %d run(s) in namespace %s: %d failed\n", len(reps), c.namespace, failed)
			}
			if err := w.Flush(); err != nil {
				return err
			}
		}
		if failed > 0 {
			return withCode(ExitFailed, errors.Join(fmt.Errorf("%w: %d of %d run(s)", replay.ErrVerifyFailed, failed, len(reps)), errQuiet))
		}
		return nil
	}
}

func runExport(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	out := fs.String("o", "", "write to this file instead of stdout")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 1 {
			return usagef("export takes one run id")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		var w io.Writer = m.Stdout
		var f *os.File
		if *out != "" {
			if f, err = os.Create(*out); err != nil {
				return withCode(ExitUsage, err)
			}
			w = f
		}
		n, err := rc.Export(ctx, pos[0], w)
		if f != nil {
			if cerr := f.Close(); err == nil {
				err = cerr
			}
		}
		if err != nil {
			return replayErr(err)
		}
		fmt.Fprintf(m.Stderr, "exported %d events of run %s\n", n, pos[0])
		return nil
	}
}

func runImport(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
	runID := fs.String("run-id", "", "import under this run id instead of the exported one")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 1 {
			return usagef("import takes one export file (or - for stdin)")
		}
		var in io.Reader = m.Stdin
		if pos[0] != "-" {
			f, err := os.Open(pos[0])
			if err != nil {
				return withCode(ExitUsage, err)
			}
			defer f.Close()
			in = f
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		res, err := rc.Import(ctx, in, replay.ImportOptions{RunID: *runID})
		if err != nil {
			return replayErr(err)
		}
		if c.json {
			return printJSON(m.Stdout, res)
		}
		fmt.Fprintf(m.Stdout, "imported run %s into namespace %s: %d events, %d tasks, status %s\n", res.Run, res.Namespace, res.Events, res.Tasks, res.Status)
		if res.Continued > 0 {
			fmt.Fprintf(m.Stdout, "completed an interrupted import (%d events were already there)\n", res.Continued)
		}
		if res.Problems > 0 {
			fmt.Fprintf(m.Stdout, "the history has %d problem(s): graflow replay verify %s --namespace %s\n", res.Problems, res.Run, res.Namespace)
		}
		if res.Unfinished {
			fmt.Fprintf(m.Stdout, "the run had not ended: graflow resume %s --namespace %s re-dispatches its queued and running tasks\n", res.Run, res.Namespace)
		}
		return nil
	}
}

func runResume(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print the result as JSON")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 1 {
			return usagef("resume takes one run id")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		res, err := rc.Resume(ctx, pos[0])
		if err != nil {
			return replayErr(err)
		}
		if c.json {
			return printJSON(m.Stdout, res)
		}
		if res.Status != "running" {
			fmt.Fprintf(m.Stdout, "run %s is %s: nothing to resume\n", res.Run, res.Status)
			return nil
		}
		for _, t := range res.Reclaimed {
			fmt.Fprintf(m.Stdout, "reclaimed %s attempt %d from %s (epoch %d -> %d) and re-dispatched it\n", t.Task, t.Attempt, t.From, t.FromEpoch, t.Epoch)
		}
		for _, t := range res.Redispatched {
			fmt.Fprintf(m.Stdout, "re-dispatched %s attempt %d\n", t.Task, t.Attempt)
		}
		for _, t := range res.Skipped {
			fmt.Fprintf(m.Stdout, "skipped %s: its live record differs from the log (see graflow replay verify)\n", t)
		}
		fmt.Fprintf(m.Stdout, "run %s: %d reclaimed, %d re-dispatched, %d already queued; the projector completes it\n",
			res.Run, len(res.Reclaimed), len(res.Redispatched), res.Queued)
		return nil
	}
}
