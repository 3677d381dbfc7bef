package graflow_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/scheduler"
	"github.com/jonboulle/clockwork"
	"github.com/redis/go-redis/v9"
)

// cronStart is the fake clock's start: half a minute before the first
// tick of "* * * * *".
var cronStart = time.Date(2024, time.June, 1, 0, 0, 30, 0, time.UTC)

// cronBundle is a namespace whose schedulers run on one fake clock.
type cronBundle struct {
	t      *testing.T
	ctx    context.Context
	rc     *redis.Client
	ns     string
	clock  *clockwork.FakeClock
	client *graflow.Client
}

func cronSetup(t *testing.T) *cronBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	b := &cronBundle{t: t, ctx: ctx, rc: redistest.Client(t), ns: redistest.Namespace(t), clock: clockwork.NewFakeClockAt(cronStart)}
	b.client = b.newClient()
	return b
}

// newClient is another process's client: same namespace, same clock.
func (b *cronBundle) newClient() *graflow.Client {
	b.t.Helper()
	c, err := graflow.NewClient(graflow.Config{Redis: b.rc, Namespace: b.ns, Clock: b.clock})
	if err != nil {
		b.t.Fatal(err)
	}
	return c
}

func nightlySpec() events.RunSubmittedBody {
	return events.RunSubmittedBody{Workflow: "nightly", Tasks: []events.TaskSpec{{ID: "a", Handler: "noop"}}}
}

func (b *cronBundle) add(name, expr string) {
	b.t.Helper()
	if _, err := b.client.AddSchedule(b.ctx, graflow.Schedule{Name: name, Cron: expr, Spec: nightlySpec()}); err != nil {
		b.t.Fatal(err)
	}
}

// start runs n scheduler loops, each with its own client, and waits
// until each has made its first pass and sleeps. stop ends them and checks
// they returned nil.
func (b *cronBundle) start(n int, opts graflow.ScheduleRunOptions) (stop func()) {
	b.t.Helper()
	ctx, cancel := context.WithCancel(b.ctx)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		c := b.newClient()
		wg.Go(func() { errs <- c.RunSchedules(ctx, opts) })
	}
	b.settle(n)
	return func() {
		b.t.Helper()
		cancel()
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			b.t.Fatal("schedulers did not stop within 10s of their context's end")
		}
		close(errs)
		for err := range errs {
			if err != nil {
				b.t.Errorf("RunSchedules returned %v, want nil when its context ends", err)
			}
		}
	}
}

// settle waits until n scheduler loops sleep on the fake clock: each has
// finished its pass.
func (b *cronBundle) settle(n int) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	if err := b.clock.BlockUntilContext(ctx, n); err != nil {
		b.t.Fatalf("%d schedulers did not go back to sleep: %v", n, err)
	}
}

// tick moves the clock by d and waits until the n loops sleep again.
func (b *cronBundle) tick(n int, d time.Duration) {
	b.t.Helper()
	b.clock.Advance(d)
	b.settle(n)
}

