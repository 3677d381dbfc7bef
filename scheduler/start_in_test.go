package scheduler_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/scheduler"
)

// StartIn counts from the submit's own instant: the roots start exactly
// StartIn after the time run_submitted records. (The CLI's --start-in used
// StartAt(time.Now().Add(d)), read before the submit: its roots came due a
// few ms less than d after run_submitted, and an integration test that
// checked "due a second after the submit" failed with 997 ms.)
func TestStartInCountsFromTheSubmit(t *testing.T) {
	t.Parallel()
	s, c, ns := setupScheduler(t) // a fake clock at 1700000000000 ms
	ctx := context.Background()
	k := rdb.NewKeys(ns)
	for _, tc := range []struct {
		name string
		opts scheduler.SubmitOptions
		want int64 // due ms of the root
	}{
		{"StartIn alone", scheduler.SubmitOptions{StartIn: 1500 * time.Millisecond}, 1700000001500},
		{"a later StartAt wins", scheduler.SubmitOptions{StartIn: time.Second, StartAt: time.UnixMilli(1700000005000)}, 1700000005000},
		{"a later StartIn wins", scheduler.SubmitOptions{StartIn: 3 * time.Second, StartAt: time.UnixMilli(1700000001000)}, 1700000003000},
	} {
		run, _, err := s.Submit(ctx, wf(task("a", "h"), task("b", "h", "a")), tc.opts)
		if err != nil {
			t.Fatal(err)
		}
		msgs, err := c.XRange(ctx, k.RunLog(run), "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		evs, err := rdb.DecodeLog(run, msgs)
		if err != nil {
			t.Fatal(err)
		}
		if evs[0].Type != events.RunSubmitted || evs[0].Time.UnixMilli() != 1700000000000 {
			t.Fatalf("%s: first event %s at %v, want run_submitted at the fake clock's now", tc.name, evs[0].Type, evs[0].Time)
		}
		// The roots start start_after_ms after run_submitted's time (the
		// projector parks their dispatches until then).
		var body events.RunSubmittedBody
		if err := evs[0].DecodeBody(&body); err != nil {
			t.Fatal(err)
		}
		if got := evs[0].Time.UnixMilli() + body.Tasks[0].StartAfterMS; got != tc.want || body.Tasks[1].StartAfterMS != 0 {
			t.Errorf("%s: root due at %d (dependent's start_after %d ms), want %d (and 0)", tc.name, got, body.Tasks[1].StartAfterMS, tc.want)
		}
	}
}
