package events_test

import (
	"encoding/json"
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
)

// fieldMap turns Fields() into the map go-redis returns for a stream entry.
func fieldMap(t testing.TB, fields []any) map[string]any {
	t.Helper()
	if len(fields)%2 != 0 {
		t.Fatalf("Fields() returned an odd number of values: %d", len(fields))
	}
	m := make(map[string]any, len(fields)/2)
	for i := 0; i < len(fields); i += 2 {
		k, ok := fields[i].(string)
		if !ok {
			t.Fatalf("field name %v is a %T, want string", fields[i], fields[i])
		}
		v, ok := fields[i+1].(string)
		if !ok {
			t.Fatalf("field %s value %v is a %T, want string", k, fields[i+1], fields[i+1])
		}
		if _, dup := m[k]; dup {
			t.Fatalf("field %s written twice", k)
		}
		m[k] = v
	}
	return m
}

// sampleBody returns a representative body for each event type.
func sampleBody(typ events.Type) any {
	spec := []events.TaskSpec{
		{ID: "a", Handler: "h.a", Pool: "gpu", Priority: 3, MaxAttempts: 2, TimeoutMS: 1500, Args: json.RawMessage(`{"x":1}`)},
		{ID: "b", Handler: "h.b", Deps: []string{"a"}, StartAfterMS: 250, ResultTTLMS: 60000, Join: &events.Join{Policy: events.JoinBestEffort}},
	}
	switch typ {
	case events.RunSubmitted:
		return events.RunSubmittedBody{Workflow: "etl", Tasks: spec, Input: json.RawMessage(`{"n":[1,2,3]}`)}
	case events.TaskDispatched:
		return events.TaskDispatchedBody{Pool: "gpu", Priority: 3}
	case events.TaskHeartbeat:
		return events.TaskHeartbeatBody{Progress: "40%"}
	case events.TaskSucceeded:
		return events.TaskSucceededBody{Result: json.RawMessage(`"ok"`)}
	case events.TaskFailed, events.TaskTimedOut:
		return events.TaskFailedBody{Error: "boom", Kind: events.FailureError, Final: true}
	case events.TaskRetryScheduled:
		return events.TaskRetryScheduledBody{DelayMS: 1000, DueMS: 1700000001000}
	case events.TaskReclaimed:
		return events.TaskReclaimedBody{From: "w1", Deliveries: 2}
	case events.TaskSkipped:
		return events.TaskSkippedBody{Cause: "dependency a failed"}
	case events.TaskRequeued:
		return events.TaskRequeuedBody{Cause: "operator"}
	case events.TasksAdded:
		return events.TasksAddedBody{Tasks: spec}
	case events.ChannelWritten:
		return events.ChannelWrittenBody{Key: "k", Value: json.RawMessage(`[1]`)}
	case events.RunFailed:
		return events.RunFailedBody{Task: "a", Cause: "boom"}
	case events.RunCancelled:
		return events.RunCancelledBody{Reason: "operator"}
	case events.ResultRejected:
		return events.ResultRejectedBody{What: "result", Reason: "claim lost", CurrentEpoch: 7}
	case events.SignalReceived:
		return events.SignalReceivedBody{Name: "approve", ID: "ticket-1", By: "alice", Payload: json.RawMessage(`{"ok":true}`)}
	}
	return nil // no body (task_claimed, run_succeeded, types added later)
}

func TestFieldsDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	when := time.UnixMilli(1700000000123).UTC()
	for _, typ := range events.Types {
		for _, withBody := range []bool{true, false} {
			name := string(typ)
			if !withBody {
				name += " without a body"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				want := events.Event{
					ID: "01HZX0000000000000000000AB", Seq: "1700000000123-4", Run: "run-1", Type: typ,
					Version: events.CurrentVersion, Task: "task.1", Attempt: 3, Epoch: 9, Worker: "worker-1", Time: when,
				}
				if b := sampleBody(typ); withBody && b != nil {
					want = want.WithBody(b)
				}
				got, err := events.Decode(want.Run, want.Seq, fieldMap(t, want.Fields()))
				if err != nil {
					t.Fatalf("Decode: %v", err)
				}
				if diff := cmp.Diff(want, got); diff != "" {
					t.Errorf("round trip (-want +got):\n%s", diff)
				}
			})
		}
	}
}

