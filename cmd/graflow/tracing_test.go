package main

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/trace/noop"
)

// Not parallel: it sets the process's global TracerProvider, as main does.
func TestTracingFromTheEnvironment(t *testing.T) {
	env := func(kv ...string) func(string) string {
		m := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			m[kv[i]] = kv[i+1]
		}
		return func(k string) string { return m[k] }
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	t.Run("off unless the environment asks for it", func(t *testing.T) {
		for _, e := range [][]string{nil, {"OTEL_TRACES_EXPORTER", "none", "OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"},
			{"OTEL_SDK_DISABLED", "true", "OTEL_TRACES_EXPORTER", "console"}} {
			shutdown, err := setupTracing(ctx, env(e...), &bytes.Buffer{})
			if shutdown != nil || err != nil {
				t.Errorf("%v: tracing on (%v)", e, err)
			}
		}
	})
	t.Run("bad settings are refused", func(t *testing.T) {
		for _, e := range [][]string{{"OTEL_TRACES_EXPORTER", "zipkin"},
			{"OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318", "OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"},
			{"OTEL_TRACES_EXPORTER", "otlp", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"}} {
			shutdown, err := setupTracing(ctx, env(e...), &bytes.Buffer{})
			if shutdown != nil || err == nil {
				t.Errorf("%v: accepted", e)
			}
		}
	})
	t.Run("a command's Redis calls are exported, and flushed at its end", func(t *testing.T) {
		defer otel.SetTracerProvider(noop.NewTracerProvider())
		var spans bytes.Buffer
		m, out := newTestMain("", nil)
		err := withTracing(ctx, env("OTEL_TRACES_EXPORTER", "console"), &spans, func() error {
			return m.Run(ctx, []string{"projectors", "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t)})
		})
		if err != nil {
			t.Fatalf("%v: %s", err, out)
		}
		for _, want := range []string{`"Name":"ping"`, `"Key":"service.name","Value":{"Type":"STRING","Value":"graflow"}`,
			`"InstrumentationScope":{"Name":"github.com/redis/go-redis/extra/redisotel"`} {
			if !strings.Contains(spans.String(), want) {
				t.Errorf("exported spans lack %s:\n%s", want, spans.String())
			}
		}
		if tracerProvider.Load() != nil {
			t.Error("the provider outlives the command")
		}
	})
}
