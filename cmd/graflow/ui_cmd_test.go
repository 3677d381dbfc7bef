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

func TestUIVerb(t *testing.T) {
	t.Parallel()

	t.Run("refuses a non-loopback address without --allow-remote", func(t *testing.T) {
		t.Parallel()
		for _, addr := range []string{"0.0.0.0:8080", ":8080", "192.168.1.9:8080"} {
			m, out := newTestMain("", nil)
			err := m.Run(context.Background(), []string{"ui", "--addr", addr})
			if code := m.exitCode(context.Background(), err); code != ExitUsage || !strings.Contains(out.String(), "--allow-remote") {
				t.Errorf("graflow ui --addr %s: exit %d, %q; want a usage error naming --allow-remote", addr, code, out)
			}
		}
	})

	t.Run("serves the dashboard until its context ends", func(t *testing.T) {
		t.Parallel()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		sctx, stop := context.WithCancel(ctx)
		defer stop()
		m, out := newTestMain("", nil)
		done := make(chan error, 1)
		go func() {
			done <- m.Run(sctx, []string{"ui", "--addr", "127.0.0.1:0", "--redis", redistest.URL(t), "--namespace", redistest.Namespace(t), "--log-level", "error"})
		}()
		addr := regexp.MustCompile(`on (http://127\.0\.0\.1:\d+/)`)
		var url string
		for url == "" {
			select {
			case <-out.wrote:
				if m := addr.FindStringSubmatch(out.String()); m != nil {
					url = m[1]
				}
			case err := <-done:
				t.Fatalf("graflow ui returned before serving: %v\n%s", err, out)
			case <-ctx.Done():
				t.Fatalf("graflow ui never said where it serves:\n%s", out)
			}
		}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url+"runs", nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "<h1>Runs</h1>") {
			t.Errorf("GET %sruns: %d\n%s", url, resp.StatusCode, body)
		}
		stop()
		select {
		case err := <-done:
			if code := m.exitCode(sctx, err); code != ExitOK {
				t.Errorf("graflow ui after Ctrl-C: exit %d (%v), want 0", code, err)
			}
		case <-ctx.Done():
			t.Fatal("graflow ui did not stop with its context")
		}
	})
}