func TestFieldsLayout(t *testing.T) {
	t.Parallel()

	t.Run("every field is present in a fixed order", func(t *testing.T) {
		t.Parallel()
		e := events.Event{ID: "x", Type: events.RunSucceeded, Time: time.UnixMilli(5)}
		var names []any
		f := e.Fields()
		for i := 0; i < len(f); i += 2 {
			names = append(names, f[i])
		}
		want := []any{events.FieldID, events.FieldType, events.FieldVersion, events.FieldTask, events.FieldAttempt,
			events.FieldEpoch, events.FieldWorker, events.FieldTime, events.FieldBody}
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("field names (-want +got):\n%s", diff)
		}
		wantValues := map[string]any{"id": "x", "t": "run_succeeded", "v": "1", "k": "", "a": "0", "e": "0", "w": "", "ts": "5", "b": ""}
		if diff := cmp.Diff(wantValues, fieldMap(t, f)); diff != "" {
			t.Errorf("field values (-want +got):\n%s", diff)
		}
	})

	t.Run("version zero is written as the current version", func(t *testing.T) {
		t.Parallel()
		e := events.Event{ID: "x", Type: events.TaskClaimed, Task: "a", Attempt: 1, Epoch: 1}
		got, err := events.Decode("r", "1-1", fieldMap(t, e.Fields()))
		if err != nil {
			t.Fatal(err)
		}
		if got.Version != events.CurrentVersion {
			t.Errorf("Version = %d, want %d", got.Version, events.CurrentVersion)
		}
	})

	t.Run("time keeps millisecond precision in UTC", func(t *testing.T) {
		t.Parallel()
		loc := time.FixedZone("x", 3600)
		e := events.Event{ID: "x", Type: events.TaskClaimed, Time: time.Date(2024, 5, 6, 7, 8, 9, 123456789, loc)}
		got, err := events.Decode("r", "1-1", fieldMap(t, e.Fields()))
		if err != nil {
			t.Fatal(err)
		}
		want := time.Date(2024, 5, 6, 6, 8, 9, 123000000, time.UTC)
		if !got.Time.Equal(want) || got.Time.Location() != time.UTC {
			t.Errorf("Time = %v, want %v", got.Time, want)
		}
	})
}

// valid returns the fields of a valid task_succeeded entry.
func valid() map[string]any {
	return map[string]any{
		"id": "01HZX0000000000000000000AB", "t": "task_succeeded", "v": "1", "k": "a", "a": "1", "e": "2",
		"w": "w1", "ts": "1700000000000", "b": `{"result":1}`,
	}
}

