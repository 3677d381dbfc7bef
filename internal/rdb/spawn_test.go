package rdb_test

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// spawnFinish is a success of task by worker (attempt 1, epoch) that
// spawns tasks, with the sinks and external dependencies given.
func (b scriptBundle) spawnFinish(t *testing.T, task, worker string, epoch int64, tasks []events.TaskSpec, sinks, external []string, limit int) error {
	t.Helper()
	sp, err := rdb.NewSpawn(ulid.Make().String(), tasks, sinks, external, limit)
	if err != nil {
		t.Fatal(err)
	}
	a := rdb.FinishArgs{Run: b.run, Task: task, Worker: worker, Attempt: 1, Epoch: epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 4000, Spawn: sp,
		Type: events.TaskSucceeded, Status: "succeeded", Result: []byte(`"spawned"`)}
	a.Body = events.Event{}.WithBody(events.TaskSucceededBody{Result: a.Result}).Body
	_, err = b.db.Finish(b.ctx, a)
	return err
}

// keys is what a spawn may write: the run's state, dag, results and log.
type snapshotKeys struct {
	state, dag, results map[string]string
	events              int
}

func (b scriptBundle) snap(t *testing.T) snapshotKeys {
	t.Helper()
	return snapshotKeys{state: b.hash(t, b.db.K.RunState(b.run)), dag: b.dag(t),
		results: b.results(t), events: len(b.log(t))}
}

var twoSpawned = []events.TaskSpec{{ID: "x0", Handler: "h.x"}, {ID: "x1", Handler: "h.x", Deps: []string{"x0"}, Args: []byte(`{"i":1}`)}}

// A spawn is fenced exactly like the outcome it rides with: a worker
// whose claim was reclaimed gets ErrStaleClaim and its spawn writes
// nothing (only the result_rejected of its result); the holder's spawn
// appends tasks_added right before task_succeeded, from the same attempt,
// epoch and worker, and writes the tasks' metadata, the spawn record and
// the run's count; the same finish again writes nothing more.
func TestFinishSpawnIsFenced(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.claim(t, "a", "w1", 1, false)                          // epoch 1
	if cr := b.claim(t, "a", "w2", 1, true); cr.Epoch != 3 { // reclaimed at 2, claimed at 3
		t.Fatalf("reclaim = %+v", cr)
	}

	before := b.snap(t)
	err := b.spawnFinish(t, "a", "w1", 1, twoSpawned, []string{"x1"}, nil, 100)
	if !errors.Is(err, rdb.ErrStaleClaim) {
		t.Fatalf("a zombie's spawn = %v, want ErrStaleClaim", err)
	}
	after := b.snap(t)
	if diff := cmp.Diff(before.state, after.state); diff != "" {
		t.Errorf("a zombie's spawn changed the state hash (-before +after):\n%s", diff)
	}
	if diff := cmp.Diff(before.dag, after.dag); diff != "" {
		t.Errorf("a zombie's spawn changed the dag hash (-before +after):\n%s", diff)
	}
	if log := b.log(t); after.events != before.events+1 || log[len(log)-1].Type != events.ResultRejected {
		t.Fatalf("a zombie's spawn appended %d events (last %s), want its result_rejected only", after.events-before.events, log[len(log)-1].Type)
	}

	if err := b.spawnFinish(t, "a", "w2", 3, twoSpawned, []string{"x1"}, nil, 100); err != nil {
		t.Fatalf("the holder's spawn: %v", err)
	}
	log := b.log(t)
	add, done := log[len(log)-2], log[len(log)-1]
	var body events.TasksAddedBody
	if err := add.DecodeBody(&body); err != nil {
		t.Fatal(err)
	}
	if add.Type != events.TasksAdded || add.Task != "a" || add.Attempt != 1 || add.Epoch != 3 || add.Worker != "w2" ||
		done.Type != events.TaskSucceeded || done.Task != "a" || done.Epoch != 3 || done.Worker != "w2" {
		t.Fatalf("appended %s %s a%d e%d %s, %s %s e%d %s; want tasks_added then task_succeeded of a at epoch 3 by w2",
			add.Type, add.Task, add.Attempt, add.Epoch, add.Worker, done.Type, done.Task, done.Epoch, done.Worker)
	}
	if diff := cmp.Diff(twoSpawned, body.Tasks); diff != "" {
		t.Errorf("tasks_added body (-want +got):\n%s", diff)
	}
	st, dag := b.hash(t, b.db.K.RunState(b.run)), b.dag(t)
	if st["@s:a"] != "x1" || st[rdb.FieldRunSpawned] != "2" || st["a"] != "succeeded|1|3|w2" || st["x0"] != "" {
		t.Errorf("state: @s:a=%q @spawned=%q a=%q x0=%q", st["@s:a"], st[rdb.FieldRunSpawned], st["a"], st["x0"])
	}
	if dag["x0"] != `{"h":"h.x"}` || dag["x1"] != `{"d":["x0"],"h":"h.x","x":{"i":1}}` {
		t.Errorf("dag: x0=%s x1=%s", dag["x0"], dag["x1"])
	}
	n := len(log)
	if err := b.spawnFinish(t, "a", "w2", 3, twoSpawned, []string{"x1"}, nil, 100); err != nil {
		t.Fatalf("the same finish again = %v, want ok", err)
	}
	if got := len(b.log(t)); got != n {
		t.Errorf("the same finish again appended %d events", got-n)
	}
	if got, err := b.db.ReadSpawned(b.ctx, b.run, []string{"a", "b"}); err != nil || !cmp.Equal(got, []string{"x1"}) {
		t.Errorf("ReadSpawned(a, b) = %v, %v; want [x1]", got, err)
	}
}

