package main

import (
	"context"
	"errors"
	"fmt"
	"github.com/spf13/pflag"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/graflow-go/graflow"
)

func init() {
	register(&command{name: "dlq", summary: "dead letters: list | requeue RUN TASK | requeue --all | purge [RUN TASK | --all]", setup: runDLQ})
}

func runDLQ(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	all := fs.Bool("all", false, "requeue/purge every dead letter")
	limit := fs.Int64("limit", 1000, "list at most this many")
	return func(ctx context.Context, args []string) error {
		if len(args) == 0 {
			return usagef("dlq needs a subcommand: list, requeue RUN TASK, requeue --all, purge RUN TASK, purge --all")
		}
		sub, args := args[0], args[1:]
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		switch sub {
		case "list":
			dls, err := cl.DeadLetters(ctx, *limit)
			if err != nil {
				return err
			}
			if c.json {
				return printJSON(m.Stdout, dls)
			}
			tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tTASK\tAT\tDETAILS")
			for _, d := range dls {
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", d.Run, d.Task, d.At.Format(time.RFC3339), d.Details)
			}
			return tw.Flush()
		case "requeue":
			var targets []graflow.DeadLetter
			switch {
			case *all:
				if targets, err = cl.DeadLetters(ctx, 0); err != nil {
					return err
				}
			case len(args) == 2:
				targets = []graflow.DeadLetter{{Run: args[0], Task: args[1]}}
			default:
				return usagef("dlq requeue takes RUN TASK, or --all")
			}
			failed := 0
			for _, d := range targets {
				if err := cl.Requeue(ctx, d.Run, d.Task); err != nil {
					if !*all && errors.Is(err, graflow.ErrRunNotFound) {
						// The named run is missing: exit 3, as repair does.
						return withCode(ExitError, fmt.Errorf("requeue %s %s: %w", d.Run, d.Task, err))
					}
					failed++
					fmt.Fprintf(m.Stderr, "requeue %s %s: %v\n", d.Run, d.Task, err)
					continue
				}
				fmt.Fprintf(m.Stdout, "requeued %s %s\n", d.Run, d.Task)
			}
			if failed > 0 {
				return withCode(ExitFailed, fmt.Errorf("%d of %d requeues failed", failed, len(targets)))
			}
			return nil
		case "purge":
			switch {
			case *all:
				err = cl.PurgeDeadLetters(ctx)
			case len(args) == 2:
				err = cl.PurgeDeadLetter(ctx, args[0], args[1])
			default:
				return usagef("dlq purge takes RUN TASK, or --all")
			}
			if err != nil {
				return err
			}
			fmt.Fprintln(m.Stdout, "purged (the runs keep their history; purge only forgets the dead letters)")
			return nil
		}
		return usagef("unknown dlq subcommand %q: use list, requeue, purge", sub)
	}
}

func init() {
	register(&command{name: "repair", summary: "re-dispatch running runs' tasks whose queue messages were lost (RUN... or --all)", setup: runRepair})
}

func runRepair(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	all := fs.Bool("all", false, "every running run")
	return func(ctx context.Context, args []string) error {
		if !*all && fs.NArg() == 0 {
			return usagef("repair takes run ids, or --all")
		}
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		runs := fs.Args()
		if *all {
			if runs, err = cl.RunningRuns(ctx); err != nil {
				return err
			}
		}
		var reports []graflow.RepairReport
		err = cl.RepairRuns(ctx, runs, func(rep graflow.RepairReport) error {
			reports = append(reports, rep)
			if !c.json {
				switch {
				case rep.Skipped:
					fmt.Fprintf(m.Stdout, "%s: not running, nothing to do\n", rep.Run)
				case len(rep.Redispatched) == 0:
					fmt.Fprintf(m.Stdout, "%s: nothing lost; feed pointed\n", rep.Run)
				default:
					fmt.Fprintf(m.Stdout, "%s: re-dispatched %s\n", rep.Run, strings.Join(rep.Redispatched, ", "))
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, reports)
		}
		return nil
	}
}

func init() {
	register(&command{name: "gc", summary: "delete finished runs older than --older-than (export them first if you need them)", setup: runGC})
}

func runGC(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	older := fs.Duration("older-than", 7*24*time.Hour, "only runs submitted longer ago than this (0: any finished run)")
	dry := fs.Bool("dry-run", false, "report what would be removed, remove nothing")
	return func(ctx context.Context, args []string) error {
		cl, r, err := c.client(ctx)
		if err != nil {
			return err
		}
		defer r.Close()
		rep, err := cl.GC(ctx, graflow.GCOptions{OlderThan: *older, DryRun: *dry})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, rep)
		}
		verb := "removed"
		if *dry {
			verb = "would remove"
		}
		fmt.Fprintf(m.Stdout, "gc: %s %d finished runs (%d events, %d keys); kept %d not yet fully projected; %d dangling index entries; %d dead letters of gone runs\n",
			verb, len(rep.Runs), rep.Events, rep.Keys, rep.Kept, rep.Dangling, rep.DeadLetters)
		return nil
	}
}
