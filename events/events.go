// Package events defines the event envelope of a run's log and its codec.
//
// Every change of a task's or a run's state is an event appended to the run's
// stream (graflow:{<run>}:log). Event types are stable snake_case strings that
// never change when Go identifiers are renamed. Events are encoded as a fixed
// set of stream fields so that Redis stores the field names once per stream
// node; the Lua scripts in internal/rdb write the very same layout.
package events

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/oklog/ulid/v2"
)

// Type is the stable name of an event type.
type Type string

// Event types. These strings are stored in Redis: never rename them.
const (
	RunSubmitted       Type = "run_submitted"
	TaskDispatched     Type = "task_dispatched"
	TaskClaimed        Type = "task_claimed"
	TaskHeartbeat      Type = "task_heartbeat"
	TaskSucceeded      Type = "task_succeeded"
	TaskFailed         Type = "task_failed"
	TaskRetryScheduled Type = "task_retry_scheduled"
	TaskReclaimed      Type = "task_reclaimed"
	TaskTimedOut       Type = "task_timed_out"
	TaskCancelled      Type = "task_cancelled"
	TaskSkipped        Type = "task_skipped"
	TaskRequeued       Type = "task_requeued"
	TasksAdded         Type = "tasks_added"
	ChannelWritten     Type = "channel_written"
	RunSucceeded       Type = "run_succeeded"
	RunFailed          Type = "run_failed"
	RunCancelled       Type = "run_cancelled"
	ResultRejected     Type = "result_rejected"
	// RunQuarantined sets a run aside for good: the projector could not
	// process it (an event it cannot fold, or a persistent Redis error on
	// one of its keys). Terminal; the run's keys are kept for inspection.
	RunQuarantined Type = "run_quarantined"
	// SignalReceived records a signal delivered to a running run
	// (Client.Signal, graflow signal): a named JSON payload that a waiting
	// task (worker.Task.WaitSignal, the built-in @wait_signal) takes as
	// its result. It changes no state.
	SignalReceived Type = "signal_received"
)

// EndsRun reports whether an event of type t ends its run:
// run_succeeded, run_failed, run_cancelled or run_quarantined. A later
// task_requeued reopens a run (Client.Wait's rule).
func (t Type) EndsRun() bool {
	switch t {
	case RunSucceeded, RunFailed, RunCancelled, RunQuarantined:
		return true
	}
	return false
}

// Types lists every known event type, in documentation order.
var Types = []Type{
	RunSubmitted, TaskDispatched, TaskClaimed, TaskHeartbeat, TaskSucceeded,
	TaskFailed, TaskRetryScheduled, TaskReclaimed, TaskTimedOut, TaskCancelled,
	TaskSkipped, TaskRequeued, TasksAdded, ChannelWritten, RunSucceeded, RunFailed,
	RunCancelled, ResultRejected, RunQuarantined, SignalReceived,
}

// Known reports whether t is a type this version of the code understands.
func (t Type) Known() bool {
	for _, k := range Types {
		if k == t {
			return true
		}
	}
	return false
}

// CurrentVersion is the schema version written by this code. Decoding accepts
// versions 1..CurrentVersion (older ones are upcast, see Upcast).
//
// Version 1 stores the writer's time in a field of its own (FieldTime, Unix
// ms). Version 2 drops it: an event's time is its ID's, a ULID minted from
// the writer's clock at the instant the event is written (NewID), so the
// field repeated what the ID already holds (about 26 B of Redis memory per
// event).
const CurrentVersion = 2

// NewID mints an event ID for an event written at t: a ULID whose time is t
// (to the millisecond), with the process's monotonic entropy (IDs minted
// one after another for the same millisecond increase, as ulid.Make's). Every writer mints
// its event IDs with NewID from the clock reading it records as the event's
// time: a version 2 event's Time is its ID's.
func NewID(t time.Time) string {
	return ulid.MustNew(ulid.Timestamp(t), ulid.DefaultEntropy()).String()
}

// IDTime returns the time of a ULID event ID (ok false: id is not a valid
// ULID).
func IDTime(id string) (t time.Time, ok bool) {
	u, err := ulid.ParseStrict(id)
	if err != nil {
		return time.Time{}, false
	}
	return time.UnixMilli(int64(u.Time())).UTC(), true
}

