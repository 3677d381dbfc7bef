package integration

import (
	"bytes"
	"encoding/json"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/replay"
	"github.com/graflow-go/graflow/worker/builtin"
)

// TestChannelWithWorkerProcesses runs a workflow whose tasks talk through
// the run's channel on three worker processes: three waiters (claimed
// first, no dependencies) block until "ready" is set; twelve tasks
// increment "count" and append to "ids" concurrently (atomic across
// processes); "signal" sets "ready" after them. The values are read after
// the run with the client and "graflow status --channel"; every write is
// a channel_written of its writer's claim and the history verifies.
func TestChannelWithWorkerProcesses(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	s.projector("p-1")
	s.workers(3, 4)
	ctx := withTimeout(t, 90*time.Second)

	const n = 12
	wf := graflow.NewWorkflow("channel")
	for i := range 3 {
		wf.Task("waiter-"+strconv.Itoa(i), builtin.ChannelWait).Args(map[string]any{"key": "ready"}).Priority(9).Timeout(60 * time.Second)
	}
	var adders []*graflow.Task
	for i := range n {
		adders = append(adders,
			wf.Task("incr-"+strconv.Itoa(i), builtin.ChannelIncr).Args(map[string]any{"key": "count", "by": i + 1}),
			wf.Task("append-"+strconv.Itoa(i), builtin.ChannelAppend).Args(map[string]any{"key": "ids", "value": i}))
	}
	wf.Task("signal", builtin.ChannelSet).Args(map[string]any{"key": "ready", "value": map[string]bool{"go": true}}).After(adders...)
	run, err := s.client.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info := s.wait(ctx, run)
	for i := range 3 {
		if got := string(info.Task("waiter-" + strconv.Itoa(i)).Result); got != `{"go":true}` {
			t.Errorf("waiter-%d returned %s, want the signal's value", i, got)
		}
	}

	evs := s.readLog(ctx, run)
	claimed := map[string]int{} // task → index of its claim in the log
	ready, writes := -1, 0
	for i, e := range evs {
		switch e.Type {
		case events.TaskClaimed:
			claimed[e.Task] = i
		case events.ChannelWritten:
			writes++
			if b := body[events.ChannelWrittenBody](t, e); b.Key == "ready" {
				ready = i
			}
		}
	}
	if writes != 2*n+1 {
		t.Errorf("%d channel_written events, want %d", writes, 2*n+1)
	}
	for i := range 3 {
		if c, ok := claimed["waiter-"+strconv.Itoa(i)]; !ok || c > ready {
			t.Errorf("waiter-%d was claimed at log entry %d, after ready was written at %d: it did not have to wait", i, c, ready)
		}
	}
	a, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("history problems (a channel write not from its claim holder?): %v", a.Problems)
	}
	state, err := s.rdb.HGetAll(ctx, s.keys.RunState(run)).Result()
	if err != nil {
		t.Fatal(err)
	}
	if v := replay.CheckInvariants(evs, state); !v.OK() {
		t.Fatalf("invariants: %v", v.Problems)
	}
	if out, errOut, code := s.cli(ctx, append([]string{"replay", "verify", run}, s.common()...)...); code != 0 {
		t.Fatalf("graflow replay verify: exit %d\n%s%s", code, out, errOut)
	}

	ch, err := s.client.Channel(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(ch["count"]); got != strconv.Itoa(n*(n+1)/2) {
		t.Errorf("count = %s, want %d", got, n*(n+1)/2)
	}
	var ids []int
	if err := json.Unmarshal(ch["ids"], &ids); err != nil {
		t.Fatal(err)
	}
	slices.Sort(ids)
	want := make([]int, n)
	for i := range want {
		want[i] = i
	}
	if diff := cmp.Diff(want, ids); diff != "" {
		t.Errorf("ids, sorted: each appended once (-want +got):\n%s", diff)
	}

	out, errOut, code := s.cli(ctx, append([]string{"status", "--channel", run}, s.common()...)...)
	if code != 0 {
		t.Fatalf("graflow status --channel: exit %d\n%s%s", code, out, errOut)
	}
	for _, want := range []string{"KEY", "count", strconv.Itoa(n * (n + 1) / 2), "ids", "ready", `{"go":true}`} {
		if !strings.Contains(out, want) {
			t.Errorf("graflow status --channel does not show %q:\n%s", want, out)
		}
	}
	out, errOut, code = s.cli(ctx, append([]string{"status", "--channel", "--json", run}, s.common()...)...)
	var printed map[string]json.RawMessage
	if code != 0 || json.Unmarshal([]byte(out), &printed) != nil {
		t.Fatalf("graflow status --channel --json: exit %d\n%s%s", code, out, errOut)
	}
	for k, v := range printed { // printed indented
		var c bytes.Buffer
		if err := json.Compact(&c, v); err != nil {
			t.Fatal(err)
		}
		printed[k] = c.Bytes()
	}
	if diff := cmp.Diff(ch, printed); diff != "" {
		t.Errorf("status --channel --json vs Client.Channel (-client +cli):\n%s", diff)
	}
	if _, errOut, code := s.cli(ctx, append([]string{"status", "--channel", "no-such-run"}, s.common()...)...); code != 3 || !strings.Contains(errOut, "not found") {
		t.Errorf("status --channel of a missing run: exit %d, want 3: %s", code, errOut)
	}
}

