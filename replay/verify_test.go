package replay_test

import (
	"bytes"
	"errors"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
)

func TestVerify(t *testing.T) {
	t.Parallel()

	t.Run("a finished run verifies and its timeline explains it", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.start([]string{"wa", "wb"}, nil, nil)
		ctx := ctxT(t)
		run, info := e.runToEnd(ctx, fanout())
		if !info.Succeeded() {
			t.Fatalf("run %s: %s", info.Status, info.Cause)
		}
		rep, err := e.rc.Verify(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("verify: %s", problemsOf(rep))
		}
		// A succeeded run keeps only its log: no live state to compare.
		if rep.Status != "succeeded" || rep.LiveStatus != "" || rep.Tasks != 6 || rep.Behind != 0 || !slices.Contains(rep.Checks, replay.CheckLogOnly) {
			t.Fatalf("report = %+v", rep)
		}

		tl, err := e.rc.Timeline(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		log, err := e.rc.Log(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		byID := map[string]replay.TaskTimeline{}
		for _, tt := range tl.Tasks {
			byID[tt.ID] = tt
		}
		if r := byID["extract"].Ready; r == nil || r.By != "" || r.Reason != "no dependencies" {
			t.Fatalf("extract ready = %+v", r)
		}
		// load became ready when the last of its dependencies succeeded.
		lastSucc := ""
		for _, ev := range log {
			if ev.Type == events.TaskSucceeded && strings.HasPrefix(ev.Task, "transform-") {
				lastSucc = ev.Task
			}
			if ev.Type == events.TaskDispatched && ev.Task == "load" {
				break
			}
		}
		if r := byID["load"].Ready; r == nil || r.By != lastSucc {
			t.Fatalf("load ready = %+v, want by %s", r, lastSucc)
		}
		fl := byID["flaky"]
		if len(fl.Attempts) != 3 || fl.Retries != 2 || fl.Status != "succeeded" || tl.Retries != 2 {
			t.Fatalf("flaky: %d attempts, %d retries, status %s", len(fl.Attempts), fl.Retries, fl.Status)
		}
		for i, a := range fl.Attempts {
			want := "failed"
			if i == 2 {
				want = "succeeded"
			}
			if a.Outcome != want || a.Worker == "" || a.RunMS == nil || a.WaitMS == nil {
				t.Fatalf("flaky attempt %d = %+v", i+1, a)
			}
			if i > 0 && (a.Kind != "retry" || a.Epoch <= fl.Attempts[i-1].Epoch) {
				t.Fatalf("flaky attempt %d: kind %s epoch %d", i+1, a.Kind, a.Epoch)
			}
		}
		if tl.Status != "succeeded" || tl.DurationMS == nil || tl.Events != len(log) {
			t.Fatalf("timeline: status %s duration %v events %d", tl.Status, tl.DurationMS, tl.Events)
		}
		var text bytes.Buffer
		if err := tl.WriteText(&text); err != nil {
			t.Fatal(err)
		}
		for _, want := range []string{"dependency " + lastSucc + " succeeded", "retry, due", "no dependencies"} {
			if !strings.Contains(text.String(), want) {
				t.Fatalf("text timeline lacks %q:\n%s", want, text.String())
			}
		}
	})

	t.Run("a corrupted task record fails naming the task and field", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.start([]string{"wa"}, nil, nil)
		ctx := ctxT(t)
		run, _ := e.runToEnd(ctx, failingSequence()) // a failed run keeps its state
		k := rdb.NewKeys(e.ns)
		raw, err := e.rdb.HGet(ctx, k.RunState(run), "b").Result()
		if err != nil {
			t.Fatal(err)
		}
		rec, err := rdb.ParseRecord(raw)
		if err != nil {
			t.Fatal(err)
		}
		good := rec.Epoch
		rec.Epoch = 99
		if err := e.rdb.HSet(ctx, k.RunState(run), "b", rec.String()).Err(); err != nil {
			t.Fatal(err)
		}
		rep, err := e.rc.Verify(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK() || len(rep.Problems) != 1 {
			t.Fatalf("want exactly one problem, got: %s", problemsOf(rep))
		}
		p := rep.Problems[0]
		if p.Check != replay.CheckState || p.Task != "b" || p.Field != "epoch" || p.Live != "99" || p.Replayed != itoa(good) {
			t.Fatalf("problem = %+v", p)
		}
		if !errors.Is(rep.Err(), replay.ErrVerifyFailed) || !strings.Contains(rep.Err().Error(), "task b: epoch") {
			t.Fatalf("err = %v", rep.Err())
		}
	})

	t.Run("a deleted event fails naming the missing event", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.start([]string{"wa"}, nil, nil)
		ctx := ctxT(t)
		run, _ := e.runToEnd(ctx, failingSequence()) // a failed run keeps its state
		log, err := e.rc.Log(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		var gone events.Event
		for _, ev := range log {
			if ev.Type == events.TaskSucceeded && ev.Task == "b" {
				gone = ev
			}
		}
		if err := e.rdb.XDel(ctx, rdb.NewKeys(e.ns).RunLog(run), gone.Seq).Err(); err != nil {
			t.Fatal(err)
		}
		rep, err := e.rc.Verify(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if rep.OK() {
			t.Fatal("verify passed on a log with a deleted event")
		}
		wantMissing := "task_succeeded task=b attempt=1 epoch=" + itoa(gone.Epoch) + " worker=wa"
		var deleted, state, unlock bool
		for _, p := range rep.Problems {
			switch {
			case p.Check == replay.CheckLog && p.Seq == gone.Seq:
				deleted = true
			case p.Check == replay.CheckState && p.Task == "b" && p.Field == "status" && p.Missing == wantMissing:
				state = true
			case p.Check == replay.CheckHistory && p.Task == "c" && strings.Contains(p.Missing, "task_succeeded task=b"):
				unlock = true
			}
		}
		t.Logf("report:\n%s", problemsOf(rep))
		if !deleted || !state || !unlock {
			t.Fatalf("deleted=%v state=%v unlock=%v; problems:\n%s", deleted, state, unlock, problemsOf(rep))
		}
	})

	t.Run("verify all covers every indexed run", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.start([]string{"wa"}, nil, nil)
		ctx := ctxT(t)
		run1, _ := e.runToEnd(ctx, sequence())
		run2, _ := e.runToEnd(ctx, sequence())
		if err := e.rdb.HSet(ctx, rdb.NewKeys(e.ns).RunState(run2), rdb.FieldRunStatus, "failed").Err(); err != nil {
			t.Fatal(err)
		}
		reps, err := e.rc.VerifyAll(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if len(reps) != 2 || reps[0].Run != run1 || !reps[0].OK() || reps[1].Run != run2 || reps[1].OK() {
			t.Fatalf("reports: %+v", reps)
		}
		if p := reps[1].Problems[0]; p.Field != rdb.FieldRunStatus || p.Live != "failed" || p.Replayed != "succeeded" {
			t.Fatalf("problem = %+v", p)
		}
	})

	t.Run("a running run verifies at any time", func(t *testing.T) {
		t.Parallel()
		e := newEnv(t)
		e.start([]string{"wa", "wb"}, nil, nil)
		ctx := ctxT(t)
		wf := fanout()
		run, err := e.client.Submit(ctx, wf, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Verify repeatedly while the run progresses, until it ends.
		for i := 0; ; i++ {
			rep, err := e.rc.Verify(ctx, run)
			if err != nil {
				t.Fatal(err)
			}
			if !rep.OK() {
				t.Fatalf("verify #%d (status %s): %s", i, rep.Status, problemsOf(rep))
			}
			if projector.RunStatus(rep.Status).Terminal() {
				t.Logf("verified %d times while running", i+1)
				return
			}
		}
	})
}

func itoa(n int64) string { return strconv.FormatInt(n, 10) }
