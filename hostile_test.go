package graflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
)

// Issue #10, the hostile-input suite: every way a run's data or the
// engine's streams can be malformed, by a buggy client, a hand edit or an
// attacker with write access, against a live worker and projector. Each
// case ends in one of three outcomes, and in every case the other runs
// submitted alongside finish, nothing of theirs is lost, and the engine
// makes a bounded number of script calls (no retry storm).
//
// Run it alone with: go test -run TestHostileInput .

// outcome is what a hostile input must lead to.
type outcome int

const (
	// refused: the call returns the typed error and writes nothing.
	refused outcome = iota
	// quarantined: the run is set aside for good (its @status, or the
	// namespace's quarantine index when its own keys cannot be written).
	quarantined
	// harmless: the engine drops the entry (or carries the data as is)
	// and the run, if any, succeeds.
	harmless
)

// hostileCase is one attack. Exactly one of submit and corrupt is set.
type hostileCase struct {
	name string
	want outcome
	// submit runs a hostile submit and returns its error; wantErr is what
	// it must match (refused cases).
	submit  func(ctx context.Context, h *hostile) (string, error)
	wantErr error
	// corrupt damages the namespace; run is a one-task run submitted and
	// dispatched before it ("" while corrupt runs alone).
	corrupt func(ctx context.Context, h *hostile, run string)
	// noRun: corrupt needs no run of its own (stream entries).
	noRun bool
	// acl runs the engine as an ACL user that may not touch the victim's
	// keys (NOPERM); the victim's id starts with "b".
	acl bool
}

// hostile is one case's stack: a namespace with a projector and a worker
// on a client that counts script calls.
type hostile struct {
	t      *testing.T
	admin  *redis.Client // unhooked: the attacker's and the test's client
	ns     string
	k      rdb.Keys
	client *graflow.Client
	calls  atomic.Int64  // EVAL/EVALSHA by the engine's clients
	moved  chan struct{} // signalled on each engine script call (capacity 1)
}

func (h *hostile) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.count(cmd)
		return next(ctx, cmd)
	}
}
func (h *hostile) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		for _, c := range cmds {
			h.count(c)
		}
		return next(ctx, cmds)
	}
}
func (h *hostile) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *hostile) count(cmd redis.Cmder) {
	a := cmd.Args()
	if len(a) > 4 && strings.HasSuffix(fmt.Sprint(a[4]), ":wants-repair") {
		return // the reclaimers' periodic XAUTOCLAIM of a band or a feed, in a script: housekeeping, not a run's step
	}
	if n := strings.ToLower(cmd.Name()); n == "evalsha" || n == "eval" {
		h.calls.Add(1)
		select {
		case h.moved <- struct{}{}:
		default:
		}
	}
}

// start runs a projector and a worker with short leases and a low poison
// limit on opts (the admin's unless an ACL user is given).
func (h *hostile) start(t *testing.T, opts *redis.Options) {
	t.Helper()
	o := *opts
	engine := redis.NewClient(&o)
	engine.AddHook(h)
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: engine, Namespace: h.ns, ID: "p", FeedBlock: 100 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: engine, Namespace: h.ns, ID: "w", Concurrency: 4, FetchBlock: 100 * time.Millisecond,
		Lease: 400 * time.Millisecond, ReclaimInterval: 50 * time.Millisecond, PoisonLimit: 2, DrainTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("ok", func(ctx context.Context, task *worker.Task) (any, error) { return "ok", nil })
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait(); _ = engine.Close() })
}

func oneTask(name string) *graflow.Workflow {
	wf := graflow.NewWorkflow(name)
	wf.Task("a", "ok")
	return wf
}