// Stream field names of an encoded event. The Lua scripts use the same names
// and order (see internal/rdb). FieldTime is a version 1 field only.
const (
	FieldID      = "id"
	FieldType    = "t"
	FieldVersion = "v"
	FieldTask    = "k"
	FieldAttempt = "a"
	FieldEpoch   = "e"
	FieldWorker  = "w"
	FieldTime    = "ts"
	FieldBody    = "b"
)

// Event is the envelope of one entry of a run's log.
type Event struct {
	// ID is a ULID, unique per event, assigned by the writer.
	ID string `json:"id"`
	// Seq is the Redis stream entry id of the event in its run's log. It is
	// set when the event is read back and is not part of the encoding.
	Seq string `json:"seq,omitempty"`
	// Run is the run id (the log's hash tag); not stored per entry.
	Run     string `json:"run"`
	Type    Type   `json:"type"`
	Version int    `json:"v"`
	// Task is the task id, empty for run-level events.
	Task string `json:"task,omitempty"`
	// Attempt is the task attempt (1-based), 0 for run-level events.
	Attempt int `json:"attempt,omitempty"`
	// Epoch is the fencing epoch of the claim the event belongs to.
	Epoch int64 `json:"epoch,omitempty"`
	// Worker is the id of the worker (or projector) that wrote the event.
	Worker string `json:"worker,omitempty"`
	// Time is the writer's clock when it wrote the event, in milliseconds:
	// the ID's time (version 2), or the stored "ts" field of a version 1
	// entry. The JSON form (exports) always carries it.
	Time time.Time `json:"time"`
	// Body is the type-specific JSON body (see the *Body types); may be empty.
	Body json.RawMessage `json:"body,omitempty"`
}

// Errors returned by Decode. Use errors.Is.
var (
	ErrMalformed      = errors.New("events: malformed stream entry")
	ErrUnknownType    = errors.New("events: unknown event type")
	ErrUnknownVersion = errors.New("events: unknown event schema version")
)

// DecodeError wraps a decode failure with the stream entry it came from.
type DecodeError struct {
	Run string
	Seq string
	Err error
}

func (e *DecodeError) Error() string {
	return fmt.Sprintf("run %s entry %s: %v", e.Run, e.Seq, e.Err)
}

func (e *DecodeError) Unwrap() error { return e.Err }

// Fields encodes e as the flat list of stream field/value pairs written by
// XADD. The layout is fixed per version: every field of it is always
// present. Version 2 (CurrentVersion; a zero Version means it) has no
// FieldTime: the time is the ID's. An event whose Time is not its ID's (an
// imported version 1 event whose writer took its ID and its time apart,
// an ID that is no ULID) is written in the version 1 layout, with
// FieldTime, so that no encoding loses its time; so is an event of Version
// 1.
func (e *Event) Fields() []any {
	v := e.Version
	if v == 0 {
		v = CurrentVersion
	}
	if v == CurrentVersion {
		if t, ok := IDTime(e.ID); !ok || t.UnixMilli() != e.Time.UnixMilli() {
			v = 1
		}
	}
	body := string(e.Body)
	f := []any{
		FieldID, e.ID,
		FieldType, string(e.Type),
		FieldVersion, strconv.Itoa(v),
		FieldTask, e.Task,
		FieldAttempt, strconv.Itoa(e.Attempt),
		FieldEpoch, strconv.FormatInt(e.Epoch, 10),
		FieldWorker, e.Worker,
	}
	if v == 1 {
		f = append(f, FieldTime, strconv.FormatInt(e.Time.UnixMilli(), 10))
	}
	return append(f, FieldBody, body)
}

