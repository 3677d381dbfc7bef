package graflow

import (
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/trace"
)

// InstrumentRedis adds OpenTelemetry tracing (redisotel) to c: a span per
// Redis command and pipeline, a child of the caller's span, made by tp
// (nil: otel.GetTracerProvider()). Command arguments are not recorded
// (scripts carry inputs and results). Call it once per client, before
// handing the client to a Client, Worker or Projector; the engine never
// instruments a client it is given by itself (docs/operations.md,
// "Tracing").
func InstrumentRedis(c redis.UniversalClient, tp trace.TracerProvider) error {
	return rdb.InstrumentTracing(c, tp)
}
