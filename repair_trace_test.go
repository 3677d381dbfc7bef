package graflow_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
)

// The dispatches Repair and Resume put on a queue carry the run's trace
// context, as a projector's do: the worker's claim and handler spans of a
// task dispatched again stay in the run's trace. (Chaos found it: after a
// repair, 40 claim spans of one run were each in a trace of its own.)
func TestRepairAndResumeDispatchesCarryTheRunsTrace(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	tr := newTraced(t)
	ns := redistest.Namespace(t)
	c, err := graflow.NewClient(graflow.Config{Redis: tr.rc, Namespace: ns, TracerProvider: tr.tp})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("traced")
	wf.Task("root", "h")
	run, err := c.Submit(ctx, wf, nil) // its root is dispatched by the submit
	if err != nil {
		t.Fatal(err)
	}
	submits := named(tr.exp.GetSpans(), "graflow.submit")
	if len(submits) != 1 {
		t.Fatalf("%d submit spans, want 1", len(submits))
	}
	traceID := submits[0].SpanContext.TraceID().String()
	k := rdb.New(tr.rc, ns).K
	queue := k.QueueFor(run, "default", 0)
	check := func(what string) {
		t.Helper()
		msgs, err := tr.rc.XRange(ctx, queue, "-", "+").Result()
		if err != nil || len(msgs) == 0 {
			t.Fatalf("%s: queue %s: %d messages, %v", what, queue, len(msgs), err)
		}
		for _, m := range msgs {
			if tp, _ := m.Values[rdb.MsgTrace].(string); !strings.Contains(tp, traceID) {
				t.Errorf("%s: message %s carries traceparent %q; want one of the run's trace %s", what, m.ID, tp, traceID)
			}
		}
	}
	check("after the submit")
	if err := tr.rc.Del(ctx, queue).Err(); err != nil { // the message lost
		t.Fatal(err)
	}
	rep, err := c.Repair(ctx, run)
	if err != nil || len(rep.Redispatched) != 1 {
		t.Fatalf("repair: %+v, %v; want the dispatched root dispatched again", rep, err)
	}
	check("after the repair")
	if err := tr.rc.Del(ctx, queue).Err(); err != nil { // the messages lost
		t.Fatal(err)
	}
	res, err := c.Resume(ctx, run)
	if err != nil || len(res.Redispatched) != 1 {
		t.Fatalf("resume: %+v, %v; want the root dispatched again", res, err)
	}
	check("after the resume")
}
