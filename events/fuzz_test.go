package events_test

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
)

// fuzzFields is the order of the fuzzed values; present is a bit mask over it.
var fuzzFields = []string{
	events.FieldID, events.FieldType, events.FieldVersion, events.FieldTask, events.FieldAttempt,
	events.FieldEpoch, events.FieldWorker, events.FieldTime, events.FieldBody,
}

// canonicalInt reports whether s is the form strconv writes for an integer.
func canonicalInt(s string) bool {
	n, err := strconv.ParseInt(s, 10, 64)
	return err == nil && strconv.FormatInt(n, 10) == s
}

// FuzzDecode feeds arbitrary stream entries to Decode. It must never panic;
// an error must be a *DecodeError wrapping one of the three sentinels; a
// decoded event must re-encode to fields that decode to the same event, and
// to exactly the input fields when the input was in canonical form (what
// Fields and the Lua scripts write: every field of its version present,
// integers as strconv writes them), except that a version 1 entry whose
// time is its id's re-encodes as version 2 (the same fields minus ts).
func FuzzDecode(f *testing.F) {
	all := uint16(1<<len(fuzzFields) - 1)
	noTime := all &^ (1 << slices.Index(fuzzFields, events.FieldTime))
	for _, typ := range events.Types {
		at := time.UnixMilli(1700000000000)
		// Version 1 (an id minted at another instant than ts) and version 2.
		for _, id := range []string{"01HZX0000000000000000000AB", events.NewID(at)} {
			e := events.Event{ID: id, Type: typ, Task: "a", Attempt: 1, Epoch: 2, Worker: "w", Time: at}
			if b := sampleBody(typ); b != nil {
				e = e.WithBody(b)
			}
			m := fieldMap(f, e.Fields())
			var vals [9]string
			present := uint16(0)
			for i, k := range fuzzFields {
				if v, ok := m[k]; ok {
					vals[i] = v.(string)
					present |= 1 << i
				}
			}
			f.Add(present, vals[0], vals[1], vals[2], vals[3], vals[4], vals[5], vals[6], vals[7], vals[8])
		}
	}
	f.Add(noTime, "01HZX0000000000000000000AB", "task_claimed", "2", "a", "1", "1", "w", "", "")
	f.Add(all, "01HZX0000000000000000000AB", "task_claimed", "2", "a", "1", "1", "w", "1", "")
	f.Add(noTime, "x", "task_claimed", "2", "a", "1", "1", "w", "", "")
	f.Add(noTime, "01hzx0000000000000000000ab", "run_failed", "2", "", "0", "0", "", "", "")
	f.Add(all, "01HZX0000000000000000000AB", "run_failed", "1", "", "0", "0", "", "1717171717171", "")
	f.Add(all, "x", "task_failed", "1", "a", "+1", "007", "", "-0", " null ")
	f.Add(all, "x", "run_failed", "2", "", "0", "0", "", "0", "")
	f.Add(all, "x", "run_failed", "0", "", "0", "0", "", "0", "")
	f.Add(all, "x", "nope", "1", "", "0", "0", "", "0", "")
	f.Add(all, "x", "task_claimed", "1", "a", "1", "1", "w", "9223372036854775807", "{")
	f.Add(uint16(0), "", "", "", "", "", "", "", "", "")
	f.Add(uint16(0b001111111), "x", "task_claimed", "1", "a", "1", "1", "w", "0", "")

	f.Fuzz(func(t *testing.T, present uint16, id, typ, v, task, a, ep, w, ts, body string) {
		vals := []string{id, typ, v, task, a, ep, w, ts, body}
		in := map[string]any{}
		for i, k := range fuzzFields {
			if present&(1<<i) != 0 {
				in[k] = vals[i]
			}
		}
		e, err := events.Decode("run", "1-1", in)
		if err != nil {
			var de *events.DecodeError
			if !errors.As(err, &de) {
				t.Fatalf("error %T %v is not a *DecodeError", err, err)
			}
			if !errors.Is(err, events.ErrMalformed) && !errors.Is(err, events.ErrUnknownType) && !errors.Is(err, events.ErrUnknownVersion) {
				t.Fatalf("error %v wraps none of the sentinels", err)
			}
			return
		}
		if !e.Type.Known() || e.Version < 1 || e.Version > events.CurrentVersion {
			t.Fatalf("decoded an event of type %q version %d", e.Type, e.Version)
		}
		if len(e.Body) > 0 && !json.Valid(e.Body) {
			t.Fatalf("decoded a body that is not JSON: %q", e.Body)
		}
		out := fieldMap(t, e.Fields())
		again, err := events.Decode("run", "1-1", out)
		if err != nil {
			t.Fatalf("re-encoded fields %v do not decode: %v", out, err)
		}
		if diff := cmp.Diff(e, again); diff != "" {
			t.Fatalf("decode(encode(decode(x))) != decode(x) (-first +second):\n%s", diff)
		}
		if e.Version != events.CurrentVersion {
			t.Fatalf("decoded an event of version %d, not upcast to %d", e.Version, events.CurrentVersion)
		}
		if idTime, ok := events.IDTime(e.ID); v == "2" && (!ok || !idTime.Equal(e.Time)) {
			t.Fatalf("version 2 event's time %v is not its id's %v", e.Time, idTime)
		}
		// The canonical form of the input's version: version 1 has every
		// field, version 2 every one but ts.
		canonical := present == all && v == "1" || present == noTime && v == "2"
		for _, k := range []string{events.FieldVersion, events.FieldAttempt, events.FieldEpoch, events.FieldTime} {
			if s, _ := in[k].(string); (v == "1" || k != events.FieldTime) && !canonicalInt(s) {
				canonical = false
			}
		}
		if idTime, ok := events.IDTime(id); canonical && v == "1" && ok && idTime.Equal(e.Time) {
			// Written today, it would have been version 2.
			delete(in, events.FieldTime)
			in[events.FieldVersion] = "2"
		}
		// Attempt is an int: on 32-bit platforms a large value truncates.
		if n, _ := strconv.ParseInt(a, 10, 64); int64(int(n)) != n {
			canonical = false
		}
		if canonical {
			if diff := cmp.Diff(in, out); diff != "" {
				t.Fatalf("canonical entry does not re-encode to the same fields (-in +out):\n%s", diff)
			}
		}
	})
}
