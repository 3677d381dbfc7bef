package projector_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/projector"
	"github.com/redis/go-redis/v9"
)

// eventually polls cond until it holds, failing the test after timeout.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}

// A running projector is in the projector registry, with its whole record
// back after Redis loses it, and leaves it when it stops: "no projector is
// running" is visible.
func TestProjectorRegistersAndDeregisters(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p-reg", Partitions: []int{0},
		FeedBlock: 50 * time.Millisecond, FeedReclaimIdle: 150 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	key := b.db.K.Projector("p-reg")
	whole := func() bool {
		h := b.rdb.HGetAll(b.ctx, key).Val()
		return h["id"] == "p-reg" && h["host"] != "" && h["pid"] != "" && h["partitions"] == "0" && h["started_at"] != "" &&
			h["last_heartbeat"] != "" && b.rdb.SIsMember(b.ctx, b.db.K.Projectors(), "p-reg").Val() && b.rdb.PTTL(b.ctx, key).Val() > 0
	}
	eventually(t, 10*time.Second, "the projector's registry record", whole)
	if err := b.rdb.Del(b.ctx, key, b.db.K.Projectors()).Err(); err != nil { // data loss
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the projector's record back after a loss", whole)
	stop()
	if n := b.rdb.SCard(b.ctx, b.db.K.Projectors()).Val(); n != 0 {
		t.Errorf("%d projectors registered after the only one stopped, want 0", n)
	}
	if n := b.rdb.Exists(b.ctx, key).Val(); n != 0 {
		t.Error("the stopped projector's hash is still there")
	}
}

// Projector restarts under new ids do not grow the feed streams' consumer
// groups without bound: dead projectors' consumers (nothing pending, idle,
// not registered) are deleted.
func TestDeadProjectorsFeedConsumersArePruned(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	cfg := func(id string) projector.Config {
		return projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: id,
			FeedBlock: 50 * time.Millisecond, FeedReclaimIdle: 150 * time.Millisecond}
	}
	consumers := func() []string {
		var names []string
		for n := 0; n < b.db.K.Partitions(); n++ {
			cs, err := b.rdb.XInfoConsumers(b.ctx, b.db.K.Feed(n), "projectors").Result()
			if err != nil && !strings.Contains(err.Error(), "no such key") && !strings.Contains(err.Error(), "NOGROUP") {
				t.Fatal(err)
			}
			for _, c := range cs {
				names = append(names, c.Name)
			}
		}
		return names
	}
	// runProjected submits a run bare (no dispatch at submit) and waits
	// until a projector dispatched it (its consumer exists once it is
	// delivered a feed entry).
	runProjected := func() {
		run := b.submitRaw(t, "", events.TaskSpec{ID: "a", Handler: "h"})
		b.waitFor(t, run, events.TaskDispatched, "a")
	}
	for i := 0; i < 6; i++ {
		p, err := projector.New(cfg(fmt.Sprintf("restart-%d", i)))
		if err != nil {
			t.Fatal(err)
		}
		stop := b.start(t, p)
		runProjected()
		stop()
	}
	if n := len(consumers()); n < 2 {
		t.Fatalf("%d feed consumers after 6 restarts: the test does not create them", n)
	}
	p, err := projector.New(cfg("live"))
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	defer stop()
	runProjected()
	eventually(t, 30*time.Second, "the dead projectors' feed consumers to be deleted", func() bool {
		for _, n := range consumers() {
			if n != "live" {
				return false
			}
		}
		return true
	})
}

// The run index and the dead-letter set lose the entries of runs whose keys
// are gone (expired by RunTTL, deleted): a running projector sweeps them,
// page by page; a live run's entries and a just-submitted index entry stay.
// The dead-letter set also loses the stale dead letters of live runs, whose
// task is no longer failed (a requeue's removal lost in a failover left
// one behind after its run succeeded: chaos seed 1163 on a cluster); the
// dead letter of a task that is failed stays.
func TestSweepDropsIndexAndDeadLettersOfGoneRuns(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	live := b.submit(t, events.TaskSpec{ID: "a", Handler: "h"})
	// Failed for good (its record as the finish writes it): its dead
	// letter is not stale.
	if err := b.rdb.HSet(b.ctx, b.db.K.RunState(live), "a", "failed|1|1|w1").Err(); err != nil {
		t.Fatal(err)
	}
	// Requeued, and succeeded since in a run still running: stale.
	requeued := b.submit(t, events.TaskSpec{ID: "a", Handler: "h"}, events.TaskSpec{ID: "z", Handler: "h"})
	if err := b.rdb.HSet(b.ctx, b.db.K.RunState(requeued), "a", "succeeded|2|3|w1").Err(); err != nil {
		t.Fatal(err)
	}
	// Dispatched, with a dead letter (a poison claim's): it stays.
	poisoned := b.submit(t, events.TaskSpec{ID: "a", Handler: "h"})
	succeeded := b.submit(t, events.TaskSpec{ID: "a", Handler: "h"})
	b.run(t, succeeded, "a", "w1", true) // a single-task run ends in the finish, keeping only its log
	old := float64(time.Now().Add(-time.Hour).UnixMilli())
	pipe := b.rdb.Pipeline()
	for i := 0; i < 450; i++ { // more than a page
		gone := fmt.Sprintf("gone-%03d", i)
		pipe.ZAdd(b.ctx, b.db.K.Runs(), redis.Z{Score: old, Member: gone})
		b.db.DeadLetter(b.ctx, pipe, gone, "t", int64(old), rdb.DeadLetterDetails{Error: "x"})
	}
	pipe.ZAdd(b.ctx, b.db.K.Runs(), redis.Z{Score: float64(time.Now().UnixMilli()), Member: "just-submitted"})
	for _, run := range []string{live, requeued, succeeded, poisoned} {
		b.db.DeadLetter(b.ctx, pipe, run, "a", int64(old), rdb.DeadLetterDetails{Error: "x"})
	}
	if _, err := pipe.Exec(b.ctx); err != nil {
		t.Fatal(err)
	}
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: "p-sweep",
		FeedBlock: 50 * time.Millisecond, FeedReclaimIdle: 90 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	stop := b.start(t, p)
	defer stop()
	eventually(t, 30*time.Second, "the index and dead letters of gone runs removed", func() bool {
		return b.rdb.ZCard(b.ctx, b.db.K.Runs()).Val() == 5 && b.rdb.ZCard(b.ctx, b.db.K.DeadLetter()).Val() == 2 &&
			b.rdb.HLen(b.ctx, b.db.K.DeadLetterInfo()).Val() == 2
	})
	for _, run := range []string{live, requeued, succeeded, poisoned, "just-submitted"} {
		if _, err := b.rdb.ZScore(b.ctx, b.db.K.Runs(), run).Result(); err != nil {
			t.Errorf("index entry of %s: %v", run, err)
		}
	}
	for _, run := range []string{live, poisoned} {
		if _, err := b.rdb.ZScore(b.ctx, b.db.K.DeadLetter(), rdb.DeadLetterMember(run, "a")).Result(); err != nil {
			t.Errorf("dead letter of %s: %v", run, err)
		}
	}
}
