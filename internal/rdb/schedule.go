package rdb

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/redis/go-redis/v9"
)

// Recurring runs (cron). A namespace's schedules live in two hashes of one
// slot ({schedules}), so a script may write both:
//
//	<ns>:{schedules}         name → definition (JSON, written once by add)
//	<ns>:{schedules}:state   name → state record (ScheduleState)
//
// The definition (cron expression, time zone, workflow spec, input) is
// never rewritten: pausing, resuming and recording a fired tick change only
// the small state record, so none of them re-encodes a spec or races with
// another.

// Schedules is the namespace's schedule definitions: name → JSON.
func (k Keys) Schedules() string { return k.ns + ":{schedules}" }

// ScheduleStates is the namespace's schedule state records: name →
// ScheduleState (same slot as Schedules).
func (k Keys) ScheduleStates() string { return k.ns + ":{schedules}:state" }

// ErrScheduleState is returned (wrapped) for a state record that does not
// parse.
var ErrScheduleState = errors.New("unreadable schedule state")

// ScheduleState is a schedule's mutable record, stored as
// "<id>|<paused 0/1>|<anchor ms>|<last tick ms>|<last run>".
type ScheduleState struct {
	// ID is the definition's generation (a ULID given when it was added):
	// a tick fired for a removed or replaced definition is not recorded
	// on its successor.
	ID     string
	Paused bool
	// AnchorMS: only ticks after it are due (when the schedule was added
	// or last resumed), in Unix ms.
	AnchorMS int64
	// LastTickMS is the latest tick fired (0: none), in Unix ms; LastRun
	// its run id.
	LastTickMS int64
	LastRun    string
}

// String encodes s as stored.
func (s ScheduleState) String() string {
	p := "0"
	if s.Paused {
		p = "1"
	}
	return s.ID + "|" + p + "|" + strconv.FormatInt(s.AnchorMS, 10) + "|" + strconv.FormatInt(s.LastTickMS, 10) + "|" + s.LastRun
}

// ParseScheduleState decodes a stored state record.
func ParseScheduleState(v string) (ScheduleState, error) {
	f := strings.SplitN(v, "|", 5)
	if len(f) != 5 || f[0] == "" || (f[1] != "0" && f[1] != "1") {
		return ScheduleState{}, fmt.Errorf("%w: %q", ErrScheduleState, v)
	}
	anchor, err1 := strconv.ParseInt(f[2], 10, 64)
	last, err2 := strconv.ParseInt(f[3], 10, 64)
	if err1 != nil || err2 != nil || anchor < 0 || last < 0 {
		return ScheduleState{}, fmt.Errorf("%w: %q", ErrScheduleState, v)
	}
	return ScheduleState{ID: f[0], Paused: f[1] == "1", AnchorMS: anchor, LastTickMS: last, LastRun: f[4]}, nil
}

// scheduleLua parses a state record in a script (the same format as
// ScheduleState.String).
const scheduleLua = `
local function parsestate(s)
  return string.match(s, '^([^|]+)|([01])|(%d+)|(%d+)|(.*)$')
end
`

// scheduleAddScript writes a schedule's definition and its fresh state
// record, refusing an existing name unless asked to replace it (a
// replaced schedule starts afresh: unpaused, no tick fired). Both keys'
// types are checked before the first write.
//
// KEYS: 1 definitions, 2 states
// ARGV: 1 name, 2 definition, 3 state record, 4 replace ("1" or "0")
// Reply: "added" | "replaced" | "exists" (nothing written)
var scheduleAddScript = redis.NewScript(prelude + `
local bad = notwritable(KEYS[1], 'hash') or notwritable(KEYS[2], 'hash')
if bad then return bad end
local had = redis.call('HEXISTS', KEYS[1], ARGV[1]) == 1
if had and ARGV[4] ~= '1' then return 'exists' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
if had then return 'replaced' end
return 'added'
`)

// ScheduleAdd outcomes.
const (
	ScheduleAdded    = "added"
	ScheduleReplaced = "replaced"
	ScheduleExists   = "exists"
)

// AddSchedule stores a schedule's definition (opaque JSON) and its first
// state record in one step. It returns ScheduleAdded, ScheduleReplaced
// (replace was set and the name existed) or ScheduleExists (the name
// exists; nothing was written).
func (d DB) AddSchedule(ctx context.Context, name, def string, st ScheduleState, replace bool) (string, error) {
	r := "0"
	if replace {
		r = "1"
	}
	out, err := scheduleAddScript.Run(ctx, d.C, []string{d.K.Schedules(), d.K.ScheduleStates()}, name, def, st.String(), r).Text()
	if err != nil {
		return "", fmt.Errorf("add schedule %s: %w", name, err)
	}
	return out, nil
}

// RemoveSchedule deletes a schedule's definition and state in one MULTI
// (one slot). It reports whether the schedule existed.
func (d DB) RemoveSchedule(ctx context.Context, name string) (bool, error) {
	var def *redis.IntCmd
	_, err := d.C.TxPipelined(ctx, func(p redis.Pipeliner) error {
		def = p.HDel(ctx, d.K.Schedules(), name)
		p.HDel(ctx, d.K.ScheduleStates(), name)
		return nil
	})
	if err != nil {
		return false, fmt.Errorf("remove schedule %s: %w", name, err)
	}
	return def.Val() > 0, nil
}