// runs lists the namespace's runs, sorted, and checks each was submitted
// once: one run_submitted in its log.
func (b *cronBundle) runs() []string {
	b.t.Helper()
	ids, err := b.client.RunIDs(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	slices.Sort(ids)
	for _, id := range ids {
		evs, err := b.client.Log(b.ctx, id)
		if err != nil {
			b.t.Fatal(err)
		}
		n := 0
		for _, e := range evs {
			if e.Type == events.RunSubmitted {
				n++
			}
		}
		if n != 1 {
			b.t.Errorf("run %s has %d run_submitted events, want 1", id, n)
		}
	}
	return ids
}

// runIDs returns name's run ids of the ticks at the given minutes past
// midnight, 2024-06-01 UTC.
func runIDs(name string, minutes ...int) []string {
	out := make([]string, len(minutes))
	for i, m := range minutes {
		out[i] = fmt.Sprintf("%s-20240601T00%02d00Z", name, m)
	}
	return out
}

func (b *cronBundle) schedule(name string) graflow.ScheduleInfo {
	b.t.Helper()
	list, err := b.client.Schedules(b.ctx)
	if err != nil {
		b.t.Fatal(err)
	}
	for _, s := range list {
		if s.Name == name {
			return s
		}
	}
	b.t.Fatalf("schedule %s not listed: %+v", name, list)
	return graflow.ScheduleInfo{}
}

// Three schedulers run at once over ten ticks: each tick makes exactly one
// run, with the tick's run id, although every scheduler submits it.
func TestSchedulersFireEachTickOnce(t *testing.T) {
	t.Parallel()
	b := cronSetup(t)
	b.add("every-minute", "* * * * *")
	b.add("every-5", "*/5 * * * *")
	stop := b.start(3, graflow.ScheduleRunOptions{})
	for range 10 {
		b.tick(3, time.Minute)
	}
	stop()
	want := append(runIDs("every-5", 5, 10), runIDs("every-minute", 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)...)
	if diff := cmp.Diff(want, b.runs()); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
	s := b.schedule("every-minute")
	if s.LastRun != "every-minute-20240601T001000Z" || s.Overdue || !s.Next.Equal(cronStart.Add(10*time.Minute+30*time.Second)) {
		t.Errorf("listed as %+v, want last run at 00:10 and next tick 00:11", s)
	}
}

// A schedule, a cron expression, a time zone, an input or a workflow that
// is invalid is refused with an error saying why, and nothing is written.
func TestAnInvalidScheduleWritesNothing(t *testing.T) {
	t.Parallel()
	b := cronSetup(t)
	cycle := events.RunSubmittedBody{Workflow: "w", Tasks: []events.TaskSpec{
		{ID: "a", Handler: "noop", Deps: []string{"b"}}, {ID: "b", Handler: "noop", Deps: []string{"a"}},
	}}
	for _, c := range []struct {
		why  string
		s    graflow.Schedule
		want error
	}{
		{"a cron expression with 4 fields", graflow.Schedule{Name: "x", Cron: "* * * *", Spec: nightlySpec()}, scheduler.ErrInvalidSchedule},
		{"a minute out of range", graflow.Schedule{Name: "x", Cron: "60 * * * *", Spec: nightlySpec()}, scheduler.ErrInvalidSchedule},
		{"an unknown descriptor", graflow.Schedule{Name: "x", Cron: "@sometimes", Spec: nightlySpec()}, scheduler.ErrInvalidSchedule},
		{"an unknown time zone", graflow.Schedule{Name: "x", Cron: "@daily", Timezone: "Europe/Atlantis", Spec: nightlySpec()}, scheduler.ErrInvalidSchedule},
		{"a name with a space", graflow.Schedule{Name: "x y", Cron: "@daily", Spec: nightlySpec()}, scheduler.ErrInvalidSchedule},
		{"an input that is not JSON", graflow.Schedule{Name: "x", Cron: "@daily", Spec: nightlySpec(), Input: json.RawMessage("{nope")}, scheduler.ErrInvalidSchedule},
		{"a workflow with a cycle", graflow.Schedule{Name: "x", Cron: "@daily", Spec: cycle}, scheduler.ErrCycle},
		{"a workflow with no tasks", graflow.Schedule{Name: "x", Cron: "@daily", Spec: events.RunSubmittedBody{Workflow: "w"}}, scheduler.ErrEmptyWorkflow},
	} {
		if _, err := b.client.AddSchedule(b.ctx, c.s); !errors.Is(err, c.want) {
			t.Errorf("%s: AddSchedule = %v, want %v", c.why, err, c.want)
		}
	}
	k := rdb.NewKeys(b.ns)
	if n := b.rc.Exists(b.ctx, k.Schedules(), k.ScheduleStates()).Val(); n != 0 {
		t.Errorf("%d schedule keys written by refused adds", n)
	}
	b.add("x", "@daily")
	if _, err := b.client.AddSchedule(b.ctx, graflow.Schedule{Name: "x", Cron: "@hourly", Spec: nightlySpec()}); !errors.Is(err, graflow.ErrScheduleExists) {
		t.Errorf("a second add of x: %v, want ErrScheduleExists", err)
	}
	if s := b.schedule("x"); s.Cron != "@daily" {
		t.Errorf("the refused add changed x: %+v", s)
	}
}

// Pause stops the ticks, resume starts them again from the next one (the
// ticks missed while paused never fire), remove stops them for good.
func TestPauseResumeRemove(t *testing.T) {
	t.Parallel()
	b := cronSetup(t)
	b.add("s", "* * * * *")
	stop := b.start(1, graflow.ScheduleRunOptions{})
	defer stop()
	b.tick(1, time.Minute) // 00:01:30: 00:01 fires
	for range 2 {          // pausing twice is harmless
		if err := b.client.PauseSchedule(b.ctx, "s"); err != nil {
			t.Fatal(err)
		}
	}
	if s := b.schedule("s"); !s.Paused || !s.Next.IsZero() {
		t.Errorf("paused schedule listed as %+v", s)
	}
	b.tick(1, time.Minute) // 00:02:30
	b.tick(1, time.Minute) // 00:03:30
	if err := b.client.ResumeSchedule(b.ctx, "s"); err != nil {
		t.Fatal(err)
	}
	b.tick(1, time.Minute) // 00:04:30: 00:04 is the first tick after the resume
	b.tick(1, time.Minute) // 00:05:30: 00:05
	if err := b.client.RemoveSchedule(b.ctx, "s"); err != nil {
		t.Fatal(err)
	}
	b.tick(1, time.Minute) // 00:06:30: nothing
	if diff := cmp.Diff(runIDs("s", 1, 4, 5), b.runs()); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
	for what, err := range map[string]error{
		"pause":  b.client.PauseSchedule(b.ctx, "s"),
		"resume": b.client.ResumeSchedule(b.ctx, "s"),
		"remove": b.client.RemoveSchedule(b.ctx, "s"),
	} {
		if !errors.Is(err, graflow.ErrScheduleNotFound) {
			t.Errorf("%s of a removed schedule: %v, want ErrScheduleNotFound", what, err)
		}
	}
}

// After every scheduler was down for ten ticks, the missed ticks fire
// once: only the latest by default, all of them with CatchUpAll, however
// many schedulers start.
func TestCatchUpAfterDowntime(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		policy scheduler.CatchUp
		want   []int
	}{
		{"", []int{1, 11}},
		{scheduler.CatchUpAll, []int{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11}},
	} {
		t.Run(fmt.Sprintf("catch-up %q", c.policy), func(t *testing.T) {
			t.Parallel()
			b := cronSetup(t)
			b.add("s", "* * * * *")
			stop := b.start(1, graflow.ScheduleRunOptions{})
			b.tick(1, time.Minute) // 00:01:30: 00:01 fires
			stop()
			b.clock.Advance(10 * time.Minute) // 00:11:30: down for 00:02 .. 00:11
			if s := b.schedule("s"); !s.Overdue || !s.Next.Equal(cronStart.Add(10*time.Minute+30*time.Second)) {
				t.Errorf("during the downtime: listed as %+v, want overdue at 00:11", s)
			}
			stop = b.start(3, graflow.ScheduleRunOptions{CatchUp: c.policy}) // their first pass catches up
			stop()
			if diff := cmp.Diff(runIDs("s", c.want...), b.runs()); diff != "" {
				t.Errorf("runs (-want +got):\n%s", diff)
			}
		})
	}
}

