//go:build unix

package bench

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
)

// floorBatch is how many runs a floor lane moves through each step at once.
const floorBatch = 100

// floor measures the fastest an engine that keeps the invariants could run
// the independent, fanout and chain workloads on this machine: the Redis
// work such an engine cannot avoid (rdb.FloorScripts: one script per state
// change, the owner-checked queue ack, the queue and feed streams), driven
// by Submitters lanes that batch 100 runs per round trip and run no engine
// logic. Each mode is the same job as its workload with everything else
// taken away, so workload ÷ floor is how far the engine is from that
// bound, and floor ÷ the batched ceiling is how far any such engine could
// get.
func (h *harness) floor(ctx context.Context, run int) (_ []Result, err error) {
	s, err := h.startStack(ctx, h.namespace(Floor, run), stackOptions{noEngine: true})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.done(ctx)) }()
	if err := s.db.LoadFloorScripts(ctx); err != nil {
		return nil, err
	}
	if err := s.db.LoadScripts(ctx); err != nil {
		return nil, err
	}
	for l := range h.cfg.Submitters {
		if err := s.db.EnsureGroup(ctx, s.floorQueue(l), rdb.GroupWorkers); err != nil {
			return nil, err
		}
		if err := s.db.EnsureGroup(ctx, s.floorFeed(l), rdb.GroupProjectors); err != nil {
			return nil, err
		}
	}
	single, err := h.floorRuns(ctx, s, run, ModeSingle, "f", h.cfg.Sizes.FloorRuns, 1)
	if err != nil {
		return nil, err
	}
	fan, err := h.floorFanout(ctx, s, run)
	if err != nil {
		return nil, err
	}
	chain, err := h.floorRuns(ctx, s, run, ModeChain3, "c", h.cfg.Sizes.ChainRuns, 3)
	if err != nil {
		return nil, err
	}
	return []Result{single, fan, chain}, nil
}

// floorRuns takes n runs of a steps-long sequence through the floor
// scripts, Submitters lanes at a time.
func (h *harness) floorRuns(ctx context.Context, s *stack, run int, mode, prefix string, n, steps int) (Result, error) {
	lanes := h.cfg.Submitters
	a, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	var (
		done atomic.Int64
		wg   sync.WaitGroup
		errs = make([]error, lanes)
	)
	start := time.Now()
	for l := range lanes {
		share := n / lanes
		if l < n%lanes {
			share++
		}
		first := l*(n/lanes) + min(l, n%lanes)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < share && errs[l] == nil; i += floorBatch {
				runs := make([]string, 0, floorBatch)
				for j := i; j < min(i+floorBatch, share); j++ {
					runs = append(runs, prefix+strconv.Itoa(first+j))
				}
				errs[l] = s.floorBatch(ctx, l, runs, steps)
				if errs[l] == nil {
					done.Add(int64(len(runs)))
				}
			}
		}()
	}
	wg.Wait()
	wall := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return Result{}, err
	}
	if got := done.Load(); got != int64(n) {
		return Result{}, fmt.Errorf("floor: %d of %d runs finished", got, n)
	}
	b, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	runs := make([]string, n)
	for i := range runs {
		runs[i] = prefix + strconv.Itoa(i)
	}
	evs, err := s.countEvents(ctx, runs)
	if err != nil {
		return Result{}, err
	}
	if want := int64((3*steps + 2) * n); evs != want {
		return Result{}, fmt.Errorf("floor %s: %d events in the logs, want %d", mode, evs, want)
	}
	tasks := n * steps
	r := Result{Workload: Floor, Mode: mode, Run: run, Tasks: tasks, WorkflowRuns: n, Events: int(evs), Concurrency: lanes,
		WallMS: msOf(wall), TasksPerSec: perSec(tasks, wall), EventsPerTask: perTask(float64(evs), tasks)}
	if steps > 1 {
		r.RunsPerSec = perSec(n, wall)
	}
	cost(&r, a, b, tasks)
	return r, nil
}

func (s *stack) floorQueue(lane int) string { return s.db.K.Queue(0, "floor-"+strconv.Itoa(lane), 0) }
func (s *stack) floorFeed(lane int) string  { return s.db.K.FloorFeed(lane) }

// floorLane is lane l of the floor: its queue, feed, worker and projector.
func (s *stack) floorLane(l int) rdb.FloorLane {
	return rdb.FloorLane{Queue: s.floorQueue(l), Feed: s.floorFeed(l), Worker: "floor-w" + strconv.Itoa(l), Projector: floorProjector}
}

// floorProjector is the floor's projector (its consumer name and writer id).
const floorProjector = "floor-p"

