package rdb

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/redis/go-redis/v9"
)

// The submit flow: one script on the run's partition slot creates the run
// and, when the submitter folded them from run_submitted, dispatches its
// root tasks (the projector's first commit); the run index entry rides in
// the same round trip (SubmitVia).

// Submit runs the submit script. created is false if the run already
// existed, with the workflow name it was created with.
func (d DB) Submit(ctx context.Context, run string, ev events.Event, body events.RunSubmittedBody) (created bool, workflow string, err error) {
	cmd, err := d.SubmitCmd(ctx, d.C, run, ev, body)
	if err != nil {
		return false, "", err
	}
	return ParseSubmit(run, ev, body, cmd)
}

// SubmitCmd queues the submit script on p; read it with ParseSubmit.
func (d DB) SubmitCmd(ctx context.Context, p redis.Scripter, run string, ev events.Event, body events.RunSubmittedBody) (*redis.Cmd, error) {
	args, err := SubmitArgs(ev, body)
	if err != nil {
		return nil, err
	}
	return d.SubmitArgsCmd(ctx, p, run, args, Initial{}), nil
}

// SubmitArgs encodes the submit script's arguments (the step that can
// fail), for SubmitArgsCmd.
func SubmitArgs(ev events.Event, body events.RunSubmittedBody) ([]any, error) {
	args := make([]any, 0, 6+2*len(body.Tasks))
	args = append(args, ev.ID, strconv.FormatInt(ev.Time.UnixMilli(), 10), string(ev.Body), body.Workflow, string(body.Input), len(body.Tasks))
	for _, t := range body.Tasks {
		m, err := json.Marshal(MetaOf(t))
		if err != nil {
			return nil, err
		}
		args = append(args, t.ID, string(m))
	}
	return args, nil
}

// Initial is what a submit decides at once, folded by the submitter from
// run_submitted: the projector's first commit, made by the submit script.
type Initial struct {
	// Events are the decisions (task_dispatched), stamped with ids; each
	// has its Dispatch at the same index.
	Events     []events.Event
	Dispatches []Dispatch
	// More says the fold calls for more decisions than these: the run is
	// marked dirty and the feed pointed at it.
	More   bool
	Writer string
	// Trace is the W3C traceparent the dispatches' queue messages carry
	// (run_submitted's); "" for none.
	Trace string
	// Handoffs are the successes the worker's finish hands on itself
	// (projector.Handoffs), by task: recorded in the state hash for the
	// finish script (HandoffField, CountField, DispatchField).
	Handoffs map[string][]Handoff
}

// Handoff is a dependent a success counts down and, at zero, dispatches
// in the finish (projector.Handoff): Deps is its dependency count.
type Handoff struct {
	Task     string
	Pool     string
	Priority int
	Deps     int
}

// HandoffMaxTasks bounds the runs whose successes are handed on: the
// state hash holds up to three fields per task for them.
const HandoffMaxTasks = 100_000

// HandoffField is the state hash field of the dependents task's success
// hands on, comma-separated (task ids hold no comma).
func HandoffField(task string) string { return "@n:" + task }

// CountField is the state hash field of a handed-on dependent's count of
// dependencies not yet succeeded.
func CountField(task string) string { return "@w:" + task }

// DispatchField is the state hash field of a handed-on dependent's
// dispatch: its queue key, a tab, its task_dispatched body (a JSON body
// holds no raw tab).
func DispatchField(task string) string { return "@d:" + task }

// handoffFields returns the state hash fields of a run's handoffs, as
// field, value pairs.
func (d DB) handoffFields(run string, hs map[string][]Handoff) []any {
	var out []any
	seen := map[string]bool{}
	for _, task := range slices.Sorted(maps.Keys(hs)) {
		ids := make([]string, len(hs[task]))
		for i, h := range hs[task] {
			ids[i] = h.Task
			if seen[h.Task] {
				continue
			}
			seen[h.Task] = true
			body, _ := json.Marshal(events.TaskDispatchedBody{Pool: h.Pool, Priority: h.Priority})
			out = append(out, CountField(h.Task), h.Deps, DispatchField(h.Task), d.K.QueueFor(run, h.Pool, h.Priority)+"\t"+string(body))
		}
		out = append(out, HandoffField(task), strings.Join(ids, ","))
	}
	return out
}

