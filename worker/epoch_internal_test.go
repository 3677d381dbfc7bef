package worker

import (
	"context"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// A fetch-claimed copy of an attempt this worker holds is kept pending only
// when its claim is newer than the one in hand (the held claim was handed
// back meanwhile: the copy carries the live claim). A copy claimed at an
// older epoch than the claim in hand (the worker reclaimed the task since)
// is redundant: it is acked, or a later reclaim of it would take the task
// from the live handler.
func TestAFetchClaimedCopyIsKeptOnlyWhenNewerThanTheClaimInHand(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name        string
		heldEpoch   int64 // the fetch claims at epoch 1
		wantPending int64
	}{
		{name: "older copy acked", heldEpoch: 2, wantPending: 0},
		{name: "newer copy kept", heldEpoch: 0, wantPending: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			c := redistest.Client(t)
			ns := redistest.Namespace(t)
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			s, err := scheduler.New(scheduler.Config{Redis: c, Namespace: ns})
			if err != nil {
				t.Fatal(err)
			}
			if _, _, err := s.Submit(ctx, events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{{ID: "t", Handler: "h"}}}, scheduler.SubmitOptions{}); err != nil {
				t.Fatal(err)
			}
			w, err := New(Config{Redis: c, Namespace: ns, ID: "W"})
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range w.db.K.AllQueues("default") {
				if err := w.db.EnsureGroup(ctx, q, rdb.GroupWorkers); err != nil {
					t.Fatal(err)
				}
			}
			res, claims, err := w.db.FetchClaim(ctx, 0, "default", "W", []string{ulid.Make().String()}, time.Now().UnixMilli())
			if err != nil || len(claims) != 1 {
				t.Fatalf("fetch as W: %v claims, %v", claims, err)
			}
			m := w.messages(res, claims, nil)[0]
			if m.pre == nil || m.pre.Epoch != 1 {
				t.Fatalf("the fetch's claim = %+v, want one at epoch 1", m.pre)
			}
			// The worker holds the same attempt under another claim.
			w.attempts[m.attemptKey()] = &attemptInHand{claimed: true, epoch: tc.heldEpoch}
			if parked := w.process(ctx, m, func() {}); len(parked) != 0 {
				t.Fatalf("process parked %d messages", len(parked))
			}
			p, err := c.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: m.stream, Group: rdb.GroupWorkers, Start: "-", End: "+", Count: 10, Consumer: "W"}).Result()
			if err != nil {
				t.Fatal(err)
			}
			if int64(len(p)) != tc.wantPending {
				t.Errorf("held claim at epoch %d, copy claimed at 1: %d messages pending for W, want %d", tc.heldEpoch, len(p), tc.wantPending)
			}
		})
	}
}
