package metrics_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/jonboulle/clockwork"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/redis/go-redis/v9"
)

// doneCounter forwards to the metrics' observer and reports each TaskDone
// once it has been counted, so the test waits for the worker's last
// outcome without sleeping.
type doneCounter struct {
	worker.Observer
	done chan worker.Outcome
}

func (d doneCounter) TaskDone(pool, handler string, o worker.Outcome) {
	d.Observer.TaskDone(pool, handler, o)
	d.done <- o
}

// commitCounter passes the projector's commits on, then sends how many of
// a round trip's were committed (the projector observes a commit after its
// round trip, which may be after the run's end is in the log).
type commitCounter struct {
	projector.Observer
	committed chan int
}

func (c commitCounter) Committed(commits, conflicts, failed int, d time.Duration, err error) {
	c.Observer.Committed(commits, conflicts, failed, d, err)
	c.committed <- commits - conflicts - failed
}

// TestScrapeAfterAKnownWorkload runs a worker and a projector with
// metrics, runs 5 successes, 2 tasks that fail for good and one that
// fails once and then succeeds, scrapes /metrics over HTTP and checks the
// values.
func TestScrapeAfterAKnownWorkload(t *testing.T) {
	t.Parallel()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	m := graflow.NewMetrics(client, graflow.MetricsOptions{Pools: []string{"default"}})
	obs := doneCounter{Observer: m.Worker(), done: make(chan worker.Outcome, 64)}
	pobs := commitCounter{Observer: m.Projector(), committed: make(chan int, 1024)}

	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, FeedBlock: 200 * time.Millisecond,
		RetryInitial: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond, Metrics: pobs})
	if err != nil {
		t.Fatal(err)
	}
	w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: "wm", FetchBlock: 200 * time.Millisecond, Metrics: obs})
	if err != nil {
		t.Fatal(err)
	}
	w.HandleFunc("ok", func(context.Context, *worker.Task) (any, error) { return "fine", nil })
	w.HandleFunc("bad", func(context.Context, *worker.Task) (any, error) {
		return nil, worker.Permanent(errors.New("bad input"))
	})
	w.HandleFunc("flaky", func(_ context.Context, task *worker.Task) (any, error) {
		if task.Attempt == 1 {
			return nil, errors.New("try again")
		}
		return "second time lucky", nil
	})
	wg.Add(2)
	go func() { defer wg.Done(); _ = p.Run(ctx) }()
	go func() { defer wg.Done(); _ = w.Run(ctx) }()
	t.Cleanup(func() { cancel(); wg.Wait() })

	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)

	good := graflow.NewWorkflow("good")
	for _, id := range []string{"a", "b", "c", "d", "e"} {
		good.Task(id, "ok")
	}
	good.Task("f", "flaky").Retries(1)
	runs := map[string]string{} // run id → expected status
	id, err := client.Submit(ctx, good, nil)
	if err != nil {
		t.Fatal(err)
	}
	runs[id] = "succeeded"
	for range 2 {
		bad := graflow.NewWorkflow("bad")
		bad.Task("x", "bad")
		id, err := client.Submit(ctx, bad, nil)
		if err != nil {
			t.Fatal(err)
		}
		runs[id] = "failed"
	}
	for run, want := range runs {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		info, err := client.Wait(wctx, run)
		wcancel()
		if err != nil {
			t.Fatal(err)
		}
		if info.Status != want {
			t.Fatalf("run %s: status %s, want %s", run, info.Status, want)
		}
	}
	// 5 + 2 + retry + success: each outcome is counted before TaskDone
	// returns, and the run ends only after its outcomes are recorded.
	for i := range 9 {
		select {
		case <-obs.done:
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d of 9 outcomes observed", i)
		}
	}
	// The projector commits each run at least once (below): wait until it
	// has counted three.
	for n := 0; n < 3; {
		select {
		case k := <-pobs.committed:
			n += k
		case <-time.After(10 * time.Second):
			t.Fatalf("only %d commits observed, want at least one per run (3)", n)
		}
	}

	fams := scrape(t, srv.URL+"/metrics")
	counter := func(name string, labels map[string]string) float64 {
		t.Helper()
		mt := find(t, fams, name, labels)
		if mt.Counter != nil {
			return mt.Counter.GetValue()
		}
		return mt.Gauge.GetValue()
	}
	hcount := func(name string, labels map[string]string) uint64 {
		t.Helper()
		return find(t, fams, name, labels).Histogram.GetSampleCount()
	}
	l := func(kv ...string) map[string]string {
		out := map[string]string{}
		for i := 0; i < len(kv); i += 2 {
			out[kv[i]] = kv[i+1]
		}
		return out
	}
	exact := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"graflow_worker_tasks_total", l("pool", "default", "handler", "ok", "outcome", "succeeded"), 5},
		{"graflow_worker_tasks_total", l("pool", "default", "handler", "bad", "outcome", "failed"), 2},
		{"graflow_worker_tasks_total", l("pool", "default", "handler", "flaky", "outcome", "retry"), 1},
		{"graflow_worker_tasks_total", l("pool", "default", "handler", "flaky", "outcome", "succeeded"), 1},
		{"graflow_worker_dead_letters_total", l("pool", "default", "handler", "bad"), 2},
		{"graflow_worker_tasks_running", l("pool", "default", "handler", "ok"), 0},
		{"graflow_worker_tasks_running", l("pool", "default", "handler", "flaky"), 0},
		{"graflow_dead_letters", nil, 2},
		{"graflow_runs", l("status", "succeeded"), 1},
		{"graflow_runs", l("status", "failed"), 2},
		{"graflow_queue_length", l("pool", "default", "band", "0"), 0},
		{"graflow_queue_pending", l("pool", "default", "band", "0"), 0},
		{"graflow_queue_lag", l("pool", "default", "band", "0"), 0},
		{"graflow_redis_scrape_success", nil, 1},
	}
	for _, e := range exact {
		if got := counter(e.name, e.labels); got != e.want {
			t.Errorf("%s%v = %v, want %v", e.name, e.labels, got, e.want)
		}
	}
	hists := []struct {
		labels map[string]string
		want   uint64
	}{
		{l("pool", "default", "handler", "ok", "result", "ok"), 5},
		{l("pool", "default", "handler", "bad", "result", "error"), 2},
		{l("pool", "default", "handler", "flaky", "result", "error"), 1},
		{l("pool", "default", "handler", "flaky", "result", "ok"), 1},
	}
	for _, h := range hists {
		if got := hcount("graflow_worker_handler_duration_seconds", h.labels); got != h.want {
			t.Errorf("handler duration count %v = %d, want %d", h.labels, got, h.want)
		}
	}
	// Claims and outcomes are batched: between one batch and one per task.
	for _, name := range []string{"graflow_worker_claim_batch_duration_seconds", "graflow_worker_finish_batch_duration_seconds"} {
		if got := hcount(name, nil); got < 1 || got > 9 {
			t.Errorf("%s count = %d, want 1..9", name, got)
		}
	}
	// The projector commits each run at least once (commits_total counts
	// runs), but it may commit several runs in one pipeline, which the
	// duration histogram observes once: between one round trip and one per
	// run committed.
	committed := counter("graflow_projector_commits_total", l("result", "committed"))
	if committed < 3 {
		t.Errorf("committed commits = %v, want at least one per run (3)", committed)
	}
	attempted := 0.0 // committed, conflict and error alike
	for _, m := range fams["graflow_projector_commits_total"].GetMetric() {
		attempted += m.GetCounter().GetValue()
	}
	if got := hcount("graflow_projector_commit_duration_seconds", nil); got < 1 || float64(got) > attempted {
		t.Errorf("commit round trips = %d, want 1..%v (one per batch)", got, attempted)
	}
	find(t, fams, "graflow_projector_feed_lag", l("partition", "0"))

	if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz: %d %s", code, body)
	}
	if code, body := get(t, srv.URL+"/readyz"); code != http.StatusOK {
		t.Errorf("/readyz with Redis up and loops running: %d %s", code, body)
	}
}

// TestReadyzIsUnavailableWhenRedisIsUnreachable points a client at a
// closed port: /readyz says 503 and why, /healthz stays 200.
func TestReadyzIsUnavailableWhenRedisIsUnreachable(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	_ = ln.Close()
	rc := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, DialTimeout: 500 * time.Millisecond})
	t.Cleanup(func() { _ = rc.Close() })
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: redistest.Namespace(t)})
	if err != nil {
		t.Fatal(err)
	}
	m := graflow.NewMetrics(client, graflow.MetricsOptions{})
	m.Worker().Alive("worker.heartbeat", time.Minute) // the loops are fine; Redis is not
	srv := httptest.NewServer(m.Handler())
	t.Cleanup(srv.Close)
	code, body := get(t, srv.URL+"/readyz")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "redis: PING failed") {
		t.Errorf("/readyz = %d %q, want 503 naming the PING", code, body)
	}
	if code, _ := get(t, srv.URL+"/healthz"); code != http.StatusOK {
		t.Errorf("/healthz = %d, want 200", code)
	}
	fams := scrape(t, srv.URL+"/metrics")
	if got := find(t, fams, "graflow_redis_scrape_success", nil).Gauge.GetValue(); got != 0 {
		t.Errorf("graflow_redis_scrape_success = %v, want 0", got)
	}
}

