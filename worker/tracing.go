package worker

import (
	"context"

	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// startSpan starts one of an attempt's spans (graflow.claim,
// graflow.handler, graflow.finish) with the message's attributes. ctx
// carries the message's trace context (process put it there), so the
// spans are children of the span that dispatched the task, in whatever
// process that ran.
func (w *Worker) startSpan(ctx context.Context, name string, m message, kind trace.SpanKind, attrs ...attribute.KeyValue) (context.Context, trace.Span) {
	ctx, span := w.tracer.Start(ctx, name, trace.WithSpanKind(kind))
	// A span nobody records (no tracer provider installed: the default)
	// gets no attributes: building them is three allocations and a parse
	// of the queue key per span, three spans per task.
	if span.IsRecording() {
		span.SetAttributes(tracing.Run.String(m.run), tracing.Task.String(m.task), tracing.Attempt.Int(m.attempt),
			tracing.Pool.String(w.poolOf(m.stream)), tracing.Worker.String(w.cfg.ID))
		span.SetAttributes(attrs...)
	}
	return ctx, span
}
