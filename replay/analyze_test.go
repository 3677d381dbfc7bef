package replay_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/replay"
)

// hist builds a synthetic history, the way the engine would write it.
type hist struct{ evs []events.Event }

func (h *hist) add(e events.Event) *hist {
	n := len(h.evs) + 1
	e.Run, e.Version = "r", events.CurrentVersion
	e.ID, e.Seq = fmt.Sprintf("E%05d", n), fmt.Sprintf("1000-%d", n)
	e.Time = time.UnixMilli(1_700_000_000_000 + int64(n)*10).UTC()
	h.evs = append(h.evs, e)
	return h
}

func (h *hist) submit(specs ...events.TaskSpec) *hist {
	return h.add(events.Event{Type: events.RunSubmitted}.WithBody(events.RunSubmittedBody{Workflow: "w", Tasks: specs}))
}

func (h *hist) dispatch(task string, attempt int) *hist {
	return h.add(events.Event{Type: events.TaskDispatched, Task: task, Attempt: attempt, Worker: "p"}.
		WithBody(events.TaskDispatchedBody{Pool: "default"}))
}

func (h *hist) claim(task string, attempt int, epoch int64, w string) *hist {
	return h.add(events.Event{Type: events.TaskClaimed, Task: task, Attempt: attempt, Epoch: epoch, Worker: w})
}

func (h *hist) reclaim(task string, attempt int, epoch int64, by, from string) *hist {
	return h.add(events.Event{Type: events.TaskReclaimed, Task: task, Attempt: attempt, Epoch: epoch, Worker: by}.
		WithBody(events.TaskReclaimedBody{From: from, Deliveries: 2}))
}

func (h *hist) succeed(task string, attempt int, epoch int64, w string) *hist {
	return h.add(events.Event{Type: events.TaskSucceeded, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskSucceededBody{Result: []byte(`1`)}))
}

func (h *hist) fail(task string, attempt int, epoch int64, w string, final bool) *hist {
	return h.add(events.Event{Type: events.TaskFailed, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.TaskFailedBody{Error: "boom", Kind: events.FailureError, Final: final}))
}

func (h *hist) reject(task string, attempt int, epoch int64, w string, current int64) *hist {
	return h.add(events.Event{Type: events.ResultRejected, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.ResultRejectedBody{What: "result", Reason: "claim lost", CurrentEpoch: current}))
}

func (h *hist) write(task string, attempt int, epoch int64, w, key, value string) *hist {
	return h.add(events.Event{Type: events.ChannelWritten, Task: task, Attempt: attempt, Epoch: epoch, Worker: w}.
		WithBody(events.ChannelWrittenBody{Key: key, Op: "set", Value: []byte(value)}))
}

func (h *hist) retry(task string, attempt int) *hist {
	return h.add(events.Event{Type: events.TaskRetryScheduled, Task: task, Attempt: attempt, Worker: "p"}.
		WithBody(events.TaskRetryScheduledBody{DelayMS: 5, DueMS: 1_700_000_000_000 + int64(len(h.evs)+1)*10 + 5}))
}

func (h *hist) skip(task, cause string) *hist {
	return h.add(events.Event{Type: events.TaskSkipped, Task: task, Worker: "p"}.WithBody(events.TaskSkippedBody{Cause: cause}))
}

func (h *hist) requeue(task string, attempt int, epoch int64, by, cause string) *hist {
	return h.add(events.Event{Type: events.TaskRequeued, Task: task, Attempt: attempt, Epoch: epoch, Worker: by}.
		WithBody(events.TaskRequeuedBody{Cause: cause}))
}

func (h *hist) end(typ events.Type) *hist {
	e := events.Event{Type: typ, Worker: "p"}
	if typ == events.RunFailed {
		e = e.WithBody(events.RunFailedBody{Task: "b", Cause: "boom"})
	}
	return h.add(e)
}

func seqSpecs() []events.TaskSpec {
	return []events.TaskSpec{
		{ID: "a", Handler: "echo"},
		{ID: "b", Handler: "echo", Deps: []string{"a"}, MaxAttempts: 2},
		{ID: "c", Handler: "sum", Deps: []string{"a", "b"}},
	}
}

