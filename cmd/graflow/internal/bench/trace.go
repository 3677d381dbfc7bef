//go:build unix

package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// Trace modes: one run on an idle engine.
const (
	ModeSingle = "single" // one task
	ModeChain3 = "chain3" // a 3-step sequence
)

// Component is what one engine component sent to Redis while a traced run
// went through an idle engine.
type Component struct {
	// RoundTrips: requests sent (a pipeline is one).
	RoundTrips int `json:"round_trips"`
	// Commands sent, by name; scripts as "evalsha <script>".
	Commands map[string]int `json:"commands"`
}

// quiet is how long the engine must send nothing to count as idle.
const quiet = 100 * time.Millisecond

// tracer records, per component, the commands sent while it is on.
type tracer struct {
	scripts map[string]string // sha → script name

	mu   sync.Mutex
	on   bool
	last time.Time
	comp map[string]*Component
}

func newTracer() *tracer {
	t := &tracer{scripts: map[string]string{}, comp: map[string]*Component{}, last: time.Now()}
	for name, s := range rdb.Scripts() {
		t.scripts[s.Hash()] = name
	}
	return t
}

func (t *tracer) hook(component string) redis.Hook { return &traceHook{t: t, component: component} }

func (t *tracer) label(cmd redis.Cmder) string {
	name := strings.ToLower(cmd.Name())
	if name == "evalsha" {
		if args := cmd.Args(); len(args) > 1 {
			if sha, ok := args[1].(string); ok {
				if s, ok := t.scripts[sha]; ok {
					return "evalsha " + s
				}
			}
		}
	}
	return name
}

func (t *tracer) record(component string, cmds []redis.Cmder) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.last = time.Now()
	if !t.on {
		return
	}
	c := t.comp[component]
	if c == nil {
		c = &Component{Commands: map[string]int{}}
		t.comp[component] = c
	}
	c.RoundTrips++
	for _, cmd := range cmds {
		c.Commands[t.label(cmd)]++
	}
}

// start clears the record and turns recording on.
func (t *tracer) start() {
	t.mu.Lock()
	t.on, t.comp = true, map[string]*Component{}
	t.mu.Unlock()
}

// stop turns recording off and returns what was recorded.
func (t *tracer) stop() map[string]Component {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.on = false
	out := make(map[string]Component, len(t.comp))
	for k, v := range t.comp {
		out[k] = *v
	}
	return out
}

// waitQuiet waits until no component has sent anything for `quiet`: the
// engine has finished its follow-up steps and every component is blocked
// on a read. (A diagnostic's definition of idle; never used in a
// measurement of speed.)
func (t *tracer) waitQuiet(ctx context.Context) error {
	for {
		t.mu.Lock()
		left := quiet - time.Since(t.last)
		t.mu.Unlock()
		if left <= 0 {
			return nil
		}
		tm := time.NewTimer(left)
		select {
		case <-ctx.Done():
			tm.Stop()
			return ctx.Err()
		case <-tm.C:
		}
	}
}

type traceHook struct {
	t         *tracer
	component string
}

