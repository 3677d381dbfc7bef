package events_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
)

// Schema version 2: the stored envelope has no time field; an event's time
// is its ULID id's.

// Not parallel: a NewID of another millisecond in between starts a new
// random sequence.
func TestNewID(t *testing.T) {
	at := time.Date(2031, 2, 3, 4, 5, 6, 789654321, time.UTC)
	prev := ""
	for i := 0; i < 1000; i++ {
		id := events.NewID(at)
		got, ok := events.IDTime(id)
		if !ok || !got.Equal(at.Truncate(time.Millisecond)) {
			t.Fatalf("IDTime(NewID(%v)) = %v, %v", at, got, ok)
		}
		if id <= prev {
			t.Fatalf("ids minted in one millisecond do not increase: %s after %s", id, prev)
		}
		prev = id
	}
	for _, bad := range []string{"", "x", "01HZX00000000000000000HOST", "81HZX0000000000000000000AB", "01HZX0000000000000000000A"} {
		if _, ok := events.IDTime(bad); ok {
			t.Errorf("IDTime(%q) accepted", bad)
		}
	}
}

func TestFieldsLayoutV2(t *testing.T) {
	t.Parallel()
	at := time.UnixMilli(1700000000123)
	id := events.NewID(at)

	t.Run("an event whose time is its id's has no time field", func(t *testing.T) {
		t.Parallel()
		e := events.Event{ID: id, Type: events.TaskClaimed, Task: "a", Attempt: 1, Epoch: 2, Worker: "w", Time: at.Add(456 * time.Microsecond)}
		f := e.Fields()
		var names []any
		for i := 0; i < len(f); i += 2 {
			names = append(names, f[i])
		}
		want := []any{events.FieldID, events.FieldType, events.FieldVersion, events.FieldTask, events.FieldAttempt,
			events.FieldEpoch, events.FieldWorker, events.FieldBody}
		if diff := cmp.Diff(want, names); diff != "" {
			t.Errorf("field names (-want +got):\n%s", diff)
		}
		wantValues := map[string]any{"id": id, "t": "task_claimed", "v": "2", "k": "a", "a": "1", "e": "2", "w": "w", "b": ""}
		if diff := cmp.Diff(wantValues, fieldMap(t, f)); diff != "" {
			t.Errorf("field values (-want +got):\n%s", diff)
		}
		got, err := events.Decode("r", "1-1", fieldMap(t, f))
		if err != nil {
			t.Fatal(err)
		}
		if got.Version != 2 || !got.Time.Equal(at) || got.Time.Location() != time.UTC {
			t.Errorf("decoded version %d time %v, want 2 %v UTC", got.Version, got.Time, at)
		}
	})

	// Encoding never loses a time: an event whose time is not its id's is
	// written in the version 1 layout.
	for _, tt := range []struct {
		name string
		e    events.Event
	}{
		{"a time other than the id's", events.Event{ID: id, Type: events.TaskClaimed, Time: at.Add(time.Millisecond)}},
		{"an id that is not a ULID", events.Event{ID: "ev-1", Type: events.TaskClaimed, Time: at}},
		{"an event of version 1", events.Event{ID: id, Type: events.TaskClaimed, Time: at, Version: 1}},
	} {
		t.Run(tt.name+" is written as version 1", func(t *testing.T) {
			t.Parallel()
			m := fieldMap(t, tt.e.Fields())
			if m[events.FieldVersion] != "1" || m[events.FieldTime] != strconv.FormatInt(tt.e.Time.UnixMilli(), 10) {
				t.Fatalf("fields %v: want v 1 and ts %d", m, tt.e.Time.UnixMilli())
			}
			got, err := events.Decode("r", "1-1", m)
			if err != nil {
				t.Fatal(err)
			}
			if got.Version != events.CurrentVersion || !got.Time.Equal(tt.e.Time) {
				t.Errorf("decoded version %d time %v, want %d %v", got.Version, got.Time, events.CurrentVersion, tt.e.Time)
			}
		})
	}
}

