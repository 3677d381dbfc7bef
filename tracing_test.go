package graflow_test

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

// traced is one simulated process: its own Redis client, instrumented
// with redisotel, and its own TracerProvider exporting to memory.
type traced struct {
	rc  *redis.Client
	tp  *sdktrace.TracerProvider
	exp *tracetest.InMemoryExporter
}

func newTraced(t *testing.T) traced {
	t.Helper()
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	t.Cleanup(func() { _ = tp.Shutdown(context.Background()) })
	rc := redistest.Client(t)
	if err := graflow.InstrumentRedis(rc, tp); err != nil {
		t.Fatal(err)
	}
	return traced{rc: rc, tp: tp, exp: exp}
}

// attr returns span s's attribute k ("" when absent).
func attr(s tracetest.SpanStub, k attribute.Key) attribute.Value {
	for _, kv := range s.Attributes {
		if kv.Key == k {
			return kv.Value
		}
	}
	return attribute.Value{}
}

func named(spans tracetest.SpanStubs, name string) []tracetest.SpanStub {
	var out []tracetest.SpanStub
	for _, s := range spans {
		if s.Name == name {
			out = append(out, s)
		}
	}
	return out
}

func TestOneTraceShowsARunAcrossProcesses(t *testing.T) {
	t.Parallel()
	ns := redistest.Namespace(t)
	client, proj, work := newTraced(t), newTraced(t), newTraced(t)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	runCtx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: proj.rc, Namespace: ns, FeedBlock: 200 * time.Millisecond,
		RetryInitial: 20 * time.Millisecond, TracerProvider: proj.tp})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: work.rc, Namespace: ns, ID: "traced", FetchBlock: 200 * time.Millisecond,
		DrainTimeout: time.Second, TracerProvider: work.tp})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("trace.first", func(ctx context.Context, _ *worker.Task) (any, error) {
		// A handler's own spans are children of its graflow.handler span.
		_, s := trace.SpanFromContext(ctx).TracerProvider().Tracer("user").Start(ctx, "user.work")
		s.End()
		return 1, nil
	})
	w.HandleFunc("trace.second", func(_ context.Context, t *worker.Task) (any, error) {
		if t.Attempt == 1 {
			return nil, errors.New("first attempt fails")
		}
		return 2, nil
	})
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(runCtx) }()
	go func() { defer wg.Done(); _ = w.Run(runCtx) }()
	defer func() { stop(); wg.Wait() }()

	c, err := graflow.NewClient(graflow.Config{Redis: client.rc, Namespace: ns, TracerProvider: client.tp})
	if err != nil {
		t.Fatal(err)
	}
	wf := graflow.NewWorkflow("traced")
	first := wf.Task("first", "trace.first")
	wf.Task("second", "trace.second").After(first).Retries(1)
	run, err := c.Submit(ctx, wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Wait(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !info.Succeeded() {
		t.Fatalf("run %s: %+v", info.Status, info)
	}
	stop()
	wg.Wait() // every span of the worker and the projector has ended

	// The client: one submit span, the root of the run's trace, with the
	// Redis pipeline that created the run as its child.
	cspans := client.exp.GetSpans()
	submits := named(cspans, tracing.SpanSubmit)
	if len(submits) != 1 {
		t.Fatalf("submit spans: %d, want 1", len(submits))
	}
	submit := submits[0]
	tid := submit.SpanContext.TraceID()
	if submit.Parent.IsValid() || attr(submit, tracing.Run).AsString() != run {
		t.Fatalf("submit span: parent %v, run %q; want a root span of run %s", submit.Parent, attr(submit, tracing.Run).AsString(), run)
	}
	redisChild := false
	for _, s := range cspans {
		redisChild = redisChild || s.InstrumentationScope.Name == "github.com/redis/go-redis/extra/redisotel" && s.Parent.SpanID() == submit.SpanContext.SpanID()
	}
	if !redisChild {
		t.Errorf("no redisotel span under the submit span: %v", spanNames(cspans))
	}

	// run_submitted carries the submit's trace context, and the fold keeps it.
	fold, err := c.Fold(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if want := "00-" + tid.String() + "-" + submit.SpanContext.SpanID().String() + "-01"; fold.Traceparent != want {
		t.Errorf("folded traceparent %q, want %q", fold.Traceparent, want)
	}

	// The projector: each commit a child of the submit, in its trace.
	projects := named(proj.exp.GetSpans(), tracing.SpanProject)
	if len(projects) == 0 {
		t.Fatal("no project spans")
	}
	projectIDs := map[trace.SpanID]bool{}
	for _, s := range projects {
		if s.SpanContext.TraceID() != tid || s.Parent.SpanID() != submit.SpanContext.SpanID() || !s.Parent.IsRemote() {
			t.Errorf("project span %v: trace %v parent %v; want trace %v, remote parent %v", attr(s, tracing.Run), s.SpanContext.TraceID(), s.Parent.SpanID(), tid, submit.SpanContext.SpanID())
		}
		projectIDs[s.SpanContext.SpanID()] = true
	}

	// The worker: claim, handler and finish of each attempt, in the run's
	// trace, children of the span that dispatched it: the submit (first,
	// a root task), first's finish (second: a success hands its
	// dependent on, rdb.Handoff) or a projector commit (second's retry).
	wspans := work.exp.GetSpans()
	type key struct {
		name, task string
		attempt    int64
	}
	got := map[key]tracetest.SpanStub{}
	for _, name := range []string{tracing.SpanClaim, tracing.SpanHandler, tracing.SpanFinish} {
		for _, s := range named(wspans, name) {
			k := key{name, attr(s, tracing.Task).AsString(), attr(s, tracing.Attempt).AsInt64()}
			if _, dup := got[k]; dup {
				t.Errorf("two %v spans", k)
			}
			got[k] = s
			if s.SpanContext.TraceID() != tid {
				t.Errorf("%v: trace %v, want %v", k, s.SpanContext.TraceID(), tid)
			}
			if attr(s, tracing.Run).AsString() != run || attr(s, tracing.Pool).AsString() != "default" || attr(s, tracing.Worker).AsString() != "traced" {
				t.Errorf("%v: attributes %v", k, s.Attributes)
			}
		}
	}
	for _, a := range []struct {
		task    string
		attempt int64
		handler string
		from    string // "submit", "finish" (first's) or "project"
		failed  bool
	}{{"first", 1, "trace.first", "submit", false}, {"second", 1, "trace.second", "finish", true}, {"second", 2, "trace.second", "project", false}} {
		for _, name := range []string{tracing.SpanClaim, tracing.SpanHandler, tracing.SpanFinish} {
			s, ok := got[key{name, a.task, a.attempt}]
			if !ok {
				t.Errorf("no %s span of %s attempt %d (worker spans: %v)", name, a.task, a.attempt, spanNames(wspans))
				continue
			}
			parent := s.Parent.SpanID()
			var fromOK bool
			switch a.from {
			case "submit":
				fromOK = parent == submit.SpanContext.SpanID()
			case "finish":
				f, found := got[key{tracing.SpanFinish, "first", 1}]
				fromOK = found && parent == f.SpanContext.SpanID()
			default:
				fromOK = projectIDs[parent]
			}
			if !fromOK {
				t.Errorf("%s of %s attempt %d: parent %v is not the span that dispatched it", name, a.task, a.attempt, parent)
			}
			if attr(s, tracing.Handler).AsString() != a.handler || attr(s, tracing.Epoch).AsInt64() < 1 {
				t.Errorf("%s of %s attempt %d: handler %v epoch %v", name, a.task, a.attempt, attr(s, tracing.Handler), attr(s, tracing.Epoch))
			}
			wantErr := name == tracing.SpanHandler && a.failed
			if (s.Status.Code == codes.Error) != wantErr {
				t.Errorf("%s of %s attempt %d: status %v, want error %v", name, a.task, a.attempt, s.Status, wantErr)
			}
		}
	}
	if s := got[key{tracing.SpanFinish, "second", 1}]; attr(s, tracing.Outcome).AsString() != "awaiting_retry" {
		t.Errorf("finish of a failed attempt: outcome %v", attr(s, tracing.Outcome))
	}
	user := named(wspans, "user.work")
	if h := got[key{tracing.SpanHandler, "first", 1}]; len(user) != 1 || user[0].Parent.SpanID() != h.SpanContext.SpanID() {
		t.Errorf("the handler's own span is not the handler span's child: %+v", user)
	}
	redisSpans := 0
	for _, s := range wspans {
		if s.InstrumentationScope.Name == "github.com/redis/go-redis/extra/redisotel" {
			redisSpans++
		}
	}
	if redisSpans == 0 {
		t.Errorf("no redisotel spans in the worker")
	}

	// The history stays valid and replays.
	rep, err := c.Verify(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	if !rep.OK() {
		t.Fatalf("verify: %+v", rep.Problems)
	}
	evs, err := c.Log(ctx, run)
	if err != nil {
		t.Fatal(err)
	}
	var body events.RunSubmittedBody
	if err := evs[0].DecodeBody(&body); err != nil || body.Traceparent != fold.Traceparent {
		t.Errorf("run_submitted traceparent %q (%v), want %q", body.Traceparent, err, fold.Traceparent)
	}
}

func spanNames(spans tracetest.SpanStubs) []string {
	var out []string
	for _, s := range spans {
		out = append(out, s.Name)
	}
	return out
}
