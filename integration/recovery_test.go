package integration

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/crashpoint"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestRecovery proves the crash-recovery guarantees with real worker and
// projector processes on a real Redis: reclaim after SIGKILL, fencing of a
// worker that outlived its lease (and that the check fails without it),
// crashes between the steps of a completion and of a projection, retries,
// poison and dead letters, a Redis restart, and hand-back on drain timeout.
func TestRecovery(t *testing.T) {
	t.Parallel()
	for _, c := range []int{1, 4} {
		t.Run(fmt.Sprintf("a worker killed with SIGKILL has its task reclaimed within lease plus reclaim interval by an idle worker of concurrency %d", c), func(t *testing.T) {
			testReclaimAfterSIGKILL(t, newStack, c)
		})
	}
	t.Run("a worker stopped past its lease has its late result rejected and changes nothing", func(t *testing.T) {
		testStoppedPastLease(t, recWorker{})
	})
	t.Run("with fencing switched off a worker stopped past its lease gets a second result accepted", func(t *testing.T) {
		testStoppedPastLease(t, recWorker{unfenced: true})
	})
	t.Run("a worker that dies right after its result leaves nothing to reclaim, reruns nothing and loses no successor", testCrashAfterFinish)
	t.Run("a projector killed after its commit leaves state that a fresh projector completes", testProjectorCrashAfterCommit)
	t.Run("failed attempts are retried with growing delays and permanent and poison failures are dead-lettered then requeued", testRetriesAndDeadLetters)
	t.Run("a Redis restarted mid-run with appendfsync always loses no task and the live state equals the fold", testRedisRestart)
	t.Run("a worker whose drain times out hands its task back to another worker at once", testHandBackOnDrainTimeout)
}

// pair starts two idle workers "w-a" and "w-b". Whichever
// claims the test's task is the victim; the other one rescues it.
func pair(s *stack, o recWorker) map[string]*proc {
	return map[string]*proc{"w-a": s.recoveryWorker("w-a", o), "w-b": s.recoveryWorker("w-b", o)}
}

func otherOf(id string) string {
	if id == "w-a" {
		return "w-b"
	}
	return "w-a"
}

func submit(t *testing.T, s *stack, ctx context.Context, wf *graflow.Workflow) string {
	t.Helper()
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// testReclaimAfterSIGKILL runs on the stack newStack returns (one Redis,
// or a cluster: see cluster_test.go).
func testReclaimAfterSIGKILL(t *testing.T, newStack func(*testing.T) *stack, concurrency int) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	s.recoveryProjector("p-1", "")
	ws := pair(s, recWorker{concurrency: concurrency})

	wf := graflow.NewWorkflow("sigkill")
	wf.Task("slow", builtin.Sleep).Args(sleepArgs(3000, "done"))
	run := submit(t, s, ctx, wf)

	first := s.await(ctx, run, "the first claim", func(e events.Event) bool { return e.Type == events.TaskClaimed })
	victim, rescuer := first.Worker, otherOf(first.Worker)
	killAt := time.Now()
	ws[victim].kill()
	if !killedBy(ws[victim], syscall.SIGKILL) {
		t.Fatalf("%s did not die of SIGKILL: %v", victim, ws[victim].cmd.ProcessState)
	}

	// Invariant 3: reclaimed within lease + reclaim interval (plus slack for
	// process scheduling and the claim's round trips).
	bound := recLease + recReclaim + 2*time.Second
	wctx, cancel := context.WithTimeout(ctx, bound+10*time.Second)
	defer cancel()
	second := s.await(wctx, run, "a claim by "+rescuer, func(e events.Event) bool {
		return e.Type == events.TaskClaimed && e.Worker == rescuer
	})
	latency := second.Time.Sub(killAt)
	if latency > bound {
		t.Errorf("reclaim took %v after SIGKILL, want at most %v (lease %v + reclaim interval %v + 2s)", latency, bound, recLease, recReclaim)
	}

	s.wait(ctx, run)
	evs := s.readLog(ctx, run)
	l := checkLog(t, evs)
	if by := l.claimed["slow"]; by != rescuer {
		t.Errorf("slow succeeded by %q, want the rescuer %q", by, rescuer)
	}
	rec := filter(evs, events.TaskReclaimed, "slow")
	if len(rec) != 1 {
		t.Fatalf("%d task_reclaimed events, want 1:\n%s", len(rec), timeline(evs))
	}
	rb := body[events.TaskReclaimedBody](t, rec[0])
	if rb.Reason != "lease expired" || rb.From != victim || rec[0].Worker != rescuer {
		t.Errorf("task_reclaimed by %s: %+v, want reason %q from %s by %s", rec[0].Worker, rb, "lease expired", victim, rescuer)
	}
	if !(first.Epoch < rec[0].Epoch && rec[0].Epoch < second.Epoch) {
		t.Errorf("epochs claim %d, reclaim %d, new claim %d: want strictly increasing", first.Epoch, rec[0].Epoch, second.Epoch)
	}
	t.Logf("reclaim latency (SIGKILL of %s → task_claimed by %s): %v; epochs %d → %d", victim, rescuer,
		latency.Round(time.Millisecond), first.Epoch, second.Epoch)
}

