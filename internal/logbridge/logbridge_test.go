package logbridge_test

import (
	"bytes"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/logbridge"
	"github.com/rs/zerolog"
)

func TestZerologEventsBecomeSlogRecords(t *testing.T) {
	t.Parallel()
	var buf bytes.Buffer
	h := slog.NewJSONHandler(&buf, &slog.HandlerOptions{Level: slog.LevelInfo, ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
		if a.Key == slog.TimeKey {
			return slog.Attr{}
		}
		return a
	}})
	z := logbridge.Zerolog(slog.New(h).With("component", "test"))
	z.Debug().Str("run", "r0").Msg("dropped: below the handler's level")
	z.Info().Str("run", "r1").Int("attempt", 2).Stringer("retry_in", 1500*time.Millisecond).Dict("load", zerolog.Dict().Float64("cpu", 0.5)).Msg("claimed")
	z.Warn().Err(errTest("boom")).Msg("failed")

	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 lines (the debug one dropped), got:\n%s", buf.String())
	}
	var got []map[string]any
	for _, l := range lines {
		var m map[string]any
		if err := json.Unmarshal([]byte(l), &m); err != nil {
			t.Fatalf("%q: %v", l, err)
		}
		got = append(got, m)
	}
	want := []map[string]any{
		{"level": "INFO", "msg": "claimed", "component": "test", "run": "r1", "attempt": 2.0, "retry_in": "1.5s", "load": map[string]any{"cpu": 0.5}},
		{"level": "WARN", "msg": "failed", "component": "test", "error": "boom"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("records (-want +got):\n%s", diff)
	}
	if logbridge.Zerolog(nil) != nil {
		t.Error("Zerolog(nil) is not nil")
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }
