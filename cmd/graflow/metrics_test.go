package main

import (
	"context"
	"io"
	"net/http"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
)

// TestMetricsAddrServesMetrics: "graflow worker --metrics-addr
// 127.0.0.1:0" and "graflow projector --metrics-addr 127.0.0.1:0" log the
// address they bound and serve /metrics and /healthz there; the server
// stops with the command.
func TestMetricsAddrServesMetrics(t *testing.T) {
	t.Parallel()
	for _, cmd := range []string{"worker", "projector"} {
		t.Run("graflow "+cmd+" serves /metrics on the address it logs", func(t *testing.T) {
			t.Parallel()
			m, out := newTestMain("", nil)
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan error, 1)
			go func() {
				done <- m.Run(ctx, []string{cmd, "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t), "--metrics-addr", "127.0.0.1:0", "--log-format", "console"})
			}()
			t.Cleanup(func() {
				cancel()
				if err := <-done; err != nil {
					t.Errorf("graflow %s: %v", cmd, err)
				}
			})
			addrRE := regexp.MustCompile(`metrics_addr=(127\.0\.0\.1:\d+)`)
			var addr string
			deadline := time.After(20 * time.Second)
			for addr == "" {
				if mm := addrRE.FindStringSubmatch(out.String()); mm != nil {
					addr = mm[1]
					break
				}
				select {
				case <-out.wrote:
				case err := <-done:
					t.Fatalf("graflow %s exited: %v\n%s", cmd, err, out)
				case <-deadline:
					t.Fatalf("no metrics address logged:\n%s", out)
				}
			}
			body := httpGet(t, "http://"+addr+"/metrics")
			for _, want := range []string{"graflow_redis_scrape_success 1", "graflow_dead_letters 0", "go_goroutines"} {
				if !strings.Contains(body, want) {
					t.Errorf("/metrics lacks %q:\n%s", want, body)
				}
			}
			if cmd == "worker" && !strings.Contains(body, `graflow_queue_length{band="0",pool="default"} 0`) {
				t.Errorf("/metrics lacks the worker's pool's queue:\n%s", body)
			}
			if body := httpGet(t, "http://"+addr+"/healthz"); body != "ok\n" {
				t.Errorf("/healthz = %q", body)
			}
			if cmd == "worker" {
				// Stop it once it is up: a worker cancelled while it starts
				// (checking the key layout, loading scripts) returns the
				// cancellation as an error, which is not what this tests.
				waitForText(t, out, "worker started")
			}
		})
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s %s", url, resp.Status, b)
	}
	return string(b)
}