// testStoppedPastLease freezes the claiming worker (SIGSTOP) until another
// worker reclaimed and finished its task, then thaws it (SIGCONT). With
// fencing the zombie's late heartbeat or result is rejected; with the
// test-only switch that turns fencing off (o.unfenced), its result is
// accepted a second time: proof that the assertions can fail. o configures
// both workers.
func testStoppedPastLease(t *testing.T, o recWorker) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	s.recoveryProjector("p-1", "")
	// Every heartbeat appends task_heartbeat: the first one shows that the
	// claimer got its claim back and runs the handler. (Frozen before the
	// claim's reply arrives, it would find the task reclaimed when it
	// thaws and drop it without a word: a different case.)
	o.hbEvents = time.Millisecond
	unfenced := o.unfenced
	ws := pair(s, o)

	wf := graflow.NewWorkflow("sigstop")
	wf.Task("slow", builtin.Sleep).Args(sleepArgs(3000, "done"))
	run := submit(t, s, ctx, wf)

	first := s.await(ctx, run, "the first claim", func(e events.Event) bool { return e.Type == events.TaskClaimed })
	victim, rescuer := first.Worker, otherOf(first.Worker)
	s.await(ctx, run, "a heartbeat of "+victim, func(e events.Event) bool {
		return e.Type == events.TaskHeartbeat && e.Worker == victim
	})
	ws[victim].signal(t, syscall.SIGSTOP)
	stoppedAt := time.Now()

	won := s.await(ctx, run, "the rescuer's result", func(e events.Event) bool {
		return e.Type == events.TaskSucceeded && e.Worker == rescuer
	})
	ws[victim].signal(t, syscall.SIGCONT)
	t.Logf("%s stopped for %v; %s succeeded at epoch %d (the zombie holds epoch %d)", victim,
		time.Since(stoppedAt).Round(time.Millisecond), rescuer, won.Epoch, first.Epoch)

	if unfenced {
		s.await(ctx, run, "the zombie's accepted result", func(e events.Event) bool {
			return e.Type == events.TaskSucceeded && e.Worker == victim
		})
	} else {
		rej := s.await(ctx, run, "the zombie's rejection", func(e events.Event) bool {
			return e.Type == events.ResultRejected && e.Worker == victim
		})
		rb := body[events.ResultRejectedBody](t, rej)
		if rej.Epoch != first.Epoch || (rb.What != "result" && rb.What != "heartbeat") || rb.CurrentEpoch != won.Epoch {
			t.Errorf("result_rejected at epoch %d: %+v, want the zombie's epoch %d, what result|heartbeat, current epoch %d",
				rej.Epoch, rb, first.Epoch, won.Epoch)
		}
	}
	// Once the zombie drained and exited, nothing more can come from it.
	stop(t, ctx, ws[victim])

	evs := s.readLog(ctx, run)
	succeeded := filter(evs, events.TaskSucceeded, "slow")
	state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	v := replay.CheckInvariants(evs, state)
	if unfenced {
		if len(succeeded) != 2 || v.DuplicateAccepts == 0 {
			t.Fatalf("fencing off: %d task_succeeded, checker found %d duplicate accepts; want 2 and > 0:\n%s",
				len(succeeded), v.DuplicateAccepts, timeline(evs))
		}
		t.Logf("fencing off: %d task_succeeded for one task (workers %s, %s); the checker reports %q",
			len(succeeded), succeeded[0].Worker, succeeded[1].Worker, v.Problems)
		return
	}

	// The rescuer's result is in; the projector ends the run after it
	// (wait for that, rather than read the status while it may not have).
	if info, err := s.client.Wait(ctx, run); err != nil || !info.Succeeded() {
		t.Fatalf("run status %v (err %v), want succeeded", info, err)
	}
	if len(succeeded) != 1 || succeeded[0].Worker != rescuer {
		t.Fatalf("%d task_succeeded (want exactly 1, by %s):\n%s", len(succeeded), rescuer, timeline(evs))
	}
	for _, e := range filter(evs, events.ResultRejected, "") {
		if e.Worker != victim || e.Epoch != first.Epoch {
			t.Errorf("result_rejected by %s at epoch %d, want only the zombie %s at %d", e.Worker, e.Epoch, victim, first.Epoch)
		}
	}
	if got, want := s.record(ctx, run, "slow"), fmt.Sprintf("succeeded|1|%d|%s", won.Epoch, rescuer); got != want {
		t.Errorf("live record %q, want %q (the rescuer's epoch)", got, want)
	}
	if !v.OK() {
		t.Errorf("history check: %q", v.Problems)
	}
	t.Logf("fencing on: 1 task_succeeded, %d stale message(s) rejected", v.RejectedStale)
}