func (h *traceHook) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (h *traceHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		h.t.record(h.component, []redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (h *traceHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		h.t.record(h.component, cmds)
		return next(ctx, cmds)
	}
}

// traceRepeats: each traced run is repeated and the quietest kept, so that
// a periodic job (registry refresh, delayed mover) that happened to fire
// during one of them is left out.
const traceRepeats = 3

// trace sends single runs through an idle in-process engine, with every
// component's Redis client recorded: the exact round trips and commands
// each component spends on one run, from the code as it is.
func (h *harness) trace(ctx context.Context, run int) (_ []Result, err error) {
	tr := newTracer()
	// Long blocks and lease: no idle timeout or periodic job during a
	// traced run (the quietest repeat is kept anyway).
	s, err := h.startStack(ctx, h.namespace(Trace, run), stackOptions{workers: 1, inProcess: true,
		block: time.Minute, lease: 10 * time.Minute, hook: tr.hook})
	if err != nil {
		return nil, err
	}
	defer func() { err = errors.Join(err, s.done(ctx)) }()
	var out []Result
	for _, mode := range []string{ModeSingle, ModeChain3} {
		wf := graflow.NewWorkflow("bench-trace-" + mode)
		if mode == ModeSingle {
			wf.Task("t", builtin.Noop)
		} else {
			wf.Sequence(wf.Task("a", builtin.Noop), wf.Task("b", builtin.Noop), wf.Task("c", builtin.Noop))
		}
		spec, err := wf.Spec(nil)
		if err != nil {
			return nil, err
		}
		var best *Result
		for i := range traceRepeats {
			if err := tr.waitQuiet(ctx); err != nil {
				return nil, err
			}
			a, err := s.take(ctx)
			if err != nil {
				return nil, err
			}
			id := fmt.Sprintf("%s-%d", mode, i)
			tr.start()
			if _, err := s.client.SubmitSpec(ctx, spec, graflow.WithRunID(id)); err != nil {
				return nil, err
			}
			if _, t, err := s.waitRun(ctx, id); err != nil {
				return nil, err
			} else if t != "run_succeeded" {
				return nil, fmt.Errorf("%w: run %s ended with %s", errRunFailed, id, t)
			}
			if err := tr.waitQuiet(ctx); err != nil {
				return nil, err
			}
			comps := tr.stop()
			b, err := s.take(ctx)
			if err != nil {
				return nil, err
			}
			evs, err := s.countEvents(ctx, []string{id})
			if err != nil {
				return nil, err
			}
			bytes, err := s.runBytes(ctx, id)
			if err != nil {
				return nil, err
			}
			n := len(spec.Tasks)
			r := Result{Workload: Trace, Mode: mode, Run: run, Tasks: n, WorkflowRuns: 1, Events: int(evs),
				WorkerProcesses: 1, Concurrency: h.cfg.Concurrency, EventsPerTask: perTask(float64(evs), n), Trace: comps}
			s.cost(&r, a, b, n)
			// One run is too small for used_memory: count its keys instead.
			r.RedisBytesPerTask = perTask(float64(bytes), n)
			if best == nil || r.traceTrips() < best.traceTrips() {
				best = &r
			}
		}
		out = append(out, *best)
	}
	return out, nil
}

// runBytes is the memory of run's keys (MEMORY USAGE, every element
// sampled).
func (s *stack) runBytes(ctx context.Context, run string) (int64, error) {
	return s.m.RunMemory(ctx, run)
}

// traceTrips is the total of a trace's round trips.
func (r *Result) traceTrips() int {
	n := 0
	for _, c := range r.Trace {
		n += c.RoundTrips
	}
	return n
}

// traceComponents lists a trace's components in path order.
func traceComponents(tr map[string]Component) []string {
	order := map[string]int{"submit": 0, "projector": 1, "worker": 2}
	var out []string
	for k := range tr {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool {
		oi, ok := order[out[i]]
		if !ok {
			oi = 9
		}
		oj, ok := order[out[j]]
		if !ok {
			oj = 9
		}
		if oi != oj {
			return oi < oj
		}
		return out[i] < out[j]
	})
	return out
}

// commandList renders "name ×n" pairs, most frequent first.
func commandList(cmds map[string]int) string {
	type kv struct {
		k string
		v int
	}
	var l []kv
	for k, v := range cmds {
		l = append(l, kv{k, v})
	}
	sort.Slice(l, func(i, j int) bool {
		if l[i].v != l[j].v {
			return l[i].v > l[j].v
		}
		return l[i].k < l[j].k
	})
	parts := make([]string, len(l))
	for i, x := range l {
		parts[i] = fmt.Sprintf("%s ×%d", x.k, x.v)
	}
	return strings.Join(parts, ", ")
}
