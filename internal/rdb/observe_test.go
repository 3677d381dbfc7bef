package rdb_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func setupObserve(t *testing.T) (context.Context, *redis.Client, rdb.DB) {
	t.Helper()
	c := redistest.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx, c, rdb.New(c, redistest.Namespace(t))
}

func TestParseInfo(t *testing.T) {
	t.Parallel()
	got := rdb.ParseInfo("# Server\r\nredis_version:7.0.15\r\n\r\n# Memory\r\nused_memory:1024\r\nbad line\r\n")
	want := map[string]string{"redis_version": "7.0.15", "used_memory": "1024"}
	if d := cmp.Diff(want, got); d != "" {
		t.Fatalf("ParseInfo (-want +got):\n%s", d)
	}
}

func TestObserveServer(t *testing.T) {
	t.Parallel()
	ctx, _, db := setupObserve(t)
	t.Run("ping, the server's clock and INFO answer", func(t *testing.T) {
		if err := db.Ping(ctx); err != nil {
			t.Fatal(err)
		}
		now, err := db.ServerTime(ctx)
		if err != nil || time.Until(now).Abs() > time.Minute {
			t.Fatalf("ServerTime = %v, %v; want about now", now, err)
		}
		info, err := db.Info(ctx, "server", "stats")
		if err != nil || info["redis_version"] == "" || info["total_commands_processed"] == "" {
			t.Fatalf("Info = %v, %v; want redis_version and total_commands_processed", info, err)
		}
		mem, err := db.MemoryUsed(ctx)
		if err != nil || mem <= 0 {
			t.Fatalf("MemoryUsed = %d, %v; want > 0", mem, err)
		}
	})
	t.Run("persistence reads the three settings", func(t *testing.T) {
		p, err := db.Persistence(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if p.AppendOnly != "yes" && p.AppendOnly != "no" || p.AppendFsync == "" {
			t.Fatalf("Persistence = %+v", p)
		}
	})
}

func TestObserveNamespace(t *testing.T) {
	t.Parallel()
	ctx, c, db := setupObserve(t)
	other := rdb.New(c, redistest.Namespace(t))
	for i := range 2500 { // more than one SCAN batch
		if err := c.Set(ctx, db.K.Lock("chore-"+time.Duration(i).String()), "x", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.SAdd(ctx, db.K.Workers(), "w1", "w2").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.ZAdd(ctx, db.K.Runs(), redis.Z{Score: 1, Member: "R1"}).Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.SAdd(ctx, other.K.Workers(), "w").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := db.NamespaceKeys(ctx); err != nil || n != 2502 {
		t.Fatalf("NamespaceKeys = %d, %v; want 2502", n, err)
	}
	if n, err := db.LiveWorkers(ctx); err != nil || n != 2 {
		t.Fatalf("LiveWorkers = %d, %v; want 2", n, err)
	}
	if n, err := db.IndexedRuns(ctx); err != nil || n != 1 {
		t.Fatalf("IndexedRuns = %d, %v; want 1", n, err)
	}
	if n, err := db.DatabaseKeys(ctx); err != nil || n < 2503 {
		t.Fatalf("DatabaseKeys = %d, %v; want at least this test's 2503", n, err)
	}
	if err := db.DeleteNamespace(ctx); err != nil {
		t.Fatal(err)
	}
	if n, err := db.NamespaceKeys(ctx); err != nil || n != 0 {
		t.Fatalf("NamespaceKeys after DeleteNamespace = %d, %v; want 0", n, err)
	}
	if n, err := other.NamespaceKeys(ctx); err != nil || n != 1 {
		t.Fatalf("another namespace after DeleteNamespace: %d keys, %v; want its 1 untouched", n, err)
	}
}

func TestObserveConsumers(t *testing.T) {
	t.Parallel()
	ctx, c, db := setupObserve(t)
	db.K = rdb.NewKeysP(db.K.Namespace(), 2) // consumers are summed over the partitions
	if n, err := db.FeedConsumers(ctx); err != nil || n != 0 {
		t.Fatalf("FeedConsumers before any feed = %d, %v; want 0", n, err)
	}
	if n, err := db.QueueConsumers(ctx, "p"); err != nil || n != 0 {
		t.Fatalf("QueueConsumers before any queue = %d, %v; want 0", n, err)
	}
	for _, s := range []string{db.K.Feed(0), db.K.Feed(1)} {
		if err := db.EnsureGroup(ctx, s, rdb.GroupProjectors); err != nil {
			t.Fatal(err)
		}
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: s, Values: []any{rdb.MsgRun, "R"}}).Err(); err != nil {
			t.Fatal(err)
		}
		// p1 reads the entry; p2 joins the group with nothing read.
		if err := c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupProjectors, Consumer: "p1", Streams: []string{s, ">"}, Count: 1, Block: -1}).Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.XGroupCreateConsumer(ctx, s, rdb.GroupProjectors, "p2").Err(); err != nil {
			t.Fatal(err)
		}
	}
	q := db.K.Queue(0, "p", 3)
	if err := db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
		t.Fatal(err)
	}
	if err := c.XGroupCreateConsumer(ctx, q, rdb.GroupWorkers, "w1").Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := db.FeedConsumers(ctx); err != nil || n != 4 {
		t.Fatalf("FeedConsumers = %d, %v; want 4 (2 partitions x 2)", n, err)
	}
	if n, err := db.QueueConsumers(ctx, "p"); err != nil || n != 1 {
		t.Fatalf("QueueConsumers = %d, %v; want 1", n, err)
	}
	pending, err := db.FeedPending(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]int64{"p1": 2}, pending); d != "" {
		t.Fatalf("FeedPending (-want +got):\n%s", d)
	}
}

