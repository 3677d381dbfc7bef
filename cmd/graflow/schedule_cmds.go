package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"os"
	"text/tabwriter"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/scheduler"
)

func init() {
	register(&command{name: "schedule", summary: "recurring runs: add NAME CRON FILE | list | rm NAME | pause NAME | resume NAME | run (the scheduler)"})
	register(&command{name: "schedule add", summary: "submit FILE at every tick of CRON (quote it: \"0 3 * * *\"): add NAME CRON FILE [--tz ZONE] [--input JSON] [--replace]", setup: runScheduleAdd})
	register(&command{name: "schedule list", aliases: []string{"ls"}, summary: "schedules, their next tick and last run", setup: runScheduleList})
	register(&command{name: "schedule rm", aliases: []string{"remove"}, summary: "remove schedule NAME (its runs are kept)", setup: runScheduleChange("rm")})
	register(&command{name: "schedule pause", summary: "pause schedule NAME", setup: runScheduleChange("pause")})
	register(&command{name: "schedule resume", summary: "resume schedule NAME: its next tick fires, the ticks missed while paused do not", setup: runScheduleChange("resume")})
	register(&command{name: "schedule run", summary: "the scheduler: fires the ticks (run one or more) [--catch-up latest|all]", setup: runScheduler})
}

func runScheduleAdd(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	tz := fs.String("tz", "", "IANA time zone the cron expression is read in, e.g. Europe/Paris (default UTC)")
	input := fs.String("input", "", "the runs' input as JSON (replaces the spec file's input)")
	replace := fs.Bool("replace", false, "replace a schedule of the same name (it starts afresh)")
	fs.BoolVar(&c.json, "json", false, "print the schedule as JSON")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 3 {
			return usagef("schedule add takes NAME CRON FILE, got %d arguments (quote the cron expression: graflow schedule add nightly \"0 3 * * *\" nightly.yaml)", fs.NArg())
		}
		name, expr, file := fs.Arg(0), fs.Arg(1), fs.Arg(2)
		s := graflow.Schedule{Name: name, Cron: expr, Timezone: *tz, Replace: *replace}
		if *input != "" {
			if !json.Valid([]byte(*input)) {
				return usagef("--input is not valid JSON: %s", *input)
			}
			s.Input = json.RawMessage(*input)
		}
		// Check what can be checked before connecting: a bad name, cron
		// expression or spec file is a usage error even with Redis down.
		if err := scheduler.ValidScheduleName(name); err != nil {
			return withCode(ExitUsage, err)
		}
		if _, err := scheduler.ParseCron(expr, *tz); err != nil {
			return withCode(ExitUsage, err)
		}
		spec, err := specFile(m, file)
		if err != nil {
			return err
		}
		s.Spec = spec
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		info, err := cl.AddSchedule(ctx, s)
		switch {
		case errors.Is(err, scheduler.ErrInvalidSchedule) || errors.Is(err, scheduler.ErrInvalidWorkflow):
			return withCode(ExitUsage, err)
		case err != nil:
			return err
		}
		if c.json {
			return printJSON(m.Stdout, info)
		}
		fmt.Fprintf(m.Stdout, "schedule %s: %s (%s), workflow %s; first run %s at %s\n(a running scheduler fires it: \"graflow schedule run\", or \"graflow dev\")\n",
			info.Name, info.Cron, info.Timezone, info.Workflow, scheduler.RunID(info.Name, info.Next), info.Next.Format(time.RFC3339))
		return nil
	}
}

// readSpecFile reads a spec file ("-" for standard input), at most
// maxSpecFile bytes.
func readSpecFile(m *Main, path string) ([]byte, error) {
	if path == "-" {
		return readSpec(m.Stdin, "standard input")
	}
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return readSpec(f, path)
}

// specFile reads and parses a spec file ("-" for standard input).
func specFile(m *Main, path string) (events.RunSubmittedBody, error) {
	data, err := readSpecFile(m, path)
	if err != nil {
		return events.RunSubmittedBody{}, withCode(ExitUsage, err)
	}
	spec, err := scheduler.ParseSpec(data)
	if err != nil {
		return events.RunSubmittedBody{}, withCode(ExitUsage, fmt.Errorf("%s: %w", path, err))
	}
	return spec, nil
}

