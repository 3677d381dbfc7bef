package integration

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// TestWorkerSIGTERMDrains stops a worker with tasks in flight: it finishes
// them, acks every message, deregisters and exits 0.
func TestWorkerSIGTERMDrains(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	const id = "w-drain"
	w := s.worker(id, 4)

	const n = 4
	wf := graflow.NewWorkflow("drain")
	for i := 0; i < n; i++ {
		wf.Task("sleep-"+strconv.Itoa(i), builtin.Sleep).Args(sleepArgs(2000, i))
	}
	ctx := withTimeout(t, 60*time.Second)
	start := time.Now()
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}

	claimed := map[string]string{}
	err = s.watch(ctx, run, func(e events.Event) bool {
		if e.Type == events.TaskClaimed {
			claimed[e.Task] = e.Worker
		}
		return len(claimed) == n
	})
	if err != nil {
		t.Fatalf("waiting for %d claims (have %v): %v", n, claimed, err)
	}
	for task, by := range claimed {
		if by != id {
			t.Fatalf("%s claimed by %q, want %q", task, by, id)
		}
	}
	w.signal(t, syscall.SIGTERM)
	termAt := time.Now()

	code, err := w.exitCode(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if code != 0 {
		t.Fatalf("worker exited with code %d after SIGTERM, want 0", code)
	}
	exitAfter := time.Since(termAt)

	s.wait(ctx, run)
	l := checkLog(t, s.readLog(ctx, run))
	for task, by := range l.claimed {
		if by != id {
			t.Errorf("%s succeeded by %q, want %q (the drained worker)", task, by, id)
		}
	}
	for _, q := range s.keys.AllQueues(worker.DefaultPool) {
		p, err := s.rdb.XPending(ctx, q, rdb.GroupWorkers).Result()
		if err != nil {
			t.Fatalf("XPENDING %s: %v", q, err)
		}
		if p.Count != 0 {
			t.Errorf("%s: %d messages still pending (consumers %v)", q, p.Count, p.Consumers)
		}
	}
	if ok, err := s.rdb.SIsMember(ctx, s.keys.Workers(), id).Result(); err != nil || ok {
		t.Errorf("%s still in %s after exit (err %v)", id, s.keys.Workers(), err)
	}
	if n, err := s.rdb.Exists(ctx, s.keys.Worker(id)).Result(); err != nil || n != 0 {
		t.Errorf("%s still exists after exit (err %v)", s.keys.Worker(id), err)
	}
	t.Logf("SIGTERM with %d tasks in flight: exit 0 after %v, run done %v after submit", n,
		exitAfter.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestRouting runs tasks of pool "gpu" only on the worker serving "gpu",
// and default tasks only on the default worker.
func TestRouting(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.worker("w-default", 4)
	s.worker("w-gpu", 4, "gpu")

	wf := graflow.NewWorkflow("routing")
	prep := wf.Task("prep", builtin.Echo).Args(map[string]any{"value": 1})
	var gpu []*graflow.Task
	for i := 0; i < 4; i++ {
		gpu = append(gpu, wf.Task("train-"+strconv.Itoa(i), builtin.Sleep).Args(sleepArgs(20, i)).Pool("gpu").After(prep))
		wf.Task("cpu-"+strconv.Itoa(i), builtin.Sleep).Args(sleepArgs(20, i)).After(prep)
	}
	wf.Parallel(gpu...).Then(wf.Task("report", builtin.Sum))

	ctx := withTimeout(t, 60*time.Second)
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	s.wait(ctx, run)
	l := checkLog(t, s.readLog(ctx, run))
	for _, e := range l.claims {
		want := "w-default"
		if strings.HasPrefix(e.Task, "train-") {
			want = "w-gpu"
		}
		if e.Worker != want {
			t.Errorf("%s claimed by %s, want %s", e.Task, e.Worker, want)
		}
	}
	t.Logf("claims per worker %v", l.workers())
}

// TestPriority queues 20 tasks at priority 0 and 5 at priority 9 with no
// worker running, then starts one worker with concurrency 1: every
// priority-9 task must be claimed before any priority-0 task.
func TestPriority(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")

	const low, high = 20, 5
	wf := graflow.NewWorkflow("priority")
	prio := map[string]int{}
	for i := 0; i < low; i++ {
		id := "low-" + strconv.Itoa(i)
		wf.Task(id, builtin.Noop)
		prio[id] = 0
	}
	for i := 0; i < high; i++ {
		id := "high-" + strconv.Itoa(i)
		wf.Task(id, builtin.Noop).Priority(9)
		prio[id] = 9
	}
	ctx := withTimeout(t, 60*time.Second)
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until the projector relayed every dispatch to the queue streams
	// (XREAD BLOCK on the two bands; no consumer group involved).
	queued := map[string]bool{}
	streams := []string{s.keys.Queue(0, worker.DefaultPool, 9), s.keys.Queue(0, worker.DefaultPool, 0)}
	last := []string{"0", "0"}
	for len(queued) < low+high {
		res, err := s.rdb.XRead(ctx, &redis.XReadArgs{Streams: append(append([]string(nil), streams...), last...), Block: time.Second}).Result()
		if errors.Is(err, redis.Nil) {
			continue
		}
		if err != nil {
			t.Fatalf("waiting for %d queued tasks (have %d): %v", low+high, len(queued), err)
		}
		for _, st := range res {
			for i := range streams {
				if st.Stream == streams[i] && len(st.Messages) > 0 {
					last[i] = st.Messages[len(st.Messages)-1].ID
				}
			}
			for _, m := range st.Messages {
				if r, _ := m.Values[rdb.MsgRun].(string); r == run {
					k, _ := m.Values[rdb.MsgTask].(string)
					queued[k] = true
				}
			}
		}
	}

	s.worker("w-1", 1)
	s.wait(ctx, run)
	l := checkLog(t, s.readLog(ctx, run))
	var order []string
	lowSeen := ""
	for _, e := range l.claims {
		order = append(order, fmt.Sprintf("%s(p%d)", e.Task, prio[e.Task]))
		if prio[e.Task] == 0 && lowSeen == "" {
			lowSeen = e.Task
		}
		if prio[e.Task] == 9 && lowSeen != "" {
			t.Errorf("priority-9 task %s claimed after priority-0 task %s", e.Task, lowSeen)
		}
	}
	if t.Failed() {
		t.Logf("claim order: %s", strings.Join(order, " "))
	}
}

// TestWorkerRegistry checks a running worker's registry entry.
func TestWorkerRegistry(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	const id = "w-registry"
	s.worker(id, 2, "default", "gpu")
	ctx := withTimeout(t, 30*time.Second)

	members, err := s.rdb.SMembers(ctx, s.keys.Workers()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if !contains(members, id) {
		t.Errorf("SMEMBERS %s = %v, want it to contain %s", s.keys.Workers(), members, id)
	}
	h, err := s.rdb.HGetAll(ctx, s.keys.Worker(id)).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"pools", "tasks_processed", "tasks_failed", "tasks_running", "uptime_seconds", "last_heartbeat"} {
		if _, ok := h[f]; !ok {
			t.Errorf("HGETALL %s has no %q: %v", s.keys.Worker(id), f, h)
		}
	}
	if h["pools"] != "default,gpu" {
		t.Errorf("pools = %q, want %q", h["pools"], "default,gpu")
	}
	for _, f := range []string{"tasks_processed", "tasks_failed", "tasks_running", "uptime_seconds", "last_heartbeat"} {
		if _, err := strconv.ParseInt(h[f], 10, 64); err != nil {
			t.Errorf("%s = %q is not an integer", f, h[f])
		}
	}
	ttl, err := s.rdb.PTTL(ctx, s.keys.Worker(id)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if ttl <= 0 {
		t.Errorf("PTTL %s = %v, want > 0 (the entry must expire if the worker dies)", s.keys.Worker(id), ttl)
	}
	t.Logf("registry entry %v, PTTL %v", h, ttl)
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}
