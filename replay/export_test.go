package replay_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

func TestExportImport(t *testing.T) {
	t.Parallel()

	t.Run("an imported run verifies and replays to the same timeline", func(t *testing.T) {
		t.Parallel()
		src := newEnv(t)
		src.start([]string{"wa", "wb"}, nil, nil)
		ctx := ctxT(t)
		run, info := src.runToEnd(ctx, fanout())
		if !info.Succeeded() {
			t.Fatalf("run %s", info.Status)
		}
		var exported bytes.Buffer
		n, err := src.rc.Export(ctx, run, &exported)
		if err != nil {
			t.Fatal(err)
		}
		if n != info.Events || strings.Count(exported.String(), "\n") != n {
			t.Fatalf("exported %d events in %d lines, run has %d", n, strings.Count(exported.String(), "\n"), info.Events)
		}

		dst := envIn(t, src.rdb, redistest.Namespace(t))
		res, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Run != run || res.Events != n || res.Status != "succeeded" || res.Unfinished || res.Problems != 0 {
			t.Fatalf("import result = %+v", res)
		}
		rep, err := dst.rc.Verify(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if !rep.OK() {
			t.Fatalf("verify imported run: %s", problemsOf(rep))
		}
		want, err := src.rc.Timeline(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		got, err := dst.rc.Timeline(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("timeline after import (-want +got):\n%s", diff)
		}
		// Same fold, same live state, byte for byte.
		sk, dk := rdb.NewKeys(src.ns), rdb.NewKeys(dst.ns)
		for _, pair := range [][2]string{{sk.RunState(run), dk.RunState(run)}} {
			a, _ := src.rdb.HGetAll(ctx, pair[0]).Result()
			b, _ := dst.rdb.HGetAll(ctx, pair[1]).Result()
			// @commit is the projector's last-commit nonce (it makes a
			// retried commit script a no-op), not state: import has no
			// commit to remember.
			delete(a, "@commit")
			delete(b, "@commit")
			if diff := cmp.Diff(a, b); diff != "" {
				t.Fatalf("%s after import (-source +imported):\n%s", pair[1], diff)
			}
		}
		var again bytes.Buffer
		if _, err := dst.rc.Export(ctx, run, &again); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(exported.String(), again.String()); diff != "" {
			t.Fatalf("export of the imported run (-original +re-exported):\n%s", diff)
		}
		runs, err := dst.rc.Runs(ctx, graflow.RunsOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if len(runs) != 1 || runs[0].ID != run || runs[0].Status != "succeeded" || runs[0].Workflow != "fanout" {
			t.Fatalf("runs after import = %+v", runs)
		}

		_, err = dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{})
		var ee *replay.ExistsError
		if !errors.Is(err, replay.ErrRunExists) || !errors.As(err, &ee) || ee.Run != run {
			t.Fatalf("second import: err = %v, want ErrRunExists", err)
		}
		// Under another id, the same file imports again.
		res, err = dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{RunID: "copy-of-" + run})
		if err != nil {
			t.Fatal(err)
		}
		if rep, err := dst.rc.Verify(ctx, res.Run); err != nil || !rep.OK() {
			t.Fatalf("verify copy: %v %s", err, problemsOf(rep))
		}
	})

	t.Run("an interrupted import is completed by importing again", func(t *testing.T) {
		t.Parallel()
		src := newEnv(t)
		src.start([]string{"wa"}, nil, nil)
		ctx := ctxT(t)
		run, _ := src.runToEnd(ctx, sequence())
		var exported bytes.Buffer
		if _, err := src.rc.Export(ctx, run, &exported); err != nil {
			t.Fatal(err)
		}
		evs, err := replay.ReadExport(bytes.NewReader(exported.Bytes()))
		if err != nil {
			t.Fatal(err)
		}
		dst := envIn(t, src.rdb, redistest.Namespace(t))
		// The first events made it before the importer died.
		for _, e := range evs[:4] {
			if err := dst.rdb.XAdd(ctx, &redis.XAddArgs{Stream: rdb.NewKeys(dst.ns).RunLog(run), ID: e.Seq, Values: e.Fields()}).Err(); err != nil {
				t.Fatal(err)
			}
		}
		res, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Continued != 4 {
			t.Fatalf("continued = %d, want 4", res.Continued)
		}
		if rep, err := dst.rc.Verify(ctx, run); err != nil || !rep.OK() {
			t.Fatalf("verify: %v %s", err, problemsOf(rep))
		}
	})

	t.Run("an invalid export is refused and writes nothing", func(t *testing.T) {
		t.Parallel()
		src := newEnv(t)
		src.start([]string{"wa"}, nil, nil)
		ctx := ctxT(t)
		run, _ := src.runToEnd(ctx, sequence())
		var exported bytes.Buffer
		if _, err := src.rc.Export(ctx, run, &exported); err != nil {
			t.Fatal(err)
		}
		lines := strings.SplitAfter(strings.TrimSuffix(exported.String(), "\n"), "\n")
		edit := func(i int, f func(m map[string]any)) string {
			var m map[string]any
			if err := json.Unmarshal([]byte(lines[i]), &m); err != nil {
				t.Fatal(err)
			}
			f(m)
			b, _ := json.Marshal(m)
			out := append([]string(nil), lines...)
			out[i] = string(b) + "\n"
			return strings.Join(out, "")
		}
		for _, tc := range []struct {
			name, file string
			want       error
		}{
			{"not JSON", lines[0] + "{nope\n", nil},
			{"unknown event type", edit(1, func(m map[string]any) { m["type"] = "task_teleported" }), events.ErrUnknownType},
			{"unknown schema version", edit(1, func(m map[string]any) { m["v"] = 99 }), events.ErrUnknownVersion},
			{"missing schema version", edit(1, func(m map[string]any) { delete(m, "v") }), events.ErrMalformed},
			{"events of two runs", edit(2, func(m map[string]any) { m["run"] = "other" }), nil},
			{"seqs out of order", edit(2, func(m map[string]any) { m["seq"] = "1-0" }), nil},
			{"no run_submitted first", strings.Join(lines[1:], ""), nil},
			{"empty", "\n\n", nil},
		} {
			t.Run(tc.name, func(t *testing.T) {
				dst := envIn(t, src.rdb, redistest.Namespace(t))
				_, err := dst.rc.Import(ctx, strings.NewReader(tc.file), replay.ImportOptions{})
				if !errors.Is(err, replay.ErrInvalidExport) || (tc.want != nil && !errors.Is(err, tc.want)) {
					t.Fatalf("err = %v, want ErrInvalidExport (and %v)", err, tc.want)
				}
				if keys, _ := dst.rdb.Keys(ctx, dst.ns+":*").Result(); len(keys) > 0 {
					t.Fatalf("import wrote %v", keys)
				}
			})
		}
	})
}

func TestResumeImportedUnfinishedRun(t *testing.T) {
	t.Parallel()
	ctx := ctxT(t)
	src := newEnv(t)
	// In the source, "slow" blocks until the test ends, and nothing serves
	// pool "other": at export time slow is running and side is dispatched.
	release := make(chan struct{})
	t.Cleanup(func() { close(release) })
	src.start([]string{"wa"}, []string{"default"}, func(w *worker.Worker) {
		w.HandleFunc("slow", func(ctx context.Context, t *worker.Task) (any, error) {
			select {
			case <-release:
			case <-ctx.Done():
			}
			return nil, context.Cause(ctx)
		})
	})
	wf := sequence()
	wf.Task("slow", "slow").After(wf.Task("root", builtin.Echo).Args(map[string]any{"value": 5}))
	wf.Task("side", builtin.Echo).Args(map[string]any{"value": 7}).Pool("other").After(wf.Task("root2", builtin.Noop))
	wf.Task("after", builtin.Sum).After(wf.Task("x", builtin.Noop))
	run, err := src.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	src.waitFor(ctx, run, "slow running and side dispatched", func(evs []events.Event) bool {
		return has(evs, events.TaskClaimed, "slow") && has(evs, events.TaskDispatched, "side")
	})
	var exported bytes.Buffer
	if _, err := src.rc.Export(ctx, run, &exported); err != nil {
		t.Fatal(err)
	}

	dst := envIn(t, src.rdb, redistest.Namespace(t))
	res, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Unfinished {
		t.Fatalf("import: %+v", res)
	}
	// An importer that died after writing the state, before indexing the
	// run (its last step), left it unlisted with no feed pointer: the same
	// import again completes it; once indexed, it is refused.
	runs := rdb.NewKeys(dst.ns).Runs()
	if err := dst.rdb.ZRem(ctx, runs, run).Err(); err != nil {
		t.Fatal(err)
	}
	reimport, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{})
	if err != nil {
		t.Fatalf("import again after an import interrupted before its index: %v", err)
	}
	if reimport.Continued != res.Events {
		t.Errorf("continued = %d, want all %d events", reimport.Continued, res.Events)
	}
	if err := dst.rdb.ZScore(ctx, runs, run).Err(); err != nil {
		t.Fatalf("the completed import's run is not indexed: %v", err)
	}
	if _, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{}); !errors.Is(err, replay.ErrRunExists) {
		t.Fatalf("import of an imported run: %v, want ErrRunExists", err)
	}
	// Imported, not resumed: the queue messages are not part of an
	// export, so verify reports both tasks lost.
	rep, err := dst.rc.Verify(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	lost := map[string]bool{}
	for _, p := range rep.Problems {
		if p.Check != replay.CheckQueue {
			t.Fatalf("unexpected problem: %s", p)
		}
		lost[p.Task] = true
	}
	if !lost["slow"] || !lost["side"] {
		t.Fatalf("want slow and side reported lost; problems:\n%s", problemsOf(rep))
	}

	rr, err := dst.rc.Resume(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	// Other tasks may have been in flight at export time too; slow and
	// side certainly were.
	var reclaimedSlow, redispatchedSide bool
	for _, x := range rr.Reclaimed {
		if x.From != "wa" || x.Epoch != x.FromEpoch+1 {
			t.Fatalf("reclaimed %+v", x)
		}
		reclaimedSlow = reclaimedSlow || x.Task == "slow"
	}
	for _, x := range rr.Redispatched {
		redispatchedSide = redispatchedSide || x.Task == "side"
	}
	if !reclaimedSlow || !redispatchedSide || len(rr.Reclaimed)+len(rr.Redispatched) != len(lost) {
		t.Fatalf("resume = %+v, lost = %v", rr, lost)
	}
	rep, err = dst.rc.Verify(ctx, run)
	if err != nil || !rep.OK() {
		t.Fatalf("verify after resume: %v %s", err, problemsOf(rep))
	}
	again, err := dst.rc.Resume(ctx, run)
	if err != nil || len(again.Reclaimed)+len(again.Redispatched) != 0 {
		t.Fatalf("second resume: %+v %v", again, err)
	}

	// Workers of the new namespace (serving both pools, slow returning at
	// once) complete the run.
	dst.start([]string{"wa", "wz"}, []string{"default", "other"}, func(w *worker.Worker) {
		w.HandleFunc("slow", func(context.Context, *worker.Task) (any, error) { return 3, nil })
	})
	info, err := dst.client.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() {
		t.Fatalf("resumed run %s: %s %s", info.Status, info.FailedTask, info.Cause)
	}
	rep, err = dst.rc.Verify(ctx, run)
	if err != nil || !rep.OK() {
		t.Fatalf("verify after completion: %v %s", err, problemsOf(rep))
	}
	tl, err := dst.rc.Timeline(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range tl.Tasks {
		if tt.ID != "slow" {
			continue
		}
		a := tt.Attempts[0]
		if tt.Reclaims != 1 || len(a.Claims) != 2 || a.Reclaims[0].From != "wa" || a.Reclaims[0].By != "replay-test" || a.Reclaims[0].Reason != replay.ReclaimReasonResumed || a.Outcome != "succeeded" {
			t.Fatalf("slow timeline = %+v", tt)
		}
	}
}
