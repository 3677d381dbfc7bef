package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"github.com/graflow-go/graflow/projector"
	"github.com/spf13/pflag"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
)

func init() {
	register(&command{name: "runs", summary: "list runs, newest first ([--status s] [--limit n])", setup: runRuns})
	register(&command{name: "workers", summary: "list registered workers: pools, load, counters, heartbeat age", setup: runWorkers})
	register(&command{name: "projectors", summary: "list registered projectors: partitions, uptime, heartbeat age (none: runs do not progress)", setup: runProjectors})
	register(&command{name: "queues", summary: "queue streams per pool and priority: length, pending, lag, oldest pending", setup: runQueues})
	register(&command{name: "events", summary: "print a run's events as JSON lines; --follow tails the log live (--run required)", setup: runEvents})
}

const stampLayout = "2006-01-02T15:04:05.000Z07:00"

func ago(ms int64) string {
	return (time.Duration(ms) * time.Millisecond).Round(time.Millisecond).String()
}

func runRuns(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	status := fs.String("status", "", "only runs in this status (running, succeeded, failed, cancelled)")
	limit := fs.Int("limit", 20, "at most this many runs (0: all)")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 0 {
			return usagef("runs takes no arguments")
		}
		switch st := projector.RunStatus(trimLower(*status)); st {
		case "", projector.RunRunning, projector.RunSucceeded, projector.RunFailed, projector.RunCancelled, projector.RunQuarantined:
		default:
			return usagef("--status %q: want %s, %s, %s, %s or %s", *status, projector.RunRunning, projector.RunSucceeded, projector.RunFailed, projector.RunCancelled, projector.RunQuarantined)
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		n := *limit
		if n == 0 {
			n = -1
		}
		runs, err := rc.Runs(ctx, graflow.RunsOptions{Status: trimLower(*status), Limit: n})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, runs)
		}
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "RUN\tWORKFLOW\tSTATUS\tSUBMITTED")
		for _, r := range runs {
			st := r.Status
			if r.Quarantined != "" {
				st += " (quarantined)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", r.ID, r.Workflow, st, r.SubmittedAt.Format(stampLayout))
		}
		return tw.Flush()
	}
}

func runWorkers(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 0 {
			return usagef("workers takes no arguments")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		ws, err := rc.Workers(ctx)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, ws)
		}
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "WORKER\tHOST\tPID\tPOOLS\tRUNNING\tPROCESSED\tFAILED\tUPTIME\tLAST HEARTBEAT")
		for _, w := range ws {
			if w.Expired {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\t-\t-\t-\texpired (died without deregistering)\n", w.ID)
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%d/%d\t%d\t%d\t%s\t%s ago\n", w.ID, w.Host, w.PID, strings.Join(w.Pools, ","),
				w.Running, w.Concurrency, w.Processed, w.Failed, ago(w.UptimeMS), ago(w.HeartbeatAgeMS))
		}
		return tw.Flush()
	}
}

func runProjectors(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 0 {
			return usagef("projectors takes no arguments")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		ps, err := rc.Projectors(ctx)
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, ps)
		}
		live := 0
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "PROJECTOR\tHOST\tPID\tPARTITIONS\tUPTIME\tLAST HEARTBEAT")
		for _, p := range ps {
			if p.Expired {
				fmt.Fprintf(tw, "%s\t-\t-\t-\t-\texpired (died without deregistering)\n", p.ID)
				continue
			}
			live++
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s ago\n", p.ID, p.Host, p.PID, strings.Join(p.Partitions, ","), ago(p.UptimeMS), ago(p.HeartbeatAgeMS))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		if live == 0 {
			fmt.Fprintln(m.Stdout, "no projector is running: submitted runs will not progress (start one: graflow projector)")
		}
		return nil
	}
}