// Decode builds an Event from a stream entry of run's log. It returns a
// *DecodeError wrapping ErrMalformed, ErrUnknownType or ErrUnknownVersion.
// A version 1 entry takes its Time from FieldTime; a version 2 entry from
// its ID, which must be a ULID, and has no FieldTime. Events of older
// schema versions are upcast to CurrentVersion (see Upcast).
func Decode(run, seq string, values map[string]any) (Event, error) {
	fail := func(err error) (Event, error) {
		return Event{}, &DecodeError{Run: run, Seq: seq, Err: err}
	}
	str := func(k string) (string, bool) {
		v, ok := values[k]
		if !ok {
			return "", false
		}
		s, ok := v.(string)
		return s, ok
	}
	e := Event{Run: run, Seq: seq}
	var ok bool
	if e.ID, ok = str(FieldID); !ok || e.ID == "" {
		return fail(fmt.Errorf("%w: missing %q", ErrMalformed, FieldID))
	}
	t, ok := str(FieldType)
	if !ok {
		return fail(fmt.Errorf("%w: missing %q", ErrMalformed, FieldType))
	}
	e.Type = Type(t)
	if !e.Type.Known() {
		return fail(fmt.Errorf("%w %q", ErrUnknownType, t))
	}
	num := func(field string) (int64, error) {
		s, ok := str(field)
		if !ok {
			return 0, fmt.Errorf("%w: missing %q", ErrMalformed, field)
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("%w: field %q: %w", ErrMalformed, field, err)
		}
		return n, nil
	}
	var version, attempt, ts int64
	var err error
	for _, f := range []struct {
		field string
		dst   *int64
	}{{FieldVersion, &version}, {FieldAttempt, &attempt}, {FieldEpoch, &e.Epoch}} {
		if *f.dst, err = num(f.field); err != nil {
			return fail(err)
		}
	}
	if version < 1 || version > CurrentVersion {
		return fail(fmt.Errorf("%w %d for %s (this build reads 1..%d)", ErrUnknownVersion, version, t, CurrentVersion))
	}
	e.Version = int(version)
	e.Attempt = int(attempt)
	if version == 1 {
		if ts, err = num(FieldTime); err != nil {
			return fail(err)
		}
		e.Time = time.UnixMilli(ts).UTC()
	} else {
		if _, has := values[FieldTime]; has {
			return fail(fmt.Errorf("%w: a version %d entry has no %q (its time is its id's)", ErrMalformed, version, FieldTime))
		}
		if e.Time, ok = IDTime(e.ID); !ok {
			return fail(fmt.Errorf("%w: id %q of a version %d entry is not a ULID", ErrMalformed, e.ID, version))
		}
	}
	e.Task, _ = str(FieldTask)
	e.Worker, _ = str(FieldWorker)
	if b, _ := str(FieldBody); b != "" {
		if !json.Valid([]byte(b)) {
			return fail(fmt.Errorf("%w: body is not JSON", ErrMalformed))
		}
		e.Body = json.RawMessage(b)
	}
	if err := Upcast(&e); err != nil {
		return fail(err)
	}
	return e, nil
}

// Upcast rewrites an event of an older schema version into CurrentVersion in
// place, one step per version (v1→v2, v2→v3, ...), applied in order. The
// fold, exports and every reader see CurrentVersion only; the version an
// entry is stored in shows in the log itself (XRANGE).
//
// v1→v2: version 2 only drops the stored time (FieldTime), which is the
// ID's time in version 2. A decoded version 1 event keeps the time its
// entry stored (its writer may have minted its ID at another instant), so
// the step changes nothing but Version; Fields writes such an event in the
// version 1 layout again, so an export of it imports without loss.
func Upcast(e *Event) error {
	for e.Version < CurrentVersion {
		switch e.Version {
		case 1:
			e.Version = 2
		default:
			return fmt.Errorf("%w %d: no upcaster", ErrUnknownVersion, e.Version)
		}
	}
	return nil
}

// DecodeBody unmarshals the event body into v. An empty body leaves v as is.
func (e *Event) DecodeBody(v any) error {
	if len(e.Body) == 0 {
		return nil
	}
	if err := json.Unmarshal(e.Body, v); err != nil {
		return &DecodeError{Run: e.Run, Seq: e.Seq, Err: fmt.Errorf("%w: %s body: %w", ErrMalformed, e.Type, err)}
	}
	return nil
}

// WithBody returns e with Body set to the JSON encoding of v.
func (e Event) WithBody(v any) Event {
	b, err := json.Marshal(v)
	if err != nil {
		panic(fmt.Sprintf("events: body of %s does not encode: %v", e.Type, err))
	}
	e.Body = b
	return e
}