// victim is the attacked run: a, then b. Its second step needs a
// projector's dispatch, so the projector folds the log (and meets the
// damage) before the run can end. A single-task run can end in its last
// finish, which reads no log entry: make test saw the worker end a
// one-task victim before the projector read its corrupt entry (the
// quarantine script then leaves the succeeded run alone). For the same
// reason b's join is best-effort: a's finish would hand a strict b on
// (rdb.Handoff), and the run could end with no projector's fold at all
// (TestHostileInput saw that too, under load).
func victim() *graflow.Workflow {
	wf := graflow.NewWorkflow("victim")
	wf.Task("b", "ok").After(wf.Task("a", "ok")).Join(events.Join{Policy: events.JoinBestEffort})
	return wf
}

// waitStatus blocks on run's log until it ends (any terminal event) and
// returns its status from the client, or from the quarantine index when the
// log cannot be read.
func (h *hostile) waitEnd(ctx context.Context, run string) (string, error) {
	info, err := h.client.Wait(ctx, run)
	if err == nil {
		return info.Status, nil
	}
	return "", err
}

// quarantinedSoon waits for run to be quarantined: its @status, or the
// namespace index when the run's own keys cannot be written. It blocks on
// the log when it is a readable stream (the quarantine appends
// run_quarantined to it); otherwise it looks again after each script call
// of the engine, until ctx ends.
func (h *hostile) quarantinedSoon(ctx context.Context, run string) error {
	for {
		if why, err := rdb.New(h.admin, h.ns).QuarantineReason(ctx, run); err == nil && why != "" {
			return nil
		}
		st, _ := h.admin.HGet(ctx, h.k.RunState(run), rdb.FieldRunStatus).Result()
		if st == string(projector.RunQuarantined) {
			return nil
		}
		// Block on the log if it is a stream (the quarantine appends
		// run_quarantined); otherwise wait for the engine's next scripts.
		last, _ := h.admin.XRevRangeN(ctx, h.k.RunLog(run), "+", "-", 1).Result()
		if len(last) > 0 {
			_, err := h.admin.XRead(ctx, &redis.XReadArgs{Streams: []string{h.k.RunLog(run), last[0].ID}, Block: 200 * time.Millisecond}).Result()
			if err != nil && !errors.Is(err, redis.Nil) && ctx.Err() == nil {
				// Not a stream (WRONGTYPE) or no permission: fall through.
				if !h.waitCalls(ctx) {
					return ctx.Err()
				}
			}
		} else if !h.waitCalls(ctx) {
			return ctx.Err()
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
	}
}

// waitCalls waits until the engine makes another script call (it is
// working on something), or ctx ends.
func (h *hostile) waitCalls(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return false
	case <-h.moved:
		return true
	}
}

// raw appends an entry with the given fields to stream key.
func (h *hostile) raw(ctx context.Context, key string, fields ...any) {
	h.t.Helper()
	if err := h.admin.XAdd(ctx, &redis.XAddArgs{Stream: key, Values: fields}).Err(); err != nil {
		h.t.Fatalf("xadd %s: %v", key, err)
	}
}

// replace makes key a string (a key-type clash).
func (h *hostile) replace(ctx context.Context, key string) {
	h.t.Helper()
	if err := h.admin.Del(ctx, key).Err(); err != nil {
		h.t.Fatal(err)
	}
	if err := h.admin.Set(ctx, key, "not what you think", 0).Err(); err != nil {
		h.t.Fatal(err)
	}
}

// logEntry appends an event-shaped entry to run's log with fields
// overridden (nil values delete the field), then points the feed at it.
func (h *hostile) logEntry(ctx context.Context, run string, override map[string]any) {
	h.t.Helper()
	e := events.Event{ID: "01HZX00000000000000000HOST", Type: events.TaskHeartbeat, Task: "a", Attempt: 1, Epoch: 1, Worker: "w", Time: time.Now()}
	f := e.Fields()
	m := map[string]any{}
	for i := 0; i+1 < len(f); i += 2 {
		m[f[i].(string)] = f[i+1]
	}
	for k, v := range override {
		if v == nil {
			delete(m, k)
		} else {
			m[k] = v
		}
	}
	var vals []any
	for k, v := range m {
		vals = append(vals, k, v)
	}
	h.raw(ctx, h.k.RunLog(run), vals...)
	h.raw(ctx, h.k.FeedFor(run), rdb.MsgRun, run)
}

