package graflow_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker/builtin"
)

// gc forgets the dead letters of the runs it collects and of runs already
// gone (expired by a TTL); a running run's dead letters stay.
func TestGCForgetsDeadLettersOfGoneRuns(t *testing.T) {
	t.Parallel()
	b := setup(t, 1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	done := graflow.NewWorkflow("done")
	done.Task("a", builtin.Noop)
	finished, err := b.client.Submit(ctx, done, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.client.Wait(ctx, finished); err != nil {
		t.Fatal(err)
	}
	slow := graflow.NewWorkflow("slow")
	slow.Task("s", builtin.Sleep).Args(map[string]any{"ms": 60000})
	running, err := b.client.Submit(ctx, slow, nil)
	if err != nil {
		t.Fatal(err)
	}
	db := rdb.New(b.rdb, b.ns)
	pipe := b.rdb.Pipeline()
	for _, run := range []string{finished, running, "expired-long-ago"} {
		db.DeadLetter(ctx, pipe, run, "a", time.Now().UnixMilli(), rdb.DeadLetterDetails{Error: "x"})
	}
	if _, err := pipe.Exec(ctx); err != nil {
		t.Fatal(err)
	}
	rep, err := b.client.GC(ctx, graflow.GCOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Runs) != 1 || rep.DeadLetters != 2 {
		t.Errorf("gc = %+v, want one run and two dead letters", rep)
	}
	ms, err := b.rdb.ZRange(ctx, db.K.DeadLetter(), 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 || ms[0] != rdb.DeadLetterMember(running, "a") {
		t.Errorf("dead letters after gc = %v, want only the running run's", ms)
	}
	if n := b.rdb.HLen(ctx, db.K.DeadLetterInfo()).Val(); n != 1 {
		t.Errorf("%d dead-letter details after gc, want 1", n)
	}
}
