package projector

import (
	"context"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"
)

// traceCommit starts the graflow.project span of one commit of c's run,
// a child of the run's trace context (run_submitted's traceparent, kept by
// the fold), and stamps commit with the span's traceparent: every dispatch
// the commit queues or parks carries it, so the tasks' spans are the
// span's children. An untraced run gets a span of its own trace (a no-op
// provider: none, and the dispatches carry nothing).
func (p *Projector) traceCommit(ctx context.Context, c *cached, decisions []events.Event, commit *rdb.Commit) (context.Context, trace.Span) {
	ctx, span := p.tracer.Start(tracing.WithTraceparent(ctx, c.run.Traceparent), tracing.SpanProject,
		trace.WithAttributes(tracing.Run.String(c.run.ID), tracing.Workflow.String(c.run.Workflow),
			tracing.Projector.String(p.cfg.ID), tracing.Decisions.Int(len(decisions))))
	commit.Trace = tracing.Traceparent(ctx)
	return ctx, span
}

// endCommit ends a commit's span with its outcome: an error, a conflict
// (and why), or the commit.
func endCommit(span trace.Span, res rdb.CommitResult, err error) {
	span.SetAttributes(tracing.Conflict.Bool(res.Conflict))
	if res.Conflict {
		span.SetAttributes(attribute.String("graflow.commit.why", res.Why))
	}
	tracing.End(span, err)
}