func testCrashAfterFinish(t *testing.T) {
	t.Parallel()
	const afterPool = "after-crash"
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	s.recoveryProjector("p-1", "")
	a := s.recoveryWorker("w-a", recWorker{crashAt: crashpoint.WorkerAfterFinish})

	wf := graflow.NewWorkflow("crash-after-finish")
	wf.Sequence(
		// Long enough for the projector to be idle when t1's result lands,
		// so only the feed pointer that the crash skipped would wake it.
		wf.Task("t1", builtin.Sleep).Args(sleepArgs(300, 1)),
		// In a pool w-a does not serve: w-a dies after its finish
		// returns, and t2 may be dispatched before that. Served by w-a,
		// t2 could be claimed by it in that window and then reclaimed
		// (a second crash, not this one: make test saw "t2 claimed 2
		// times" when w-a claimed t2 20 ms before it died).
		wf.Task("t2", builtin.Sum).Args(map[string]any{"add": 1}).Pool(afterPool),
	)
	run := submit(t, s, ctx, wf)

	awaitExit(t, ctx, a)
	crashedAt := time.Now()
	if !killedBy(a, syscall.SIGKILL) {
		t.Fatalf("w-a did not die at its crash point: %v\n%s", a.cmd.ProcessState, a.tail(20))
	}
	evs := s.readLog(ctx, run)
	if n := len(filter(evs, events.TaskSucceeded, "t1")); n != 1 {
		t.Fatalf("after the crash: %d task_succeeded for t1, want 1 (appended before the crash):\n%s", n, timeline(evs))
	}
	// The finish acked t1's message and pointed the feed in the step that
	// recorded t1's result (layout 2: one slot, one script), so nothing of
	// t1 waits for a reclaim. (t2 may be dispatched already, to its own
	// pool.)
	if left := s.pendingTasks(ctx, worker.DefaultPool); left["t1"] != "" {
		t.Fatalf("after the crash: t1's message is pending for %s, want it acked with t1's result (pending: %v)", left["t1"], left)
	}
	stuck := len(filter(evs, events.TaskDispatched, "t2")) == 0

	b := s.recoveryWorker("w-b", recWorker{pools: []string{worker.DefaultPool, afterPool}})
	info := s.wait(ctx, run)
	stop(t, ctx, b)

	evs = s.readLog(ctx, run)
	l := checkLog(t, evs) // exactly one task_succeeded per task, no rejection
	if c := filter(evs, events.TaskClaimed, "t1"); len(c) != 1 || c[0].Worker != "w-a" {
		t.Errorf("t1 claims %v, want one, by w-a (nothing may run it again)", workersOf(c))
	}
	d := filter(evs, events.TaskDispatched, "t2")
	if len(d) != 1 {
		t.Fatalf("t2 dispatched %d times, want once", len(d))
	}
	if c := filter(evs, events.TaskClaimed, "t2"); len(c) != 1 {
		t.Errorf("t2 claimed %d times, want once", len(c))
	}
	if got := number(t, l.results["t2"]); got != 2 {
		t.Errorf("t2 = %v, want 2", got)
	}
	for _, pool := range []string{worker.DefaultPool, afterPool} {
		if left := s.pending(ctx, pool); len(left) != 0 {
			t.Errorf("messages of pool %s still pending at the end: %v", pool, left)
		}
	}
	t.Logf("run stuck after the crash: %v; t2 dispatched at %+v from the crash; run %s", stuck,
		d[0].Time.Sub(crashedAt).Round(time.Millisecond), info.Status)
}

