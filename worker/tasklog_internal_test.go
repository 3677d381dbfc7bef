package worker

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/rs/zerolog"
)

func TestTaskLogSaysWhichAttemptAndIsBuiltOnlyWhenItWrites(t *testing.T) {
	var out bytes.Buffer
	base := zerolog.New(&out).Level(zerolog.InfoLevel)
	l := newTaskLog(&base, message{run: "r1", task: "t1", attempt: 2})
	l.Debug().Msg("dropped")
	if l.built != nil || out.Len() != 0 {
		t.Fatalf("a debug event at info level built the logger (%v) or wrote %q", l.built != nil, out.String())
	}
	l.claim(7, "h")
	l.Warn().Msg("kept")
	var got map[string]any
	if err := json.Unmarshal(out.Bytes(), &got); err != nil {
		t.Fatalf("%q: %v", out.String(), err)
	}
	want := map[string]any{"level": "warn", "run": "r1", "task": "t1", "attempt": 2.0, "epoch": 7.0, "handler": "h", "message": "kept"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v (line %s)", k, got[k], v, out.String())
		}
	}
}