// The upcaster: a version 1 entry decodes to the event a version 2 writer
// would have written at the same instant (its time kept from ts, even
// when it is not its id's).
func TestUpcastV1(t *testing.T) {
	t.Parallel()
	at := time.UnixMilli(1700000000123).UTC()
	id := events.NewID(at)
	v1 := map[string]any{"id": id, "t": "task_succeeded", "v": "1", "k": "a", "a": "1", "e": "2", "w": "w1",
		"ts": strconv.FormatInt(at.UnixMilli(), 10), "b": `{"result":1}`}
	v2 := map[string]any{"id": id, "t": "task_succeeded", "v": "2", "k": "a", "a": "1", "e": "2", "w": "w1", "b": `{"result":1}`}
	got1, err := events.Decode("r", "1-1", v1)
	if err != nil {
		t.Fatal(err)
	}
	got2, err := events.Decode("r", "1-1", v2)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(got2, got1); diff != "" {
		t.Errorf("v1 entry upcast differs from the v2 entry (-v2 +v1):\n%s", diff)
	}
	if diff := cmp.Diff(v2, fieldMap(t, got1.Fields())); diff != "" {
		t.Errorf("an upcast v1 event whose time is its id's re-encodes as (-want v2 +got):\n%s", diff)
	}
	v1["ts"] = "1600000000000"
	got, err := events.Decode("r", "1-1", v1)
	if err != nil {
		t.Fatal(err)
	}
	if got.Version != 2 || got.Time.UnixMilli() != 1600000000000 {
		t.Errorf("v1 entry with another time: version %d time %d, want 2 1600000000000", got.Version, got.Time.UnixMilli())
	}
	if diff := cmp.Diff(v1, fieldMap(t, got.Fields())); diff != "" {
		t.Errorf("it re-encodes as (-want v1 +got):\n%s", diff)
	}
	e := events.Event{Version: 1}
	if err := events.Upcast(&e); err != nil || e.Version != events.CurrentVersion {
		t.Errorf("Upcast(v1) = %v, version %d", err, e.Version)
	}
}

// validV2 returns the fields of a valid version 2 task_succeeded entry.
func validV2() map[string]any {
	return map[string]any{
		"id": "01HZX0000000000000000000AB", "t": "task_succeeded", "v": "2", "k": "a", "a": "1", "e": "2",
		"w": "w1", "b": `{"result":1}`,
	}
}

func TestDecodeErrorsV2(t *testing.T) {
	t.Parallel()
	if _, err := events.Decode("r", "1-1", validV2()); err != nil {
		t.Fatalf("valid v2 entry: %v", err)
	}
	tests := []struct {
		name   string
		modify func(m map[string]any)
		want   error
	}{
		{"id is not a ULID", func(m map[string]any) { m["id"] = "x" }, events.ErrMalformed},
		{"id has a letter outside base32", func(m map[string]any) { m["id"] = "01HZX00000000000000000HOST" }, events.ErrMalformed},
		{"id overflows 48 bits of time", func(m map[string]any) { m["id"] = "81HZX0000000000000000000AB" }, events.ErrMalformed},
		{"a time field", func(m map[string]any) { m["ts"] = "1700000000000" }, events.ErrMalformed},
		{"missing id", func(m map[string]any) { delete(m, "id") }, events.ErrMalformed},
		{"missing epoch", func(m map[string]any) { delete(m, "e") }, events.ErrMalformed},
		{"version 3", func(m map[string]any) { m["v"] = "3" }, events.ErrUnknownVersion},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			m := validV2()
			tt.modify(m)
			got, err := events.Decode("run-1", "5-0", m)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Decode error = %v, want errors.Is %v", err, tt.want)
			}
			var de *events.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T is not a *DecodeError", err)
			}
			if diff := cmp.Diff(events.Event{}, got); diff != "" {
				t.Errorf("Decode returned a partial event on error (-want +got):\n%s", diff)
			}
		})
	}
}

func TestFieldsDecodeRoundTripV2(t *testing.T) {
	t.Parallel()
	when := time.UnixMilli(1700000000123).UTC()
	for _, typ := range events.Types {
		want := events.Event{ID: events.NewID(when), Seq: "1700000000123-4", Run: "run-1", Type: typ,
			Version: events.CurrentVersion, Task: "task.1", Attempt: 3, Epoch: 9, Worker: "worker-1", Time: when}
		if b := sampleBody(typ); b != nil {
			want = want.WithBody(b)
		}
		m := fieldMap(t, want.Fields())
		if _, has := m[events.FieldTime]; has || m[events.FieldVersion] != "2" {
			t.Fatalf("%s: fields %v, want version 2 without a time", typ, m)
		}
		got, err := events.Decode(want.Run, want.Seq, m)
		if err != nil {
			t.Fatalf("%s: Decode: %v", typ, err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("%s: round trip (-want +got):\n%s", typ, diff)
		}
	}
}
