package main

import (
	"bytes"
	"encoding/json"
	"regexp"
	"strings"
	"testing"
	"time"
)

// Logs are JSON unless asked for the console (stderr is not a terminal
// here), with RFC 3339 times and durations with their unit, the engine's
// zerolog events (through the bridge) included.
func TestLogFormats(t *testing.T) {
	t.Parallel()
	rfc3339ms := regexp.MustCompile(`^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$`)

	var buf bytes.Buffer
	c := &common{logLevel: "info"}
	c.slog(&buf).Info("claimed", "run", "r1", "lease", 1500*time.Millisecond)
	c.logger(&buf).Warn().Stringer("retry_in", 2*time.Second).Msg("commit failed")
	c.logger(&buf).Debug().Msg("below the level")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("want 2 JSON lines, got:\n%s", buf.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if ts, _ := first["time"].(string); !rfc3339ms.MatchString(ts) {
		t.Errorf("time %q is not RFC 3339 with milliseconds in UTC", first["time"])
	}
	if first["lease"] != "1.5s" || first["msg"] != "claimed" || first["level"] != "INFO" {
		t.Errorf("slog line: %s", lines[0])
	}
	if second["retry_in"] != "2s" || second["msg"] != "commit failed" || second["level"] != "WARN" {
		t.Errorf("bridged zerolog line: %s", lines[1])
	}

	buf.Reset()
	c.logFormat = logConsole
	c.logger(&buf).Info().Str("metrics_addr", "127.0.0.1:9090").Msg("serving")
	if out := buf.String(); !regexp.MustCompile(`^\d{4}-\d\d-\d\dT\S+ INF serving metrics_addr=127.0.0.1:9090\n$`).MatchString(out) {
		t.Errorf("console line: %q", out)
	}
}
