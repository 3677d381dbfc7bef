//go:build unix

package chaos

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
)

func TestCollectorKeepsTheEngineSpansOfEachRun(t *testing.T) {
	t.Parallel()
	c, err := startCollector()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	ctx := context.Background()
	for _, compression := range []otlptracehttp.Compression{otlptracehttp.NoCompression, otlptracehttp.GzipCompression} {
		// The processes' exporter, as cmd/graflow/tracing.go makes it from
		// tracingEnv (there from the environment; here by options).
		exp, err := otlptracehttp.New(ctx, otlptracehttp.WithEndpointURL(c.url), otlptracehttp.WithCompression(compression))
		if err != nil {
			t.Fatal(err)
		}
		tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
		engine := tp.Tracer(tracing.ScopeName)
		root, span := engine.Start(ctx, tracing.SpanProject, trace.WithAttributes(tracing.Run.String("r1")))
		_, child := engine.Start(root, tracing.SpanClaim, trace.WithAttributes(tracing.Run.String("r1")))
		child.End()
		_, redis := tp.Tracer("redisotel").Start(root, "evalsha", trace.WithAttributes(tracing.Run.String("r1")))
		redis.End()
		_, other := engine.Start(ctx, tracing.SpanHandler, trace.WithAttributes(tracing.Run.String("r2")))
		other.End()
		span.End()
		if err := tp.Shutdown(ctx); err != nil {
			t.Fatalf("export (compression %v): %v", compression, err)
		}
	}
	r1 := c.spans("r1")
	if got := names(r1.names()); got != "graflow.claim=2 graflow.project=2" {
		t.Errorf("r1's spans: %s, want the engine's only", got)
	}
	if len(r1) != 2 { // one trace per exporter
		t.Errorf("r1's spans are in %d traces, want 2", len(r1))
	}
	if got := names(c.spans("r2").names()); got != "graflow.handler=2" {
		t.Errorf("r2's spans: %s", got)
	}
	if c.received != 8 {
		t.Errorf("received %d spans, want 8", c.received)
	}
	if p := c.problems(); len(p) > 0 {
		t.Errorf("problems: %v", p)
	}
}

func TestCheckTrace(t *testing.T) {
	t.Parallel()
	other := trace.TraceID{0xee, 1}
	all := []string{tracing.SpanProject, tracing.SpanClaim, tracing.SpanHandler, tracing.SpanFinish}

	tests := []struct {
		name    string
		sampled bool
		// traceparent of run_submitted: "run" (the run's), "none", or
		// "flipped" (the run's, its sampled flag flipped).
		traceparent string
		spans       []spanOf
		complete    bool
		want        string // a problem's text; "" for none
	}{
		{name: "a sampled run whose spans are all of its trace holds", sampled: true, traceparent: "run", spans: spansOf(all...), complete: true},
		{name: "a sampled run whose process spans are still in batches holds until the processes stopped", sampled: true, traceparent: "run", spans: spansOf(tracing.SpanProject)},
		{name: "a sampled run with a span kind missing at the end fails", sampled: true, traceparent: "run", spans: spansOf(tracing.SpanProject, tracing.SpanClaim, tracing.SpanHandler), complete: true, want: "no [graflow.finish] spans"},
		{name: "run_submitted without a traceparent fails", sampled: true, traceparent: "none", spans: spansOf(all...), complete: true, want: "carries no valid traceparent"},
		{name: "a span of another trace fails", sampled: true, traceparent: "run", spans: append(spansOf(all...), spanOf{tracing.SpanHandler, true}), complete: true, want: "1 spans of the run (graflow.handler=1) are in 1 other traces than the run's"},
		{name: "a lost span names a task attempt", sampled: true, traceparent: "run", spans: []spanOf{{tracing.SpanClaim, true}}, want: "(e.g. graflow.claim of task t1 attempt 2): a path lost the run's trace context"},
		{name: "an unsampled run without spans holds", traceparent: "run", complete: true},
		{name: "an unsampled run with an exported span fails", traceparent: "run", spans: []spanOf{{tracing.SpanClaim, true}}, want: "lost its sampling decision"},
		{name: "an unsampled run stored as sampled fails", traceparent: "flipped", want: "says sampled=true"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			s, done := setupTrace(t)
			defer done()
			run := "run-" + string(rune('a'+i))
			ctx, parent := s.tracer.start(context.Background(), run, tt.sampled)
			// The Client's submit span, as graflow.Client.SubmitSpec starts it.
			sctx, submit := s.tracer.client.Tracer(tracing.ScopeName).Start(ctx, tracing.SpanSubmit, trace.WithAttributes(tracing.Run.String(run)))
			tp := tracing.Traceparent(sctx)
			submit.End()
			parent.End()
			switch tt.traceparent {
			case "none":
				tp = ""
			case "flipped":
				flag := tp[len(tp)-2:]
				tp = tp[:len(tp)-2] + map[string]string{"00": "01", "01": "00"}[flag]
			}
			body, _ := json.Marshal(events.RunSubmittedBody{Workflow: "w", Traceparent: tp})
			evs := []events.Event{{Run: run, Type: events.RunSubmitted, Body: body}}
			var spans []*tracepb.Span
			for _, sp := range tt.spans {
				id := parent.SpanContext().TraceID()
				if sp.other {
					id = other
				}
				spans = append(spans, &tracepb.Span{TraceId: id[:], SpanId: []byte{1, 2, 3, 4, 5, 6, 7, 8}, Name: sp.name,
					Attributes: []*commonpb.KeyValue{
						{Key: string(tracing.Run), Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: run}}},
						{Key: string(tracing.Task), Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "t1"}}},
						{Key: string(tracing.Attempt), Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_IntValue{IntValue: 2}}},
					}})
			}
			s.collector.add(&coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{ScopeSpans: []*tracepb.ScopeSpans{{
				Scope: &commonpb.InstrumentationScope{Name: tracing.ScopeName}, Spans: spans}}}}})

			sampled, ok, n, problems := s.checkTrace(run, evs, tt.complete)
			if sampled != tt.sampled {
				t.Errorf("sampled = %t, want %t", sampled, tt.sampled)
			}
			if tt.want == "" {
				if len(problems) > 0 || ok != tt.sampled {
					t.Errorf("ok = %t, problems %q; want none", ok, problems)
				}
				want := len(tt.spans)
				if tt.sampled {
					want++ // the submit span
				}
				if n != want {
					t.Errorf("counted %d spans, want %d", n, want)
				}
				return
			}
			if ok || !strings.Contains(strings.Join(problems, "\n"), tt.want) {
				t.Errorf("ok = %t, problems %q; want one saying %q", ok, problems, tt.want)
			}
		})
	}
}

