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
// the same round trip. Concurrent submits go together (Submitter,
// SubmitRuns): one script call per partition creates their runs.

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
// One call creates several runs of one partition (SubmitRuns), each as a
// call of its own would (submitrun, under pcall: an error Redis raises at
// a run before its first write is that run's reply, nothing of it written, and
// the others go on). The call's KEYS are the runs' keys one run after the
// other; its ARGV: 1 the number of runs r, then per run its key count, its
// argument count and its arguments. One run's keys and arguments:
//
// KEYS: 1 state, 2 log, 3 feed, then the queue streams of the decisions
// ARGV: 1 event id, 2 time ms, 3 run_submitted body, 4 workflow name,
//
//	5 input, 6 n tasks, then n pairs (task id, meta JSON), then the run
//	id, d decisions, d x (event id, type, task, attempt, epoch, body,
//	task record, queue key index among the run's KEYS), more 0|1, writer,
//	traceparent ("" none), h, then h pairs (state field, value): the
//	run's handoffs (HandoffField, CountField, DispatchField), written
//	with its state
//
// Reply: per run, {"created", seq}, {"exists", workflow, run_submitted
// event id}, or an error
var submitScript = redis.NewScript(prelude + enqueueLua + `
-- STREAMS: the streams found writable (the call's runs share the feed and
-- their queues: each is type-checked once per call).
local STREAMS = {}
-- An existing run is left alone; the reply names its workflow and its
-- run_submitted event id (a caller whose pipeline was sent twice finds its
-- own id: it did create the run). first reads both from the log's first
-- entry, run_submitted: a succeeded run keeps only its log, so its state
-- hash has no @workflow.
local function first(log)
  local f = redis.call('XRANGE', log, '-', '+', 'COUNT', 1)
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
-- submitrun creates one run: KEYS and ARGV are the run's own (the
-- layout of a call of one run, above).
local function submitrun(KEYS, ARGV)
-- A state hash or a log (a succeeded run keeps only its log) is a run.
if redis.call('EXISTS', KEYS[1], KEYS[2]) > 0 then
  local id, wf = first(KEYS[2])
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
  if not STREAMS[KEYS[i]] then
    local bad = notwritable(KEYS[i], 'stream')
    if bad then return bad end
    STREAMS[KEYS[i]] = true
  end
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
end
-- The runs, each with its keys and arguments: an error Redis raises in a
-- run before its first write (a key of the wrong type, found by a read or
-- a check) is that run's reply, nothing of it written, and the other runs
-- go on.
local R, kpos, apos = {}, 0, 2
for r = 1, tonumber(ARGV[1]) do
  local nk, na = tonumber(ARGV[apos]), tonumber(ARGV[apos + 1])
  local K, A = slice(KEYS, kpos + 1, kpos + nk), slice(ARGV, apos + 2, apos + 1 + na)
  kpos, apos = kpos + nk, apos + 2 + na
  local ok, res = pcall(submitrun, K, A)
  if not ok and (type(res) ~= 'table' or not res.err) then res = redis.error_reply(tostring(res)) end
  R[r] = res
end
return R
`)

// SubmitArgsCmd queues the submit script for one run, with arguments from
// SubmitArgs and the initial decisions (none: the projector makes them);
// read it with ParseSubmit.
func (d DB) SubmitArgsCmd(ctx context.Context, p redis.Scripter, run string, args []any, init Initial) *redis.Cmd {
	keys, argv := d.submitRun(nil, []any{1}, run, args, init)
	return submitScript.Run(ctx, p, keys, argv...)
}