// schedulePauseScript pauses or resumes a schedule. Resuming moves the
// anchor to now, so the ticks that fell while it was paused never fire.
//
// KEYS: 1 states
// ARGV: 1 name, 2 paused ("1" pause, "0" resume), 3 now ms (the anchor on
// resume)
// Reply: "changed" | "unchanged" (it already was) | "missing"
var schedulePauseScript = redis.NewScript(scheduleLua + `
local s = redis.call('HGET', KEYS[1], ARGV[1])
if not s then return 'missing' end
local id, p, a, l, r = parsestate(s)
if not id then return redis.error_reply('ERR unreadable schedule state of ' .. ARGV[1] .. ': ' .. s) end
if p == ARGV[2] then return 'unchanged' end
if ARGV[2] == '0' then a = ARGV[3] end
redis.call('HSET', KEYS[1], ARGV[1], table.concat({id, ARGV[2], a, l, r}, '|'))
return 'changed'
`)

// SetSchedulePaused pauses (paused true) or resumes a schedule; a resume
// anchors it at nowMS. ok is false if no such schedule exists; changed is
// false if it already was in that state.
func (d DB) SetSchedulePaused(ctx context.Context, name string, paused bool, nowMS int64) (ok, changed bool, err error) {
	p := "0"
	if paused {
		p = "1"
	}
	out, err := schedulePauseScript.Run(ctx, d.C, []string{d.K.ScheduleStates()}, name, p, nowMS).Text()
	if err != nil {
		return false, false, fmt.Errorf("pause/resume schedule %s: %w", name, err)
	}
	return out != "missing", out == "changed", nil
}

// scheduleFiredScript records that a schedule's tick fired: the state's
// last tick only moves forward, and only for the definition the tick was
// computed from (id), so a tick fired for a removed or replaced schedule
// records nothing.
//
// KEYS: 1 states
// ARGV: 1 name, 2 id, 3 tick ms, 4 run id
// Reply: "recorded" | "stale" (an equal or later tick is recorded) |
// "gone" (removed or replaced)
var scheduleFiredScript = redis.NewScript(scheduleLua + `
local s = redis.call('HGET', KEYS[1], ARGV[1])
if not s then return 'gone' end
local id, p, a, l, r = parsestate(s)
if not id then return redis.error_reply('ERR unreadable schedule state of ' .. ARGV[1] .. ': ' .. s) end
if id ~= ARGV[2] then return 'gone' end
if tonumber(l) >= tonumber(ARGV[3]) then return 'stale' end
redis.call('HSET', KEYS[1], ARGV[1], table.concat({id, p, a, ARGV[3], ARGV[4]}, '|'))
return 'recorded'
`)

// RecordScheduleFired records tick tickMS of schedule name (generation
// id) as fired with run. It returns "recorded", "stale" (another process
// recorded this tick or a later one) or "gone" (the schedule was removed
// or replaced meanwhile).
func (d DB) RecordScheduleFired(ctx context.Context, name, id string, tickMS int64, run string) (string, error) {
	out, err := scheduleFiredScript.Run(ctx, d.C, []string{d.K.ScheduleStates()}, name, id, tickMS, run).Text()
	if err != nil {
		return "", fmt.Errorf("record tick of schedule %s: %w", name, err)
	}
	return out, nil
}

// ScheduleStates reads every schedule's state record (raw; see
// ParseScheduleState): one HGETALL of small values, what a scheduler
// reads on every pass.
func (d DB) ScheduleStates(ctx context.Context) (map[string]string, error) {
	m, err := d.C.HGetAll(ctx, d.K.ScheduleStates()).Result()
	if err != nil {
		return nil, fmt.Errorf("read schedule states: %w", err)
	}
	return m, nil
}

// ScheduleDefs reads the definitions of names; a name with no definition
// is absent from the map.
func (d DB) ScheduleDefs(ctx context.Context, names []string) (map[string]string, error) {
	out := make(map[string]string, len(names))
	if len(names) == 0 {
		return out, nil
	}
	vals, err := d.C.HMGet(ctx, d.K.Schedules(), names...).Result()
	if err != nil {
		return nil, fmt.Errorf("read schedules: %w", err)
	}
	for i, v := range vals {
		if s, ok := v.(string); ok {
			out[names[i]] = s
		}
	}
	return out, nil
}

// AllSchedules reads every definition and every state record in one MULTI
// (a consistent snapshot, for listing).
func (d DB) AllSchedules(ctx context.Context) (defs, states map[string]string, err error) {
	var dc, sc *redis.MapStringStringCmd
	if _, err := d.C.TxPipelined(ctx, func(p redis.Pipeliner) error {
		dc = p.HGetAll(ctx, d.K.Schedules())
		sc = p.HGetAll(ctx, d.K.ScheduleStates())
		return nil
	}); err != nil {
		return nil, nil, fmt.Errorf("read schedules: %w", err)
	}
	return dc.Val(), sc.Val(), nil
}