func testProjectorCrashAfterCommit(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	s.recoveryWorker("w-1", recWorker{concurrency: 2})
	s.recoveryWorker("w-2", recWorker{concurrency: 2})
	p1 := s.recoveryProjector("p-crash", crashpoint.ProjectorAfterCommit)

	// d's join is best-effort, so its dispatch is a projector decision
	// (a's success hands b and c on in its finish: rdb.Handoff, and a
	// strict d would be handed on by b's or c's, leaving the projector
	// nothing to commit).
	wf := graflow.NewWorkflow("projector-crash")
	a := wf.Task("a", builtin.Sleep).Args(sleepArgs(20, 1))
	wf.Parallel(
		wf.Task("b", builtin.Sleep).Args(sleepArgs(20, 2)).After(a),
		wf.Task("c", builtin.Sleep).Args(sleepArgs(20, 3)).After(a),
	).BestEffort().Then(wf.Task("d", builtin.Sum))
	run := submit(t, s, ctx, wf)

	awaitExit(t, ctx, p1)
	crashedAt := time.Now()
	if !killedBy(p1, syscall.SIGKILL) {
		t.Fatalf("p-crash did not die at its crash point: %v\n%s", p1.cmd.ProcessState, p1.tail(20))
	}
	// The commit enqueued its dispatches itself (layout 2: no outbox, no
	// relay): every dispatch in the log at the crash has its message on
	// the queue, or was claimed already. (The queue is read first: a
	// message deleted by its ack before that read has its claim in the
	// log read after it.)
	queued := s.queuedTasks(ctx, worker.DefaultPool, run)
	atCrash := s.readLog(ctx, run)
	decided := filter(atCrash, events.TaskDispatched, "")
	if len(decided) == 0 {
		t.Fatalf("no dispatch in the log at the crash:\n%s", timeline(atCrash))
	}
	for _, d := range decided {
		if !queued[d.Task] && len(filter(atCrash, events.TaskClaimed, d.Task)) == 0 {
			t.Errorf("%s was dispatched by the commit before the crash, but its message is not on the queue", d.Task)
		}
	}

	s.recoveryProjector("p-2", "")
	s.wait(ctx, run)
	evs := s.readLog(ctx, run)
	l := checkLog(t, evs)
	dispatches := map[string]int{}
	for _, e := range filter(evs, events.TaskDispatched, "") {
		dispatches[e.Task+"#"+strconv.Itoa(e.Attempt)]++
	}
	for _, task := range []string{"a", "b", "c", "d"} {
		if n := dispatches[task+"#1"]; n != 1 {
			t.Errorf("%s attempt 1 dispatched %d times, want once", task, n)
		}
	}
	if len(dispatches) != 4 {
		t.Errorf("dispatches %v, want one per task", dispatches)
	}
	if got := number(t, l.results["d"]); got != 5 {
		t.Errorf("d = %v, want 5", got)
	}
	t.Logf("%d dispatch(es) committed and queued at the crash; run succeeded %v after it", len(decided),
		evs[len(evs)-1].Time.Sub(crashedAt).Round(time.Millisecond))
}

