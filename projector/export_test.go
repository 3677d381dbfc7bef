package projector

import (
	"context"
	"fmt"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
)

// ProjectBatch runs the batched pass over runs as handle does and returns
// the runs it leaves to Project.
func (p *Projector) ProjectBatch(ctx context.Context, runs []string) []string {
	return p.projectBatch(ctx, runs)
}

// LoadRun folds run's whole log into p's cache (Project's first step).
func (p *Projector) LoadRun(ctx context.Context, run string) error {
	c := p.entry(run)
	c.mu.Lock()
	defer c.mu.Unlock()
	return p.load(ctx, run, c)
}

// Prepared is a commit prepare built from p's cached state of a run.
type Prepared struct {
	decisions []events.Event
	commit    rdb.Commit
}

// Decisions returns the prepared decision events.
func (x Prepared) Decisions() []events.Event { return x.decisions }

// PrepareCommit decides from p's cached state of run (no I/O), as Project
// does before it commits.
func (p *Projector) PrepareCommit(run string) Prepared {
	c := p.entry(run)
	c.mu.Lock()
	defer c.mu.Unlock()
	d, cm := p.prepare(c)
	return Prepared{decisions: d, commit: cm}
}

// CommitPrepared commits x and carries on as Project does after its
// commit (settle or read on), and returns the commit's reply.
func (p *Projector) CommitPrepared(ctx context.Context, run string, x Prepared) (rdb.CommitResult, error) {
	c := p.entry(run)
	c.mu.Lock()
	defer c.mu.Unlock()
	res, _, err := p.commitStep(ctx, run, c, x.decisions, x.commit)
	return res, err
}

// MoveDue moves partition part's due dispatches (the delayed mover's
// step) and returns how long until the next one is due.
func (p *Projector) MoveDue(ctx context.Context, part int) (time.Duration, error) {
	return p.moveDue(ctx, part)
}

// DepScans is how many dependencies the run's join checks looked at.
func (r *Run) DepScans() int { return r.depScans }

// TallyMismatch returns a pending tolerant join whose tally (when valid)
// gives another answer than a look at every dependency, or "".
func (r *Run) TallyMismatch() string {
	for _, t := range r.Tasks {
		if t.Status != TaskPending || t.Spec.Join.Strict() || !t.tally.valid {
			continue
		}
		ready, dead := r.tolerantState(t)
		wantReady, wantDead := r.joinState(t, nil, nil)
		if ready != wantReady || dead != wantDead {
			return fmt.Sprintf("task %s: tally says ready %v dead %v (%+v), its dependencies ready %v dead %v", t.Spec.ID, ready, dead, t.tally, wantReady, wantDead)
		}
	}
	return ""
}

// CachedRuns is how many runs' folds p keeps.
func (p *Projector) CachedRuns() int { return p.cachedRuns() }

// RepairCursor is the registry loop's position in an automatic repair walk.
type RepairCursor repairCursor

// AutoRepairPass runs one pass of the automatic repair from cur, as the
// registry loop does each interval while it holds the repair lock.
func (p *Projector) AutoRepairPass(ctx context.Context, cur *RepairCursor) {
	p.autoRepair(ctx, (*repairCursor)(cur))
}