func TestDecodeErrors(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name   string
		modify func(m map[string]any)
		want   error
	}{
		{"missing id", func(m map[string]any) { delete(m, "id") }, events.ErrMalformed},
		{"empty id", func(m map[string]any) { m["id"] = "" }, events.ErrMalformed},
		{"missing type", func(m map[string]any) { delete(m, "t") }, events.ErrMalformed},
		{"missing version", func(m map[string]any) { delete(m, "v") }, events.ErrMalformed},
		{"missing attempt", func(m map[string]any) { delete(m, "a") }, events.ErrMalformed},
		{"missing epoch", func(m map[string]any) { delete(m, "e") }, events.ErrMalformed},
		{"missing time", func(m map[string]any) { delete(m, "ts") }, events.ErrMalformed},
		{"id is not a string", func(m map[string]any) { m["id"] = 42 }, events.ErrMalformed},
		{"attempt is not a string", func(m map[string]any) { m["a"] = int64(1) }, events.ErrMalformed},
		{"attempt is not a number", func(m map[string]any) { m["a"] = "one" }, events.ErrMalformed},
		{"epoch is a float", func(m map[string]any) { m["e"] = "1.5" }, events.ErrMalformed},
		{"epoch overflows int64", func(m map[string]any) { m["e"] = "9223372036854775808" }, events.ErrMalformed},
		{"time is empty", func(m map[string]any) { m["ts"] = "" }, events.ErrMalformed},
		{"version is not a number", func(m map[string]any) { m["v"] = "v1" }, events.ErrMalformed},
		{"body is not JSON", func(m map[string]any) { m["b"] = "{result:1" }, events.ErrMalformed},
		{"body is JSON followed by garbage", func(m map[string]any) { m["b"] = `{"result":1}}` }, events.ErrMalformed},
		{"unknown type", func(m map[string]any) { m["t"] = "task_exploded" }, events.ErrUnknownType},
		{"empty type", func(m map[string]any) { m["t"] = "" }, events.ErrUnknownType},
		{"Go type name instead of the stored name", func(m map[string]any) { m["t"] = "TaskSucceeded" }, events.ErrUnknownType},
		{"version 0", func(m map[string]any) { m["v"] = "0" }, events.ErrUnknownVersion},
		{"negative version", func(m map[string]any) { m["v"] = "-1" }, events.ErrUnknownVersion},
		{"version from the future", func(m map[string]any) { m["v"] = strconv.Itoa(events.CurrentVersion + 1) }, events.ErrUnknownVersion},
	}
	sentinels := []error{events.ErrMalformed, events.ErrUnknownType, events.ErrUnknownVersion}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := valid()
			tt.modify(m)
			got, err := events.Decode("run-1", "5-0", m)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode error = %v, want errors.Is %v", err, tt.want)
			}
			for _, s := range sentinels {
				if !errors.Is(s, tt.want) && errors.Is(err, s) {
					t.Errorf("error %v also matches %v", err, s)
				}
			}
			var de *events.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if de.Run != "run-1" || de.Seq != "5-0" {
				t.Errorf("DecodeError names run %q entry %q, want run-1 5-0", de.Run, de.Seq)
			}
			if diff := cmp.Diff(events.Event{}, got); diff != "" {
				t.Errorf("Decode returned a partial event on error (-want +got):\n%s", diff)
			}
		})
	}
}

// The optional fields (task, worker, body) may be absent: run-level events
// have none, and an empty body decodes to no body.
func TestDecodeOptionalFields(t *testing.T) {
	t.Parallel()
	m := map[string]any{"id": "x", "t": "run_succeeded", "v": "1", "a": "0", "e": "0", "ts": "0"}
	got, err := events.Decode("r", "1-0", m)
	if err != nil {
		t.Fatal(err)
	}
	// A version 1 entry is upcast: Version is the current one.
	want := events.Event{ID: "x", Seq: "1-0", Run: "r", Type: events.RunSucceeded, Version: events.CurrentVersion, Time: time.UnixMilli(0).UTC()}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
	id := events.NewID(time.UnixMilli(1700000000123))
	m = map[string]any{"id": id, "t": "run_succeeded", "v": "2", "a": "0", "e": "0"}
	if got, err = events.Decode("r", "1-0", m); err != nil {
		t.Fatal(err)
	}
	want = events.Event{ID: id, Seq: "1-0", Run: "r", Type: events.RunSucceeded, Version: 2, Time: time.UnixMilli(1700000000123).UTC()}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("version 2 (-want +got):\n%s", diff)
	}
}

