// Package tracing holds what the engine's OpenTelemetry spans share: the
// tracer, the attribute keys, and the W3C trace context that runs carry
// from process to process (run_submitted's traceparent and each queue
// message's "t" field).
//
// Redis commands are traced by redisotel's hook (rdb.InstrumentTracing).
//
// The package never touches OpenTelemetry's global state: a nil
// TracerProvider means otel.GetTracerProvider(), read when a component is
// built (a no-op unless the program set one).
package tracing

import (
	"context"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// ScopeName is the instrumentation scope of the engine's spans.
const ScopeName = "github.com/graflow-go/graflow"

// Span names.
const (
	SpanSubmit  = "graflow.submit"
	SpanProject = "graflow.project"
	SpanClaim   = "graflow.claim"
	SpanHandler = "graflow.handler"
	SpanFinish  = "graflow.finish"
	// The operator's redispatches: their dispatches carry these spans'
	// trace context, so the tasks dispatched again stay in the run's
	// trace.
	SpanResume = "graflow.resume"
	SpanRepair = "graflow.repair"
)

// Attribute keys of the engine's spans.
const (
	Run       = attribute.Key("graflow.run.id")
	Workflow  = attribute.Key("graflow.workflow")
	Task      = attribute.Key("graflow.task.id")
	Attempt   = attribute.Key("graflow.task.attempt")
	Epoch     = attribute.Key("graflow.task.epoch")
	Pool      = attribute.Key("graflow.pool")
	Handler   = attribute.Key("graflow.handler")
	Worker    = attribute.Key("graflow.worker.id")
	Projector = attribute.Key("graflow.projector.id")
	Tasks     = attribute.Key("graflow.tasks")     // tasks in a submitted run
	Decisions = attribute.Key("graflow.decisions") // events a commit appends
	Outcome   = attribute.Key("graflow.outcome")   // a claim's or an attempt's outcome
	Created   = attribute.Key("graflow.created")   // a submit created the run (false: it existed)
	Conflict  = attribute.Key("graflow.commit.conflict")
	Reclaimed = attribute.Key("graflow.reclaimed") // the message was taken over from another worker
	// Redispatched counts the tasks a resume or repair dispatched again.
	Redispatched = attribute.Key("graflow.redispatched")
)

// Tracer returns the engine's tracer of tp (nil: otel.GetTracerProvider()).
func Tracer(tp trace.TracerProvider) trace.Tracer {
	return Provider(tp).Tracer(ScopeName)
}

// Provider returns tp, or otel.GetTracerProvider() when tp is nil.
func Provider(tp trace.TracerProvider) trace.TracerProvider {
	if tp == nil {
		return otel.GetTracerProvider()
	}
	return tp
}

// propagator is the W3C trace context: the format of every traceparent the
// engine stores.
var propagator = propagation.TraceContext{}

const traceparentKey = "traceparent"

// Traceparent returns the W3C traceparent of ctx's span context, "" when
// ctx holds none that is valid (no span, or an untraced caller).
func Traceparent(ctx context.Context) string {
	c := propagation.MapCarrier{}
	propagator.Inject(ctx, c)
	return c[traceparentKey]
}

// WithTraceparent returns ctx with the remote span context of traceparent
// as the parent of the spans started from it; "" or an invalid value
// returns ctx unchanged.
func WithTraceparent(ctx context.Context, traceparent string) context.Context {
	if traceparent == "" {
		return ctx
	}
	return propagator.Extract(ctx, propagation.MapCarrier{traceparentKey: traceparent})
}

// Valid reports whether traceparent is a W3C traceparent of a valid span
// context.
func Valid(traceparent string) bool {
	return trace.SpanContextFromContext(WithTraceparent(context.Background(), traceparent)).IsValid()
}

// End sets span's status from err (Error with its message, or nothing on
// nil), records it, and ends the span.
func End(span trace.Span, err error) {
	if err != nil {
		span.RecordError(err)
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