func runQueues(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", false, "print JSON")
	pools := fs.String("pool", "", "comma-separated pools (default: every pool found)")
	all := fs.Bool("all", false, "include empty bands")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) != 0 {
			return usagef("queues takes no arguments")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		qs, err := rc.Queues(ctx, graflow.QueuesOptions{Pools: splitList(*pools), Empty: *all})
		if err != nil {
			return err
		}
		if c.json {
			return printJSON(m.Stdout, qs)
		}
		if len(qs) == 0 {
			fmt.Fprintln(m.Stdout, "no queued or pending messages (--all shows empty bands)")
			return nil
		}
		tw := tabwriter.NewWriter(m.Stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "POOL\tPRIORITY\tLENGTH\tPENDING\tLAG\tOLDEST PENDING\tCONSUMERS")
		for _, q := range qs {
			lag := fmt.Sprint(q.Lag)
			if q.LagEstimated {
				lag += "*"
			}
			oldest := "-"
			if q.OldestPendingID != "" {
				oldest = fmt.Sprintf("%s (queued %s ago, idle %s, %d deliveries)", q.OldestPendingID, ago(q.OldestPendingAgeMS), ago(q.OldestPendingIdleMS), q.OldestDeliveries)
			}
			var cons []string
			for name, n := range q.Consumers {
				cons = append(cons, fmt.Sprintf("%s:%d", name, n))
			}
			fmt.Fprintf(tw, "%s\t%d\t%d\t%d\t%s\t%s\t%s\n", q.Pool, q.Priority, q.Length, q.Pending, lag, oldest, strings.Join(cons, " "))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		for _, q := range qs {
			if q.LagEstimated {
				fmt.Fprintln(m.Stdout, "* lag computed as length - pending (Redis cannot report it after deletions)")
				break
			}
		}
		return nil
	}
}

func runEvents(m *Main, fs *pflag.FlagSet, c *common) runFunc {
	fs.BoolVar(&c.json, "json", true, "print JSON lines (the default; same format as graflow export)")
	run := fs.String("run", "", "the run whose log to print (required: there is no global event feed)")
	from := fs.String("from", "", "start after this log entry id (an event's seq), to resume")
	follow := fs.Bool("follow", false, "keep printing new events as they are appended (XREAD BLOCK)")
	untilEnd := fs.Bool("until-end", false, "with --follow: stop once the run has ended (its last terminal event, not reopened by a requeue)")
	limit := fs.Int("limit", 0, "without --follow: print at most this many events (0: all)")
	text := fs.Bool("text", false, "print one human-readable line per event instead of JSON")
	return func(ctx context.Context, args []string) error {
		pos := args
		if len(pos) == 1 && *run == "" {
			*run = pos[0]
		} else if len(pos) != 0 {
			return usagef("events takes --run RUN")
		}
		if *run == "" {
			return usagef("events needs --run RUN: there is no global event feed (the projector feed only points at runs and is deleted as it is consumed)")
		}
		rc, done, err := c.openClient(ctx)
		if err != nil {
			return err
		}
		defer done()
		enc := json.NewEncoder(m.Stdout)
		enc.SetEscapeHTML(false)
		print := func(e events.Event) error {
			if *text {
				line := fmt.Sprintf("%s %s %s", e.Seq, e.Time.Format(stampLayout), e.Type)
				if e.Task != "" {
					line += fmt.Sprintf(" task=%s attempt=%d epoch=%d", e.Task, e.Attempt, e.Epoch)
				}
				if e.Worker != "" {
					line += " by=" + e.Worker
				}
				if len(e.Body) > 0 {
					line += " " + string(e.Body)
				}
				_, err := fmt.Fprintln(m.Stdout, line)
				return err
			}
			return enc.Encode(e)
		}
		if !*follow {
			evs, err := rc.Events(ctx, *run, *from, *limit)
			if err != nil {
				return err
			}
			if len(evs) == 0 && *from == "" {
				return withCode(ExitError, fmt.Errorf("%w: %s in namespace %q", graflow.ErrRunNotFound, *run, c.namespace))
			}
			for _, e := range evs {
				if err := print(e); err != nil {
					return err
				}
			}
			return nil
		}
		if *untilEnd {
			// A typo must not wait for ever (Follow waits for a run that
			// does not exist yet): exit 3, as wait does.
			if _, err := rc.Status(ctx, *run); errors.Is(err, graflow.ErrRunNotFound) {
				return withCode(ExitError, err)
			}
		}
		err = rc.Follow(ctx, *run, graflow.FollowOptions{From: *from, UntilEnd: *untilEnd}, print)
		if in, ok := interruption(ctx); ok && *untilEnd {
			// Never exit 0 on Ctrl-C or SIGTERM: the run did not end.
			return withCode(in.code(), fmt.Errorf("%w while following run %s: it goes on", in, *run))
		}
		return err
	}
}