// A spawn the script refuses writes nothing and leaves the claim held: a
// spawned id already in the run, a dependency outside the spawn that has
// not succeeded, is unknown or spawned itself, and a run over its limit.
func TestFinishRefusesABadSpawn(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name     string
		tasks    []events.TaskSpec
		external []string
		limit    int
		want     string
	}{
		{"an id already in the run", []events.TaskSpec{{ID: "b", Handler: "h"}}, nil, 100, "task b is already in the run"},
		{"a dependency that has not succeeded", []events.TaskSpec{{ID: "x", Handler: "h", Deps: []string{"b"}}}, []string{"b"}, 100, "dependency b is pending"},
		{"an unknown dependency", []events.TaskSpec{{ID: "x", Handler: "h", Deps: []string{"nope"}}}, []string{"nope"}, 100, "dependency nope is not a task of the run"},
		{"a dependency that spawned", []events.TaskSpec{{ID: "x", Handler: "h", Deps: []string{"z"}}}, []string{"z"}, 100, "dependency z spawned tasks"},
		{"more spawned tasks than the run's limit", twoSpawned, nil, 2, "the run would hold 3 spawned tasks; the limit is 2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupRun(t)
			// z succeeded, having spawned one task (so @spawned is 1).
			b.c.HSet(b.ctx, b.db.K.RunState(b.run), "z", "succeeded|1|1|w", "@s:z", "z0", rdb.FieldRunSpawned, "1")
			b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.MetaField("z"), `{"h":"h"}`, rdb.MetaField("z0"), `{"h":"h"}`)
			b.claim(t, "a", "w1", 1, false)
			before := b.snap(t)
			err := b.spawnFinish(t, "a", "w1", 1, tt.tasks, nil, tt.external, tt.limit)
			var se *rdb.SpawnError
			if !errors.As(err, &se) || !errors.Is(err, rdb.ErrSpawnRefused) || !strings.Contains(se.Reason, tt.want) {
				t.Fatalf("finish = %v, want a SpawnError saying %q", err, tt.want)
			}
			if diff := cmp.Diff(before, b.snap(t), cmp.AllowUnexported(snapshotKeys{})); diff != "" {
				t.Errorf("a refused spawn wrote (-before +after):\n%s", diff)
			}
			if _, err := b.finish("a", "w1", 1, 1, false); err != nil {
				t.Errorf("the claim must still hold after a refused spawn: failure = %v", err)
			}
		})
	}
}

// A 10,000-task spawn goes through one finish (the script chunks its
// reads and writes under Lua's unpack limit), and the spawn record of a
// spawned task that spawned in turn extends what ReadSpawned finds.
func TestFinishLargeSpawnAndNestedRecords(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	b.claim(t, "a", "w1", 1, false)
	const n = 10_000
	tasks := make([]events.TaskSpec, n)
	sinks := make([]string, n)
	for i := range tasks {
		tasks[i] = events.TaskSpec{ID: "m-" + strconv.Itoa(i), Handler: "h", Args: []byte(fmt.Sprintf(`{"i":%d}`, i))}
		sinks[i] = tasks[i].ID
	}
	start := time.Now()
	if err := b.spawnFinish(t, "a", "w1", 1, tasks, sinks, nil, 100_000); err != nil {
		t.Fatal(err)
	}
	t.Logf("the finish of a %d-task spawn took %v", n, time.Since(start))
	if got := len(b.dag(t)); got != n+2 {
		t.Errorf("dag holds %d tasks, want %d", got, n+2)
	}
	log := b.log(t)
	var body events.TasksAddedBody
	if err := log[len(log)-2].DecodeBody(&body); err != nil || len(body.Tasks) != n {
		t.Fatalf("tasks_added holds %d tasks (%v), want %d", len(body.Tasks), err, n)
	}
	// m-7 spawned m-7:2 (a record written by hand, as the script writes it).
	b.c.HSet(b.ctx, b.db.K.RunState(b.run), "@s:m-7", "m-7:2")
	got, err := b.db.ReadSpawned(b.ctx, b.run, []string{"a"})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != n+1 || got[0] != "m-0" || got[n] != "m-7:2" {
		t.Errorf("ReadSpawned(a) = %d ids (first %v, last %v), want the %d sinks then m-7:2", len(got), got[:1], got[len(got)-1:], n)
	}
}