func TestAnalyze(t *testing.T) {
	t.Parallel()
	valid := func() *hist {
		return new(hist).submit(seqSpecs()...).
			dispatch("a", 1).claim("a", 1, 1, "wa").succeed("a", 1, 1, "wa").
			dispatch("b", 1).claim("b", 1, 1, "wa").fail("b", 1, 1, "wa", false).
			retry("b", 2).claim("b", 2, 2, "wb").reclaim("b", 2, 3, "wc", "wb").claim("b", 2, 4, "wc").
			reject("b", 2, 2, "wb", 4).succeed("b", 2, 4, "wc").
			dispatch("c", 1).claim("c", 1, 1, "wa").succeed("c", 1, 1, "wa").
			end(events.RunSucceeded)
	}

	t.Run("a sound history has no problems and a full timeline", func(t *testing.T) {
		t.Parallel()
		a, err := replay.Analyze("r", valid().evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) != 0 {
			t.Fatalf("problems: %v", a.Problems)
		}
		tl := a.Timeline
		if tl.Status != "succeeded" || tl.Retries != 1 || tl.Reclaims != 1 || tl.Rejected != 1 || *tl.DurationMS != 160 {
			t.Fatalf("timeline = %+v", tl)
		}
		b, c := tl.Tasks[1], tl.Tasks[2]
		if len(b.Attempts) != 2 || b.Attempts[1].Worker != "wc" || b.Attempts[1].Epoch != 4 || len(b.Attempts[1].Claims) != 2 ||
			b.Attempts[1].Reclaims[0].From != "wb" || b.Attempts[0].Outcome != "failed" || b.Attempts[0].Error != "boom" {
			t.Fatalf("b = %+v", b)
		}
		if c.Ready == nil || c.Ready.By != "b" || c.Ready.EventID != "E00013" {
			t.Fatalf("c became ready because %+v, want b's success E00013", c.Ready)
		}
		if w := tl.Workers; w["wa"] != 3 || w["wb"] != 1 || w["wc"] != 1 {
			t.Fatalf("workers = %v", w)
		}
	})

	t.Run("channel writes by the claim holder are sound and counted per attempt", func(t *testing.T) {
		t.Parallel()
		h := new(hist).submit(seqSpecs()...).
			dispatch("a", 1).claim("a", 1, 1, "wa").write("a", 1, 1, "wa", "k", "1").write("a", 1, 1, "wa", "k", "2").
			succeed("a", 1, 1, "wa")
		a, err := replay.Analyze("r", h.evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) != 0 {
			t.Fatalf("problems: %v", a.Problems)
		}
		if at := a.Timeline.Tasks[0].Attempts[0]; at.ChannelWrites != 2 || at.Outcome != "succeeded" {
			t.Fatalf("a's attempt = %+v", at)
		}
	})

	t.Run("a dead-letter requeue reopens the run without problems", func(t *testing.T) {
		t.Parallel()
		h := new(hist).submit(seqSpecs()...).
			dispatch("a", 1).claim("a", 1, 1, "wa").fail("a", 1, 1, "wa", true).
			skip("b", "dependency a failed").skip("c", "dependency a failed").end(events.RunFailed).
			requeue("a", 1, 1, "operator", "dlq requeue").requeue("b", 0, 0, "p", "dependency a requeued").
			requeue("c", 0, 0, "p", "dependency a requeued").
			dispatch("a", 2).claim("a", 2, 2, "wb").succeed("a", 2, 2, "wb").
			dispatch("b", 1).claim("b", 1, 1, "wb").succeed("b", 1, 1, "wb").
			dispatch("c", 1).claim("c", 1, 1, "wb").succeed("c", 1, 1, "wb").
			end(events.RunSucceeded)
		a, err := replay.Analyze("r", h.evs)
		if err != nil {
			t.Fatal(err)
		}
		if len(a.Problems) != 0 {
			t.Fatalf("problems: %v", a.Problems)
		}
		tl := a.Timeline
		ta := tl.Tasks[0]
		if tl.Status != "succeeded" || tl.Requeues != 3 || len(ta.Requeues) != 1 || ta.Requeues[0].From != "failed" ||
			len(ta.Attempts) != 2 || ta.Attempts[1].Kind != "requeue" || tl.EndedAt != h.evs[len(h.evs)-1].Time {
			t.Fatalf("timeline = %+v", tl)
		}
		if tl.Tasks[1].SkipCause != "" || tl.Tasks[1].Ready.By != "a" {
			t.Fatalf("b = %+v", tl.Tasks[1])
		}
	})

	t.Run("the same events twice fold to the same state", func(t *testing.T) {
		t.Parallel()
		evs := valid().evs
		a1, _ := replay.Analyze("r", evs)
		a2, err := replay.Analyze("r", append(append([]events.Event{}, evs...), evs...))
		if err != nil {
			t.Fatal(err)
		}
		if a1.Run.Events != a2.Run.Events || projector.RecordOf(a1.Run.Task("b")) != projector.RecordOf(a2.Run.Task("b")) {
			t.Fatal("duplicate events changed the fold")
		}
		// ...but the log itself is reported out of order.
		if len(a2.Problems) != 1 || a2.Problems[0].Check != replay.CheckLog || !strings.Contains(a2.Problems[0].Detail, "17 such events") {
			t.Fatalf("problems = %v", a2.Problems)
		}
	})

	for _, tc := range []struct {
		name string
		h    func() *hist
		task string
		want string // in Detail
		miss string // in Missing
	}{
		{
			name: "a dispatch before its dependency succeeded is not justified",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					dispatch("b", 1).succeed("a", 1, 1, "wa")
			},
			task: "b", want: "dependency a has no accepted task_succeeded", miss: "task_succeeded task=a attempt=1 epoch=1 worker=wa",
		},
		{
			name: "a result from a stale epoch is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					reclaim("a", 1, 2, "wb", "wa").claim("a", 1, 3, "wb").succeed("a", 1, 1, "wa")
			},
			task: "a", want: "but the claim is held by wb (attempt 1, epoch 3): a stale report was accepted",
		},
		{
			name: "a channel write from a stale epoch is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").write("a", 1, 1, "wa", "k", "1").
					reclaim("a", 1, 2, "wb", "wa").claim("a", 1, 3, "wb").write("a", 1, 1, "wa", "k", "2")
			},
			task: "a", want: "channel_written of a from wa (attempt 1, epoch 1) but the claim is held by wb",
		},
		{
			name: "a channel write of a finished task is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").succeed("a", 1, 1, "wa").
					write("a", 1, 1, "wa", "k", "1")
			},
			task: "a", want: "channel_written of a from wa (attempt 1, epoch 1) while the task is succeeded",
		},
		{
			name: "a channel write by no task of the run is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).write("zz", 1, 1, "wa", "k", "1")
			},
			task: "zz", want: `channel_written by "zz", which is no task of the run`,
		},
		{
			name: "a second accepted result is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").
					succeed("a", 1, 1, "wa").succeed("a", 1, 1, "wa")
			},
			task: "a", want: "second task_succeeded of a",
		},
		{
			name: "an epoch that does not increase is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 2, "wa").
					reclaim("a", 1, 2, "wb", "wa")
			},
			task: "a", want: "epoch 2 of a does not increase",
		},
		{
			name: "a claim over a live claim without reclaim is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").claim("a", 1, 2, "wb")
			},
			task: "a", want: "while wa holds it at epoch 1 without a task_reclaimed",
		},
		{
			name: "run_succeeded before every task succeeded is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").end(events.RunSucceeded)
			},
			task: "a", want: "run_succeeded while task a is running", miss: "task_succeeded task=a attempt=1 epoch=1 worker=wa",
		},
		{
			name: "a retry beyond max attempts is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").fail("a", 1, 1, "wa", false).retry("a", 2)
			},
			task: "a", want: "not awaiting a retry",
		},
		{
			name: "a skip without a failed dependency is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).skip("b", "made up")
			},
			task: "b", want: "none of its dependencies failed",
		},
		{
			name: "a dispatch behind a failed dependency is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").fail("a", 1, 1, "wa", true).
					dispatch("c", 1).skip("b", "dependency a failed").end(events.RunCancelled)
			},
			task: "c", want: "task_dispatched of c is not justified",
		},
		{
			name: "a requeue of a task that did not fail is caught",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).claim("a", 1, 1, "wa").requeue("a", 1, 1, "op", "x")
			},
			task: "a", want: "task_requeued of a while it is running",
		},
		{
			name: "a lost task in a cancelled run is reported",
			h: func() *hist {
				return new(hist).submit(seqSpecs()...).dispatch("a", 1).end(events.RunCancelled)
			},
			task: "a", want: "task a is dispatched but the run cancelled: a task was lost",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			a, err := replay.Analyze("r", tc.h().evs)
			if err != nil {
				t.Fatal(err)
			}
			for _, p := range a.Problems {
				if p.Task == tc.task && strings.Contains(p.Detail, tc.want) && strings.Contains(p.Missing, tc.miss) {
					return
				}
			}
			t.Fatalf("no problem for task %s with %q (missing %q); got:\n%v", tc.task, tc.want, tc.miss, a.Problems)
		})
	}

	t.Run("an event of an unknown task is an error", func(t *testing.T) {
		t.Parallel()
		_, err := replay.Analyze("r", new(hist).submit(seqSpecs()...).dispatch("zz", 1).evs)
		if !errors.Is(err, projector.ErrInvalidEvent) {
			t.Fatalf("err = %v", err)
		}
	})
}
