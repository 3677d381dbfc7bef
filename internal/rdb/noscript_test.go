package rdb_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// After a Redis restart the script cache is empty, and a pipelined
// EVALSHA does not fall back to EVAL: the claims and outcomes a worker
// sends together reload the scripts and go again, rather than failing
// (each then retried alone). A private server: the flush must not touch
// the other tests' scripts.
func TestPipelinedClaimsAndFinishesReloadTheScriptsAfterARestart(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	srv, err := redisserver.Start(ctx, redisserver.Config{})
	if err != nil {
		t.Fatalf("start a private redis-server: %v", err)
	}
	defer func() { _ = srv.Stop() }()
	c := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer c.Close()
	b := scriptBundle{ctx: ctx, c: c, db: rdb.New(c, "graflow")}.submitRun(t, parallel(2))
	msgs := b.dispatchQueued(t, "w1", "t00", "t01")
	restart := func() {
		t.Helper()
		if err := c.ScriptFlush(ctx).Err(); err != nil {
			t.Fatal(err)
		}
	}

	restart()
	var claims []rdb.ClaimArgs
	for _, task := range []string{"t00", "t01"} {
		claims = append(claims, rdb.ClaimArgs{Run: b.run, Task: task, Worker: "w1", Attempt: 1, EventID: ulid.Make().String(), TimeMS: 3000})
	}
	got, errs := b.db.ClaimGroups(ctx, [][]rdb.ClaimArgs{claims})
	if errs[0] != nil {
		t.Fatalf("claims after a restart: %v", errs[0])
	}
	var outcomes []rdb.FinishArgs
	for i, cr := range got[0] {
		if cr.Outcome != rdb.ClaimOK {
			t.Fatalf("claim of %s = %+v", claims[i].Task, cr)
		}
		a := rdb.FinishArgs{Run: b.run, Task: claims[i].Task, Worker: "w1", Attempt: 1, Epoch: cr.Epoch,
			EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000,
			Type: events.TaskSucceeded, Status: events.TaskStatusSucceeded, Result: []byte(`1`),
			Stream: b.endQueue(), MessageID: msgs[claims[i].Task], Consumer: "w1"}
		a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
		outcomes = append(outcomes, a)
	}

	restart()
	res, errs := b.db.FinishGroups(ctx, [][]rdb.FinishArgs{outcomes})
	if errs[0] != nil {
		t.Fatalf("outcomes after a restart: %v", errs[0])
	}
	for i, o := range res[0] {
		if o.Err != nil || o.Acked != 1 {
			t.Errorf("outcome of %s = %+v, want recorded and acked", outcomes[i].Task, o)
		}
	}
}