// submitRun appends one run's keys and its count, arguments and argument
// count of the submit script (see submitScript) to keys and argv.
func (d DB) submitRun(keys []string, argv []any, run string, args []any, init Initial) ([]string, []any) {
	own := []string{d.K.RunState(run), d.K.RunLog(run), d.K.FeedFor(run)}
	at := len(argv)
	argv = append(argv, 0, 0) // the run's key and argument counts, below
	argv = append(argv, args...)
	argv = append(argv, run, len(init.Events))
	var targets keyIndex
	for i, e := range init.Events {
		x := init.Dispatches[i]
		k := targets.of(&own, d.K.QueueFor(run, x.Pool, x.Priority))
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
	argv[at], argv[at+1] = len(own), len(argv)-at-2
	return append(keys, own...), argv
}

// ParseSubmit reads the reply of a submit call of one run (SubmitCmd,
// SubmitArgsCmd). created is also true when the run existed with ev's own
// run_submitted (the same submit sent again: a pipeline retried after a
// lost reply or a NOSCRIPT).
func ParseSubmit(run string, ev events.Event, body events.RunSubmittedBody, cmd *redis.Cmd) (created bool, workflow string, err error) {
	runs, err := cmd.Slice()
	if err != nil {
		return false, "", fmt.Errorf("submit run %s: %w", run, err)
	}
	if len(runs) != 1 {
		return false, "", fmt.Errorf("submit run %s: %d run replies for 1 run", run, len(runs))
	}
	return parseSubmitRun(run, ev.ID, body.Workflow, runs[0])
}

// parseSubmitRun reads one run's reply of a submit call (see ParseSubmit);
// eventID is its run_submitted's id, workflow its workflow's name.
func parseSubmitRun(run, eventID, workflow string, reply any) (created bool, wf string, err error) {
	if err, ok := reply.(error); ok {
		return false, "", fmt.Errorf("submit run %s: %w", run, err)
	}
	res, _ := reply.([]any)
	switch str(res, 0) {
	case "created":
		return true, workflow, nil
	case "exists":
		if id := str(res, 2); id != "" && id == eventID {
			return true, workflow, nil
		}
		return false, str(res, 1), nil
	}
	return false, "", fmt.Errorf("submit run %s: unexpected reply %v", run, reply)
}

// SubmitReq is one run's submit for SubmitRuns (make it with
// NewSubmitReq).
type SubmitReq struct {
	Run string
	// Args are the submit script's arguments (SubmitArgs); EventID and
	// Workflow are run_submitted's id and workflow name among them.
	Args     []any
	EventID  string
	Workflow string
	// Init are the decisions the submit makes at once.
	Init Initial
	// At scores the run's index entry.
	At time.Time
}

// NewSubmitReq encodes the submit of run, its run_submitted ev (whose body
// is body), the decisions init and its index time at.
func NewSubmitReq(run string, ev events.Event, body events.RunSubmittedBody, init Initial, at time.Time) (SubmitReq, error) {
	args, err := SubmitArgs(ev, body)
	if err != nil {
		return SubmitReq{}, err
	}
	return SubmitReq{Run: run, Args: args, EventID: ev.ID, Workflow: body.Workflow, Init: init, At: at}, nil
}

// SubmitReply is one run's reply of SubmitRuns. Created is also true when
// the run existed with the submit's own run_submitted (the same submit sent
// again); Workflow is the workflow the run was created with. Err is the
// run's error (the script refused it, or Redis did before its first
// write: nothing of it was written; or the call failed as a whole: it may have
// been written, and the same submit sent again finds it created). IndexErr
// is its index entry's: the run exists, but run lists miss it.
type SubmitReply struct {
	Created  bool
	Workflow string
	Err      error
	IndexErr error
}

// submitCallRuns bounds the runs of one submit call and submitCallArgs
// its arguments (a call holds Redis' one thread while it runs, about a
// microsecond per argument); a run never spans calls, so a large run may
// make a call of its own.
const (
	submitCallRuns = 64
	submitCallArgs = 8192
)

// SubmitRuns creates runs in one round trip: one submit script call for
// the runs of each partition (up to submitCallRuns runs and
// submitCallArgs arguments), then one run index write for them all. An
// index entry whose run was not created is dropped by the index sweep; an
// entry is written even when its run existed (an earlier submit may have
// died between the two). Sent again once after a NOSCRIPT (Pipelined);
// every submit is safe to send twice.
func (d DB) SubmitRuns(ctx context.Context, reqs []SubmitReq) []SubmitReply {
	if len(reqs) == 0 {
		return nil
	}
	type call struct {
		idx  []int
		keys []string
		argv []any
	}
	var calls []*call
	open := map[int]*call{} // by partition: the call filling up
	for i, r := range reqs {
		keys, argv := d.submitRun(nil, nil, r.Run, r.Args, r.Init)
		part := d.K.Partition(r.Run)
		c := open[part]
		if c == nil || len(c.idx) >= submitCallRuns || (len(c.idx) > 0 && len(c.argv)+len(argv) > submitCallArgs) {
			c = &call{argv: []any{0}}
			open[part] = c
			calls = append(calls, c)
		}
		c.idx = append(c.idx, i)
		c.keys = append(c.keys, keys...)
		c.argv = append(c.argv, argv...)
		c.argv[0] = len(c.idx)
	}
	cmds := make([]*redis.Cmd, len(calls))
	var index *redis.IntCmd
	_ = d.Pipelined(ctx, func(p redis.Pipeliner) error {
		for i, c := range calls {
			cmds[i] = submitScript.Run(ctx, p, c.keys, c.argv...)
		}
		zs := make([]redis.Z, len(reqs))
		for i, r := range reqs {
			zs[i] = redis.Z{Score: float64(r.At.UnixMilli()), Member: r.Run}
		}
		index = p.ZAddNX(ctx, d.K.Runs(), zs...)
		return nil
	})
	out := make([]SubmitReply, len(reqs))
	for i, c := range calls {
		runs, err := cmds[i].Slice()
		if err == nil && len(runs) != len(c.idx) {
			err = fmt.Errorf("%d run replies for %d runs", len(runs), len(c.idx))
		}
		for k, j := range c.idx {
			r := &out[j]
			if err != nil {
				r.Err = fmt.Errorf("submit run %s: %w", reqs[j].Run, err)
				continue
			}
			r.Created, r.Workflow, r.Err = parseSubmitRun(reqs[j].Run, reqs[j].EventID, reqs[j].Workflow, runs[k])
			r.IndexErr = index.Err()
		}
	}
	return out
}

// IndexRun adds run to the run index, scored by its submit time (an
// existing entry keeps its score; pipelineable).
func (d DB) IndexRun(ctx context.Context, p redis.Cmdable, run string, at time.Time) *redis.IntCmd {
	return p.ZAddNX(ctx, d.K.Runs(), redis.Z{Score: float64(at.UnixMilli()), Member: run})
}
