package rdb_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// A succeeded run's end keeps only its log (and channel): these tests
// hold every writer to "nothing but a rejection is written to a run
// without state" and every reader to "a run without state whose log ends
// with run_succeeded (rejections aside) succeeded".

// logOnlyRun is a one-task run whose finish ended it: it has only its log.
func logOnlyRun(t *testing.T) (scriptBundle, rdb.FinishArgs) {
	t.Helper()
	b := endRun(t, endPolicy, events.TaskSpec{ID: "solo", Handler: "h"})
	a := b.success(t, "solo", "w1", b.dispatchQueued(t, "w1", "solo")["solo"])
	if out := b.finishOne(t, a); !out.Ended {
		t.Fatalf("outcome %+v, want ended", out)
	}
	b.checkGone(t)
	return b, a
}

// heartbeatOf runs the heartbeat of task's first attempt at epoch for
// worker, with its event.
func (b scriptBundle) heartbeatOf(task, worker string, epoch int64) error {
	return rdb.HeartbeatResult(b.db.Heartbeat(b.ctx, b.c, rdb.HeartbeatArgs{Run: b.run, Task: task, Worker: worker, Attempt: 1,
		Epoch: epoch, EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 5000, Body: []byte(`{}`), Append: true}))
}

// checkGone fails unless the run's state hash (with its tasks' metadata
// and results) is gone.
func (b scriptBundle) checkGone(t *testing.T) {
	t.Helper()
	for _, k := range []string{b.db.K.RunState(b.run)} {
		if n, err := b.c.Exists(b.ctx, k).Result(); err != nil || n != 0 {
			t.Errorf("%s exists (%v): a succeeded run keeps only its log", k, err)
		}
	}
}

func TestALogOnlyRunRefusesEveryWriteAndAppendsOnlyRejections(t *testing.T) {
	t.Parallel()
	b, a := logOnlyRun(t)
	n := len(b.log(t))

	// A late copy of the task's message is done, as for any ended run.
	if cr := b.claim(t, "solo", "w2", 1, true); cr.Outcome != rdb.ClaimDone {
		t.Errorf("claim after the end = %+v, want done", cr)
	}
	// Another worker's outcome is stale: the task succeeded.
	late := a
	late.Worker, late.Consumer, late.EventID, late.RejectID, late.EndID = "w2", "w2", ulid.Make().String(), ulid.Make().String(), ""
	var stale *rdb.StaleError
	if out := b.finishCall(t, late)[0]; !errors.As(out.Err, &stale) || stale.Status != "succeeded" {
		t.Errorf("a late outcome = %+v, want stale: succeeded", out)
	}
	if err := b.heartbeatOf("solo", "w2", 1); !errors.As(err, &stale) || stale.Epoch != strconv.FormatInt(a.Epoch, 10) {
		t.Errorf("another worker's heartbeat after the end = %v, want stale at epoch %d", err, a.Epoch)
	}
	if res, err := b.db.CancelRun(b.ctx, b.run, "op", "why", 5000, ulid.Make().String); err != nil || res.Outcome != "finished" || res.Status != "succeeded" {
		t.Errorf("cancel after the end = %+v, %v; want finished: succeeded", res, err)
	}
	sig := events.SignalReceivedBody{Name: "go", ID: "s1", Payload: json.RawMessage(`1`)}
	if res, err := b.db.Signal(b.ctx, b.run, "client", 5000, ulid.Make().String(), sig); err != nil || res.Outcome != rdb.SignalFinished || res.Status != "succeeded" {
		t.Errorf("signal after the end = %+v, %v; want finished: succeeded", res, err)
	}
	_, err := b.db.WriteChannel(b.ctx, rdb.ChannelWrite{Run: b.run, Task: "solo", Worker: "w2", Attempt: 1, Epoch: a.Epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 5000, Op: rdb.ChannelOpSet, Key: "k", Value: json.RawMessage(`1`)})
	if !errors.As(err, &stale) || stale.Status != "succeeded" {
		t.Errorf("channel write after the end = %v, want stale: succeeded", err)
	}
	if err := b.db.Requeue(b.ctx, b.run, "solo", "op", ulid.Make().String(), 5000, []byte(`{}`)); err == nil {
		t.Error("requeue of a succeeded run's task: no error")
	}
	// A projector's commit: with nothing to decide it records nothing
	// (the state hash must not come back); a decision conflicts.
	if res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{FoldedTo: b.last(t), Writer: "p1", TimeMS: 5000}); err != nil || res.Conflict {
		t.Errorf("empty commit = %+v, %v; want ok", res, err)
	}
	dec := events.Event{ID: ulid.Make().String(), Type: events.RunFailed}.WithBody(events.RunFailedBody{})
	if res, err := b.db.Commit(b.ctx, b.run, rdb.Commit{FoldedTo: b.last(t), Writer: "p1", TimeMS: 5000,
		Events: []events.Event{dec}}); err != nil || !res.Conflict {
		t.Errorf("a decision's commit = %+v, %v; want a conflict", res, err)
	}

	// Three rejections (the outcome, the heartbeat, the channel write),
	// each naming the task's epoch as its last event left it; nothing else.
	log := b.log(t)
	var what []string
	for _, e := range log[n:] {
		var body events.ResultRejectedBody
		if e.Type != events.ResultRejected || e.DecodeBody(&body) != nil || body.CurrentEpoch != a.Epoch || e.Worker != "w2" {
			t.Errorf("after the end: %s by %s %s, want w2's result_rejected at current epoch %d", e.Type, e.Worker, e.Body, a.Epoch)
		}
		what = append(what, body.What)
	}
	if want := []string{"result", "heartbeat", "channel"}; !slices.Equal(what, want) {
		t.Errorf("rejections after the end: %v, want %v", what, want)
	}
	// The owner's own heartbeat that raced its success is benign.
	if err := b.heartbeatOf("solo", "w1", a.Epoch); err != nil {
		t.Errorf("the owner's heartbeat after its success = %v, want done", err)
	}
	if got := len(b.log(t)); got != len(log) {
		t.Errorf("the owner's late heartbeat appended %d entries", got-len(log))
	}
	b.checkGone(t)
	if st, err := b.db.RunStatus(b.ctx, b.run); err != nil || st != "succeeded" {
		t.Errorf("RunStatus = %q, %v; want succeeded", st, err)
	}
}

