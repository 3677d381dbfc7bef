package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync/atomic"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/exporters/stdout/stdouttrace"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
)

// Tracing in the CLI: off unless the standard OpenTelemetry environment
// asks for it (docs/operations.md, "Tracing"). When on, the process's
// global TracerProvider is set (the library's components default to it)
// and every Redis client connect opens is instrumented (traceRedis).

// tracerProvider is the process's provider while tracing is on (nil: off).
var tracerProvider atomic.Pointer[sdktrace.TracerProvider]

// tracingShutdownTimeout bounds the flush of the last spans at exit.
const tracingShutdownTimeout = 5 * time.Second

// withTracing sets tracing up from the environment (setupTracing), runs
// run, and flushes the spans before it returns run's error. A tracing
// setup that fails is reported on stderr and the command runs untraced.
func withTracing(ctx context.Context, getenv func(string) string, stderr io.Writer, run func() error) error {
	shutdown, err := setupTracing(ctx, getenv, stderr)
	if err != nil {
		fmt.Fprintf(stderr, "graflow: tracing off: %v\n", err)
	}
	runErr := run()
	if shutdown != nil {
		sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), tracingShutdownTimeout)
		defer cancel()
		if err := shutdown(sctx); err != nil {
			fmt.Fprintf(stderr, "graflow: tracing: flush spans: %v\n", err)
		}
	}
	return runErr
}

// setupTracing makes a TracerProvider from the standard OpenTelemetry
// environment and installs it as the global one. It is on when
// OTEL_TRACES_EXPORTER is "otlp" or "console" (spans on stderr), or,
// with that unset, when OTEL_EXPORTER_OTLP_ENDPOINT or
// OTEL_EXPORTER_OTLP_TRACES_ENDPOINT is set; OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none turns it off. The OTLP exporter is
// otlptracehttp, which reads the rest (endpoint, headers, timeout,
// compression, TLS certificates); the SDK reads the sampler
// (OTEL_TRACES_SAMPLER, default parentbased_always_on), the batch
// processor's OTEL_BSP_* and the resource's OTEL_SERVICE_NAME (default
// "graflow") and OTEL_RESOURCE_ATTRIBUTES. shutdown is nil when tracing
// is off.
func setupTracing(ctx context.Context, getenv func(string) string, stderr io.Writer) (shutdown func(context.Context) error, err error) {
	if strings.EqualFold(getenv("OTEL_SDK_DISABLED"), "true") {
		return nil, nil
	}
	var exp sdktrace.SpanExporter
	switch kind := strings.ToLower(strings.TrimSpace(getenv("OTEL_TRACES_EXPORTER"))); kind {
	case "none":
		return nil, nil
	case "":
		if getenv("OTEL_EXPORTER_OTLP_ENDPOINT") == "" && getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") == "" {
			return nil, nil
		}
		fallthrough
	case "otlp":
		if p := getenv("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"); p == "" {
			p = getenv("OTEL_EXPORTER_OTLP_PROTOCOL")
			if p != "" && p != "http/protobuf" {
				return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_PROTOCOL=%s: graflow exports OTLP over HTTP (http/protobuf) only", p)
			}
		} else if p != "http/protobuf" {
			return nil, fmt.Errorf("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL=%s: graflow exports OTLP over HTTP (http/protobuf) only", p)
		}
		exp, err = otlptracehttp.New(ctx)
	case "console":
		exp, err = stdouttrace.New(stdouttrace.WithWriter(stderr))
	default:
		return nil, fmt.Errorf("OTEL_TRACES_EXPORTER=%s: use otlp, console or none", kind)
	}
	if err != nil {
		return nil, fmt.Errorf("trace exporter: %w", err)
	}
	res, err := resource.New(ctx,
		resource.WithAttributes(attribute.String("service.name", "graflow")), // OTEL_SERVICE_NAME overrides it
		resource.WithFromEnv(), resource.WithTelemetrySDK(), resource.WithHost(), resource.WithProcessPID())
	if err != nil && !errors.Is(err, resource.ErrPartialResource) {
		_ = exp.Shutdown(ctx)
		return nil, fmt.Errorf("trace resource: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	tracerProvider.Store(tp)
	return func(ctx context.Context) error {
		tracerProvider.Store(nil)
		return tp.Shutdown(ctx)
	}, nil
}

// traceRedis instruments a client connect opened, when tracing is on.
func traceRedis(c redis.UniversalClient) {
	tp := tracerProvider.Load()
	if tp == nil {
		return
	}
	_ = graflow.InstrumentRedis(c, tp) // fails only for a client type go-redis does not make
}
