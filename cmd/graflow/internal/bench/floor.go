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
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
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
	for name, sc := range rdb.FloorScripts() {
		if err := sc.Load(ctx, s.rc).Err(); err != nil {
			return nil, fmt.Errorf("load %s: %w", name, err)
		}
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

// floorRead reads exactly n new entries of stream for consumer
// (non-blocking: a lane's entries are all there) and returns their ids and
// the runs they name.
func (s *stack) floorRead(ctx context.Context, group, consumer, stream string, n int) (ids, runs []string, err error) {
	res, err := s.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: consumer,
		Streams: []string{stream, ">"}, Count: int64(n), Block: -1}).Result()
	if err != nil || len(res) != 1 || len(res[0].Messages) != n {
		return nil, nil, fmt.Errorf("floor read %s: %d streams, want %d entries, err %w", stream, len(res), n, err)
	}
	for _, m := range res[0].Messages {
		ids = append(ids, m.ID)
		runs = append(runs, m.Values[rdb.MsgRun].(string))
	}
	return ids, runs, nil
}

// floorAck acks queue messages through the owner-checked queue_ack script
// and fails unless every one was pending for worker.
func (s *stack) floorAck(ctx context.Context, queue, worker string, ids []string) error {
	acked, err := s.db.QueueAck(ctx, s.rc, queue, worker, ids...).Int64Slice()
	if err != nil {
		return fmt.Errorf("floor queue ack: %w", err)
	}
	for _, a := range acked {
		if a != 1 {
			return fmt.Errorf("floor queue ack: %v", acked)
		}
	}
	return nil
}

func (s *stack) floorQueue(lane int) string { return s.db.K.Queue(0, "floor-"+strconv.Itoa(lane), 0) }
func (s *stack) floorFeed(lane int) string  { return s.db.K.Feed(1000 + lane) }

// floorBatch takes runs from submit to run_succeeded, one round trip per
// step for all of them; it fails on any reply an engine would have to
// handle (a stale claim, a conflict), which a lone lane never gets.
func (s *stack) floorBatch(ctx context.Context, lane int, runs []string, steps int) error {
	sc := rdb.FloorScripts()
	queue, feed, worker := s.floorQueue(lane), s.floorFeed(lane), "floor-w"+strconv.Itoa(lane)
	now := func() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }
	keys := func(run string) []string { return []string{s.db.K.RunState(run), s.db.K.RunLog(run)} }
	spec := `{"workflow":"bench-floor","tasks":[{"id":"t0","handler":"noop"}`
	for k := 1; k < steps; k++ {
		spec += `,{"id":"t` + strconv.Itoa(k) + `","handler":"noop","deps":["t` + strconv.Itoa(k-1) + `"]}`
	}
	spec += "]}"
	const dispatchBody = `{"pool":"default","priority":0}`
	exec := func(step string, build func(p redis.Pipeliner) []*redis.Cmd) ([][]any, error) {
		p := s.rc.Pipeline()
		cmds := build(p)
		if _, err := p.Exec(ctx); err != nil {
			return nil, fmt.Errorf("floor %s: %w", step, err)
		}
		out := make([][]any, len(cmds))
		for i, c := range cmds {
			v, err := c.Slice()
			if err != nil {
				return nil, fmt.Errorf("floor %s: %w", step, err)
			}
			if len(v) == 0 || (v[0] != "ok" && v[0] != "created") {
				return nil, fmt.Errorf("floor %s: reply %v", step, v)
			}
			out[i] = v
		}
		return out, nil
	}

	// Submit: run_submitted + task_dispatched, and the queue message.
	subs, err := exec("submit", func(p redis.Pipeliner) []*redis.Cmd {
		cmds := make([]*redis.Cmd, len(runs))
		for i, run := range runs {
			args := []any{ulid.Make().String(), ulid.Make().String(), now(), spec, "bench-floor", "t0", `{"h":"noop"}`, "", dispatchBody}
			for k := 1; k < steps; k++ {
				args = append(args, "t"+strconv.Itoa(k), `{"h":"noop","d":["t`+strconv.Itoa(k-1)+`"]}`)
			}
			cmds[i] = sc["floor_submit"].EvalSha(ctx, p, keys(run), args...)
			p.XAdd(ctx, &redis.XAddArgs{Stream: queue, Values: []any{rdb.MsgRun, run, rdb.MsgTask, "t0", rdb.MsgAttempt, "1"}})
		}
		return cmds
	})
	if err != nil {
		return err
	}
	cursor := map[string]string{}
	for i, run := range runs {
		cursor[run] = subs[i][1].(string)
	}

	for step := range steps {
		task := "t" + strconv.Itoa(step)
		// Worker: read the messages, claim, finish (+ feed pointer), ack.
		ids, claimed, err := s.floorRead(ctx, rdb.GroupWorkers, worker, queue, len(runs))
		if err != nil {
			return err
		}
		claims, err := exec("claim", func(p redis.Pipeliner) []*redis.Cmd {
			cmds := make([]*redis.Cmd, len(claimed))
			for i, run := range claimed {
				cmds[i] = sc["floor_claim"].EvalSha(ctx, p, keys(run), task, "1", worker, ulid.Make().String(), now())
			}
			return cmds
		})
		if err != nil {
			return err
		}
		if _, err := exec("finish", func(p redis.Pipeliner) []*redis.Cmd {
			cmds := make([]*redis.Cmd, len(claimed))
			for i, run := range claimed {
				cmds[i] = sc["floor_finish"].EvalSha(ctx, p, keys(run), task, "1", claims[i][1], worker, ulid.Make().String(), now(), "null")
				p.XAdd(ctx, &redis.XAddArgs{Stream: feed, Values: []any{rdb.MsgRun, run}})
			}
			return cmds
		}); err != nil {
			return err
		}
		if err := s.floorAck(ctx, queue, worker, ids); err != nil {
			return err
		}

		// Projector: read the feed, the logs after the cursors, commit the end.
		fids, projected, err := s.floorRead(ctx, rdb.GroupProjectors, "floor-p", feed, len(runs))
		if err != nil {
			return err
		}
		p := s.rc.Pipeline()
		logs := make([]*redis.XMessageSliceCmd, len(projected))
		for i, run := range projected {
			logs[i] = p.XRange(ctx, s.db.K.RunLog(run), "("+cursor[run], "+")
		}
		if _, err := p.Exec(ctx); err != nil {
			return fmt.Errorf("floor read logs: %w", err)
		}
		for i, run := range projected {
			evs, err := rdb.DecodeLog(run, logs[i].Val())
			if err != nil || len(evs) != 2 {
				return fmt.Errorf("floor fold %s: %d new events, err %w", run, len(evs), err)
			}
		}
		// The next step's dispatch and its relay, or the run's end.
		commits, err := exec("commit", func(p redis.Pipeliner) []*redis.Cmd {
			cmds := make([]*redis.Cmd, len(projected))
			for i, run := range projected {
				if step == steps-1 {
					cmds[i] = sc["floor_cursor"].EvalSha(ctx, p, keys(run), cursor[run], cursor[run], "1", ulid.Make().String(), now(), "floor-p")
					continue
				}
				next := "t" + strconv.Itoa(step+1)
				cmds[i] = sc["floor_advance"].EvalSha(ctx, p, keys(run), cursor[run], ulid.Make().String(), now(), "floor-p", next, dispatchBody)
			}
			if step < steps-1 {
				for _, run := range projected {
					p.XAdd(ctx, &redis.XAddArgs{Stream: queue, Values: []any{rdb.MsgRun, run, rdb.MsgTask, "t" + strconv.Itoa(step+1), rdb.MsgAttempt, "1"}})
				}
			}
			p.XAck(ctx, feed, rdb.GroupProjectors, fids...)
			return cmds
		})
		if err != nil {
			return err
		}
		for i, run := range projected {
			cursor[run] = commits[i][1].(string)
		}
	}
	return nil
}

