package projector

import "github.com/graflow-go/graflow/events"

// joinState applies t's join policy (events.Join) to the current state of
// its dependencies: ready says t may be dispatched, dead that it is to be
// skipped. skipping and unskipping hold the tasks being skipped and
// requeued in the batch at hand (Decide), which count as skipped and
// pending.
func (r *Run) joinState(t *Task, skipping, unskipping map[string]bool) (ready, dead bool) {
	j := t.Spec.Join
	if j.Strict() {
		dead = !r.depsAlive(t, skipping)
		return !dead && t.waiting == 0, dead
	}
	ok, ended, critDead := 0, 0, false
	r.depScans += len(t.Spec.Deps)
	for _, d := range t.Spec.Deps {
		st := r.Tasks[r.index[d]].Status
		if skipping[d] {
			st = TaskSkipped
		} else if unskipping[d] {
			st = TaskPending
		}
		switch st {
		case TaskSucceeded:
			ok++
			ended++
		case TaskFailed, TaskSkipped, TaskCancelled:
			ended++
			if j.Policy == events.JoinCritical && isCritical(j, d) {
				critDead = true
			}
		}
	}
	return r.tolerantDecision(t, ended, ended-ok, critDead, skipping, unskipping)
}

// tolerantDecision applies a tolerant join policy to counts of t's
// dependencies: ended, lost (ended without succeeding) and whether a
// critical one was lost. What the dependencies spawned (Waits) must
// succeed, whatever the policy (spawn.go).
func (r *Run) tolerantDecision(t *Task, ended, lost int, critLost bool, skipping, unskipping map[string]bool) (ready, dead bool) {
	j := t.Spec.Join
	all := ended == len(t.Spec.Deps)
	if waitsOK, waitsDead := r.waitsState(t, skipping, unskipping); waitsDead {
		return false, true
	} else if !waitsOK {
		all = false
	}
	switch j.Policy {
	case events.JoinBestEffort:
		return all, false
	case events.JoinAtLeast:
		dead = len(t.Spec.Deps)-lost < j.N // too few left to reach N
		return all && !dead, dead
	case events.JoinCritical:
		return all && !critLost, critLost
	}
	// An unknown policy (validation refuses it at submit): strict.
	dead = !r.depsAlive(t, skipping)
	return !dead && t.waiting == 0, dead
}

func isCritical(j *events.Join, dep string) bool {
	for _, c := range j.Critical {
		if c == dep {
			return true
		}
	}
	return false
}

// Ready reports whether t's dependencies, under its join policy, let it
// run now (replay checks each dispatch with it).
func (r *Run) Ready(t *Task) bool {
	ready, _ := r.joinState(t, nil, nil)
	return ready
}

// Dead reports whether t's join policy can no longer be met: it is to be
// skipped.
func (r *Run) Dead(t *Task) bool {
	_, dead := r.joinState(t, nil, nil)
	return dead
}

// joinTally counts a tolerant join's dependencies by how they ended, so
// that settling the join after one of them ended costs O(1) instead of a
// look at every dependency (which made the fold of an n-wide best_effort,
// at_least or critical fan-in O(n²)). It is a cache of joinState's counts:
// rebuilt from the tasks' statuses whenever a dependency may have left an
// ended status (requeue, cancel), updated by one for each that ends.
type joinTally struct {
	valid bool
	deps  map[int]tallyDep // dependency index → how it counts
	// Dependencies (with multiplicity) ended, and of those not succeeded,
	// and of those critical ones.
	ended, lost, critLost int
}

type tallyDep struct {
	n    int  // times listed (validation refuses more than once)
	crit bool // among Join.Critical
}

// add counts dependency dep, which ended with status st.
func (tl *joinTally) add(dep tallyDep, st TaskStatus) {
	switch st {
	case TaskSucceeded:
		tl.ended += dep.n
	case TaskFailed, TaskSkipped, TaskCancelled:
		tl.ended += dep.n
		tl.lost += dep.n
		if dep.crit {
			tl.critLost += dep.n
		}
	}
}

