package rdb_test

import (
	"bytes"
	"context"
	"crypto/sha1"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// ---- Redis Cluster key slots (https://redis.io/docs/reference/cluster-spec) ----

// The production functions, under the names the tests use.
var (
	hashTag = rdb.HashTag
	keySlot = rdb.KeySlot
)

func TestKeySlot(t *testing.T) {
	t.Parallel()
	if got := keySlot("123456789"); got != 0x31C3%16384 {
		t.Fatalf("slot of 123456789 = %d, want 0x31c3 %% 16384 (the cluster spec's CRC16 test vector)", got)
	}
	for key, want := range map[string]int{"foo": 12182, "bar": 5061, "{foo}.bar": 12182, "x{foo}y": 12182} {
		if got := keySlot(key); got != want {
			t.Errorf("keySlot(%q) = %d, want %d", key, got, want)
		}
	}
	// Hash-tag rules from the cluster spec.
	for key, hashed := range map[string]string{
		"{user1000}.following": "user1000",
		"foo{}{bar}":           "foo{}{bar}", // empty tag: the whole key
		"foo{{bar}}zap":        "{bar",       // from the first '{' to the first '}'
		"foo{bar}{zap}":        "bar",        // only the first tag
		"foo{bar":              "foo{bar",    // no closing brace
		"}foo{bar}":            "bar",
	} {
		if got := hashTag(key); got != hashed {
			t.Errorf("hashTag(%q) = %q, want %q", key, got, hashed)
		}
	}
}

// TestKeySlotMatchesRedis checks keySlot against CLUSTER KEYSLOT of a
// cluster-enabled redis-server, when the binary is installed.
func TestKeySlotMatchesRedis(t *testing.T) {
	t.Parallel()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Skip("redis-server not installed: keySlot is checked against the spec's vectors only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := redisserver.Start(ctx, redisserver.Config{Args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"}})
	if err != nil {
		t.Fatalf("start a cluster-enabled redis-server: %v", err)
	}
	defer func() { _ = srv.Stop() }()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	k := rdb.NewKeys("graflow")
	keys := append(k.RunKeys("01HZX0000000000000000000AB"), k.AllQueues("default")...)
	k4 := rdb.NewKeysP("graflow", 4) // tags with a suffix among them
	keys = append(keys, k.Feed(0), k4.Feed(0), k4.Feed(1), k4.Feed(2), k4.Feed(3), k4.Delayed(2), k.Workers(), k.Worker("w1"), "foo{{bar}}zap", "foo{}{bar}", "é{ü}")
	for _, key := range keys {
		want, err := c.ClusterKeySlot(ctx, key).Result()
		if err != nil {
			t.Fatal(err)
		}
		if got := keySlot(key); int64(got) != want {
			t.Errorf("keySlot(%q) = %d, Redis says %d", key, got, want)
		}
	}
}

// ---- recording every script call and MULTI block of a real flow ----

type scriptCall struct {
	name string
	keys []string
}

// recorder is a go-redis hook that records every EVAL/EVALSHA with its
// KEYS and the commands of every MULTI block.
type recorder struct {
	names map[string]string // sha1 → script name

	mu     sync.Mutex
	calls  []scriptCall
	multis [][][]any
	seen   map[string]int
	wake   chan struct{}
}

func newRecorder() *recorder {
	r := &recorder{names: map[string]string{}, seen: map[string]int{}, wake: make(chan struct{}, 1)}
	for name, s := range rdb.Scripts() {
		r.names[s.Hash()] = name
	}
	return r
}

func (r *recorder) DialHook(next redis.DialHook) redis.DialHook { return next }

func (r *recorder) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		r.record([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (r *recorder) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		r.record(cmds)
		return next(ctx, cmds)
	}
}

func (r *recorder) record(cmds []redis.Cmder) {
	r.mu.Lock()
	defer r.mu.Unlock()
	var multi [][]any
	in := false
	for _, c := range cmds {
		name := strings.ToLower(c.Name())
		args := append([]any(nil), c.Args()...)
		switch name {
		case "multi":
			in, multi = true, nil
			continue
		case "exec":
			if in {
				r.multis = append(r.multis, multi)
			}
			in = false
			continue
		}
		if in {
			multi = append(multi, args)
		}
		if name != "eval" && name != "evalsha" {
			continue
		}
		id := fmt.Sprint(args[1])
		if name == "eval" {
			sum := sha1.Sum([]byte(id))
			id = hex.EncodeToString(sum[:])
		}
		script, ok := r.names[id]
		if !ok {
			script = "unknown script " + id
		}
		n, _ := strconv.Atoi(fmt.Sprint(args[2]))
		keys := make([]string, 0, n)
		for _, k := range args[3 : 3+n] {
			keys = append(keys, fmt.Sprint(k))
		}
		r.calls = append(r.calls, scriptCall{name: script, keys: keys})
		r.seen[script]++
		select {
		case r.wake <- struct{}{}:
		default:
		}
	}
}

