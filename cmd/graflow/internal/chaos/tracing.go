//go:build unix

package chaos

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"slices"
	"sort"
	"sync"
	"syscall"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"
)

// Tracing under chaos. Every run is submitted traced: the stack's Client
// has an SDK TracerProvider (parent-based, always on, its spans kept in
// memory), and each submit runs inside a chaos span that decides the run's
// sampling: sampled, or, for the runs chosen unsampled, a span of a
// never-sampling provider (an upstream that decided not to sample). The
// worker and projector processes trace too (cmd/graflow/tracing.go, from
// the OTEL_* environment of tracingEnv): they export OTLP/HTTP to the
// collector, a receiver on loopback in this process. checkTrace then
// holds each run to its trace context: run_submitted carries the chaos
// span's trace id and sampling flag, and every engine span that names the
// run, in this process or any other, is of that trace; a sampled run's
// projection and tasks have spans (project, claim, handler, finish), an
// unsampled one none.

// chaosScope is the instrumentation scope of chaos' own spans (the parents
// of the submits).
const chaosScope = "github.com/graflow-go/graflow/cmd/graflow/internal/chaos"

// tracer is the in-process side: the Client's provider, its in-memory
// exporter, and the providers of the submits' parent spans.
type tracer struct {
	mem     *tracetest.InMemoryExporter
	client  *sdktrace.TracerProvider // the Client's
	sampled trace.Tracer             // roots, always sampled
	dropped trace.Tracer             // roots, never sampled
	off     *sdktrace.TracerProvider

	mu sync.Mutex
	// want is each submitted run's trace: its trace id and whether it is
	// sampled.
	want map[string]trace.SpanContext
}

func newTracer() *tracer {
	mem := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.AlwaysSample())), sdktrace.WithSyncer(mem))
	off := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.NeverSample()))
	return &tracer{mem: mem, client: tp, off: off, sampled: tp.Tracer(chaosScope), dropped: off.Tracer(chaosScope),
		want: map[string]trace.SpanContext{}}
}

func (t *tracer) shutdown() {
	_ = t.client.Shutdown(context.Background())
	_ = t.off.Shutdown(context.Background())
}

// submit submits wf as run under a chaos span, sampled or not, retrying
// while Redis restarts (every retry in the same trace), and records the
// trace the run must carry.
func (s *stack) submit(ctx context.Context, wf *graflow.Workflow, input any, run string, sampled bool) error {
	ctx, span := s.tracer.start(ctx, run, sampled)
	defer span.End()
	return retryRedis(ctx, func() error {
		_, err := s.client.Submit(ctx, wf, input, graflow.WithRunID(run))
		return err
	})
}

// start starts run's chaos span, sampled or not, and records its trace as
// the one run must carry.
func (t *tracer) start(ctx context.Context, run string, sampled bool) (context.Context, trace.Span) {
	tr := t.dropped
	if sampled {
		tr = t.sampled
	}
	ctx, span := tr.Start(ctx, "chaos.submit", trace.WithAttributes(tracing.Run.String(run)))
	t.mu.Lock()
	t.want[run] = span.SpanContext()
	t.mu.Unlock()
	return ctx, span
}

// sampleRun reports whether the soak's n-th run is submitted sampled: all
// but every fifth.
func sampleRun(n int) bool { return n%5 != 4 }

// tracingEnv is the OTEL_* environment of the worker and projector
// processes: OTLP/HTTP to the collector at endpoint (a loopback URL),
// parent-based always-on sampling, a short batch delay (a SIGKILLed
// process loses less). Later entries win over the inherited environment
// (os/exec keeps the last of duplicates), so a caller's own OTEL_* cannot
// send chaos' spans elsewhere.
func tracingEnv(endpoint, service string) []string {
	return []string{
		"OTEL_SDK_DISABLED=false",
		"OTEL_TRACES_EXPORTER=otlp",
		"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=http/protobuf",
		"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT=" + endpoint,
		"OTEL_EXPORTER_OTLP_ENDPOINT=",
		"OTEL_EXPORTER_OTLP_TRACES_HEADERS=",
		"OTEL_EXPORTER_OTLP_HEADERS=",
		"OTEL_TRACES_SAMPLER=parentbased_always_on",
		"OTEL_BSP_SCHEDULE_DELAY=200",
		"OTEL_SERVICE_NAME=" + service,
	}
}

// collector is an OTLP/HTTP trace receiver on loopback (POST /v1/traces,
// protobuf, gzip or not). Of the spans it receives it keeps, per run, the
// engine's spans (scope tracing.ScopeName, with a graflow.run.id) by name
// and trace id; Redis command spans and the rest are counted only.
type collector struct {
	ln  net.Listener
	srv *http.Server
	url string
	wg  sync.WaitGroup

	mu        sync.Mutex
	runs      map[string]runSpans
	received  int      // spans, all kinds
	bad       []string // requests it could not read (the first few)
	truncated int      // requests cut short by a killed exporter
}

// runSpans are the engine spans of one run that the processes exported,
// by trace.
type runSpans map[trace.TraceID]*traceSpans