// recount rebuilds t's tally from its dependencies' statuses.
func (r *Run) recount(t *Task) {
	tl := &t.tally
	if tl.deps == nil {
		j := t.Spec.Join
		crit := map[string]bool{}
		if j.Policy == events.JoinCritical {
			for _, c := range j.Critical {
				crit[c] = true
			}
		}
		tl.deps = make(map[int]tallyDep, len(t.Spec.Deps))
		for _, d := range t.Spec.Deps {
			i := r.index[d]
			td := tl.deps[i]
			td.n++
			td.crit = crit[d]
			tl.deps[i] = td
		}
	}
	tl.ended, tl.lost, tl.critLost = 0, 0, 0
	r.depScans += len(t.Spec.Deps)
	for i, td := range tl.deps {
		tl.add(td, r.Tasks[i].Status)
	}
	tl.valid = true
}

// tolerantState is joinState of a tolerant join from its tally (valid).
func (r *Run) tolerantState(t *Task) (ready, dead bool) {
	tl := &t.tally
	return r.tolerantDecision(t, tl.ended, tl.lost, tl.critLost > 0, nil, nil)
}

// invalidateTallies marks the tallies of t's successors stale: t may have
// left an ended status.
func (r *Run) invalidateTallies(t *Task) {
	for _, s := range t.succ {
		r.Tasks[s].tally.valid = false
	}
}

// settled queues pending task i after its dependency from ended (from is
// -1 when i itself changed: requeued, or added with dead dependencies):
// for Decide's skip queue if its policy can no longer be met, its ready
// queue if it can run.
func (r *Run) settled(i int, cause string, from int) {
	t := r.Tasks[i]
	if t.Status != TaskPending {
		return
	}
	if cause == "" && t.waiting > 0 && t.Spec.Join.Strict() {
		// A dependency succeeded: a strict join becomes ready only with
		// its last one (waiting 0), and a success never kills it (a
		// failure comes with a cause). Checking every dependency again
		// here made the fold of an n-wide fan-in O(n²).
		return
	}
	var ready, dead bool
	if t.Spec.Join.Strict() {
		ready, dead = r.joinState(t, nil, nil)
	} else {
		if tl := &t.tally; !tl.valid {
			r.recount(t) // counts from's new status too
		} else if td, ok := tl.deps[from]; ok {
			tl.add(td, r.Tasks[from].Status)
		}
		ready, dead = r.tolerantState(t)
	}
	switch {
	case dead:
		r.doom(i, cause)
	case ready:
		r.markReady(i)
	}
}

// doom queues pending task i for Decide's skip (cause), doomed since the
// event being applied.
func (r *Run) doom(i int, cause string) {
	r.Tasks[i].doomedMS = r.at
	r.skip.push(queueEntry{task: i, cause: cause})
}

// markReady queues pending task i for Decide's dispatch, ready since the
// event being applied.
func (r *Run) markReady(i int) {
	r.Tasks[i].readyMS = r.at
	r.ready.push(queueEntry{task: i})
}

// unabsorbed returns the first task (in the run's order) that failed for
// good without a successor absorbing the failure, or nil: the run fails
// iff there is one. A failure is absorbed when the task has successors
// and each of them joins it under a tolerant policy (best_effort,
// at_least, or critical without it among the critical ones) and
// succeeded. A strict successor (the default) never absorbs: it was
// skipped, and the run fails, as before join policies.
func (r *Run) unabsorbed() *Task {
	if r.fails == 0 {
		return nil
	}
	for _, t := range r.Tasks {
		if t.Status == TaskFailed && !r.absorbed(t) {
			return t
		}
	}
	return nil
}

// failure names the run's failure for run_failed: the first task to fail
// for good (r.FailedTask), unless a join absorbed its failure; then u, the
// first unabsorbed one.
func (r *Run) failure(u *Task) (task, cause string) {
	if ft := r.Task(r.FailedTask); ft != nil && ft.Status == TaskFailed && !r.absorbed(ft) {
		return r.FailedTask, r.Cause
	}
	return u.Spec.ID, u.Error
}

// Absorbed reports whether failed task t's failure was absorbed by its
// successors: each joins it tolerantly and succeeded (the run does not
// fail for it).
func (r *Run) Absorbed(t *Task) bool { return r.absorbed(t) }

// absorbed reports whether failed task t's failure was absorbed by its
// successors (see unabsorbed).
func (r *Run) absorbed(t *Task) bool {
	if len(t.succ) == 0 {
		return false
	}
	for _, s := range t.succ {
		st := r.Tasks[s]
		j := st.Spec.Join
		if j.Strict() || st.Status != TaskSucceeded || (j.Policy == events.JoinCritical && isCritical(j, t.Spec.ID)) {
			return false
		}
	}
	return true
}
