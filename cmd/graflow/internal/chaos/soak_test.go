//go:build unix

package chaos

import (
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
)

func TestJudge(t *testing.T) {
	// A soak's samples every 10 s: base, load from 10 s to 120 s, end.
	samples := func(consumers func(i int) int64) []Sample {
		out := []Sample{{Phase: "base"}}
		for i := 1; i <= 12; i++ {
			out = append(out, Sample{At: time.Duration(i) * 10 * time.Second, Phase: "load",
				UsedMemory: 5 << 20, Keys: 300, QueueConsumers: consumers(i), FeedConsumers: 12})
		}
		return append(out, Sample{At: 140 * time.Second, Phase: "end", UsedMemory: 3 << 20, Keys: 20,
			QueueConsumers: consumers(12), FeedConsumers: 12})
	}
	byName := func(ts []Trend) map[string]Trend {
		m := map[string]Trend{}
		for _, tr := range ts {
			m[tr.Name] = tr
		}
		return m
	}

	flat := byName(judge(samples(func(int) int64 { return 4 }), 40*time.Second))
	for _, name := range []string{"used_memory", "keys", "consumers"} {
		if tr := flat[name]; !tr.Judged || !tr.Flat {
			t.Errorf("flat soak: %s", tr)
		}
	}

	// One queue consumer more per sample (a worker restart each, never
	// pruned): consumers grow, the rest stays flat.
	growing := byName(judge(samples(func(i int) int64 { return 4 + 2*int64(i) }), 40*time.Second))
	if tr := growing["consumers"]; !tr.Judged || tr.Flat {
		t.Errorf("growing consumers judged flat: %s", tr)
	}
	if tr := growing["keys"]; !tr.Flat {
		t.Errorf("keys: %s", tr)
	}

	// Too short: fewer than six load samples after the warm-up.
	short := byName(judge(samples(func(i int) int64 { return 4 + 2*int64(i) }), 100*time.Second))
	if tr := short["consumers"]; tr.Judged {
		t.Errorf("short soak judged: %s", tr)
	}
}

func TestTouches(t *testing.T) {
	at := func(ms int64) time.Time { return time.UnixMilli(ms) }
	ev := func(writer, seq string, prepared int64) events.Event {
		return events.Event{Worker: writer, Seq: seq, Time: at(prepared)}
	}
	evs := []events.Event{
		ev("projector-0-0", "1000-0", 999),
		ev("w1-0", "1001-0", 1001),
		ev("projector-0-0", "1002-0", 1002),
		ev("projector-1-0", "1003-0", 1003), // hand-off
		// projector-0-0 prepared this before its SIGSTOP at 1500 and
		// appended it after its SIGCONT at 5000: a late commit.
		ev("projector-0-0", "5001-0", 1400), // hand-off
		ev("projector-0-0", "5002-0", 5002),
	}
	isProjector := (&stack{}).isProjector
	got := touches(evs, isProjector, map[string][]span{"projector-0-0": {{from: at(1500), to: at(5000)}}})
	want := Touches{SharedRuns: 1, Handoffs: 2, LateCommits: 1}
	if got != want {
		t.Fatalf("touches = %+v, want %+v", got, want)
	}
	// A pause still going is not counted; one writer is not shared.
	got = touches(evs[:3], isProjector, map[string][]span{"projector-0-0": {{from: at(500)}}})
	if got != (Touches{}) {
		t.Fatalf("one projector, open pause: %+v", got)
	}
}
