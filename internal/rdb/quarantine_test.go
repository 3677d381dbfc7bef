package rdb_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

// A run that ended (cancelled, failed) but that a projector cannot fold
// any more (an entry it cannot decode landed after the end) is not set
// aside: it is not running. It used to keep @dirty for good, so garbage
// collection, which takes only runs the projector is done with, never
// collected it. The quarantine script now clears @dirty of such a run:
// no projector will fold it again.
func TestQuarantineOfARunThatEndedClearsItsDirtyFlag(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	state := b.db.K.RunState(b.run)
	if err := b.c.HSet(b.ctx, state, rdb.FieldRunStatus, "cancelled", rdb.FieldRunDirty, "1").Err(); err != nil {
		t.Fatal(err)
	}
	n := len(b.log(t))
	ev := events.Event{ID: ulid.Make().String(), Type: events.RunQuarantined, Worker: "p1", Time: time.UnixMilli(5000)}.
		WithBody(events.RunQuarantinedBody{Reason: "test"})
	done, ierr, err := b.db.Quarantine(b.ctx, b.run, ev, "test")
	if err != nil || ierr != nil || done {
		t.Fatalf("Quarantine = %v, %v, %v; want not done (the run is not running)", done, ierr, err)
	}
	st := b.hash(t, state)
	if st[rdb.FieldRunStatus] != "cancelled" || len(b.log(t)) != n {
		t.Errorf("the ended run changed: status %q, %d log entries (was %d)", st[rdb.FieldRunStatus], len(b.log(t)), n)
	}
	if d, ok := st[rdb.FieldRunDirty]; ok {
		t.Errorf("@dirty = %q after the quarantine of a run that ended: garbage collection never takes it", d)
	}
	if _, ok, dirty, err := b.db.GCInfo(b.ctx, b.run); err != nil || !ok || dirty {
		t.Errorf("GCInfo = ok %v dirty %v, %v; want a run gc may take", ok, dirty, err)
	}
}
