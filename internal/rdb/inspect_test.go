package rdb_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

func TestRunPageKeepsTheRowsAroundAnUnreadableState(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	d := rdb.New(rc, redistest.Namespace(t))
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i, run := range []string{"r1", "r2", "r3"} {
		rc.ZAdd(ctx, d.K.Runs(), redis.Z{Score: float64(i + 1), Member: run})
	}
	rc.HSet(ctx, d.K.RunState("r1"), rdb.FieldRunStatus, "succeeded", rdb.FieldRunWorkflow, "w")
	rc.Set(ctx, d.K.RunState("r2"), "not a hash", 0)
	rc.HSet(ctx, d.K.RunState("r3"), rdb.FieldRunStatus, "running", rdb.FieldRunWorkflow, "w")

	rows, err := d.RunPage(ctx, 0, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) != 3 {
		t.Fatalf("got %d rows, want 3: %+v", len(rows), rows)
	}
	// Newest first.
	if r := rows[0]; r.ID != "r3" || r.Status != "running" || r.Err != nil {
		t.Errorf("row 0 = %+v, want r3 running", r)
	}
	if r := rows[1]; r.ID != "r2" || r.Err == nil || r.Status != "" {
		t.Errorf("row 1 = %+v, want r2 with an error", r)
	}
	if r := rows[2]; r.ID != "r1" || r.Status != "succeeded" || r.SubmittedMS != 1 || r.Err != nil {
		t.Errorf("row 2 = %+v, want r1 succeeded submitted at 1", r)
	}
}