func testRetriesAndDeadLetters(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 90*time.Second)
	const poisonLimit = 2
	const poisonPool = "poison"
	s.recoveryProjector("p-1", "")
	s.recoveryWorker("w-1", recWorker{concurrency: 4, poisonLimit: poisonLimit})

	wfF := graflow.NewWorkflow("flaky")
	wfF.Task("flaky", builtin.Flaky).Args(map[string]any{"fail": 2, "value": 7}).Retries(2)
	wfP := graflow.NewWorkflow("permanent")
	wfP.Task("permanent", builtin.Flaky).Args(map[string]any{"fail": 1, "value": 8, "permanent": true}).Retries(2)
	wfX := graflow.NewWorkflow("poison")
	wfX.Task("poison", builtin.Echo).Args(map[string]any{"value": 9}).Pool(poisonPool)
	runF, runP, runX := submit(t, s, ctx, wfF), submit(t, s, ctx, wfP), submit(t, s, ctx, wfX)

	// The poison task kills every worker that claims it (crash point right
	// after the claim) until its message was delivered poisonLimit times:
	// one crash-armed worker after the other, each reclaiming from the
	// last. The next worker to reclaim it (not armed: the crash point comes
	// before the poison check) fails it as poison instead of running it.
	for i := 1; i <= poisonLimit; i++ {
		id := "w-crash-" + strconv.Itoa(i)
		c := s.recoveryWorker(id, recWorker{pools: []string{poisonPool}, crashAt: crashpoint.WorkerAfterClaim, poisonLimit: poisonLimit})
		awaitExit(t, ctx, c)
		if !killedBy(c, syscall.SIGKILL) {
			t.Fatalf("%s did not die at its crash point: %v\n%s", id, c.cmd.ProcessState, c.tail(20))
		}
		s.await(ctx, runX, "a claim by "+id, func(e events.Event) bool { return e.Type == events.TaskClaimed && e.Worker == id })
	}
	s.recoveryWorker("w-poison", recWorker{pools: []string{poisonPool}, poisonLimit: poisonLimit})
	poisoned := s.await(ctx, runX, "the poison failure", func(e events.Event) bool {
		return e.Type == events.TaskFailed && body[events.TaskFailedBody](t, e).Kind == events.FailurePoison
	})
	if fb := body[events.TaskFailedBody](t, poisoned); !fb.Final || poisoned.Worker != "w-poison" {
		t.Errorf("poison failure by %s %+v, want final, by w-poison", poisoned.Worker, fb)
	}

	// Retries: attempts 1 and 2 fail, 3 succeeds, with growing delays.
	s.wait(ctx, runF)
	evsF := s.readLog(ctx, runF)
	var claims []string
	for _, e := range filter(evsF, events.TaskClaimed, "flaky") {
		claims = append(claims, strconv.Itoa(e.Attempt))
	}
	if got := strings.Join(claims, ","); got != "1,2,3" {
		t.Errorf("flaky claimed for attempts %s, want 1,2,3", got)
	}
	retries := filter(evsF, events.TaskRetryScheduled, "flaky")
	if len(retries) != 2 {
		t.Fatalf("%d task_retry_scheduled, want 2:\n%s", len(retries), timeline(evsF))
	}
	var delays []int64
	for i, r := range retries {
		rb := body[events.TaskRetryScheduledBody](t, r)
		delays = append(delays, rb.DelayMS)
		if r.Attempt != i+2 {
			t.Errorf("retry %d schedules attempt %d, want %d", i, r.Attempt, i+2)
		}
		for _, c := range filter(evsF, events.TaskClaimed, "flaky") {
			if c.Attempt == r.Attempt && c.Time.UnixMilli() < rb.DueMS {
				t.Errorf("attempt %d claimed at %d ms, before it was due at %d ms", c.Attempt, c.Time.UnixMilli(), rb.DueMS)
			}
		}
	}
	if !(0 < delays[0] && delays[0] < delays[1]) {
		t.Errorf("retry delays %v ms, want positive and strictly increasing", delays)
	}

	// Both runs with a task that failed for good failed; their tasks are
	// dead letters.
	for _, run := range []string{runP, runX} {
		info, err := s.client.Wait(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != "failed" {
			t.Fatalf("run %s ended %s, want failed", run, info.Status)
		}
	}
	out, errOut, code := s.cli(ctx, append([]string{"dlq", "list", "--json"}, s.common()...)...)
	if code != 0 {
		t.Fatalf("dlq list: exit %d: %s", code, errOut)
	}
	dls := jsonOf[[]graflow.DeadLetter](t, out)
	var got []string
	for _, d := range dls {
		got = append(got, d.Run+"/"+d.Task)
		if d.Task == "poison" && !strings.Contains(string(d.Details), "poison") {
			t.Errorf("poison dead letter details %s do not say poison", d.Details)
		}
	}
	sort.Strings(got)
	want := []string{runP + "/permanent", runX + "/poison"}
	sort.Strings(want)
	if strings.Join(got, " ") != strings.Join(want, " ") {
		t.Fatalf("dlq list = %v, want %v", got, want)
	}

	out, errOut, code = s.cli(ctx, append([]string{"dlq", "requeue", "--all"}, s.common()...)...)
	if code != 0 {
		t.Fatalf("dlq requeue --all: exit %d: %s%s", code, out, errOut)
	}
	s.wait(ctx, runP)
	s.wait(ctx, runX)
	for _, run := range []string{runF, runP, runX} {
		evs := s.readLog(ctx, run)
		state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
		if err != nil {
			t.Fatal(err)
		}
		if v := replay.CheckInvariants(evs, state); !v.OK() {
			t.Errorf("run %s history: %q\n%s", run, v.Problems, timeline(evs))
		}
	}
	if out, _, _ := s.cli(ctx, append([]string{"dlq", "list", "--json"}, s.common()...)...); len(jsonOf[[]graflow.DeadLetter](t, out)) != 0 {
		t.Errorf("dlq list after requeue: %s, want empty", out)
	}
	t.Logf("retry delays %v ms; poison failed after %d crashed deliveries: %s", delays, poisonLimit, body[events.TaskFailedBody](t, poisoned).Error)
}

