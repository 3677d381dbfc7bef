package tracing_test

import (
	"context"
	"testing"

	"github.com/graflow-go/graflow/internal/tracing"
	"go.opentelemetry.io/otel/trace"
)

func TestTraceparentRoundTrip(t *testing.T) {
	t.Parallel()
	const tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := tracing.WithTraceparent(context.Background(), tp)
	sc := trace.SpanContextFromContext(ctx)
	if !sc.IsValid() || !sc.IsRemote() || !sc.IsSampled() || sc.TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Fatalf("span context %+v", sc)
	}
	if got := tracing.Traceparent(ctx); got != tp {
		t.Errorf("Traceparent = %q, want %q", got, tp)
	}
	// An unsampled parent stays unsampled: the submit's sampling decision travels.
	const off = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	if got := tracing.Traceparent(tracing.WithTraceparent(context.Background(), off)); got != off {
		t.Errorf("Traceparent of an unsampled parent = %q, want %q", got, off)
	}
	for _, bad := range []string{"", "x", "00-00000000000000000000000000000000-00f067aa0ba902b7-01", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7"} {
		if tracing.Valid(bad) {
			t.Errorf("Valid(%q)", bad)
		}
		if got := tracing.Traceparent(tracing.WithTraceparent(context.Background(), bad)); got != "" {
			t.Errorf("Traceparent after %q = %q, want none", bad, got)
		}
	}
	if tracing.Traceparent(context.Background()) != "" {
		t.Error("a context with no span has a traceparent")
	}
}