// floorBatch takes runs from submit to run_succeeded, one round trip per
// step for all of them; it fails on any reply an engine would have to
// handle (a stale claim, a conflict), which a lone lane never gets.
func (s *stack) floorBatch(ctx context.Context, l int, runs []string, steps int) error {
	lane := s.floorLane(l)
	// Submit: run_submitted + task_dispatched, and the queue message.
	cursors, err := s.db.FloorSubmit(ctx, lane, runs, steps)
	if err != nil {
		return err
	}
	cursor := map[string]string{}
	for i, run := range runs {
		cursor[run] = cursors[i]
	}

	for step := range steps {
		// Worker: read the messages, claim, finish (+ feed pointer), ack.
		ids, claimed, err := s.db.FloorRead(ctx, rdb.GroupWorkers, lane.Worker, lane.Queue, len(runs))
		if err != nil {
			return err
		}
		epochs, err := s.db.FloorClaim(ctx, lane, claimed, step)
		if err != nil {
			return err
		}
		last := step == steps-1
		if err := s.db.FloorFinish(ctx, lane, claimed, step, epochs, last); err != nil {
			return err
		}
		if err := s.db.FloorAck(ctx, lane, ids); err != nil {
			return err
		}
		if last {
			break // the finish ended the runs
		}

		// Projector: read the feed, the logs after the cursors, commit the end.
		fids, projected, err := s.db.FloorRead(ctx, rdb.GroupProjectors, lane.Projector, lane.Feed, len(runs))
		if err != nil {
			return err
		}
		folded, err := s.db.FloorFold(ctx, projected, cursor)
		if err != nil {
			return err
		}
		for i, run := range projected {
			if folded[i] != 2 {
				return fmt.Errorf("floor fold %s: %d new events, want 2", run, folded[i])
			}
		}
		// The next step's dispatch and its queue message, or the run's end.
		next, err := s.db.FloorCommit(ctx, lane, projected, cursor, step, steps, fids)
		if err != nil {
			return err
		}
		for i, run := range projected {
			cursor[run] = next[i]
		}
	}
	return nil
}

// floorFanout is the floor of the fanout workload: one run of n parallel
// tasks (the reduce task left out), dispatched by one projector in batches
// of rdb.FloorDispatchBatch and run by Submitters lanes that claim and
// finish up to floorBatch tasks per script call (rdb.FloorClaimMany,
// FloorFinishMany); the projector folds the outcomes and commits
// run_succeeded once all n succeeded.
func (h *harness) floorFanout(ctx context.Context, s *stack, run int) (Result, error) {
	lanes, n := h.cfg.Submitters, h.cfg.Sizes.FanoutTasks
	id := "ffan"
	feed := s.db.K.FloorFeed(-1)
	if err := s.db.EnsureGroup(ctx, feed, rdb.GroupProjectors); err != nil {
		return Result{}, err
	}
	// The run as its submit left it (not measured).
	first, err := s.db.FloorFanoutStart(ctx, id, n)
	if err != nil {
		return Result{}, err
	}
	a, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var (
		wg   sync.WaitGroup
		mu   sync.Mutex
		errs []error
	)
	fail := func(err error) {
		mu.Lock()
		errs = append(errs, err)
		mu.Unlock()
		cancel()
	}
	start := time.Now()
	for l := range lanes {
		share := n / lanes
		if l < n%lanes {
			share++
		}
		lane := s.floorLane(l)
		lane.Feed = feed
		wg.Add(1)
		go func() { // worker lane
			defer wg.Done()
			for done := 0; done < share; {
				ids, tasks, err := s.db.FloorPoll(ctx, rdb.GroupWorkers, lane.Worker, lane.Queue, rdb.MsgTask, floorBatch, 100*time.Millisecond)
				if err != nil {
					fail(fmt.Errorf("floor fanout read: %w", err))
					return
				}
				if len(ids) == 0 {
					continue
				}
				epochs, err := s.db.FloorClaimMany(ctx, lane, id, tasks)
				if err != nil {
					fail(err)
					return
				}
				if err := s.db.FloorFinishMany(ctx, lane, id, tasks, epochs); err != nil {
					fail(err)
					return
				}
				if err := s.db.FloorAck(ctx, lane, ids); err != nil {
					fail(err)
					return
				}
				done += len(ids)
			}
		}()
	}
	// The projector: dispatch every task, FloorDispatchBatch per commit
	// with their queue messages, then fold the outcomes until all
	// succeeded.
	var end time.Time
	err = func() error {
		// Eight commits per round trip (the floor's dispatch has no
		// compare-and-set to wait for).
		for i := 0; i < n; i += 8 * rdb.FloorDispatchBatch {
			if err := s.db.FloorDispatch(ctx, id, floorProjector, i, min(i+8*rdb.FloorDispatchBatch, n), func(task int) string {
				return s.floorQueue(task % lanes)
			}); err != nil {
				return err
			}
		}
		proj := rdb.FloorLane{Feed: feed, Projector: floorProjector}
		cursor, succeeded := first, 0
		for succeeded < n {
			fids, _, err := s.db.FloorPoll(ctx, rdb.GroupProjectors, proj.Projector, proj.Feed, rdb.MsgRun, 1000, 100*time.Millisecond)
			if err != nil {
				return fmt.Errorf("floor fanout feed: %w", err)
			}
			if len(fids) == 0 {
				continue
			}
			last, got, err := s.db.FloorFanoutFold(ctx, id, cursor)
			if err != nil {
				return err
			}
			succeeded += got
			if cursor, err = s.db.FloorFanoutCommit(ctx, proj, id, cursor, last, succeeded == n, fids); err != nil {
				return err
			}
		}
		return nil
	}()
	end = time.Now()
	if err != nil {
		fail(err)
	}
	wg.Wait()
	if len(errs) > 0 {
		return Result{}, errors.Join(errs...)
	}
	b, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	evs, err := s.db.LogLen(ctx, id)
	if err != nil {
		return Result{}, err
	}
	if evs != int64(3*n+2) {
		return Result{}, fmt.Errorf("floor fanout: %d events in the log, want %d", evs, 3*n+2)
	}
	wall := end.Sub(start)
	r := Result{Workload: Floor, Mode: ModeFanout, Run: run, Tasks: n, WorkflowRuns: 1, Events: int(evs), Concurrency: lanes,
		WallMS: msOf(wall), TasksPerSec: perSec(n, wall), EventsPerTask: perTask(float64(evs), n)}
	cost(&r, a, b, n)
	return r, nil
}