func testRedisRestart(t *testing.T) {
	t.Parallel()
	ctx := withTimeout(t, 90*time.Second)
	srv, err := redisserver.Start(ctx, redisserver.Config{AOF: true, Fsync: redisserver.FsyncAlways})
	if err != nil {
		t.Fatalf("start a redis-server of the test's own (it is killed and restarted): %v", err)
	}
	t.Cleanup(func() { _ = srv.Stop() })
	s := stackOn(t, srv.URL())
	proj := s.recoveryProjector("p-1", "")
	ws := []*proc{
		s.recoveryWorker("w-1", recWorker{concurrency: 4}),
		s.recoveryWorker("w-2", recWorker{concurrency: 4}),
		s.recoveryWorker("w-3", recWorker{concurrency: 4}),
	}

	const chains, length = 20, 10
	wf := graflow.NewWorkflow("redis-restart")
	for c := 0; c < chains; c++ {
		var prev *graflow.Task
		for i := 0; i < length; i++ {
			n := c*length + i
			task := wf.Task(fmt.Sprintf("c%02d-%d", c, i), builtin.Sleep).Args(sleepArgs(20+n*7%31, n))
			if prev != nil {
				task.After(prev)
			}
			prev = task
		}
	}
	start := time.Now()
	run := submit(t, s, ctx, wf)

	done := 0
	s.await(ctx, run, "50 results", func(e events.Event) bool {
		if e.Type == events.TaskSucceeded {
			done++
		}
		return done >= 50
	})
	downAt, pid := time.Now(), srv.PID()
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	// Restart once the processes see Redis gone (the projector's blocked
	// feed reads fail and its retries are refused).
	proj.waitLine(t, "connection refused")
	if err := srv.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	down := time.Since(downAt)
	if srv.PID() == pid {
		t.Fatalf("redis-server pid %d unchanged: it was not restarted", pid)
	}

	var info *graflow.RunInfo
	for attempt := 1; ; attempt++ { // the client's first call may hit a connection the restart broke
		if info, err = s.client.Wait(ctx, run); err == nil || attempt == 3 || ctx.Err() != nil {
			break
		}
	}
	if err != nil || !info.Succeeded() {
		t.Fatalf("run after the restart: %+v, %v", info, err)
	}
	took := time.Since(start)
	stop(t, ctx, ws...)

	evs := s.readLog(ctx, run)
	state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	v := replay.CheckInvariants(evs, state)
	if !v.OK() {
		t.Errorf("history check: %q", v.Problems)
	}
	succeeded := map[string]int{}
	for _, e := range filter(evs, events.TaskSucceeded, "") {
		succeeded[e.Task]++
	}
	if v.Tasks != chains*length || len(succeeded) != chains*length {
		t.Errorf("%d tasks, %d succeeded; want %d", v.Tasks, len(succeeded), chains*length)
	}
	for task, n := range succeeded {
		if n != 1 {
			t.Errorf("%s succeeded %d times, want once", task, n)
		}
	}
	if left := s.pending(ctx, worker.DefaultPool); len(left) != 0 {
		t.Errorf("messages still pending at the end: %v", left)
	}
	t.Logf("%d tasks, %d events; Redis down %v after %d results; run took %v; reclaims %d, stale rejections %d",
		v.Tasks, len(evs), down.Round(time.Millisecond), done, took.Round(time.Millisecond),
		len(filter(evs, events.TaskReclaimed, "")), v.RejectedStale)
}