// floorFanout is the floor of the fanout workload: one run of n parallel
// tasks (the reduce task left out), dispatched by one projector in batches
// of 256 and run by Submitters lanes that claim and finish 100 tasks per
// script call (rdb.FloorScripts' *_many scripts); the projector folds the
// outcomes and commits run_succeeded once all n succeeded.
func (h *harness) floorFanout(ctx context.Context, s *stack, run int) (Result, error) {
	lanes, n := h.cfg.Submitters, h.cfg.Sizes.FanoutTasks
	sc := rdb.FloorScripts()
	id := "ffan"
	keys := []string{s.db.K.RunState(id), s.db.K.RunLog(id)}
	feed := s.db.K.Feed(2000)
	if err := s.db.EnsureGroup(ctx, feed, rdb.GroupProjectors); err != nil {
		return Result{}, err
	}
	// The run as its submit left it (not measured).
	first, err := s.rc.XAdd(ctx, &redis.XAddArgs{Stream: keys[1], Values: []any{"id", ulid.Make().String(), "t", "run_submitted",
		"v", "1", "k", "", "a", "0", "e", "0", "w", "", "ts", strconv.FormatInt(time.Now().UnixMilli(), 10), "b", "{}"}}).Result()
	if err != nil {
		return Result{}, err
	}
	fields := []any{"@status", "running", "@workflow", "bench-floor-fanout", "@input", "", "@cursor", first}
	for i := range n {
		fields = append(fields, "m|t"+strconv.Itoa(i), `{"h":"noop"}`)
	}
	for i := 0; i < len(fields); i += 2000 {
		if err := s.rc.HSet(ctx, keys[0], fields[i:min(i+2000, len(fields))]...).Err(); err != nil {
			return Result{}, err
		}
	}
	a, err := s.take(ctx)
	if err != nil {
		return Result{}, err
	}
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	now := func() string { return strconv.FormatInt(time.Now().UnixMilli(), 10) }
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
		wg.Add(1)
		go func() { // worker lane
			defer wg.Done()
			queue, worker := s.floorQueue(l), "floor-w"+strconv.Itoa(l)
			for done := 0; done < share; {
				res, err := s.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupWorkers, Consumer: worker,
					Streams: []string{queue, ">"}, Count: floorBatch, Block: 100 * time.Millisecond}).Result()
				if errors.Is(err, redis.Nil) {
					continue
				}
				if err != nil {
					fail(fmt.Errorf("floor fanout read: %w", err))
					return
				}
				var ids []string
				claim := []any{worker, now()}
				for _, m := range res[0].Messages {
					ids = append(ids, m.ID)
					claim = append(claim, m.Values[rdb.MsgTask], ulid.Make().String())
				}
				got, err := sc["floor_claim_many"].EvalSha(ctx, s.rc, keys, claim...).Slice()
				if err != nil {
					fail(fmt.Errorf("floor fanout claim: %w", err))
					return
				}
				if got[0] != "ok" {
					fail(fmt.Errorf("floor fanout claim: %v", got))
					return
				}
				finish := []any{worker, now(), "null"}
				for i := range ids {
					finish = append(finish, claim[2+2*i], got[2+2*i], ulid.Make().String())
				}
				p := s.rc.Pipeline()
				fin := sc["floor_finish_many"].EvalSha(ctx, p, keys, finish...)
				p.XAdd(ctx, &redis.XAddArgs{Stream: feed, Values: []any{rdb.MsgRun, id}})
				if _, err := p.Exec(ctx); err != nil {
					fail(fmt.Errorf("floor fanout finish: %w", err))
					return
				}
				if v, _ := fin.Slice(); len(v) == 0 || v[0] != "ok" {
					fail(fmt.Errorf("floor fanout finish: %v", v))
					return
				}
				if err := s.floorAck(ctx, queue, worker, ids); err != nil {
					fail(err)
					return
				}
				done += len(ids)
			}
		}()
	}
	// The projector: dispatch every task, 256 per commit with its relay,
	// then fold the outcomes until all succeeded.
	var end time.Time
	err = func() error {
		// Eight commits of 256 and their relays per round trip (the
		// floor's dispatch has no compare-and-set to wait for).
		for i := 0; i < n; i += 8 * 256 {
			p := s.rc.Pipeline()
			for c := i; c < min(i+8*256, n); c += 256 {
				args := []any{now(), "floor-p", `{"pool":"default","priority":0}`}
				for j := c; j < min(c+256, n); j++ {
					args = append(args, "t"+strconv.Itoa(j), ulid.Make().String())
				}
				sc["floor_dispatch"].EvalSha(ctx, p, keys, args...)
				for j := c; j < min(c+256, n); j++ {
					p.XAdd(ctx, &redis.XAddArgs{Stream: s.floorQueue(j % lanes),
						Values: []any{rdb.MsgRun, id, rdb.MsgTask, "t" + strconv.Itoa(j), rdb.MsgAttempt, "1"}})
				}
			}
			if _, err := p.Exec(ctx); err != nil {
				return fmt.Errorf("floor fanout dispatch: %w", err)
			}
		}
		cursor, succeeded := first, 0
		for succeeded < n {
			ptrs, err := s.rc.XReadGroup(ctx, &redis.XReadGroupArgs{Group: rdb.GroupProjectors, Consumer: "floor-p",
				Streams: []string{feed, ">"}, Count: 1000, Block: 100 * time.Millisecond}).Result()
			if errors.Is(err, redis.Nil) {
				continue
			}
			if err != nil {
				return fmt.Errorf("floor fanout feed: %w", err)
			}
			var fids []string
			for _, m := range ptrs[0].Messages {
				fids = append(fids, m.ID)
			}
			last := cursor
			for {
				msgs, err := s.rc.XRangeN(ctx, keys[1], "("+last, "+", 2048).Result()
				if err != nil {
					return fmt.Errorf("floor fanout log: %w", err)
				}
				evs, err := rdb.DecodeLog(id, msgs)
				if err != nil {
					return err
				}
				for _, e := range evs {
					if e.Type == "task_succeeded" {
						succeeded++
					}
				}
				if len(msgs) > 0 {
					last = msgs[len(msgs)-1].ID
				}
				if len(msgs) < 2048 {
					break
				}
			}
			p := s.rc.Pipeline()
			ended := "0"
			if succeeded == n {
				ended = "1"
			}
			c := sc["floor_cursor"].EvalSha(ctx, p, keys, cursor, last, ended, ulid.Make().String(), now(), "floor-p")
			p.XAck(ctx, feed, rdb.GroupProjectors, fids...)
			if _, err := p.Exec(ctx); err != nil {
				return fmt.Errorf("floor fanout commit: %w", err)
			}
			v, _ := c.Slice()
			if len(v) < 2 || v[0] != "ok" {
				return fmt.Errorf("floor fanout commit: %v", v)
			}
			cursor = v[1].(string)
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
	evs, err := s.rc.XLen(ctx, keys[1]).Result()
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
