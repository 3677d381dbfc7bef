package rdb_test

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
)

// The script benchmarks time one call (or one pipeline) each against the
// shared test Redis: on loopback a round trip dominates, so ns/op is about
// round-trip latency plus the script's own work. "redis-µs/op" is the
// script's execution time inside Redis (INFO commandstats), the part that
// occupies Redis' single thread.

type benchDB struct {
	ctx context.Context
	db  rdb.DB
}

func newBenchDB(b *testing.B) benchDB {
	b.Helper()
	c := redistest.Client(b)
	db := rdb.New(c, redistest.Namespace(b))
	ctx := context.Background()
	if err := db.LoadScripts(ctx); err != nil {
		b.Fatal(err)
	}
	return benchDB{ctx: ctx, db: db}
}

// evalUSec is Redis' total time in EVALSHA so far.
func (d benchDB) evalUSec(b *testing.B) int64 {
	b.Helper()
	info, err := d.db.C.Info(d.ctx, "commandstats").Result()
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(info, "\n") {
		stats, ok := strings.CutPrefix(strings.TrimSpace(line), "cmdstat_evalsha:")
		if !ok {
			continue
		}
		for _, kv := range strings.Split(stats, ",") {
			if v, ok := strings.CutPrefix(kv, "usec="); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
	}
	return 0
}

// reportRedis reports Redis' EVALSHA time per op since before.
func (d benchDB) reportRedis(b *testing.B, before int64) {
	b.ReportMetric(float64(d.evalUSec(b)-before)/float64(b.N), "redis-µs/op")
}

// benchSpec is a run of n independent noop tasks.
func benchSpec(n int) events.RunSubmittedBody {
	spec := events.RunSubmittedBody{Workflow: "bench", Tasks: make([]events.TaskSpec, n)}
	for i := range spec.Tasks {
		spec.Tasks[i] = events.TaskSpec{ID: "t" + strconv.Itoa(i), Handler: "noop"}
	}
	return spec
}

// submit creates run from spec and returns its run_submitted stream id.
func (d benchDB) submit(b *testing.B, run string, spec events.RunSubmittedBody) string {
	b.Helper()
	ev := events.Event{ID: ulid.Make().String(), Run: run, Type: events.RunSubmitted, Time: time.Now()}.WithBody(spec)
	if _, _, err := d.db.Submit(d.ctx, run, ev, spec); err != nil {
		b.Fatal(err)
	}
	last, err := d.db.C.XRevRangeN(d.ctx, d.db.K.RunLog(run), "+", "-", 1).Result()
	if err != nil || len(last) != 1 {
		b.Fatalf("read back run_submitted: %v", err)
	}
	return last[0].ID
}

// dispatch commits task_dispatched for the given tasks of run, as the
// projector does (one commit, records and dispatches included).
func (d benchDB) dispatch(b *testing.B, run string, head rdb.Head, foldedTo string, tasks []string) rdb.CommitResult {
	b.Helper()
	c := rdb.Commit{Expected: head, FoldedTo: foldedTo, Writer: "bench-projector", TimeMS: time.Now().UnixMilli(),
		Records: map[string]string{}}
	for _, t := range tasks {
		id := ulid.Make().String()
		e := events.Event{ID: id, Type: events.TaskDispatched, Task: t, Attempt: 1}.WithBody(events.TaskDispatchedBody{Pool: "default"})
		c.Events = append(c.Events, e)
		c.Records[t] = rdb.Record{Status: "dispatched", Attempt: 1}.String()
		c.Dispatches = append(c.Dispatches, rdb.Dispatch{Pool: "default", Run: run, Task: t, Attempt: 1, EventID: id})
	}
	res, err := d.db.Commit(d.ctx, run, c)
	if err != nil || res.Conflict {
		b.Fatalf("commit: %v (conflict %v)", err, res.Conflict)
	}
	return res
}

// BenchmarkSubmitScript creates a single-task run per op.
func BenchmarkSubmitScript(b *testing.B) {
	d := newBenchDB(b)
	spec := benchSpec(1)
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.Now()}.WithBody(spec)
	before := d.evalUSec(b)
	b.ResetTimer()
	for i := range b.N {
		run := "r" + strconv.Itoa(i)
		if _, _, err := d.db.Submit(d.ctx, run, ev, spec); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	d.reportRedis(b, before)
}

// BenchmarkCommitDispatch256 commits 256 task_dispatched decisions (the
// projector's default batch) per op, into runs of 20,480 tasks (80 ops);
// ns/op over 256 is the per-task share.
func BenchmarkCommitDispatch256(b *testing.B) {
	d := newBenchDB(b)
	const batches = 80
	spec := benchSpec(256 * batches)
	var run, folded string
	var head rdb.Head
	var before int64 // Redis' EVALSHA time before, minus the submits'
	for i := range b.N {
		if i%batches == 0 {
			b.StopTimer()
			run, head = "fan"+strconv.Itoa(i/batches), rdb.Head{}
			t0 := d.evalUSec(b)
			folded = d.submit(b, run, spec)
			before += d.evalUSec(b) - t0
			if i == 0 {
				before = d.evalUSec(b)
				b.ResetTimer()
			}
			b.StartTimer()
		}
		tasks := make([]string, 256)
		for j := range tasks {
			tasks[j] = spec.Tasks[(i%batches)*256+j].ID
		}
		res := d.dispatch(b, run, head, folded, tasks)
		head, folded = res.Head, res.Head.Cursor
	}
	b.StopTimer()
	d.reportRedis(b, before)
}

// BenchmarkClaimFinish claims and finishes one dispatched task per op: the
// two run-slot scripts a worker runs for every task.
func BenchmarkClaimFinish(b *testing.B) {
	d := newBenchDB(b)
	spec := benchSpec(b.N)
	seq := d.submit(b, "cf", spec)
	tasks := make([]string, b.N)
	for i := range tasks {
		tasks[i] = spec.Tasks[i].ID
	}
	head, folded := rdb.Head{}, seq
	for lo := 0; lo < len(tasks); lo += 256 {
		res := d.dispatch(b, "cf", head, folded, tasks[lo:min(lo+256, len(tasks))])
		head, folded = res.Head, res.Head.Cursor
	}
	body, _ := json.Marshal(events.TaskSucceededBody{Result: []byte("null")})
	before := d.evalUSec(b)
	b.ResetTimer()
	for i := range b.N {
		now := time.Now().UnixMilli()
		cr, err := d.db.Claim(d.ctx, rdb.ClaimArgs{Run: "cf", Task: tasks[i], Worker: "w", Attempt: 1,
			EventID: ulid.Make().String(), TimeMS: now, ReclaimEventID: ulid.Make().String()})
		if err != nil || cr.Outcome != rdb.ClaimOK {
			b.Fatalf("claim: %v %v", err, cr.Outcome)
		}
		if _, err := d.db.Finish(d.ctx, rdb.FinishArgs{Run: "cf", Task: tasks[i], Worker: "w", Attempt: 1, Epoch: cr.Epoch,
			EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: now,
			Type: events.TaskSucceeded, Body: body, Status: "succeeded", Result: []byte("null")}); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	d.reportRedis(b, before)
}

// BenchmarkQueueFetchAck queues one dispatch, fetches it with the fetch
// script and acks it with the owner-checked ack script, per op.
func BenchmarkQueueFetchAck(b *testing.B) {
	d := newBenchDB(b)
	for _, q := range d.db.K.AllQueues("default") {
		if err := d.db.EnsureGroup(d.ctx, q, rdb.GroupWorkers); err != nil {
			b.Fatal(err)
		}
	}
	before := d.evalUSec(b)
	b.ResetTimer()
	for i := range b.N {
		if err := d.db.XAddDispatch(d.ctx, d.db.C, rdb.Dispatch{Pool: "default", Run: "q", Task: "t" + strconv.Itoa(i), Attempt: 1}).Err(); err != nil {
			b.Fatal(err)
		}
		res, err := d.db.Fetch(d.ctx, 0, "default", "w", 16)
		if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
			b.Fatalf("fetch: %v %v", err, res)
		}
		if n, err := d.db.QueueAck(d.ctx, d.db.C, res[0].Stream, "w", res[0].Messages[0].ID).Int64Slice(); err != nil || len(n) != 1 || n[0] != 1 {
			b.Fatalf("ack: %v %v", err, n)
		}
	}
	b.StopTimer()
	d.reportRedis(b, before)
}

// BenchmarkSingleTaskRun moves one single-task run per op through the
// three scripts a worker and a client run for it under load: the submit
// that dispatches its root, the fetch that claims it, and the finish that
// acks it and ends the run (the end policy recorded, as a projector's start
// records it). redis-µs/op is what one such run costs Redis in scripts;
// submit-µs, fetch-µs and finish-µs split it by script (read from INFO
// between the calls, which ns/op then includes).
func BenchmarkSingleTaskRun(b *testing.B) {
	d := newBenchDB(b)
	if err := d.db.SetEndPolicy(d.ctx, []int{0}, rdb.EndPolicy{CompactLog: rdb.DefaultCompactLog, TTL: time.Hour}); err != nil {
		b.Fatal(err)
	}
	for _, q := range d.db.K.AllQueues("default") {
		if err := d.db.EnsureGroup(d.ctx, q, rdb.GroupWorkers); err != nil {
			b.Fatal(err)
		}
	}
	spec := benchSpec(1)
	body, _ := json.Marshal(events.TaskSucceededBody{Result: []byte("null")})
	before := d.evalUSec(b)
	var run string
	var split [3]int64 // submit, fetch, finish
	b.ResetTimer()
	for range b.N {
		t0 := d.evalUSec(b)
		run = ulid.Make().String()
		now := time.Now()
		ev := events.Event{ID: ulid.Make().String(), Run: run, Type: events.RunSubmitted, Time: now}.WithBody(spec)
		args, err := rdb.SubmitArgs(ev, spec)
		if err != nil {
			b.Fatal(err)
		}
		dispatched := events.Event{ID: ulid.Make().String(), Run: run, Type: events.TaskDispatched, Task: "t0", Attempt: 1}.
			WithBody(events.TaskDispatchedBody{Pool: "default"})
		init := rdb.Initial{Events: []events.Event{dispatched}, Writer: "bench",
			Dispatches: []rdb.Dispatch{{Pool: "default", Run: run, Task: "t0", Attempt: 1, EventID: dispatched.ID}}}
		if _, _, err := rdb.ParseSubmit(run, ev, spec, d.db.SubmitArgsCmd(d.ctx, d.db.C, run, args, init)); err != nil {
			b.Fatal(err)
		}
		t1 := d.evalUSec(b)
		res, claims, err := d.db.FetchClaim(d.ctx, 0, "default", "w", []string{ulid.Make().String()}, now.UnixMilli())
		if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
			b.Fatalf("fetch: %v %v", err, res)
		}
		t2 := d.evalUSec(b)
		stream, msg := res[0].Stream, res[0].Messages[0].ID
		cr, ok := claims[rdb.MessageKey(stream, msg)]
		if !ok || cr.Outcome != rdb.ClaimOK {
			b.Fatalf("fetch claimed %v", claims)
		}
		out, err := d.db.Finish(d.ctx, rdb.FinishArgs{Run: run, Task: "t0", Worker: "w", Attempt: 1, Epoch: cr.Epoch,
			EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: now.UnixMilli(),
			Type: events.TaskSucceeded, Body: body, Status: events.TaskStatusSucceeded, Result: []byte("null"),
			Stream: stream, MessageID: msg, Consumer: "w", EndID: ulid.Make().String()})
		if err != nil {
			b.Fatalf("finish: %v %v", out, err)
		}
		t3 := d.evalUSec(b)
		split[0], split[1], split[2] = split[0]+t1-t0, split[1]+t2-t1, split[2]+t3-t2
	}
	b.StopTimer()
	d.reportRedis(b, before)
	for i, name := range []string{"submit-µs", "fetch-µs", "finish-µs"} {
		b.ReportMetric(float64(split[i])/float64(b.N), name)
	}
	// The finish ended the run: it keeps only its log.
	if n, err := d.db.C.Exists(d.ctx, d.db.K.RunState(run)).Result(); err != nil || n != 0 {
		b.Fatalf("the last run kept its state (%d, %v): the finish did not end it", n, err)
	}
}

