package rdb_test

import (
	"context"
	"fmt"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// failAfterRemoval sets a task's record to failed right after the first
// transaction that removes dead letters: the task failed for good again
// between the sweep's check and its removal.
type failAfterRemoval struct {
	c          *redis.Client
	state, rec string
	done       bool
}

func (f *failAfterRemoval) DialHook(next redis.DialHook) redis.DialHook { return next }
func (f *failAfterRemoval) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return next
}
func (f *failAfterRemoval) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		err := next(ctx, cmds)
		for _, c := range cmds {
			if c.Name() == "zrem" && !f.done {
				f.done = true
				if err := f.c.HSet(ctx, f.state, "a", f.rec).Err(); err != nil {
					return err
				}
			}
		}
		return err
	}
}

// The sweep forgets a stale dead letter (its task ended otherwise than
// failed), but puts back one whose task failed for good again while the
// sweep removed it: that failure's own dead letter was refused (NX) while
// the stale one was there, so removing it would lose the task's dead
// letter. (A skipped task comes back when the dependency it was skipped
// behind is requeued, so it can fail.) A dead letter of a task that is
// dispatched stays: a poison claim is dead-lettered so.
func TestSweepPutsBackADeadLetterWhoseTaskFailedAgainMeanwhile(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), "a", "skipped|1|0|").Err(); err != nil {
		t.Fatal(err)
	}
	hooked := redis.NewClient(b.c.Options())
	t.Cleanup(func() { _ = hooked.Close() })
	f := &failAfterRemoval{c: b.c, state: b.db.K.RunState(b.run), rec: "failed|2|3|w1"}
	hooked.AddHook(f)
	db := rdb.New(hooked, b.db.K.Namespace())
	pipe := b.c.Pipeline()
	b.db.DeadLetter(b.ctx, pipe, b.run, "a", 1234, rdb.DeadLetterDetails{Attempt: 1, Error: "boom"})
	if _, err := pipe.Exec(b.ctx); err != nil {
		t.Fatal(err)
	}
	_, removed, err := db.SweepDeadLetters(b.ctx, 0, 100)
	if err != nil || !f.done {
		t.Fatalf("sweep: %v (removal seen: %t)", err, f.done)
	}
	m := rdb.DeadLetterMember(b.run, "a")
	if len(removed) != 0 {
		t.Errorf("removed %v; want nothing: the task failed again", removed)
	}
	score, err := b.c.ZScore(b.ctx, b.db.K.DeadLetter(), m).Result()
	info, ierr := b.c.HGet(b.ctx, b.db.K.DeadLetterInfo(), m).Result()
	if err != nil || score != 1234 || ierr != nil || info == "" {
		t.Errorf("dead letter after the sweep: score %v (%v), info %q (%v); want it back as it was", score, err, info, ierr)
	}

	// A dispatched task's dead letter stays (a poison claim's).
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), "a", "dispatched|3|3|").Err(); err != nil {
		t.Fatal(err)
	}
	if _, removed, err = b.db.SweepDeadLetters(b.ctx, 0, 100); err != nil || len(removed) != 0 {
		t.Errorf("sweep of a dispatched task's dead letter removed %v (%v); want it kept", removed, err)
	}
	// Once the task succeeded, the stale dead letter goes.
	if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), "a", "succeeded|3|3|w1").Err(); err != nil {
		t.Fatal(err)
	}
	_, removed, err = b.db.SweepDeadLetters(b.ctx, 0, 100)
	if err != nil || fmt.Sprint(removed) != fmt.Sprint([]string{m}) {
		t.Errorf("second sweep removed %v (%v); want %s", removed, err, m)
	}
	if n := b.c.ZCard(b.ctx, b.db.K.DeadLetter()).Val(); n != 0 {
		t.Errorf("%d dead letters left; want the stale one gone", n)
	}
}
