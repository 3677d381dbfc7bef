package main

import (
	"context"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
)

// The schedule verbs end to end, in process: add (checked before anything
// is written), list, pause, resume, rm, and "schedule run", which fires a
// tick and stops cleanly when its context ends (SIGTERM in main).
func TestScheduleVerbs(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	cli := func(args ...string) (int, string) {
		t.Helper()
		m, out := newTestMain("", nil)
		err := m.Run(ctx, append(args, "--redis", redistest.URL(t), "--namespace", ns))
		return m.exitCode(ctx, err), out.String()
	}
	expect := func(code int, wants []string, args ...string) string {
		t.Helper()
		got, out := cli(args...)
		if got != code {
			t.Errorf("graflow %s: exit %d, want %d:\n%s", strings.Join(args, " "), got, code, out)
		}
		for _, w := range wants {
			if !strings.Contains(out, w) {
				t.Errorf("graflow %s: output lacks %q:\n%s", strings.Join(args, " "), w, out)
			}
		}
		return out
	}
	const spec = "../../examples/nightly.yaml"

	t.Run("an invalid cron expression, zone, name or spec is a usage error and writes nothing", func(t *testing.T) {
		expect(ExitUsage, []string{"expected exactly 5 fields", "minute hour day-of-month month day-of-week"}, "schedule", "add", "n", "0 3 * *", spec)
		expect(ExitUsage, []string{"quote the cron expression"}, "schedule", "add", "n", "0", "3", "*", "*", "*", spec)
		expect(ExitUsage, []string{"time zone", "IANA"}, "schedule", "add", "n", "0 3 * * *", spec, "--tz", "Paris")
		expect(ExitUsage, []string{"invalid schedule: name"}, "schedule", "add", "n/1", "0 3 * * *", spec)
		expect(ExitUsage, []string{"--input is not valid JSON"}, "schedule", "add", "n", "0 3 * * *", spec, "--input", "{")
		expect(ExitUsage, []string{"no such file"}, "schedule", "add", "n", "0 3 * * *", "nope.yaml")
		k := rdb.NewKeys(ns)
		if n := rc.Exists(ctx, k.Schedules(), k.ScheduleStates()).Val(); n != 0 {
			t.Errorf("refused adds wrote %d keys", n)
		}
	})
	t.Run("add, list, pause, resume and rm", func(t *testing.T) {
		expect(ExitOK, []string{"schedule nightly: 0 3 * * * (Europe/Paris), workflow nightly-report; first run nightly-"},
			"schedule", "add", "nightly", "0 3 * * *", spec, "--tz", "Europe/Paris", "--input", `{"report":"refunds"}`)
		expect(ExitError, []string{"schedule already exists: nightly"}, "schedule", "add", "nightly", "@hourly", spec)
		out := expect(ExitOK, []string{"NAME", "nightly", "0 3 * * *", "Europe/Paris", "nightly-report", "active"}, "schedule", "list")
		if !regexp.MustCompile(`T03:00:00\+0[12]:00`).MatchString(out) {
			t.Errorf("the next tick is not shown as 03:00 Paris time:\n%s", out)
		}
		expect(ExitOK, []string{"schedule nightly paused"}, "schedule", "pause", "nightly")
		out = expect(ExitOK, nil, "schedule", "list", "--json")
		var list []graflow.ScheduleInfo
		if err := json.Unmarshal([]byte(out), &list); err != nil || len(list) != 1 || !list[0].Paused || list[0].Name != "nightly" {
			t.Errorf("schedule list --json: %v %+v\n%s", err, list, out)
		}
		expect(ExitOK, []string{"schedule nightly resumed"}, "schedule", "resume", "nightly")
		expect(ExitOK, []string{"@hourly"}, "schedule", "add", "nightly", "@hourly", spec, "--replace")
		expect(ExitOK, []string{"schedule nightly removed"}, "schedule", "rm", "nightly")
		expect(ExitError, []string{"schedule not found: nightly"}, "schedule", "rm", "nightly")
		expect(ExitError, []string{"schedule not found: nope"}, "schedule", "pause", "nope")
		if out := expect(ExitOK, nil, "schedule", "list"); strings.Contains(out, "nightly") {
			t.Errorf("a removed schedule is listed:\n%s", out)
		}
	})
	t.Run("schedule run fires the ticks and stops when its context ends", func(t *testing.T) {
		expect(ExitOK, nil, "schedule", "add", "often", "@every 1s", spec)
		runCtx, stop := context.WithCancel(ctx)
		defer stop()
		m, out := newTestMain("", nil)
		done := make(chan int, 1)
		go func() {
			err := m.Run(runCtx, []string{"schedule", "run", "--redis", redistest.URL(t), "--namespace", ns, "--log-format", "console"})
			done <- m.exitCode(runCtx, err)
		}()
		fired := regexp.MustCompile(`schedule fired .*run=(often-\d{8}T\d{6}Z)`)
		deadline := time.After(20 * time.Second)
		for !fired.MatchString(out.String()) {
			select {
			case <-out.wrote:
			case code := <-done:
				t.Fatalf("schedule run exited %d before firing:\n%s", code, out.String())
			case <-deadline:
				t.Fatalf("no tick fired within 20s:\n%s", out.String())
			}
		}
		stop() // what SIGTERM does to main's context
		select {
		case code := <-done:
			if code != ExitOK {
				t.Errorf("schedule run exited %d after its context ended, want 0:\n%s", code, out.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatalf("schedule run did not stop within 10s of its context's end:\n%s", out.String())
		}
		run := fired.FindStringSubmatch(out.String())[1]
		cl, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
		if err != nil {
			t.Fatal(err)
		}
		info, err := cl.Status(ctx, run)
		if err != nil || info.Workflow != "nightly-report" {
			t.Errorf("the fired run %s: %+v, %v", run, info, err)
		}
	})
}