// The finish that ended the run, sent again after a lost reply, is the
// accepted outcome it was (not stale), though the state it checked is gone.
func TestALogOnlyRunAcceptsTheEndingFinishSentAgain(t *testing.T) {
	t.Parallel()
	b, a := logOnlyRun(t)
	out := b.finishCall(t, a)[0]
	if out.Err != nil || out.Ended {
		t.Errorf("the ending finish again = %+v; want accepted (not ended again)", out)
	}
	if ends := b.ends(t); len(ends) != 1 {
		t.Errorf("%d run_succeeded in the log, want 1", len(ends))
	}
	b.checkGone(t)
}

func TestALogOnlyRunIsListedCollectedAndInspected(t *testing.T) {
	t.Parallel()
	b, _ := logOnlyRun(t)
	if err := b.db.Reindex(b.ctx, b.run, 1000); err != nil { // as the client's submit
		t.Fatal(err)
	}
	rows, err := b.db.RunPage(b.ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 1 || rows[0].ID != b.run || rows[0].Status != "succeeded" || rows[0].Workflow != "wf" || rows[0].Err != nil {
		t.Errorf("RunPage = %+v; want %s succeeded wf", rows, b.run)
	}
	if st, ok, dirty, err := b.db.GCInfo(b.ctx, b.run); err != nil || !ok || dirty || st != "succeeded" {
		t.Errorf("GCInfo = %q %v %v %v; want succeeded, collectable", st, ok, dirty, err)
	}
	ok, _, evs, err := b.db.GCRun(b.ctx, b.run)
	if err != nil || !ok || evs == 0 {
		t.Errorf("GCRun = %v %d events %v; want collected", ok, evs, err)
	}
	if n, err := b.c.Exists(b.ctx, b.db.K.RunLog(b.run)).Result(); err != nil || n != 0 {
		t.Errorf("the log is still there after GC (%v)", err)
	}
	if st, err := b.db.RunStatus(b.ctx, b.run); err != nil || st != "" {
		t.Errorf("RunStatus after GC = %q, %v; want none", st, err)
	}
}