// traceSpans are a run's spans of one trace: counts by name, and the first
// task attempt seen (to name one in a problem).
type traceSpans struct {
	names   map[string]int
	n       int
	example string
}

// names sums the counts by name over the traces (all: the trace ids; nil:
// every trace).
func (r runSpans) names(ids ...trace.TraceID) map[string]int {
	out := map[string]int{}
	for id, t := range r {
		if ids != nil && !slices.Contains(ids, id) {
			continue
		}
		for k, v := range t.names {
			out[k] += v
		}
	}
	return out
}

func startCollector() (*collector, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("trace collector: %w", err)
	}
	c := &collector{ln: ln, url: "http://" + ln.Addr().String() + "/v1/traces", runs: map[string]runSpans{}}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /v1/traces", c.export)
	c.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	c.wg.Add(1)
	go func() {
		defer c.wg.Done()
		_ = c.srv.Serve(ln)
	}()
	return c, nil
}

// close stops the receiver and waits for it.
func (c *collector) close() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = c.srv.Shutdown(ctx)
	c.wg.Wait()
}

func (c *collector) export(w http.ResponseWriter, r *http.Request) {
	req, err := readExport(r)
	if err != nil && (errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, syscall.ECONNRESET)) {
		// The exporting process was killed mid-request (a fault of the
		// schedule): its batch is lost as its unsent spans are, which the
		// checks allow for a killed process. Not the collector's failure.
		c.mu.Lock()
		c.truncated++
		c.mu.Unlock()
		return
	}
	if err != nil {
		c.mu.Lock()
		if len(c.bad) < 5 {
			c.bad = append(c.bad, err.Error())
		}
		c.mu.Unlock()
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.add(req)
	out, _ := proto.Marshal(&coltracepb.ExportTraceServiceResponse{})
	w.Header().Set("Content-Type", "application/x-protobuf")
	_, _ = w.Write(out)
}

func readExport(r *http.Request) (*coltracepb.ExportTraceServiceRequest, error) {
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		z, err := gzip.NewReader(r.Body)
		if err != nil {
			return nil, fmt.Errorf("trace export: gzip: %w", err)
		}
		defer z.Close()
		body = z
	}
	raw, err := io.ReadAll(body)
	if err != nil {
		return nil, fmt.Errorf("trace export: read: %w", err)
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(raw, &req); err != nil {
		return nil, fmt.Errorf("trace export: decode (%s): %w", r.Header.Get("Content-Type"), err)
	}
	return &req, nil
}

func (c *collector) add(req *coltracepb.ExportTraceServiceRequest) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		for _, ss := range rs.GetScopeSpans() {
			engine := ss.GetScope().GetName() == tracing.ScopeName
			for _, sp := range ss.GetSpans() {
				c.received++
				if !engine {
					continue
				}
				var run, task string
				var attempt int64
				for _, kv := range sp.GetAttributes() {
					switch kv.GetKey() {
					case string(tracing.Run):
						run = kv.GetValue().GetStringValue()
					case string(tracing.Task):
						task = kv.GetValue().GetStringValue()
					case string(tracing.Attempt):
						attempt = kv.GetValue().GetIntValue()
					}
				}
				if run == "" {
					continue
				}
				if c.runs[run] == nil {
					c.runs[run] = runSpans{}
				}
				var id trace.TraceID
				copy(id[:], sp.GetTraceId()) // a malformed id reads as another trace
				t := c.runs[run][id]
				if t == nil {
					t = &traceSpans{names: map[string]int{}}
					c.runs[run][id] = t
				}
				t.n++
				t.names[sp.GetName()]++
				if t.example == "" && task != "" {
					t.example = fmt.Sprintf("%s of task %s attempt %d", sp.GetName(), task, attempt)
				}
			}
		}
	}
}

// spans returns a copy of run's engine spans received so far.
func (c *collector) spans(run string) runSpans {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := runSpans{}
	for id, t := range c.runs[run] {
		out[id] = &traceSpans{names: maps.Clone(t.names), n: t.n, example: t.example}
	}
	return out
}

// processSpans are the engine spans a sampled run's projection and tasks
// make in the processes: each must have reached the collector at least
// once by the end of a chaos run (the processes flush theirs when they
// stop; a SIGKILLed one loses its last batch, but not every one of them).
var processSpans = []string{tracing.SpanProject, tracing.SpanClaim, tracing.SpanHandler, tracing.SpanFinish}

