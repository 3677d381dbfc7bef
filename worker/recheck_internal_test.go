package worker

import (
	"testing"
	"time"

	"github.com/oklog/ulid/v2"
)

// A fetch-claimed message that waited in the buffer for a slot (over a
// third of the lease) has its claim checked again before the handler runs:
// the run may have been cancelled meanwhile (or the claim handed back).
// Starting from the fetch's claim as it was would run the handler of a
// cancelled run.
func TestABufferedFetchClaimIsCheckedAgainBeforeItRuns(t *testing.T) {
	t.Parallel()
	f := newFetchClaimed(t)
	w, m, ctx := f.w, f.m, f.ctx
	ran := f.running(t)
	// While the message waits for a slot, the run is cancelled.
	if _, err := w.db.CancelRun(ctx, f.run, "client-test", "test", time.Now().UnixMilli(), func() string { return ulid.Make().String() }); err != nil {
		t.Fatal(err)
	}
	m.fetched = time.Now().Add(-w.cfg.Lease)
	w.process(ctx, m, func() {})
	if ran.Load() {
		t.Error("the handler of a run cancelled while its message waited in the buffer ran")
	}
}