func TestObserveRuns(t *testing.T) {
	t.Parallel()
	ctx, c, db := setupObserve(t)
	add := func(run string, typ events.Type, task, writer string) string {
		t.Helper()
		id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.RunLog(run), Values: []any{
			events.FieldType, string(typ), events.FieldTask, task, events.FieldWorker, writer}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		return id
	}
	s1 := add("R1", events.TaskDispatched, "a", "proj-1")
	s2 := add("R1", events.RunSucceeded, "", "proj-1")
	s3 := add("R2", events.TaskClaimed, "b", "w-1")
	if err := c.HSet(ctx, db.K.RunState("R1"), "a", "succeeded|1|1|w-1", rdb.FieldRunStatus, "succeeded").Err(); err != nil {
		t.Fatal(err)
	}

	t.Run("FollowLog returns the entries after a position and none when the block runs out", func(t *testing.T) {
		got, err := db.FollowLog(ctx, "R1", "0", 10, time.Second)
		want := []rdb.EntryHead{
			{Seq: s1, Type: events.TaskDispatched, Task: "a", Writer: "proj-1"},
			{Seq: s2, Type: events.RunSucceeded, Writer: "proj-1"},
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("FollowLog (-want +got):\n%s", d)
		}
		if got, err := db.FollowLog(ctx, "R1", s2, 10, 10*time.Millisecond); err != nil || got != nil {
			t.Fatalf("FollowLog after the end = %v, %v; want nothing", got, err)
		}
	})
	t.Run("LastEntries gives each run's newest entry, zero for a run without a log", func(t *testing.T) {
		got, err := db.LastEntries(ctx, []string{"R1", "R0", "R2"})
		want := []rdb.EntryHead{
			{Seq: s2, Type: events.RunSucceeded, Writer: "proj-1"},
			{},
			{Seq: s3, Type: events.TaskClaimed, Task: "b", Writer: "w-1"},
		}
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("LastEntries (-want +got):\n%s", d)
		}
	})
	t.Run("CountEvents sums the logs' lengths", func(t *testing.T) {
		if n, err := db.CountEvents(ctx, []string{"R1", "R2", "R0"}); err != nil || n != 3 {
			t.Fatalf("CountEvents = %d, %v; want 3", n, err)
		}
	})
	t.Run("RunState reads the state hash", func(t *testing.T) {
		got, err := db.RunState(ctx, "R1")
		want := map[string]string{"a": "succeeded|1|1|w-1", rdb.FieldRunStatus: "succeeded"}
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(want, got); d != "" {
			t.Fatalf("RunState (-want +got):\n%s", d)
		}
	})
	t.Run("RunMemory counts the run's keys and skips absent ones", func(t *testing.T) {
		n, err := db.RunMemory(ctx, "R1")
		if err != nil || n <= 0 {
			t.Fatalf("RunMemory = %d, %v; want > 0", n, err)
		}
		log, err := c.MemoryUsage(ctx, db.K.RunLog("R1"), 0).Result()
		if err != nil || n <= log {
			t.Fatalf("RunMemory = %d, log alone %d (%v): want the state hash counted too", n, log, err)
		}
		if n, err := db.RunMemory(ctx, "R0"); err != nil || n != 0 {
			t.Fatalf("RunMemory of a run without keys = %d, %v; want 0", n, err)
		}
	})
}