// TestChannelWriteOfAZombieWorkerIsRefused freezes (SIGSTOP) a worker
// whose handler is about to write the channel, until another worker has
// reclaimed the task, written the key and succeeded; thawed (SIGCONT), the
// zombie's handler writes anyway (the built-in's delay ignores its
// context) while the run still runs: the write is refused and recorded
// as result_rejected (what "channel"), and the only channel_written is
// the rescuer's.
func TestChannelWriteOfAZombieWorkerIsRefused(t *testing.T) {
	t.Parallel()
	s := newStack(t)
	ctx := withTimeout(t, 60*time.Second)
	s.recoveryProjector("p-1", "")
	ws := pair(s, recWorker{hbEvents: time.Millisecond}) // every heartbeat is an event

	wf := graflow.NewWorkflow("channel-zombie")
	w := wf.Task("writer", builtin.ChannelSet).Args(map[string]any{"key": "k", "value": "v", "after_ms": 3000})
	// The run is still running when the zombie writes: only the claim
	// check can refuse it.
	wf.Task("after", builtin.Sleep).Args(sleepArgs(5000, nil)).After(w)
	run := submit(t, s, ctx, wf)

	first := s.await(ctx, run, "the first claim", func(e events.Event) bool { return e.Type == events.TaskClaimed })
	victim, rescuer := first.Worker, otherOf(first.Worker)
	s.await(ctx, run, "a heartbeat of "+victim, func(e events.Event) bool {
		return e.Type == events.TaskHeartbeat && e.Worker == victim
	})
	ws[victim].signal(t, syscall.SIGSTOP)
	won := s.await(ctx, run, "the rescuer's result", func(e events.Event) bool {
		return e.Type == events.TaskSucceeded && e.Worker == rescuer
	})
	ws[victim].signal(t, syscall.SIGCONT)
	rej := s.await(ctx, run, "the zombie's channel write", func(e events.Event) bool {
		return e.Worker == victim && (e.Type == events.ChannelWritten ||
			e.Type == events.ResultRejected && body[events.ResultRejectedBody](t, e).What == "channel")
	})
	if rej.Type == events.ChannelWritten {
		t.Fatalf("the zombie's write was accepted: channel_written by %s (its claim was epoch %d, the rescuer's is %d)", rej.Worker, first.Epoch, won.Epoch)
	}
	if rb := body[events.ResultRejectedBody](t, rej); rej.Epoch != first.Epoch || rb.CurrentEpoch != won.Epoch {
		t.Errorf("result_rejected at epoch %d: %+v, want the zombie's epoch %d and current epoch %d", rej.Epoch, rb, first.Epoch, won.Epoch)
	}
	stop(t, ctx, ws[victim])

	evs := s.readLog(ctx, run)
	written := filter(evs, events.ChannelWritten, "writer")
	if len(written) != 1 || written[0].Worker != rescuer || written[0].Epoch != won.Epoch {
		t.Fatalf("channel_written events %v, want one, by %s at epoch %d:\n%s", written, rescuer, won.Epoch, timeline(evs))
	}
	a, err := replay.Analyze(run, evs)
	if err != nil {
		t.Fatal(err)
	}
	if len(a.Problems) > 0 {
		t.Fatalf("history problems: %v", a.Problems)
	}
	if v, ok, err := s.client.ChannelGet(ctx, run, "k"); err != nil || !ok || string(v) != `"v"` {
		t.Errorf("k = %s, %v, %v", v, ok, err)
	}
}