// spanOf is a process span of a TestCheckTrace case.
type spanOf struct {
	name  string
	other bool // of another trace than the run's
}

func spansOf(names ...string) []spanOf {
	out := make([]spanOf, len(names))
	for i, n := range names {
		out[i] = spanOf{name: n}
	}
	return out
}

// setupTrace returns a stack with only its tracing (no Redis, no
// processes).
func setupTrace(t *testing.T) (*stack, func()) {
	t.Helper()
	c, err := startCollector()
	if err != nil {
		t.Fatal(err)
	}
	s := &stack{tracer: newTracer(), collector: c}
	return s, func() { c.close(); s.tracer.shutdown() }
}

// A request cut short (its exporter killed mid-export, as the soak's
// faults do) is counted as truncated, not a collector problem; a request
// whose whole body does not decode still is. (A make test soak failed on
// "trace collector: trace export: read: unexpected EOF".)
func TestCollectorForgivesARequestCutShort(t *testing.T) {
	t.Parallel()
	c, err := startCollector()
	if err != nil {
		t.Fatal(err)
	}
	defer c.close()
	// A body of 100 bytes announced, 10 sent, then the connection closed:
	// the server's body reader returns io.ErrUnexpectedEOF.
	cut := httptest.NewRequest(http.MethodPost, "/v1/traces", io.MultiReader(strings.NewReader("0123456789"), iotest.ErrReader(io.ErrUnexpectedEOF)))
	c.export(httptest.NewRecorder(), cut)
	if c.truncated != 1 {
		t.Errorf("truncated = %d after a cut request, want 1", c.truncated)
	}
	if p := c.problems(); len(p) > 0 {
		t.Errorf("problems after a cut request: %v", p)
	}
	resp, err := http.Post(c.url, "application/x-protobuf", strings.NewReader("\xff\xff\xff not a protobuf"))
	if err != nil {
		t.Fatal(err)
	}
	_ = resp.Body.Close()
	if p := c.problems(); len(p) != 1 {
		t.Errorf("problems after an undecodable request: %v, want one", p)
	}
}

// A small run's spans may all be in one worker's last batch: the trace
// check forgives its missing worker spans only when every worker that
// wrote its events was SIGKILLed, and its project span only when no
// projector acted on it or every one that did was killed (chaos seed 5
// failed once: a single-task run, claimed and finished by a worker killed
// before its exporter flushed, had "no [graflow.claim graflow.handler
// graflow.finish] spans").
func TestWritersSaysWhetherEveryWriterWasKilled(t *testing.T) {
	s := &stack{}
	evs := []events.Event{
		{Type: events.RunSubmitted},
		{Type: events.TaskDispatched, Worker: "submit"},
		{Type: events.TaskClaimed, Worker: "w1-0"},
		{Type: events.TaskFailed, Worker: "w1-0"},
		{Type: events.TaskRetryScheduled, Worker: "projector-0-0"},
		{Type: events.TaskClaimed, Worker: "w2-0"},
		{Type: events.TaskSucceeded, Worker: "w2-0"},
		{Type: events.RunSucceeded, Worker: "w2-0"},
	}
	isWorker := func(w string) bool { return w != "" && w != "submit" && !s.isProjector(w) }
	for _, c := range []struct {
		name      string
		is        func(string) bool
		killed    map[string]bool
		n         int
		allKilled bool
	}{
		{"workers, none killed", isWorker, nil, 2, false},
		{"workers, one of two killed", isWorker, map[string]bool{"w1-0": true}, 2, false},
		{"workers, both killed", isWorker, map[string]bool{"w1-0": true, "w2-0": true}, 2, true},
		{"projectors, not killed", s.isProjector, map[string]bool{"w1-0": true}, 1, false},
		{"projectors, killed", s.isProjector, map[string]bool{"projector-0-0": true}, 1, true},
		{"nobody of the kind", func(w string) bool { return w == "nobody" }, map[string]bool{"nobody": true}, 0, false},
	} {
		n, all := writers(evs, c.is, c.killed)
		if n != c.n || all != c.allKilled {
			t.Errorf("%s: writers = %d, %t; want %d, %t", c.name, n, all, c.n, c.allKilled)
		}
	}
}