func runScheduleList(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 0 {
			return usagef("schedule list takes no arguments")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		list, err := cl.Schedules(ctx)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, list)
		}
		now := time.Now()
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tCRON\tTZ\tWORKFLOW\tSTATE\tNEXT\tLAST RUN")
		for _, s := range list {
			if s.Error != "" {
				fmt.Fprintf(tw, "%s\t\t\t\tunreadable: %s\t\t\n", s.Name, s.Error)
				continue
			}
			state, next, last := "active", "-", "-"
			switch {
			case s.Paused:
				state = "paused"
			case s.Overdue:
				state = "overdue (is a scheduler running?)"
			case !s.Next.IsZero() && !s.Next.After(now):
				state = "due"
			}
			if !s.Next.IsZero() {
				next = s.Next.Format(time.RFC3339)
			}
			switch {
			case s.LastRun != "":
				last = s.LastRun
			case !s.LastTick.IsZero():
				last = "skipped " + s.LastTick.Format(time.RFC3339) + " (see the scheduler's log)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", s.Name, s.Cron, s.Timezone, s.Workflow, state, next, last)
		}
		return tw.Flush()
	}
}

func runScheduleChange(verb string) func(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	return func(m *Main, fs *pflag.FlagSet, c *common) runFunc {
		return func(ctx context.Context, args []string) error {
			if fs.NArg() != 1 {
				return usagef("schedule %s takes one schedule name", verb)
			}
			cl, r, err := c.client(ctx)
			if err != nil {
				return err
			}
			defer r.Close()
			name := fs.Arg(0)
			done := "removed (its runs are kept)"
			switch verb {
			case "pause":
				err, done = cl.PauseSchedule(ctx, name), "paused"
			case "resume":
				err, done = cl.ResumeSchedule(ctx, name), "resumed: its next tick fires, the ticks it missed while paused do not"
			default:
				err = cl.RemoveSchedule(ctx, name)
			}
			if err != nil {
				return withCode(ExitError, err)
			}
			fmt.Fprintf(m.Stdout, "schedule %s %s\n", name, done)
			return nil
		}
	}
}

func runScheduler(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	catchUp := fs.String("catch-up", string(scheduler.CatchUpLatest), "after downtime, fire only the latest missed tick of each schedule (latest) or every missed tick (all)")
	refresh := fs.Duration("refresh", scheduler.DefaultCronRefresh, "longest sleep between passes: how soon schedules added, paused or resumed are seen")
	return func(ctx context.Context, args []string) error {
		if fs.NArg() != 0 {
			return usagef("schedule run takes no arguments")
		}
		policy := scheduler.CatchUp(trimLower(*catchUp))
		if policy != scheduler.CatchUpLatest && policy != scheduler.CatchUpAll {
			return usagef("--catch-up %q: use latest or all", *catchUp)
		}
		if *refresh <= 0 {
			return usagef("--refresh must be positive")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		return cl.RunSchedules(ctx, graflow.ScheduleRunOptions{CatchUp: policy, Refresh: *refresh, Logger: c.logger(m.Stderr)})
	}
}

// startSchedules runs the namespace's scheduler inside "graflow dev" until
// ctx ends; the channel is closed when it has stopped.
func (s *devStack) startSchedules(ctx context.Context) <-chan struct{} {
	done := make(chan struct{})
	l := s.log.With().Str("component", "schedules").Logger()
	cl, err := graflow.NewClient(graflow.Config{Redis: s.rdb, Namespace: s.o.c.namespace, NamespacePartitions: s.o.c.partitions})
	if err != nil {
		l.Error().Err(err).Msg("scheduler not started")
		close(done)
		return done
	}
	go func() {
		defer close(done)
		if err := cl.RunSchedules(ctx, graflow.ScheduleRunOptions{Logger: &l}); err != nil {
			l.Error().Err(err).Msg("scheduler stopped")
		}
	}()
	return done
}