// checkTrace holds run to the trace of its submit (see the comment at the
// top): run_submitted in evs, the submit spans in memory, and the spans
// the processes exported. complete says the processes have stopped (their
// spans flushed): only then must a sampled run's process spans all be
// there. It returns whether the run was submitted sampled, whether its
// trace held, the engine spans it counted, and the problems.
func (s *stack) checkTrace(run string, evs []events.Event, complete bool) (sampled, ok bool, n int, problems []string) {
	s.tracer.mu.Lock()
	want, known := s.tracer.want[run]
	s.tracer.mu.Unlock()
	if !known {
		return false, false, 0, []string{fmt.Sprintf("trace: run %s was not submitted by chaos", run)}
	}
	sampled = want.IsSampled()
	bad := func(format string, args ...any) {
		problems = append(problems, "trace: "+fmt.Sprintf(format, args...))
	}

	// run_submitted's traceparent: the chaos span's trace, its sampling.
	found := false
	for _, e := range evs {
		var b events.RunSubmittedBody
		if e.Type != events.RunSubmitted {
			continue
		}
		found = true
		if err := e.DecodeBody(&b); err != nil {
			bad("run_submitted does not decode: %v", err)
			break
		}
		sc := trace.SpanContextFromContext(tracing.WithTraceparent(context.Background(), b.Traceparent))
		switch {
		case !tracing.Valid(b.Traceparent):
			bad("run_submitted carries no valid traceparent (%q), want one of trace %s", b.Traceparent, want.TraceID())
		case sc.TraceID() != want.TraceID():
			bad("run_submitted's traceparent %s is not of the submit's trace %s", b.Traceparent, want.TraceID())
		case sc.IsSampled() != sampled:
			bad("run_submitted's traceparent %s says sampled=%t, the submit was sampled=%t", b.Traceparent, sc.IsSampled(), sampled)
		}
		break
	}
	if !found {
		bad("the log has no run_submitted")
	}

	// The client's graflow.submit spans of run (one per attempt).
	submits := 0
	for _, sp := range s.tracer.mem.GetSpans() {
		if sp.Name != tracing.SpanSubmit || !hasAttr(sp.Attributes, tracing.Run.String(run)) {
			continue
		}
		submits++
		if sp.SpanContext.TraceID() != want.TraceID() {
			bad("a graflow.submit span is of trace %s, the chaos span's is %s", sp.SpanContext.TraceID(), want.TraceID())
		}
	}
	switch {
	case sampled && submits == 0:
		bad("the sampled submit made no graflow.submit span")
	case !sampled && submits > 0:
		bad("the unsampled submit exported %d graflow.submit spans", submits)
	}

	// The processes' spans of run.
	got := s.collector.spans(run)
	var foreign []trace.TraceID
	lost, example := 0, ""
	for id, t := range got {
		n += t.n
		if id != want.TraceID() {
			foreign = append(foreign, id)
			lost += t.n
			if example == "" || example > t.example { // the same one whatever the map's order
				example = t.example
			}
		}
	}
	if len(foreign) > 0 {
		bad("%d spans of the run (%s) are in %d other traces than the run's %s (e.g. %s): a path lost the run's trace context",
			lost, names(got.names(foreign...)), len(foreign), want.TraceID(), example)
	}
	switch {
	case !sampled && n > 0:
		bad("the unsampled run has %d exported spans (%s): a path lost its sampling decision", n, names(got.names()))
	case sampled && complete:
		var missing []string
		all := got.names()
		// Which processes acted on the run, and whether every one of them
		// was SIGKILLed at some point (its last unexported batch is lost
		// with it: a small run's spans may all have been in it). A run no
		// projector acted on (the submit dispatched its roots, its last
		// finish ended it) has no project span.
		s.mu.Lock()
		projectors, projectorsKilled := writers(evs, s.isProjector, s.killed)
		workers, workersKilled := writers(evs, func(w string) bool {
			return w != "" && w != "submit" && !s.isProjector(w)
		}, s.killed)
		s.mu.Unlock()
		for _, name := range processSpans {
			if name == tracing.SpanProject && (projectors == 0 || projectorsKilled) ||
				name != tracing.SpanProject && workers > 0 && workersKilled {
				continue
			}
			if all[name] == 0 {
				missing = append(missing, name)
			}
		}
		if len(missing) > 0 {
			bad("the sampled run has no %v spans from the processes (got %s)", missing, names(all))
		}
	}
	return sampled, sampled && len(problems) == 0, n + submits, problems
}

// writers counts the distinct writers of evs that is selects and reports
// whether every one of them is in killed.
func writers(evs []events.Event, is func(string) bool, killed map[string]bool) (n int, allKilled bool) {
	seen := map[string]bool{}
	allKilled = true
	for _, e := range evs {
		if !is(e.Worker) || seen[e.Worker] {
			continue
		}
		seen[e.Worker] = true
		allKilled = allKilled && killed[e.Worker]
	}
	return len(seen), len(seen) > 0 && allKilled
}

func hasAttr(attrs []attribute.KeyValue, want attribute.KeyValue) bool {
	for _, a := range attrs {
		if a.Key == want.Key && a.Value.String() == want.Value.String() {
			return true
		}
	}
	return false
}

// names prints span counts by name, sorted: "graflow.claim=3 ...".
func names(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b bytes.Buffer
	for i, k := range keys {
		if i > 0 {
			b.WriteByte(' ')
		}
		fmt.Fprintf(&b, "%s=%d", k, m[k])
	}
	if b.Len() == 0 {
		return "none"
	}
	return b.String()
}

// collectorProblems are the collector's own failures (requests it could
// not decode): a failed check, since spans may then be missing unseen.
func (c *collector) problems() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []string
	for _, b := range c.bad {
		out = append(out, "trace collector: "+b)
	}
	return out
}
