package rdb

import (
	"github.com/graflow-go/graflow/internal/tracing"
	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// InstrumentTracing adds redisotel's tracing hook to c: a span per command
// and pipeline, a child of the caller's span, made by tp (nil: the global
// provider). Statements are left out: script arguments carry inputs and
// results, up to megabytes each.
func InstrumentTracing(c redis.UniversalClient, tp trace.TracerProvider) error {
	return redisotel.InstrumentTracing(c, redisotel.WithTracerProvider(tracing.Provider(tp)), redisotel.WithDBStatement(false))
}
