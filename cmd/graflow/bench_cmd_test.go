package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
)

// --redis takes host:port for the bench as for every other command (its
// help says so); the bench used to hand it to go-redis' URL parser as is
// and stop with "invalid Redis URL".
func TestBenchTakesHostPort(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, out := runBenchCLI(t, ctx, "bench", "--redis", redistest.Addr(t), "--namespace", redistest.Namespace(t),
		"--workload", "ceiling", "--smoke", "--json-only")
	if code != ExitOK || !strings.Contains(out, `"workload":"ceiling"`) {
		t.Fatalf("graflow bench --redis %s: exit %d, want 0 and a ceiling line:\n%s", redistest.Addr(t), code, out)
	}
}

// The bench passes --redis to the processes it starts and has no TLS,
// Sentinel or node-list support of its own: it says so instead of
// benchmarking something else.
func TestBenchRefusesRedisFormsItCannotPassOn(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--redis", "127.0.0.1:1,127.0.0.1:2"}, "one node"},
		{[]string{"--redis", "127.0.0.1:1", "--sentinel-master", "m"}, "--sentinel-master"},
		{[]string{"--redis", "redis+sentinel://127.0.0.1:1?master_name=m"}, "redis+sentinel://"},
		{[]string{"--redis", "rediss://127.0.0.1:1", "--tls-ca", "ca.pem"}, "--tls-"},
	} {
		code, out := runBenchCLI(t, context.Background(), append([]string{"bench", "--workload", "ceiling", "--smoke"}, tc.args...)...)
		if code != ExitUsage || !strings.Contains(out, tc.want) {
			t.Errorf("graflow bench %s: exit %d, want %d and %q:\n%s", strings.Join(tc.args, " "), code, ExitUsage, tc.want, out)
		}
	}
	// The same flags from the environment.
	m, out := newTestMain("/nonexistent/graflow", map[string]string{"GRAFLOW_TLS_CA": "ca.pem"})
	ctx := context.Background()
	if code := m.exitCode(ctx, m.Run(ctx, []string{"bench", "--workload", "ceiling", "--smoke", "--redis", "rediss://127.0.0.1:1"})); code != ExitUsage || !strings.Contains(out.String(), "--tls-ca") {
		t.Errorf("graflow bench with GRAFLOW_TLS_CA: exit %d, want %d and --tls-ca:\n%s", code, ExitUsage, out.String())
	}
}

// runBenchCLI runs graflow with a binary path set (the ceiling workload
// starts no process; without a path the bench refuses at once).
func runBenchCLI(t *testing.T, ctx context.Context, args ...string) (int, string) {
	t.Helper()
	m, out := newTestMain("/nonexistent/graflow", nil)
	return m.exitCode(ctx, m.Run(ctx, args)), out.String()
}

// --cpuprofile-dir profiles the bench's own process too (its submitters
// and waiters cost CPU on the machine the engine runs on): bench.pprof.
func TestBenchProfilesItself(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	code, out := runBenchCLI(t, ctx, "bench", "--redis", redistest.Addr(t), "--namespace", redistest.Namespace(t),
		"--workload", "ceiling", "--smoke", "--json-only", "--cpuprofile-dir", dir)
	if code != ExitOK {
		t.Fatalf("graflow bench --cpuprofile-dir: exit %d:\n%s", code, out)
	}
	b, err := os.ReadFile(filepath.Join(dir, "bench.pprof"))
	if err != nil {
		t.Fatalf("no profile of the bench itself: %v", err)
	}
	if len(b) < 2 || b[0] != 0x1f || b[1] != 0x8b {
		t.Errorf("bench.pprof of %d bytes is not a profile", len(b))
	}
}