// A tick whose run id is taken by a run of another workflow cannot make
// its run: it is skipped (and logged), not tried forever, and the next
// tick fires.
func TestATickThatCannotRunIsSkipped(t *testing.T) {
	t.Parallel()
	b := cronSetup(t)
	b.add("s", "* * * * *")
	other := events.RunSubmittedBody{Workflow: "other", Tasks: []events.TaskSpec{{ID: "a", Handler: "noop"}}}
	if _, err := b.client.SubmitSpec(b.ctx, other, graflow.WithRunID("s-20240601T000100Z")); err != nil {
		t.Fatal(err)
	}
	stop := b.start(1, graflow.ScheduleRunOptions{})
	defer stop()
	b.tick(1, time.Minute) // 00:01: skipped
	if s := b.schedule("s"); s.LastRun != "" || !s.LastTick.Equal(cronStart.Add(30*time.Second)) {
		t.Errorf("after the skipped tick: %+v, want last tick 00:01 with no run", s)
	}
	b.tick(1, time.Minute) // 00:02 fires
	if diff := cmp.Diff(runIDs("s", 1, 2), b.runs()); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
}

// A definition that does not decode (written by hand, or by a newer
// release) is listed with its error and skipped; the other schedules fire.
func TestAnUnreadableScheduleIsSkipped(t *testing.T) {
	t.Parallel()
	b := cronSetup(t)
	b.add("s", "* * * * *")
	k := rdb.NewKeys(b.ns)
	st := rdb.ScheduleState{ID: "g", AnchorMS: cronStart.UnixMilli()}
	if err := b.rc.HSet(b.ctx, k.Schedules(), "bad", "{nope").Err(); err != nil {
		t.Fatal(err)
	}
	if err := b.rc.HSet(b.ctx, k.ScheduleStates(), "bad", st.String()).Err(); err != nil {
		t.Fatal(err)
	}
	stop := b.start(1, graflow.ScheduleRunOptions{})
	b.tick(1, time.Minute)
	stop()
	if diff := cmp.Diff(runIDs("s", 1), b.runs()); diff != "" {
		t.Errorf("runs (-want +got):\n%s", diff)
	}
	if s := b.schedule("bad"); s.Error == "" {
		t.Errorf("the unreadable schedule is listed as %+v, want its error", s)
	}
}
