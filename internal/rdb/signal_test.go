package rdb_test

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

func signalBody(name, id, payload string) events.SignalReceivedBody {
	return events.SignalReceivedBody{Name: name, ID: id, By: "alice", Payload: json.RawMessage(payload)}
}

func (b scriptBundle) signal(t *testing.T, body events.SignalReceivedBody) (rdb.SignalResult, error) {
	t.Helper()
	return b.db.Signal(b.ctx, b.run, "client-1", 5000, events.NewID(time.UnixMilli(5000)), body)
}

func (b scriptBundle) signals(t *testing.T) []events.SignalReceivedBody {
	t.Helper()
	var out []events.SignalReceivedBody
	for _, e := range b.log(t) {
		if e.Type == events.SignalReceived {
			var s events.SignalReceivedBody
			if err := e.DecodeBody(&s); err != nil {
				t.Fatal(err)
			}
			out = append(out, s)
		}
	}
	return out
}

func TestSignalScript(t *testing.T) {
	t.Parallel()

	t.Run("a running run records one signal per name; a retry with the same id writes nothing", func(t *testing.T) {
		t.Parallel()
		b := setupRun(t)
		res, err := b.signal(t, signalBody("approve", "req-1", `{"ok":true}`))
		if err != nil || res.Outcome != rdb.SignalRecorded || res.Seq != b.last(t) {
			t.Fatalf("first signal = %+v, %v; want recorded at the log's end %s", res, err, b.last(t))
		}
		evs := b.log(t)
		e := evs[len(evs)-1]
		want := events.Event{ID: e.ID, Seq: res.Seq, Run: b.run, Type: events.SignalReceived, Version: events.CurrentVersion, Worker: "client-1",
			Time: time.UnixMilli(5000)}.WithBody(signalBody("approve", "req-1", `{"ok":true}`))
		if diff := cmp.Diff(want, e); diff != "" {
			t.Errorf("signal_received (-want +got):\n%s", diff)
		}
		if got := b.hash(t, b.db.K.RunState(b.run))["@signal:approve"]; got != "req-1" {
			t.Errorf("@signal:approve = %q, want the signal's id", got)
		}

		if res, err := b.signal(t, signalBody("approve", "req-1", `{"ok":true}`)); err != nil || res.Outcome != rdb.SignalDuplicate {
			t.Errorf("the same id again = %+v, %v; want duplicate", res, err)
		}
		if res, err := b.signal(t, signalBody("approve", "req-2", `{"ok":false}`)); err != nil || res.Outcome != rdb.SignalExists || res.ID != "req-1" {
			t.Errorf("another id = %+v, %v; want exists naming req-1", res, err)
		}
		if res, err := b.signal(t, signalBody("reject", "req-3", `null`)); err != nil || res.Outcome != rdb.SignalRecorded {
			t.Errorf("another name = %+v, %v; want recorded", res, err)
		}
		if got := b.signals(t); len(got) != 2 || got[0].ID != "req-1" || got[1].Name != "reject" {
			t.Errorf("signals in the log: %+v, want approve (req-1) and reject once each", got)
		}
	})

	t.Run("a finished or unknown run is refused and nothing is written", func(t *testing.T) {
		t.Parallel()
		b := setupRun(t)
		if _, err := b.signal(t, signalBody("approve", "early", `1`)); err != nil {
			t.Fatal(err)
		}
		if err := b.c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunStatus, "succeeded").Err(); err != nil {
			t.Fatal(err)
		}
		n := len(b.log(t))
		if res, err := b.signal(t, signalBody("late", "x", `1`)); err != nil || res.Outcome != rdb.SignalFinished || res.Status != "succeeded" {
			t.Errorf("signal to a succeeded run = %+v, %v; want finished (succeeded)", res, err)
		}
		// A retried delivery of a signal recorded before the run ended is
		// still a duplicate, not an error: its first try did the job.
		if res, err := b.signal(t, signalBody("approve", "early", `1`)); err != nil || res.Outcome != rdb.SignalDuplicate {
			t.Errorf("retry of a signal recorded before the end = %+v, %v; want duplicate", res, err)
		}
		if got := len(b.log(t)); got != n {
			t.Errorf("the log grew from %d to %d entries", n, got)
		}
		if _, err := b.db.Signal(b.ctx, "no-such-run", "c", 1, ulid.Make().String(), signalBody("a", "b", `1`)); !errors.Is(err, rdb.ErrRunMissing) {
			t.Errorf("signal to an unknown run = %v, want ErrRunMissing", err)
		}
		if n, _ := b.c.Exists(b.ctx, b.db.K.RunState("no-such-run"), b.db.K.RunLog("no-such-run")).Result(); n != 0 {
			t.Errorf("a signal to an unknown run created %d keys", n)
		}
	})

	t.Run("a bad name, id or payload is refused before and inside the script", func(t *testing.T) {
		t.Parallel()
		b := setupRun(t)
		for name, body := range map[string]events.SignalReceivedBody{
			"a name starting with @": signalBody("@status", "i", `1`),
			"a name with a space":    signalBody("a b", "i", `1`),
			"an empty name":          signalBody("", "i", `1`),
			"a name of 201 bytes":    signalBody(strings.Repeat("n", 201), "i", `1`),
			"an empty id":            signalBody("ok", "", `1`),
			"a payload not JSON":     signalBody("ok", "i", `{`),
			"an empty payload":       signalBody("ok", "i", ``),
			"a payload over 1 MiB":   signalBody("ok", "i", `"`+strings.Repeat("x", rdb.MaxSignalBytes)+`"`),
		} {
			if _, err := b.signal(t, body); !errors.Is(err, rdb.ErrInvalidSignal) {
				t.Errorf("%s: %v, want ErrInvalidSignal", name, err)
			}
		}
		// The script's own checks, for a caller that skipped CheckSignal.
		script := rdb.Scripts()["signal"]
		keys := []string{b.db.K.RunState(b.run), b.db.K.RunLog(b.run)}
		for _, name := range []string{"@status", "a b", "", strings.Repeat("n", 201)} {
			if err := script.Run(b.ctx, b.c, keys, name, "i", ulid.Make().String(), "c", 1, `{}`, 100).Err(); err == nil || !strings.Contains(err.Error(), "invalid signal name") {
				t.Errorf("script with name %q: %v, want an invalid name error", name, err)
			}
		}
		if err := script.Run(b.ctx, b.c, keys, "ok", "i", ulid.Make().String(), "c", 1, strings.Repeat("x", 101), 100).Err(); err == nil || !strings.Contains(err.Error(), "over the limit") {
			t.Errorf("script with a body over its limit: %v", err)
		}
		if got := b.signals(t); len(got) != 0 {
			t.Errorf("refused signals wrote %+v", got)
		}
		if st := b.hash(t, b.db.K.RunState(b.run)); st["@signal:ok"] != "" || st["@signal:@status"] != "" {
			t.Errorf("refused signals wrote the state hash: %v", st)
		}
	})

	t.Run("a log of the wrong type is an error and the state is not written", func(t *testing.T) {
		t.Parallel()
		c := redistest.Client(t)
		b := scriptBundle{ctx: t.Context(), c: c, db: rdb.New(c, redistest.Namespace(t)), run: "R" + ulid.Make().String()}
		if err := c.HSet(b.ctx, b.db.K.RunState(b.run), rdb.FieldRunStatus, "running").Err(); err != nil {
			t.Fatal(err)
		}
		if err := c.Set(b.ctx, b.db.K.RunLog(b.run), "not a stream", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if _, err := b.signal(t, signalBody("ok", "i", `1`)); err == nil || !strings.Contains(err.Error(), "WRONGTYPE") {
			t.Errorf("signal with a log of the wrong type: %v, want WRONGTYPE", err)
		}
		if st := b.hash(t, b.db.K.RunState(b.run)); len(st) != 1 {
			t.Errorf("state after a refused signal: %v", st)
		}
	})
}