// TestReadyzNamesASilentLoop: a loop that does not come round within the
// time it promised makes the process unready, with its name; a loop that
// reports again makes it ready again.
func TestReadyzNamesASilentLoop(t *testing.T) {
	t.Parallel()
	clock := clockwork.NewFakeClock()
	client, err := graflow.NewClient(graflow.Config{Redis: redistest.Client(t), Namespace: redistest.Namespace(t), Clock: clock})
	if err != nil {
		t.Fatal(err)
	}
	m := graflow.NewMetrics(client, graflow.MetricsOptions{})
	ctx := context.Background()
	if err := m.Ready(ctx); err == nil || !strings.Contains(err.Error(), "not started") {
		t.Fatalf("Ready before any loop = %v, want not started", err)
	}
	m.Worker().Alive("worker.heartbeat", 10*time.Second)
	m.Projector().Alive("projector.feed.0", 20*time.Second)
	if err := m.Ready(ctx); err != nil {
		t.Fatalf("Ready = %v", err)
	}
	clock.Advance(15 * time.Second)
	err = m.Ready(ctx)
	if err == nil || !strings.Contains(err.Error(), "loop worker.heartbeat: silent for 15s (expected within 10s)") ||
		strings.Contains(err.Error(), "projector.feed.0") {
		t.Fatalf("Ready after 15s = %v, want the heartbeat loop named, alone", err)
	}
	m.Worker().Alive("worker.heartbeat", 10*time.Second)
	if err := m.Ready(ctx); err != nil {
		t.Fatalf("Ready after the loop came round = %v", err)
	}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s", url, resp.Status)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(resp.Body)
	if err != nil {
		t.Fatalf("parse %s: %v", url, err)
	}
	return fams
}

// find returns the metric of family name whose labels are exactly labels.
func find(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels map[string]string) *dto.Metric {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("no metric family %s", name)
	}
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(labels) {
			continue
		}
		match := true
		for _, lp := range m.GetLabel() {
			if labels[lp.GetName()] != lp.GetValue() {
				match = false
			}
		}
		if match {
			return m
		}
	}
	t.Fatalf("no %s%v among %d series", name, labels, len(f.GetMetric()))
	return nil
}