func deepJSON(n int) json.RawMessage {
	return json.RawMessage(strings.Repeat("[", n) + strings.Repeat("]", n))
}

func hostileCases() []hostileCase {
	q := func(h *hostile) string { return h.k.Queue(0, "default", 0) }
	return []hostileCase{
		// --- submit ---
		{name: "args nested 1,100 deep are carried as they are", want: harmless, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("deep")
			wf.Task("a", "ok").Args(deepJSON(1100))
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "an input nested 1,100 deep is carried as it is", want: harmless, submit: func(ctx context.Context, h *hostile) (string, error) {
			return h.client.Submit(ctx, oneTask("deep-input"), deepJSON(1100))
		}},
		{name: "args of 2 MiB are refused", want: refused, wantErr: scheduler.ErrPayloadTooLarge, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("big")
			wf.Task("a", "ok").Args(strings.Repeat("x", 2<<20))
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "an input of 2 MiB is refused", want: refused, wantErr: scheduler.ErrPayloadTooLarge, submit: func(ctx context.Context, h *hostile) (string, error) {
			return h.client.Submit(ctx, oneTask("big-input"), strings.Repeat("x", 2<<20))
		}},
		{name: "a task id with a hash-tag brace is refused", want: refused, wantErr: scheduler.ErrInvalidTaskID, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("brace")
			wf.Task("a}{b", "ok")
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "a task id of invalid UTF-8 is refused", want: refused, wantErr: scheduler.ErrInvalidTaskID, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("utf8")
			wf.Task("a\xff\xfe", "ok")
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "a task id like a state field (@status) is refused", want: refused, wantErr: scheduler.ErrInvalidTaskID, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("field")
			wf.Task("@status", "ok")
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "a pool that would change the queue's hash tag is refused", want: refused, wantErr: scheduler.ErrInvalidOption, submit: func(ctx context.Context, h *hostile) (string, error) {
			wf := graflow.NewWorkflow("pool")
			wf.Task("a", "ok").Pool("x}:0")
			return h.client.Submit(ctx, wf, nil)
		}},
		{name: "a run id that would change the run's hash tag is refused", want: refused, wantErr: scheduler.ErrInvalidRunID, submit: func(ctx context.Context, h *hostile) (string, error) {
			return h.client.Submit(ctx, oneTask("runid"), nil, graflow.WithRunID("r}{x"))
		}},
		{name: "a dependency cycle is refused", want: refused, wantErr: scheduler.ErrCycle, submit: func(ctx context.Context, h *hostile) (string, error) {
			return h.client.SubmitSpec(ctx, events.RunSubmittedBody{Workflow: "cycle", Tasks: []events.TaskSpec{
				{ID: "a", Handler: "ok", Deps: []string{"b"}}, {ID: "b", Handler: "ok", Deps: []string{"a"}}}})
		}},
		{name: "args that are not JSON are refused (they panicked in Submit)", want: refused, wantErr: scheduler.ErrInvalidPayload, submit: func(ctx context.Context, h *hostile) (string, error) {
			return h.client.SubmitSpec(ctx, events.RunSubmittedBody{Workflow: "notjson", Tasks: []events.TaskSpec{
				{ID: "a", Handler: "ok", Args: json.RawMessage(`{"unterminated":`)}}})
		}},
		// --- queue stream entries (drop them; nothing else moves) ---
		{name: "a queue entry without a run", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, q(h), rdb.MsgTask, "a", rdb.MsgAttempt, "1")
		}},
		{name: "a queue entry without a task", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, q(h), rdb.MsgRun, "r", rdb.MsgAttempt, "1")
		}},
		{name: "a queue entry with a non-numeric attempt", want: harmless, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.raw(ctx, q(h), rdb.MsgRun, run, rdb.MsgTask, "a", rdb.MsgAttempt, "one")
		}},
		{name: "a queue entry with an attempt past int64", want: harmless, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.raw(ctx, q(h), rdb.MsgRun, run, rdb.MsgTask, "a", rdb.MsgAttempt, "99999999999999999999999")
		}},
		{name: "a queue entry for a run that does not exist", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, q(h), rdb.MsgRun, "no-such-run", rdb.MsgTask, "a", rdb.MsgAttempt, "1")
		}},
		{name: "a queue entry for a task not in its run", want: harmless, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.raw(ctx, q(h), rdb.MsgRun, run, rdb.MsgTask, "zzz", rdb.MsgAttempt, "1")
		}},
		{name: "a queue entry of invalid UTF-8 and 1 MiB", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, q(h), rdb.MsgRun, "\xff\xfe"+strings.Repeat("x", 1<<20), rdb.MsgTask, "\xc3\x28", rdb.MsgAttempt, "1")
		}},
		// --- feed entries (ignore them) ---
		{name: "a feed entry without a run", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, h.k.Feed(0), "x", "y")
		}},
		{name: "a feed entry for a run that does not exist", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, h.k.Feed(0), rdb.MsgRun, "no-such-run")
		}},
		{name: "a feed entry of invalid UTF-8 and 1 MiB", want: harmless, noRun: true, corrupt: func(ctx context.Context, h *hostile, _ string) {
			h.raw(ctx, h.k.Feed(0), rdb.MsgRun, "\xff"+strings.Repeat("{", 1<<20))
		}},
		// --- run log entries (quarantine the run) ---
		{name: "a log entry of an unknown type", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{events.FieldType: "task_exploded"})
		}},
		{name: "a log entry of an unknown schema version", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{"v": "99"})
		}},
		{name: "a log entry without a type", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{events.FieldType: nil})
		}},
		{name: "a log entry with a non-numeric attempt", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{"a": "first"})
		}},
		{name: "a log entry with a non-numeric epoch", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{"e": "1e400"})
		}},
		{name: "a log entry with a time that is not a number", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{"ts": "yesterday"})
		}},
		{name: "a task_succeeded whose body is not JSON", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{events.FieldType: string(events.TaskSucceeded), "b": "{\xff"})
		}},
		{name: "an event for a task not in the run", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.logEntry(ctx, run, map[string]any{events.FieldTask: "zzz", events.FieldType: string(events.TaskClaimed), "e": "9"})
		}},
		// --- the run's hashes and keys (quarantine the run) ---
		{name: "a task record that does not parse", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			if err := h.admin.HSet(ctx, h.k.RunState(run), "a", "garbage").Err(); err != nil {
				h.t.Fatal(err)
			}
		}},
		{name: "task metadata that does not parse", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			if err := h.admin.HSet(ctx, h.k.RunState(run), rdb.MetaField("a"), `{"h":"ok","d":[`).Err(); err != nil {
				h.t.Fatal(err)
			}
		}},
		{name: "the run's state is not a hash (WRONGTYPE)", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.replace(ctx, h.k.RunState(run))
			h.raw(ctx, h.k.FeedFor(run), rdb.MsgRun, run)
		}},
		{name: "the run's log is not a stream (WRONGTYPE)", want: quarantined, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.replace(ctx, h.k.RunLog(run))
			h.raw(ctx, h.k.FeedFor(run), rdb.MsgRun, run)
		}},
		// Layout 2 enqueues in the commit script: the outbox key of layout
		// 1 is never read or written.
		{name: "the run's outbox key (unused since layout 2) is not a list", want: harmless, corrupt: func(ctx context.Context, h *hostile, run string) {
			h.replace(ctx, h.k.RunOutbox(run))
		}},
		// --- permissions ---
		{name: "the engine's ACL user may not touch the run's keys (NOPERM)", want: quarantined, acl: true,
			corrupt: func(ctx context.Context, h *hostile, run string) {}},
	}
}

