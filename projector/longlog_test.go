package projector_test

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/projector"
)

// shortPages is a projector reading the log 2 entries at a time, so that
// "a log longer than a page" takes a handful of events.
func (b liveBundle) shortPages(t *testing.T, id string) *projector.Projector {
	t.Helper()
	p, err := projector.New(projector.Config{Redis: b.rdb, Namespace: b.db.K.Namespace(), ID: id, ReadCount: 2,
		RetryInitial: time.Millisecond, RetryMax: time.Millisecond, FeedBlock: 100 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// A projector that does not have a run cached (a restart, an eviction,
// another instance) and whose log is longer than a page decides on the
// whole log, through either path a feed entry takes (the batched pass, then
// Project for what it hands back; or Project alone): no decision is made
// twice and no record goes back. (Found in review: the batched pass handed
// Project a run folded to its first page with the newest cursor.)
func TestUncachedLongLogIsFoldedWholeBeforeDeciding(t *testing.T) {
	t.Parallel()
	for _, batch := range []bool{false, true} {
		name := "Project"
		if batch {
			name = "BatchThenProject"
		}
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			b := setupLive(t)
			run := b.submit(t, spec("t0"), spec("t1", "t0"), spec("t2", "t1"), spec("t3", "t2"), spec("t4", "t3"), spec("t5", "t4"))
			p1 := b.projector(t, "p1")
			if err := p1.Project(b.ctx, run); err != nil {
				t.Fatal(err)
			}
			for _, task := range []string{"t0", "t1", "t2", "t3"} {
				b.run(t, run, task, "w", true)
				if err := p1.Project(b.ctx, run); err != nil {
					t.Fatal(err)
				}
			}
			before, recBefore := decisionKeys(b.log(t, run)), b.records(t, run)
			p2 := b.shortPages(t, "p2")
			rest := []string{run}
			if batch {
				rest = p2.ProjectBatch(b.ctx, rest)
			}
			for _, r := range rest {
				if err := p2.Project(b.ctx, r); err != nil {
					t.Fatal(err)
				}
			}
			for k, n := range decisionKeys(b.log(t, run)) {
				if n != before[k] {
					t.Errorf("decision %q: %d times before, %d after", k, before[k], n)
				}
			}
			recAfter := b.records(t, run)
			for task, r := range recBefore {
				if recAfter[task] != r {
					t.Errorf("record of %s: %+v before, %+v after", task, r, recAfter[task])
				}
			}
		})
	}
}

// A cached run with a backlog of more than two pages after its cursor: a
// commit that is not caught up lands past the unread backlog, and the
// projector must not decide again before it has read up to its own
// decisions. (Found in review; it predates the batched pass.)
func TestBacklogLongerThanAPageIsDecidedOnce(t *testing.T) {
	t.Parallel()
	b := setupLive(t)
	run := b.submit(t, spec("a"), spec("b1", "a"), spec("b2", "a"), spec("b3", "a"), spec("b4", "a"), spec("c", "b1"))
	p := b.shortPages(t, "p")
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	b.run(t, run, "a", "w", true)
	if err := p.Project(b.ctx, run); err != nil { // dispatches b1..b4; the run is cached
		t.Fatal(err)
	}
	for _, task := range []string{"b1", "b2", "b3", "b4"} {
		b.run(t, run, task, "w", true)
	}
	if err := p.Project(b.ctx, run); err != nil {
		t.Fatal(err)
	}
	for k, n := range decisionKeys(b.log(t, run)) {
		if n != 1 {
			t.Errorf("decision %q appended %d times", k, n)
		}
	}
}