// submitScript creates a run: appends run_submitted, writes the run's
// static metadata, and then either applies the decisions the submitter
// folded from run_submitted (its root tasks' dispatches: the projector's
// first commit, made here because the run's queue shares its slot) or, with
// none, marks the run dirty and points the feed at it. After decisions, the
// run is marked dirty and the feed pointed at it only when the fold calls
// for more decisions than these (more). Idempotent: an existing run is left
// untouched.
//
// KEYS: 1 state, 2 log, 3 feed, then the queue streams of the decisions
// ARGV: 1 event id, 2 time ms, 3 run_submitted body, 4 workflow name,
//
//	5 input, 6 n tasks, then n pairs (task id, meta JSON), then the run
//	id, d decisions, d x (event id, type, task, attempt, epoch, body,
//	task record, queue key index), more 0|1, writer, traceparent (""
//	none), h, then h pairs (state field, value): the run's handoffs
//	(HandoffField, CountField, DispatchField), written with its state
//
// Reply: {"created", seq} or {"exists", workflow, run_submitted event id}
var submitScript = redis.NewScript(prelude + enqueueLua + `
-- An existing run is left alone; the reply names its workflow and its
-- run_submitted event id (a caller whose pipeline was sent twice finds its
-- own id: it did create the run). first reads both from the log's first
-- entry, run_submitted: a succeeded run keeps only its log, so its state
-- hash has no @workflow.
local function first()
  local f = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 1)
  if #f == 0 then return '', '' end
  local kv, id, wf = f[1][2], '', ''
  for i = 1, #kv, 2 do
    if kv[i] == 'id' then id = kv[i + 1] end
    if kv[i] == 'b' then
      local ok, b = pcall(cjson.decode, kv[i + 1])
      if ok and type(b) == 'table' and type(b.workflow) == 'string' then wf = b.workflow end
    end
  end
  return id, wf
end
-- A state hash or a log (a succeeded run keeps only its log) is a run.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  local id, wf = first()
  return {'exists', redis.call('HGET', KEYS[1], '@workflow') or wf, id}
end
local n = tonumber(ARGV[6])
local run = ARGV[7 + 2 * n]
local d = tonumber(ARGV[8 + 2 * n] or '0') or 0
local dec = 9 + 2 * n
local more = ARGV[dec + 8 * d] == '1'
local writer = ARGV[dec + 8 * d + 1] or ''
local trace = ARGV[dec + 8 * d + 2]
local hx = dec + 8 * d + 3
local nh = tonumber(ARGV[hx] or '0') or 0
-- The streams this call writes: the feed only when it points it.
local from = 4
if d == 0 or more then from = 3 end
for i = from, #KEYS do
  local bad = notwritable(KEYS[i], 'stream')
  if bad then return bad end
end
local seq = append(KEYS[2], ARGV[1], 'run_submitted', '', 0, 0, '', ARGV[3])
-- The run's fields, its tasks' metadata (@g:<task>) and its input (no
-- input is no @input field: a reader's nil is ""), all in one HSET.
local fields = {'@status', 'running', '@workflow', ARGV[4], '@tasks', ARGV[6]}
if ARGV[5] ~= '' then fields[#fields + 1] = '@input'; fields[#fields + 1] = ARGV[5] end
for j = 7, 6 + 2 * n, 2 do
  fields[#fields + 1] = '@g:' .. ARGV[j]; fields[#fields + 1] = ARGV[j + 1]
end
local last = seq
for j = 0, d - 1 do
  local a = dec + 8 * j
  last = append(KEYS[2], ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3], ARGV[a + 4], writer, ARGV[a + 5])
  fields[#fields + 1] = ARGV[a + 2]; fields[#fields + 1] = ARGV[a + 6]
  enqueue(KEYS[tonumber(ARGV[a + 7])], run, ARGV[a + 2], ARGV[a + 3], trace)
end
if d > 0 then
  fields[#fields + 1] = '@commit'; fields[#fields + 1] = ARGV[dec]
  fields[#fields + 1] = '@cursor'; fields[#fields + 1] = last
end
if d == 0 or more then
  fields[#fields + 1] = '@dirty'; fields[#fields + 1] = '1'
end
for j = hx + 1, hx + 2 * nh do fields[#fields + 1] = ARGV[j] end
chunked('HSET', KEYS[1], fields, 1, #fields)
if d == 0 or more then
  redis.call('XADD', KEYS[3], '*', 'r', run)
end
return {'created', seq}
`)

