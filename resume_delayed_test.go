package graflow_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
)

// Resume puts a delayed start whose parked dispatch was lost back in the
// delayed set, due when it was: it queued it at once, so the task started
// before its start_after (a review found it: the timeline kept a due time
// for retries only).
func TestResumeKeepsALostDelayedStartDelayed(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	c, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("later")
	wf.Task("root", "h").StartAfter(time.Hour)
	run, err := c.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, ID: "p1"})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Project(ctx, run); err != nil { // parks root's dispatch in the delayed set
		t.Fatal(err)
	}
	k := rdb.New(rc, ns).K
	delayed, queue := k.DelayedFor(run), k.QueueFor(run, "default", 0)
	parked, err := rc.ZRangeWithScores(ctx, delayed, 0, -1).Result()
	if err != nil || len(parked) != 1 {
		t.Fatalf("delayed set after the projection: %v, %v; want root's dispatch", parked, err)
	}
	due := int64(parked[0].Score)
	if err := rc.Del(ctx, delayed).Err(); err != nil { // the parked dispatch lost
		t.Fatal(err)
	}
	res, err := c.Resume(ctx, run)
	if err != nil || len(res.Redispatched) != 1 {
		t.Fatalf("resume: %+v, %v; want root dispatched again", res, err)
	}
	if n, err := rc.XLen(ctx, queue).Result(); err != nil || n != 0 {
		t.Errorf("resume queued %d messages (%v): root started before its start_after", n, err)
	}
	back, err := rc.ZRangeWithScores(ctx, delayed, 0, -1).Result()
	if err != nil || len(back) != 1 || int64(back[0].Score) != due {
		t.Errorf("delayed set after the resume: %v, %v; want root's dispatch due at %d", back, err, due)
	}
}