// BenchmarkFanoutCycle runs the worker's two scripts over a fan-out's
// tasks as a worker with 8 free slots does, 8 tasks per op: one fetch
// that claims 8 dispatched tasks of one run, then one finish call of
// their 8 successes (acks, and the count-down of the reduce task that
// depends on all of them). fetch-µs and finish-µs are Redis' time per
// task in each.
func BenchmarkFanoutCycle(b *testing.B) {
	const per = 8
	d := newBenchDB(b)
	for _, q := range d.db.K.AllQueues("default") {
		if err := d.db.EnsureGroup(d.ctx, q, rdb.GroupWorkers); err != nil {
			b.Fatal(err)
		}
	}
	n := per * b.N
	spec := benchSpec(n)
	deps := make([]string, n)
	for i := range deps {
		deps[i] = spec.Tasks[i].ID
	}
	spec.Tasks = append(spec.Tasks, events.TaskSpec{ID: "reduce", Handler: "noop", Deps: deps})
	seq := d.submit(b, "fo", spec)
	head, folded := rdb.Head{}, seq
	for lo := 0; lo < n; lo += 256 {
		res := d.dispatch(b, "fo", head, folded, deps[lo:min(lo+256, n)])
		head, folded = res.Head, res.Head.Cursor
	}
	body, _ := json.Marshal(events.TaskSucceededBody{Result: []byte("null")})
	before := d.evalUSec(b)
	var split [2]int64 // fetch, finish
	b.ResetTimer()
	for range b.N {
		t0 := d.evalUSec(b)
		ids := make([]string, per)
		for i := range ids {
			ids[i] = ulid.Make().String()
		}
		now := time.Now().UnixMilli()
		res, claims, err := d.db.FetchClaim(d.ctx, 0, "default", "w", ids, now)
		if err != nil || len(res) != 1 || len(res[0].Messages) != per || len(claims) != per {
			b.Fatalf("fetch: %v %d claims", err, len(claims))
		}
		t1 := d.evalUSec(b)
		var as []rdb.FinishArgs
		for _, m := range res[0].Messages {
			cr := claims[rdb.MessageKey(res[0].Stream, m.ID)]
			as = append(as, rdb.FinishArgs{Run: "fo", Task: m.Values[rdb.MsgTask].(string), Worker: "w", Attempt: 1, Epoch: cr.Epoch,
				EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: now,
				Type: events.TaskSucceeded, Body: body, Status: events.TaskStatusSucceeded, Result: []byte("null"),
				Stream: res[0].Stream, MessageID: m.ID, Consumer: "w"})
		}
		outs, errs := d.db.FinishGroups(d.ctx, [][]rdb.FinishArgs{as})
		if errs[0] != nil {
			b.Fatal(errs[0])
		}
		for _, o := range outs[0] {
			if o.Err != nil || o.Acked != 1 {
				b.Fatalf("finish: %+v", o)
			}
		}
		t2 := d.evalUSec(b)
		split[0], split[1] = split[0]+t1-t0, split[1]+t2-t1
	}
	b.StopTimer()
	d.reportRedis(b, before)
	b.ReportMetric(float64(split[0])/float64(n), "fetch-µs/task")
	b.ReportMetric(float64(split[1])/float64(n), "finish-µs/task")
}