func testHandBackOnDrainTimeout(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	// A long lease, so a pickup within seconds can only be the hand-back.
	const lease, drain = 10 * time.Second, time.Second
	s.recoveryProjector("p-1", "")
	ws := pair(s, recWorker{lease: lease, drain: drain})

	wf := graflow.NewWorkflow("hand-back")
	wf.Task("slow", builtin.Sleep).Args(sleepArgs(4000, "done"))
	run := submit(t, s, ctx, wf)

	first := s.await(ctx, run, "the first claim", func(e events.Event) bool { return e.Type == events.TaskClaimed })
	victim, rescuer := first.Worker, otherOf(first.Worker)
	termAt := time.Now()
	stop(t, ctx, ws[victim])
	exitAfter := time.Since(termAt)
	if exitAfter > drain+5*time.Second {
		t.Errorf("%s exited %v after SIGTERM, want within a few seconds of its %v drain timeout", victim, exitAfter, drain)
	}

	handed := s.await(ctx, run, "the hand-back", func(e events.Event) bool { return e.Type == events.TaskReclaimed })
	if hb := body[events.TaskReclaimedBody](t, handed); hb.Reason != "handed back" || hb.From != victim || handed.Worker != victim {
		t.Errorf("task_reclaimed by %s: %+v, want reason %q from %s", handed.Worker, hb, "handed back", victim)
	}
	second := s.await(ctx, run, "a claim by "+rescuer, func(e events.Event) bool {
		return e.Type == events.TaskClaimed && e.Worker == rescuer
	})
	if after := second.Time.Sub(termAt); after >= lease {
		t.Errorf("%s claimed the task %v after SIGTERM, want well before the %v lease expires", rescuer, after, lease)
	}
	if !(first.Epoch < handed.Epoch && handed.Epoch < second.Epoch) {
		t.Errorf("epochs claim %d, hand-back %d, new claim %d: want strictly increasing", first.Epoch, handed.Epoch, second.Epoch)
	}

	s.wait(ctx, run)
	evs := s.readLog(ctx, run)
	l := checkLog(t, evs)
	if by := l.claimed["slow"]; by != rescuer {
		t.Errorf("slow succeeded by %q, want %q", by, rescuer)
	}
	if n := len(filter(evs, events.TaskReclaimed, "")); n != 1 {
		t.Errorf("%d task_reclaimed events, want 1 (the hand-back)", n)
	}
	stop(t, ctx, ws[rescuer])
	if left := s.pending(ctx, worker.DefaultPool); len(left) != 0 {
		t.Errorf("messages still pending at the end: %v", left)
	}
	t.Logf("%s exited 0 %v after SIGTERM; hand-back → claim by %s: %v (lease %v)", victim,
		exitAfter.Round(time.Millisecond), rescuer, second.Time.Sub(handed.Time).Round(time.Millisecond), lease)
}

func workersOf(evs []events.Event) []string {
	out := make([]string, len(evs))
	for i, e := range evs {
		out[i] = e.Worker
	}
	return out
}