// SubmitArgsCmd queues the submit script with arguments from SubmitArgs
// and the initial decisions (none: the projector makes them).
func (d DB) SubmitArgsCmd(ctx context.Context, p redis.Scripter, run string, args []any, init Initial) *redis.Cmd {
	keys := []string{d.K.RunState(run), d.K.RunLog(run), d.K.FeedFor(run)}
	argv := make([]any, 0, len(args)+4+8*len(init.Events))
	argv = append(argv, args...)
	argv = append(argv, run, len(init.Events))
	var targets keyIndex
	for i, e := range init.Events {
		x := init.Dispatches[i]
		k := targets.of(&keys, d.K.QueueFor(run, x.Pool, x.Priority))
		rec := Record{Status: events.TaskStatusDispatched, Attempt: x.Attempt, Epoch: e.Epoch}.String()
		argv = append(argv, e.ID, string(e.Type), e.Task, e.Attempt, e.Epoch, string(e.Body), rec, k)
	}
	more := 0
	if init.More {
		more = 1
	}
	hf := d.handoffFields(run, init.Handoffs)
	argv = append(argv, more, init.Writer, init.Trace, len(hf)/2)
	argv = append(argv, hf...)
	return submitScript.Run(ctx, p, keys, argv...)
}

// SubmitVia queues the submit script and the run's index entry on comb
// (concurrent submits share a round trip) and waits for them: reply is the
// script's (read it with ParseSubmit), indexErr the index entry's.
func (d DB) SubmitVia(ctx context.Context, comb *Combiner, run string, args []any, init Initial, at time.Time) (reply *redis.Cmd, indexErr, err error) {
	var index *redis.IntCmd
	if err := comb.Do(ctx, func(pipe redis.Pipeliner) {
		reply = d.SubmitArgsCmd(ctx, pipe, run, args, init)
		index = d.IndexRun(ctx, pipe, run, at)
	}); err != nil {
		return nil, nil, err
	}
	return reply, index.Err(), nil
}

// ParseSubmit reads a submit command's reply. created is also true when
// the run existed with ev's own run_submitted (the same submit sent again:
// a pipeline retried after a lost reply or a NOSCRIPT).
func ParseSubmit(run string, ev events.Event, body events.RunSubmittedBody, cmd *redis.Cmd) (created bool, workflow string, err error) {
	res, err := cmd.StringSlice()
	if err != nil {
		return false, "", fmt.Errorf("submit run %s: %w", run, err)
	}
	if res[0] == "created" {
		return true, body.Workflow, nil
	}
	if len(res) > 2 && res[2] != "" && res[2] == ev.ID {
		return true, body.Workflow, nil
	}
	return false, res[1], nil
}

// IndexRun adds run to the run index, scored by its submit time (an
// existing entry keeps its score; pipelineable).
func (d DB) IndexRun(ctx context.Context, p redis.Cmdable, run string, at time.Time) *redis.IntCmd {
	return p.ZAddNX(ctx, d.K.Runs(), redis.Z{Score: float64(at.UnixMilli()), Member: run})
}
