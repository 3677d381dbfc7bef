package graflow_test

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
)

func TestRunsListsTheOthersWhenOneStateIsUnreadable(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("w")
	wf.Task("a", "h.a")
	var runs []string
	for range 3 {
		run, err := client.Submit(ctx, wf, nil)
		if err != nil {
			t.Fatal(err)
		}
		runs = append(runs, run)
	}
	// The middle run's state key becomes a string: HMGET on it answers
	// WRONGTYPE.
	k := rdb.NewKeys(ns)
	if err := rc.Del(ctx, k.RunState(runs[1])).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rc.Set(ctx, k.RunState(runs[1]), "not a hash", 0).Err(); err != nil {
		t.Fatal(err)
	}

	got, err := client.Runs(ctx, graflow.RunsOptions{})
	if err != nil {
		t.Fatalf("Runs: %v, want the runs listed", err)
	}
	if len(got) != len(runs) {
		t.Fatalf("Runs listed %d runs, want %d: %+v", len(got), len(runs), got)
	}
	for _, s := range got {
		if s.ID == runs[1] {
			if s.Status != graflow.RunUnreadable || s.Error == "" {
				t.Errorf("run %s with a state of the wrong type: status %q, error %q; want %q and the reason", s.ID, s.Status, s.Error, graflow.RunUnreadable)
			}
			continue
		}
		if s.Status != "running" || s.Workflow != "w" || s.Error != "" {
			t.Errorf("run %s: %+v, want running workflow w and no error", s.ID, s)
		}
	}

	only, err := client.Runs(ctx, graflow.RunsOptions{Status: graflow.RunUnreadable})
	if err != nil || len(only) != 1 || only[0].ID != runs[1] {
		t.Errorf("Runs(status unreadable) = %+v, %v; want run %s only", only, err, runs[1])
	}
}