func TestHostileInput(t *testing.T) {
	t.Parallel()
	for _, tc := range hostileCases() {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			admin := redistest.Client(t)
			h := &hostile{t: t, admin: admin, ns: redistest.Namespace(t), moved: make(chan struct{}, 1)}
			h.k = rdb.NewKeys(h.ns)
			c, err := graflow.NewClient(graflow.Config{Redis: admin, Namespace: h.ns})
			if err != nil {
				t.Fatal(err)
			}
			h.client = c
			ctx, cancel := context.WithTimeout(context.Background(), 40*time.Second)
			defer cancel()
			h.runCase(ctx, tc, admin.Options())
		})
	}
}

// runCase runs one attack between two good runs and checks its outcome.
func (h *hostile) runCase(ctx context.Context, tc hostileCase, opts *redis.Options) {
	t := h.t
	t.Helper()
	var bad string
	switch {
	case tc.submit != nil && tc.want == refused:
		_, err := tc.submit(ctx, h)
		if !errors.Is(err, tc.wantErr) {
			t.Fatalf("submit = %v, want %v", err, tc.wantErr)
		}
		if n, _ := h.admin.Keys(ctx, h.ns+":*").Result(); len(n) != 0 {
			t.Fatalf("a refused submit wrote %v", n)
		}
	case tc.corrupt != nil:
		// The damage is done before the engine starts: the projector and
		// the worker meet it on their normal path (dispatch, claim).
		if !tc.noRun {
			var err error
			if bad, err = h.client.Submit(ctx, victim(), nil, graflow.WithRunID("b-"+h.ns[len(h.ns)-8:])); err != nil {
				t.Fatal(err)
			}
		}
		tc.corrupt(ctx, h, bad)
	}
	if tc.acl {
		// Every key of the namespace but those of runs whose id starts
		// with "b" (<ns>:{p<N>}:r:<run>:...): keys outside the
		// partitions, a partition's feed, queues and delayed set, and
		// the other runs' keys.
		user := "hostile-" + h.ns[len(h.ns)-8:]
		if err := h.admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "+@all", "~"+h.ns+":[^{]*", "~"+h.ns+":{[^p]*",
			"~"+h.ns+":{p*}:[^r]*", "~"+h.ns+":{p*}:r:[^b]*").Err(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { h.admin.Do(context.Background(), "ACL", "DELUSER", user) })
		o := *opts
		o.Username, o.Password = user, "pw"
		opts = &o
	}

	h.start(t, opts)
	first, err := h.client.Submit(ctx, oneTask("good"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if tc.submit != nil && tc.want == harmless {
		if bad, err = tc.submit(ctx, h); err != nil {
			t.Fatalf("submit = %v, want it accepted", err)
		}
	}
	second, err := h.client.Submit(ctx, oneTask("good"), nil)
	if err != nil {
		t.Fatal(err)
	}

	switch tc.want {
	case quarantined:
		if err := h.quarantinedSoon(ctx, bad); err != nil {
			t.Errorf("run %s was not quarantined: %v", bad, err)
		}
	case harmless:
		if bad != "" {
			if st, err := h.waitEnd(ctx, bad); err != nil || st != string(projector.RunSucceeded) {
				why, _ := rdb.New(h.admin, h.ns).QuarantineReason(ctx, bad)
				t.Errorf("run %s: %s, %v; want succeeded (quarantine: %s)", bad, st, err, why)
			}
		}
	}
	for _, run := range []string{first, second} {
		if st, err := h.waitEnd(ctx, run); err != nil || st != string(projector.RunSucceeded) {
			t.Errorf("the good run %s: %s, %v; want succeeded", run, st, err)
		}
	}
	// No retry storm: a good run costs a handful of scripts; the attack
	// may cost a few deliveries (poison limit 2) and quarantine attempts
	// (5), never a loop.
	if n := h.calls.Load(); n > 120 {
		t.Errorf("%d script calls in all, want at most 120 (a retry storm?)", n)
	}
	if tc.want == quarantined {
		why, _ := rdb.New(h.admin, h.ns).QuarantineReason(ctx, bad)
		t.Logf("quarantined after %d script calls: %.120s", h.calls.Load(), why)
	}
}