func TestTypes(t *testing.T) {
	t.Parallel()
	seen := map[events.Type]bool{}
	for _, typ := range events.Types {
		if seen[typ] {
			t.Errorf("type %q listed twice", typ)
		}
		seen[typ] = true
		if !typ.Known() {
			t.Errorf("%q is listed but not Known", typ)
		}
		for _, c := range string(typ) {
			if !(c >= 'a' && c <= 'z' || c == '_') {
				t.Errorf("type %q is not snake_case", typ)
				break
			}
		}
	}
	for _, typ := range []events.Type{"", "Task_Succeeded", "task_succeeded ", "unknown"} {
		if typ.Known() {
			t.Errorf("%q is Known", typ)
		}
	}
	// The stored names are a contract: renaming one orphans every log.
	stored := map[events.Type]string{
		events.RunSubmitted: "run_submitted", events.TaskDispatched: "task_dispatched", events.TaskClaimed: "task_claimed",
		events.TaskHeartbeat: "task_heartbeat", events.TaskSucceeded: "task_succeeded", events.TaskFailed: "task_failed",
		events.TaskRetryScheduled: "task_retry_scheduled", events.TaskReclaimed: "task_reclaimed",
		events.TaskTimedOut: "task_timed_out", events.TaskCancelled: "task_cancelled", events.TaskSkipped: "task_skipped",
		events.TaskRequeued: "task_requeued",
		events.TasksAdded:   "tasks_added", events.ChannelWritten: "channel_written", events.RunSucceeded: "run_succeeded",
		events.RunFailed: "run_failed", events.RunCancelled: "run_cancelled", events.ResultRejected: "result_rejected",
		events.SignalReceived: "signal_received",
	}
	for typ, s := range stored {
		if string(typ) != s {
			t.Errorf("type constant for %q is %q", s, typ)
		}
		if !seen[typ] {
			t.Errorf("%q missing from Types", typ)
		}
	}
}

func TestDecodeBody(t *testing.T) {
	t.Parallel()

	t.Run("an empty body leaves the value as is", func(t *testing.T) {
		t.Parallel()
		e := events.Event{Type: events.TaskSkipped}
		b := events.TaskSkippedBody{Cause: "keep"}
		if err := e.DecodeBody(&b); err != nil {
			t.Fatal(err)
		}
		if b.Cause != "keep" {
			t.Errorf("Cause = %q, want keep", b.Cause)
		}
	})

	t.Run("a body of the wrong shape is malformed", func(t *testing.T) {
		t.Parallel()
		e := events.Event{Run: "r", Seq: "1-1", Type: events.TaskFailed, Body: json.RawMessage(`{"final":"yes"}`)}
		var b events.TaskFailedBody
		err := e.DecodeBody(&b)
		if !errors.Is(err, events.ErrMalformed) {
			t.Fatalf("error = %v, want ErrMalformed", err)
		}
		var de *events.DecodeError
		if !errors.As(err, &de) || de.Run != "r" || de.Seq != "1-1" {
			t.Errorf("error %v does not name run r entry 1-1", err)
		}
	})

	t.Run("WithBody round-trips through DecodeBody", func(t *testing.T) {
		t.Parallel()
		want := events.TaskFailedBody{Error: "x", Kind: events.FailurePanic, Final: true}
		e := events.Event{Type: events.TaskFailed}.WithBody(want)
		var got events.TaskFailedBody
		if err := e.DecodeBody(&got); err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("(-want +got):\n%s", diff)
		}
	})

	t.Run("WithBody panics on a value that does not encode", func(t *testing.T) {
		t.Parallel()
		defer func() {
			if recover() == nil {
				t.Error("no panic")
			}
		}()
		_ = events.Event{Type: events.TaskSucceeded}.WithBody(func() {})
	})
}

func TestUpcastCurrentVersionIsNoop(t *testing.T) {
	t.Parallel()
	e := events.Event{ID: "x", Type: events.TaskClaimed, Version: events.CurrentVersion, Task: "a"}
	want := e
	if err := events.Upcast(&e); err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(want, e); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}

// TestEndsRun: exactly the four terminal run events end a run.
func TestEndsRun(t *testing.T) {
	ends := map[events.Type]bool{events.RunSucceeded: true, events.RunFailed: true, events.RunCancelled: true, events.RunQuarantined: true}
	for _, typ := range events.Types {
		if typ.EndsRun() != ends[typ] {
			t.Errorf("%s.EndsRun() = %t, want %t", typ, typ.EndsRun(), ends[typ])
		}
	}
}
