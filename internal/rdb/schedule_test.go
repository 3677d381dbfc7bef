package rdb_test

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
)

func TestScheduleStateCodec(t *testing.T) {
	t.Parallel()
	for _, st := range []rdb.ScheduleState{
		{ID: "01J", AnchorMS: 1717200000000},
		{ID: "01J", Paused: true, AnchorMS: 1, LastTickMS: 1717200060000, LastRun: "nightly-20240601T000100Z"},
	} {
		got, err := rdb.ParseScheduleState(st.String())
		if err != nil {
			t.Fatalf("ParseScheduleState(%q): %v", st.String(), err)
		}
		if diff := cmp.Diff(st, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	for _, bad := range []string{"", "x", "|0|1|2|r", "id|2|1|2|r", "id|0|x|2|r", "id|0|1|-2|r", "id|0|1|2"} {
		if _, err := rdb.ParseScheduleState(bad); err == nil {
			t.Errorf("ParseScheduleState(%q) accepted", bad)
		}
	}
}

func TestScheduleScripts(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	d := rdb.New(redistest.Client(t), redistest.Namespace(t))
	state := func(name string) rdb.ScheduleState {
		t.Helper()
		raw, err := d.ScheduleStates(ctx)
		if err != nil {
			t.Fatal(err)
		}
		st, err := rdb.ParseScheduleState(raw[name])
		if err != nil {
			t.Fatalf("state of %s: %v", name, err)
		}
		return st
	}
	first := rdb.ScheduleState{ID: "g1", AnchorMS: 1000}

	t.Run("an add writes the definition and its state; a second add of the name writes nothing", func(t *testing.T) {
		if out, err := d.AddSchedule(ctx, "s", `{"v":1}`, first, false); err != nil || out != rdb.ScheduleAdded {
			t.Fatalf("AddSchedule = %q, %v", out, err)
		}
		if out, err := d.AddSchedule(ctx, "s", `{"v":2}`, rdb.ScheduleState{ID: "g2"}, false); err != nil || out != rdb.ScheduleExists {
			t.Fatalf("second AddSchedule = %q, %v; want %q", out, err, rdb.ScheduleExists)
		}
		defs, err := d.ScheduleDefs(ctx, []string{"s", "nope"})
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(map[string]string{"s": `{"v":1}`}, defs); diff != "" {
			t.Errorf("definitions (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff(first, state("s")); diff != "" {
			t.Errorf("state (-want +got):\n%s", diff)
		}
	})
	t.Run("a fired tick is recorded forward only, and only for its generation", func(t *testing.T) {
		for _, c := range []struct {
			id   string
			tick int64
			want string
		}{
			{"g1", 60_000, "recorded"},
			{"g1", 60_000, "stale"}, // another scheduler recorded it
			{"g1", 30_000, "stale"}, // a slow scheduler's older tick
			{"g0", 120_000, "gone"}, // computed from a replaced definition
			{"g1", 120_000, "recorded"},
		} {
			out, err := d.RecordScheduleFired(ctx, "s", c.id, c.tick, "run-"+c.id)
			if err != nil || out != c.want {
				t.Errorf("RecordScheduleFired(%s, %d) = %q, %v; want %q", c.id, c.tick, out, err, c.want)
			}
		}
		if st := state("s"); st.LastTickMS != 120_000 || st.LastRun != "run-g1" || st.AnchorMS != 1000 {
			t.Errorf("state %+v, want the tick 120000 of run-g1 and the anchor kept", st)
		}
	})
	t.Run("pause keeps the anchor; resume moves it to now; a repeat changes nothing", func(t *testing.T) {
		for _, c := range []struct {
			paused     bool
			now        int64
			changed    bool
			wantAnchor int64
		}{
			{paused: true, now: 5000, changed: true, wantAnchor: 1000},
			{paused: true, now: 6000, changed: false, wantAnchor: 1000},
			{paused: false, now: 7000, changed: true, wantAnchor: 7000},
			{paused: false, now: 8000, changed: false, wantAnchor: 7000},
		} {
			ok, changed, err := d.SetSchedulePaused(ctx, "s", c.paused, c.now)
			if err != nil || !ok || changed != c.changed {
				t.Errorf("SetSchedulePaused(%v) = %v, %v, %v; want true, %v", c.paused, ok, changed, err, c.changed)
			}
			if st := state("s"); st.Paused != c.paused || st.AnchorMS != c.wantAnchor || st.LastTickMS != 120_000 {
				t.Errorf("after SetSchedulePaused(%v): %+v, want anchor %d and the last tick kept", c.paused, st, c.wantAnchor)
			}
		}
		if ok, _, err := d.SetSchedulePaused(ctx, "nope", true, 1); err != nil || ok {
			t.Errorf("pausing a missing schedule: %v, %v", ok, err)
		}
	})
	t.Run("a replace starts afresh; a remove deletes both records", func(t *testing.T) {
		if out, err := d.AddSchedule(ctx, "s", `{"v":3}`, rdb.ScheduleState{ID: "g3", AnchorMS: 9000}, true); err != nil || out != rdb.ScheduleReplaced {
			t.Fatalf("AddSchedule(replace) = %q, %v", out, err)
		}
		if diff := cmp.Diff(rdb.ScheduleState{ID: "g3", AnchorMS: 9000}, state("s")); diff != "" {
			t.Errorf("replaced state (-want +got):\n%s", diff)
		}
		if out, _ := d.RecordScheduleFired(ctx, "s", "g1", 999_000, "late"); out != "gone" {
			t.Errorf("a tick of the replaced generation: %q, want gone", out)
		}
		if ok, err := d.RemoveSchedule(ctx, "s"); err != nil || !ok {
			t.Fatalf("RemoveSchedule = %v, %v", ok, err)
		}
		if ok, err := d.RemoveSchedule(ctx, "s"); err != nil || ok {
			t.Errorf("second RemoveSchedule = %v, %v; want false", ok, err)
		}
		defs, states, err := d.AllSchedules(ctx)
		if err != nil || len(defs) != 0 || len(states) != 0 {
			t.Errorf("after remove: %v %v %v", defs, states, err)
		}
		if out, _ := d.RecordScheduleFired(ctx, "s", "g3", 999_000, "late"); out != "gone" {
			t.Errorf("a tick of a removed schedule: %q, want gone", out)
		}
		if _, states, _ := d.AllSchedules(ctx); len(states) != 0 {
			t.Errorf("a late tick recreated a removed schedule's state: %v", states)
		}
	})
	t.Run("a key of the wrong type refuses the add and writes nothing", func(t *testing.T) {
		if err := d.C.Set(ctx, d.K.ScheduleStates(), "x", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := d.AddSchedule(ctx, "w", `{}`, first, false); err == nil {
			t.Fatal("AddSchedule over a string key succeeded")
		}
		if n := d.C.HLen(ctx, d.K.Schedules()).Val(); n != 0 {
			t.Errorf("the definitions hash holds %d fields after a refused add", n)
		}
	})
}

func TestScheduleKeysShareASlot(t *testing.T) {
	t.Parallel()
	k := rdb.NewKeys("graflow")
	if got := []string{k.Schedules(), k.ScheduleStates()}; !cmp.Equal(got, []string{"graflow:{schedules}", "graflow:{schedules}:state"}) {
		t.Errorf("schedule keys %v", got)
	}
	if keySlot(k.Schedules()) != keySlot(k.ScheduleStates()) {
		t.Error("the add script writes both schedule hashes: they must share a slot")
	}
}