func TestFindSignal(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	for _, name := range []string{"other", "approve"} {
		if _, err := b.signal(t, signalBody(name, name+"-id", `"`+name+`"`)); err != nil {
			t.Fatal(err)
		}
	}
	evs := b.log(t) // run_submitted, task_dispatched a, other, approve
	if len(evs) != 4 {
		t.Fatalf("log holds %d events, want 4", len(evs))
	}
	for _, page := range []int{1, 2, 1000} {
		var seen []events.Type
		got, last, err := b.db.FindSignal(b.ctx, b.run, "approve", "", page, func(e events.Event) { seen = append(seen, e.Type) })
		if err != nil || got == nil || got.Seq != evs[3].Seq || last != evs[3].Seq {
			t.Fatalf("page %d: FindSignal = %+v, %q, %v; want the approve signal at %s", page, got, last, err, evs[3].Seq)
		}
		want := []events.Type{events.RunSubmitted, events.TaskDispatched, events.SignalReceived}
		if diff := cmp.Diff(want, seen); diff != "" {
			t.Errorf("page %d: events seen before the signal (-want +got):\n%s", page, diff)
		}
	}
	got, last, err := b.db.FindSignal(b.ctx, b.run, "absent", evs[1].Seq, 2, nil)
	if err != nil || got != nil || last != evs[3].Seq {
		t.Errorf("FindSignal of a name never sent = %+v, %q, %v; want none, read to %s", got, last, err, evs[3].Seq)
	}
	got, last, err = b.db.FindSignal(b.ctx, b.run, "approve", evs[3].Seq, 2, nil)
	if err != nil || got != nil || last != evs[3].Seq {
		t.Errorf("FindSignal after the signal = %+v, %q, %v; want none, last unchanged", got, last, err)
	}
	// An entry that does not decode is skipped, not an error.
	if err := b.c.XAdd(b.ctx, &redis.XAddArgs{Stream: b.db.K.RunLog(b.run), Values: []any{"junk", "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if got, _, err := b.db.FindSignal(b.ctx, b.run, "approve", "", 1000, nil); err != nil || got == nil {
		t.Errorf("FindSignal over a bad entry = %+v, %v", got, err)
	}
}

func TestBlockOnLogs(t *testing.T) {
	t.Parallel()
	a := setupRun(t)
	b := scriptBundle{ctx: a.ctx, c: a.c, db: a.db, run: "R" + ulid.Make().String()} // a second run's log, one entry
	end := events.Event{ID: "x", Type: events.RunSucceeded}
	if err := a.c.XAdd(a.ctx, &redis.XAddArgs{Stream: a.db.K.RunLog(b.run), Values: end.Fields()}).Err(); err != nil {
		t.Fatal(err)
	}
	endA, endB := a.last(t), b.last(t)

	start := time.Now()
	got, err := a.db.BlockOnLogs(a.ctx, map[string]string{a.run: endA, b.run: endB}, nil, 10, 50*time.Millisecond)
	if err != nil || len(got) != 0 {
		t.Fatalf("BlockOnLogs with nothing new = %v, %v; want an empty map", got, err)
	}
	if d := time.Since(start); d < 40*time.Millisecond {
		t.Errorf("BlockOnLogs returned after %v: it did not block", d)
	}

	res, err := a.signal(t, signalBody("go", "1", `1`))
	if err != nil {
		t.Fatal(err)
	}
	got, err = a.db.BlockOnLogs(a.ctx, map[string]string{a.run: endA, b.run: endB}, nil, 10, 5*time.Second)
	if err != nil || len(got) != 1 || got[a.run].Last != res.Seq || len(got[a.run].Events) != 1 || got[a.run].Events[0].Type != events.SignalReceived {
		t.Fatalf("BlockOnLogs after a signal = %+v, %v; want run a's signal at %s", got, err, res.Seq)
	}
	got, err = a.db.BlockOnLogs(a.ctx, map[string]string{a.run: "0-0", b.run: ""}, nil, 2, time.Second)
	if err != nil || len(got[a.run].Events) != 2 || len(got[b.run].Events) != 1 {
		t.Errorf("BlockOnLogs from the start, 2 per run = %+v, %v", got, err)
	}

	multi := rdb.NewP(a.c, redistest.Namespace(t), 8)
	r1, r2 := "run-1", "run-2"
	for i := 3; multi.K.Partition(r1) == multi.K.Partition(r2); i++ {
		r2 = "run-" + string(rune('0'+i))
	}
	if _, err := multi.BlockOnLogs(a.ctx, map[string]string{r1: "0", r2: "0"}, nil, 1, time.Millisecond); err == nil || !strings.Contains(err.Error(), "partitions") {
		t.Errorf("BlockOnLogs over two partitions = %v, want an error", err)
	}
}
