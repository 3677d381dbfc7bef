package replay_test

import (
	"bytes"
	"testing"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/replay"
	"go.opentelemetry.io/otel/trace"
)

func TestATracedRunsTraceparentSurvivesExportAndImport(t *testing.T) {
	t.Parallel()
	src := newEnv(t)
	src.start([]string{"wa"}, nil, nil)
	// A caller's span context: the client (no TracerProvider: a no-op
	// one) records it in run_submitted as it is.
	tid, _ := trace.TraceIDFromHex("4bf92f3577b34da6a3ce929d0e0e4736")
	sid, _ := trace.SpanIDFromHex("00f067aa0ba902b7")
	const want = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	ctx := trace.ContextWithSpanContext(ctxT(t), trace.NewSpanContext(trace.SpanContextConfig{TraceID: tid, SpanID: sid, TraceFlags: trace.FlagsSampled}))
	run, info := src.runToEnd(ctx, fanout())
	if !info.Succeeded() {
		t.Fatalf("run %s", info.Status)
	}
	var exported bytes.Buffer
	if _, err := src.rc.Export(ctx, run, &exported); err != nil {
		t.Fatal(err)
	}
	evs, err := replay.ReadExport(bytes.NewReader(exported.Bytes()))
	if err != nil {
		t.Fatal(err)
	}
	var body events.RunSubmittedBody
	if err := evs[0].DecodeBody(&body); err != nil || body.Traceparent != want {
		t.Fatalf("exported run_submitted traceparent %q (%v), want %q", body.Traceparent, err, want)
	}

	dst := envIn(t, src.rdb, redistest.Namespace(t))
	if _, err := dst.rc.Import(ctx, bytes.NewReader(exported.Bytes()), replay.ImportOptions{}); err != nil {
		t.Fatal(err)
	}
	for name, e := range map[string]*env{"source": src, "imported": dst} {
		r, err := e.rc.Fold(ctx, run)
		if err != nil {
			t.Fatal(err)
		}
		if r.Traceparent != want {
			t.Errorf("%s run folds traceparent %q, want %q", name, r.Traceparent, want)
		}
	}
	var again bytes.Buffer
	if _, err := dst.rc.Export(ctx, run, &again); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(exported.Bytes(), again.Bytes()) {
		t.Errorf("re-export of the imported run differs:\n%s\nvs\n%s", exported.String(), again.String())
	}
}