func (r *recorder) count(name string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[name]
}

// waitFor blocks until every named script ran at least once.
func (r *recorder) waitFor(ctx context.Context, names ...string) error {
	for {
		missing := false
		for _, n := range names {
			if r.count(n) == 0 {
				missing = true
			}
		}
		if !missing {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for scripts %v: %w", names, ctx.Err())
		case <-r.wake:
		}
	}
}

// waitLog blocks on run's log (XREAD BLOCK) until an event of one of the
// types appears after entry id after, and returns its id.
func waitLog(ctx context.Context, t *testing.T, c *redis.Client, ns, run, after string, types ...events.Type) string {
	t.Helper()
	for {
		res, err := c.XRead(ctx, &redis.XReadArgs{Streams: []string{rdb.NewKeys(ns).RunLog(run), after}, Block: 10 * time.Second}).Result()
		if err != nil {
			t.Fatalf("waiting for %v in run %s: %v", types, run, err)
		}
		for _, m := range res[0].Messages {
			after = m.ID
			for _, typ := range types {
				if fmt.Sprint(m.Values[events.FieldType]) == string(typ) {
					return m.ID
				}
			}
		}
	}
}

// TestEveryScriptAndMultiTouchesOneSlot runs workflows end to end on a
// client with a recording hook: scheduler, projector and workers with
// success, retry, heartbeats, a permanent failure requeued from the dead
// letters, and a task handed back by a draining worker. Then every script
// call's KEYS and every MULTI block's keys must hash to one cluster slot,
// and every script of rdb.Scripts() must have been exercised, so a new
// script cannot skip the check.
func TestEveryScriptAndMultiTouchesOneSlot(t *testing.T) {
	t.Parallel()
	plain := redistest.Client(t)
	c := redistest.Client(t)
	rec := newRecorder()
	c.AddHook(rec)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	db := rdb.New(c, ns)

	p, err := projector.New(projector.Config{Redis: c, Namespace: ns, ID: "p1", FeedBlock: 100 * time.Millisecond,
		// A retry is parked, then moved: its backoff counts from the
		// failure, so it must outlast the projector's way to the commit
		// (a 20 ms one, under load, was due at the commit and queued
		// there, leaving delayed_move unexercised).
		RetryInitial: time.Second, RetryMax: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	newWorker := func(id string, drain time.Duration, pools ...string) *worker.Worker {
		w, err := worker.New(worker.Config{Redis: c, Namespace: ns, ID: id, Pools: pools, DrainTimeout: drain,
			FetchBlock: 100 * time.Millisecond, Lease: 5 * time.Second, HeartbeatInterval: 10 * time.Millisecond,
			HeartbeatEventEvery: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		w.HandleFunc("ok", func(ctx context.Context, t *worker.Task) (any, error) { return t.ID, nil })
		w.HandleFunc("flaky", func(ctx context.Context, t *worker.Task) (any, error) {
			if t.Attempt == 1 {
				return nil, errors.New("first attempt fails")
			}
			return "ok", nil
		})
		w.HandleFunc("fail-once", func(ctx context.Context, t *worker.Task) (any, error) {
			if t.Attempt == 1 {
				return nil, worker.Permanent(errors.New("bad until requeued"))
			}
			return "ok", nil
		})
		// spawner adds a task; fanin, after it, reads what it spawned.
		w.HandleFunc("spawner", func(ctx context.Context, t *worker.Task) (any, error) {
			return nil, t.Spawn(worker.NewTask{ID: t.ID + "-0", Handler: "ok"})
		})
		w.HandleFunc("fanin", func(ctx context.Context, t *worker.Task) (any, error) {
			n := 0
			return n, t.EachUpstream(ctx, func(string, json.RawMessage) error { n++; return nil })
		})
		// hb runs until its heartbeats (script and owner-checked touch) were sent.
		w.HandleFunc("hb", func(ctx context.Context, t *worker.Task) (any, error) {
			t.Progress("halfway")
			if err := t.Channel().Set(ctx, "progress", "halfway"); err != nil { // channel_write
				return nil, err
			}
			return nil, rec.waitFor(ctx, "heartbeat", "queue_touch")
		})
		return w
	}
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer func() { stop(); wg.Wait() }()
	wg.Go(func() { _ = p.Run(runCtx) })
	w := newWorker("w1", 0, "default", "other")
	wg.Go(func() { _ = w.Run(runCtx) })

	s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	submit := func(specs ...events.TaskSpec) string {
		run, _, err := s.Submit(ctx, events.RunSubmittedBody{Workflow: "slots", Tasks: specs}, scheduler.SubmitOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return run
	}

	// Phase 1: success, retry, heartbeats, a dead letter requeued.
	run := submit(
		events.TaskSpec{ID: "a", Handler: "ok"},
		events.TaskSpec{ID: "b", Handler: "flaky", Deps: []string{"a"}, MaxAttempts: 2},
		events.TaskSpec{ID: "c", Handler: "hb", Deps: []string{"b"}, Pool: "other", Priority: 3},
		events.TaskSpec{ID: "d", Handler: "ok", Deps: []string{"a"}, Pool: "other", ResultTTLMS: 1},
		events.TaskSpec{ID: "f", Handler: "fail-once", Deps: []string{"a"}},
		events.TaskSpec{ID: "g", Handler: "spawner", Deps: []string{"a"}},
		events.TaskSpec{ID: "h", Handler: "fanin", Deps: []string{"g"}},
	)
	at := waitLog(ctx, t, plain, ns, run, "0", events.RunFailed, events.RunSucceeded)
	body := events.Event{}.WithBody(events.TaskRequeuedBody{Cause: "slot test"}).Body
	if err := db.Requeue(ctx, run, "f", "test", "01HZX0000000000000000000RQ", time.Now().UnixMilli(), body); err != nil {
		t.Fatalf("requeue f: %v", err)
	}
	waitLog(ctx, t, plain, ns, run, at, events.RunSucceeded, events.RunFailed)

	// Phase 2: a task handed back by a worker whose drain timed out.
	var calls sync.Mutex
	started := make(chan struct{})
	first := true
	stuck := func(ctx context.Context, t *worker.Task) (any, error) {
		calls.Lock()
		wasFirst := first
		first = false
		calls.Unlock()
		if !wasFirst {
			return "done", nil
		}
		close(started)
		<-ctx.Done() // cancelled when the drain times out
		return nil, context.Cause(ctx)
	}
	drainCtx, stopDrain := context.WithCancel(ctx)
	wd := newWorker("w-drain", time.Millisecond, "drain")
	wd.HandleFunc("stuck", stuck)
	drained := make(chan error, 1)
	go func() { drained <- wd.Run(drainCtx) }()
	run2 := submit(events.TaskSpec{ID: "s", Handler: "stuck", Pool: "drain"})
	select {
	case <-started:
	case <-ctx.Done():
		t.Fatal("the stuck task never started")
	}
	stopDrain()
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	w2 := newWorker("w2", 0, "drain")
	w2.HandleFunc("stuck", stuck)
	wg.Go(func() { _ = w2.Run(runCtx) })
	waitLog(ctx, t, plain, ns, run2, "0", events.RunSucceeded, events.RunFailed)
	stop()
	wg.Wait()

	for _, r := range []string{run, run2} {
		st, err := db.RunStatus(ctx, r) // a succeeded run keeps only its log
		if err != nil || st != "succeeded" {
			t.Errorf("run %s is %q (%v), want succeeded", r, st, err)
		}
	}
	// Phase 3: retention deletes a finished run in one script.
	if ok, _, _, err := db.GCRun(ctx, run2); err != nil || !ok {
		t.Errorf("gc of finished run %s = %v, %v; want collected", run2, ok, err)
	}

	// Phase 4: a run set aside for good.
	run3 := "slot-quarantined"
	body3 := events.RunSubmittedBody{Workflow: "wf", Tasks: []events.TaskSpec{{ID: "a", Handler: "h"}}}
	if _, _, err := db.Submit(ctx, run3, events.Event{ID: ulid.Make().String(), Type: events.RunSubmitted, Time: time.Now()}.WithBody(body3), body3); err != nil {
		t.Fatal(err)
	}
	q := events.Event{ID: ulid.Make().String(), Type: events.RunQuarantined, Time: time.Now(), Worker: "p"}.WithBody(events.RunQuarantinedBody{Reason: "test"})
	if ok, ierr, err := db.Quarantine(ctx, run3, q, "test"); err != nil || ierr != nil || !ok {
		t.Errorf("quarantine of running run %s = %v, %v, %v", run3, ok, ierr, err)
	}

	// Phase 5: a run cancelled.
	run4 := submit(events.TaskSpec{ID: "a", Handler: "never"})
	if res, err := db.CancelRun(ctx, run4, "test", "slot test", time.Now().UnixMilli(), func() string { return ulid.Make().String() }); err != nil || res.Outcome != "cancelled" {
		t.Errorf("cancel of run %s = %+v, %v", run4, res, err)
	}

	// Phase 6: a schedule added, paused and fired.
	if _, err := db.AddSchedule(ctx, "nightly", `{"cron":"@daily"}`, rdb.ScheduleState{ID: "g1", AnchorMS: 1}, false); err != nil {
		t.Fatal(err)
	}
	if _, _, err := db.SetSchedulePaused(ctx, "nightly", true, 2); err != nil {
		t.Fatal(err)
	}
	if _, err := db.RecordScheduleFired(ctx, "nightly", "g1", 3, ""); err != nil {
		t.Fatal(err)
	}

	// Phase 7: a signal delivered to a running run.
	run5 := submit(events.TaskSpec{ID: "a", Handler: "never", Pool: "nobody"})
	sig := events.SignalReceivedBody{Name: "approve", ID: "s1", Payload: []byte(`true`)}
	if res, err := db.Signal(ctx, run5, "test", time.Now().UnixMilli(), ulid.Make().String(), sig); err != nil || res.Outcome != rdb.SignalRecorded {
		t.Errorf("signal to run %s = %+v, %v", run5, res, err)
	}

	// Phase 7b: a fresh message for its dispatched task (a repair's), on
	// a band above 0 (enqueue: the message and the band mark).
	if err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "nobody", Run: run5, Task: "a", Attempt: 1, Priority: 3}).Err(); err != nil {
		t.Errorf("redispatch in run %s: %v", run5, err)
	}

	// Phase 7c: that message read and given back unstarted, as a
	// stopping worker gives back what it read and did not start
	// (queue_move: a fresh copy queued, the read one acked).
	band := rdb.NewKeys(ns).QueueFor(run5, "nobody", 3)
	if err := db.EnsureGroup(ctx, band, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	read, err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: "leaving", Streams: []string{band, ">"}, Count: 1}).Result()
	if err != nil || len(read) != 1 || len(read[0].Messages) != 1 {
		t.Fatalf("read the fresh message of run %s: %v %v", run5, read, err)
	}
	// A second message of an attempt whose claim does not hold: left be.
	if n, err := db.AckCopy(ctx, band, "leaving", read[0].Messages[0].ID, run5, "a", 1, 1); err != nil || n != 0 {
		t.Errorf("ack of a copy without a claim in run %s = %d, %v; want 0", run5, n, err)
	}
	if err := db.QueueMoves(ctx, "leaving", []rdb.MoveItem{{Stream: band, ID: read[0].Messages[0].ID,
		Dispatch: rdb.Dispatch{Pool: "nobody", Run: run5, Task: "a", Attempt: 1, Priority: 3}}}); err != nil {
		t.Errorf("give back the message of run %s: %v", run5, err)
	}

	// Phase 8: d's result expired (result TTL): deleted by the
	// projector's mover already, or now.
	keys := rdb.NewKeys(ns)
	if _, _, _, err := db.ExpireResults(ctx, keys.Partition(run), time.Now().Add(time.Hour).UnixMilli(), time.Now().Add(2*time.Hour).UnixMilli(), 100); err != nil {
		t.Fatal(err)
	}
	if n, err := plain.HExists(ctx, keys.RunState(run), rdb.ResultField("d")).Result(); err != nil || n {
		t.Errorf("d's expired result is still stored (%v, %v)", n, err)
	}

	// Phase 8b: a reclaim (nothing idle an hour) and a repair request
	// answered.
	if _, _, _, err := db.Reclaim(ctx, keys.Queue(keys.Partition(run), events.DefaultPool, 0), "sweeper", time.Hour, "0-0", 10); err != nil {
		t.Fatal(err)
	}
	if err := db.RequestRepair(ctx); err != nil {
		t.Fatal(err)
	}
	if reqs, err := db.RepairRequest(ctx); err != nil || len(reqs) == 0 {
		t.Fatalf("repair requests = %v, %v", reqs, err)
	} else if err := db.RepairDone(ctx, reqs); err != nil {
		t.Fatal(err)
	}

	// Phase 9: phase 1's run exported and imported under another id (its
	// log appended, then its hashes written); run5's dispatch sent again
	// (resume); the workers' idle consumers pruned.
	cl, err := graflow.NewClient(graflow.Config{Redis: c, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	var export bytes.Buffer
	if _, err := cl.Export(ctx, run, &export); err != nil {
		t.Fatal(err)
	}
	if _, err := cl.Import(ctx, &export, replay.ImportOptions{RunID: "slot-imported"}); err != nil {
		t.Fatal(err)
	}
	rec5, err := plain.HGet(ctx, keys.RunState(run5), "a").Result()
	if err != nil {
		t.Fatal(err)
	}
	if done, err := db.Resume(ctx, run5, []rdb.ResumeItem{{Task: "a", Record: rec5, NewRecord: rec5,
		Dispatch: rdb.Dispatch{Pool: "nobody", Run: run5, Task: "a", Attempt: 1}}}, time.Now().UnixMilli()); err != nil || len(done) != 1 || !done[0] {
		t.Errorf("resume of run5's a = %v, %v", done, err)
	}
	// A message of phase 1's run delivered again: the reads claimed every
	// message of the flow, so the claim script (a copy or a reclaim's
	// claim) answers this one ("done").
	if cr, err := db.Claim(ctx, rdb.ClaimArgs{Run: run, Task: "a", Worker: "w1", Attempt: 1, EventID: ulid.Make().String(),
		TimeMS: time.Now().UnixMilli()}); err != nil || cr.Outcome != rdb.ClaimDone {
		t.Errorf("claim of a finished task = %+v, %v; want done", cr, err)
	}
	if _, err := db.PruneConsumers(ctx, keys.QueueFor(run, "default", 0), rdb.GroupWorkers, 0, db.WorkerRegistry()); err != nil {
		t.Fatal(err)
	}
	// An owner-checked ack of a message not pending (a worker dropping a
	// duplicate copy acks it on its own).
	if n, err := db.AckMessage(ctx, keys.QueueFor(run, "default", 0), "w1", "1-0", 0); err != nil || n != 0 {
		t.Errorf("ack of a message not pending = %d, %v; want 0", n, err)
	}

	rec.mu.Lock()
	defer rec.mu.Unlock()
	var exercised []string
	for name := range rec.seen {
		exercised = append(exercised, name)
	}
	var all []string
	for name := range rdb.Scripts() {
		all = append(all, name)
	}
	sort.Strings(exercised)
	sort.Strings(all)
	if diff := cmp.Diff(all, exercised); diff != "" {
		t.Errorf("scripts exercised by the flow vs rdb.Scripts() (-Scripts +exercised):\n%s", diff)
	}
	for _, call := range rec.calls {
		if len(call.keys) == 0 {
			t.Errorf("script %s called without KEYS", call.name)
			continue
		}
		for _, k := range call.keys[1:] {
			if keySlot(k) != keySlot(call.keys[0]) {
				t.Errorf("script %s: KEYS %v span slots (%s→%d, %s→%d)", call.name, call.keys, call.keys[0], keySlot(call.keys[0]), k, keySlot(k))
				break
			}
		}
		for _, k := range call.keys {
			if !strings.HasPrefix(k, ns+":") {
				t.Errorf("script %s: key %s outside the namespace %s", call.name, k, ns)
			}
		}
	}
	t.Logf("%d script calls, %d MULTI blocks", len(rec.calls), len(rec.multis))
	reported := map[string]bool{}
	for _, block := range rec.multis {
		var keys []string
		for _, args := range block {
			ks, err := plain.CommandGetKeys(ctx, append([]any(nil), args...)...).Result()
			if err != nil && !strings.Contains(err.Error(), "no key") && !strings.Contains(err.Error(), "Invalid arguments") {
				t.Fatalf("COMMAND GETKEYS %v: %v", args, err)
			}
			keys = append(keys, ks...)
		}
		slots := map[int][]string{}
		for _, k := range keys {
			slots[keySlot(k)] = append(slots[keySlot(k)], k)
		}
		if len(slots) > 1 {
			var cmds []string
			for _, args := range block {
				cmds = append(cmds, fmt.Sprint(args[0]))
			}
			if shape := fmt.Sprint(cmds); !reported[shape] {
				reported[shape] = true
				t.Errorf("MULTI block %v touches %d slots: %v", cmds, len(slots), slots)
			}
		}
	}
}
