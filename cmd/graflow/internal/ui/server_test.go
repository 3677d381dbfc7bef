package ui

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/worker/builtin"
)

func TestRunsPage(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{}) // no engine: the runs stay running; 2 runs a page
	var alpha, beta []string
	for range 3 {
		wf := graflow.NewWorkflow("alpha")
		wf.Task("a", builtin.Noop)
		alpha = append(alpha, b.submit(t, wf))
	}
	for range 2 {
		wf := graflow.NewWorkflow("beta")
		wf.Task("a", builtin.Noop)
		beta = append(beta, b.submit(t, wf))
	}
	page := func(path string) (runs []string, prev, next bool) {
		body := b.mustGet(t, path)
		return attr(body, "data-run"), strings.Contains(body, `rel="prev"`), strings.Contains(body, `rel="next"`)
	}

	t.Run("lists the newest first, a page at a time", func(t *testing.T) {
		runs, prev, next := page("/runs")
		if diff := cmp.Diff([]string{beta[1], beta[0]}, runs); diff != "" || prev || !next {
			t.Errorf("page 1 (-want +got):\n%s; prev %v next %v, want a next link only", diff, prev, next)
		}
		runs, prev, next = page("/runs?page=3")
		if diff := cmp.Diff([]string{alpha[0]}, runs); diff != "" || !prev || next {
			t.Errorf("page 3 (-want +got):\n%s; prev %v next %v, want a prev link only", diff, prev, next)
		}
	})
	t.Run("filters by name across pages", func(t *testing.T) {
		runs, _, next := page("/runs?name=ALPH")
		if diff := cmp.Diff([]string{alpha[2], alpha[1]}, runs); diff != "" || !next {
			t.Errorf("name=ALPH page 1 (-want +got):\n%s; next %v", diff, next)
		}
		runs, _, next = page("/runs?name=ALPH&page=2")
		if diff := cmp.Diff([]string{alpha[0]}, runs); diff != "" || next {
			t.Errorf("name=ALPH page 2 (-want +got):\n%s; next %v", diff, next)
		}
		if runs, _, _ := page("/runs?name=" + beta[0]); !cmp.Equal(runs, []string{beta[0]}) {
			t.Errorf("name=<a run id> = %v, want that run", runs)
		}
	})
	t.Run("filters by status", func(t *testing.T) {
		if runs, _, _ := page("/runs?status=succeeded"); len(runs) != 0 {
			t.Errorf("status=succeeded lists %v; every run is running", runs)
		}
		if runs, _, _ := page("/runs?status=running&name=beta"); !cmp.Equal(runs, []string{beta[1], beta[0]}) {
			t.Errorf("status=running&name=beta = %v, want %v", runs, []string{beta[1], beta[0]})
		}
	})
}

func TestPagesEscapeWhatTheyShow(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	const evil = `<script>alert("x")</script>`
	wf := graflow.NewWorkflow(evil)
	wf.Task("a", `<img src=x onerror=alert(1)>`)
	run := b.submit(t, wf)
	for _, path := range []string{"/runs", "/runs/" + run, "/runs/" + run + "/tasks/a", "/runs/" + run + "/timeline", "/runs?name=" + url.QueryEscape(evil)} {
		body := b.mustGet(t, path)
		if strings.Contains(body, "<script>alert") || strings.Contains(body, "<img src=x") {
			t.Errorf("GET %s shows the workflow's name or handler unescaped:\n%s", path, body)
		}
		if !strings.Contains(body, "&lt;script&gt;") && !strings.Contains(body, "&lt;img") {
			t.Errorf("GET %s does not show the escaped name or handler:\n%s", path, body)
		}
	}
}

func TestRunPageAndLiveStream(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{engine: true})
	wf := graflow.NewWorkflow("gated")
	a := wf.Task("a", gateHandler)
	wf.Task("b", gateHandler).After(a)
	run := b.submit(t, wf)

	body := b.mustGet(t, "/runs/"+run)
	if got := attr(body, "data-task"); !cmp.Equal(got, []string{"a", "b", "a", "b"}) {
		t.Errorf("run page data-task attributes = %v, want a and b on the DAG, then in the table", got)
	}
	if !strings.Contains(body, `data-from="a" data-to="b"`) {
		t.Errorf("run page has no edge a -> b:\n%s", body)
	}
	if !strings.Contains(body, `data-stream="/runs/`+run+`/events"`) {
		t.Errorf("run page does not point its script at the stream:\n%s", body)
	}

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	waitFor(t, b.gate.started, 20*time.Second, "task a to start")
	sse, stream := b.openStream(t, ctx, run)
	defer stream.Close()
	statuses := map[string]string{}
	first, err := sse.next()
	if err != nil || first.Event != "snapshot" {
		t.Fatalf("first message %+v, %v; want the snapshot", first, err)
	}
	var snap snapshotMsg
	if err := json.Unmarshal([]byte(first.Data), &snap); err != nil {
		t.Fatal(err)
	}
	for _, tv := range snap.Tasks {
		statuses[tv.ID] = tv.Status
	}
	if snap.Run.Status != "running" || statuses["a"] != "running" || statuses["b"] != "pending" {
		t.Fatalf("snapshot %+v: want the run running, a running (its handler started), b pending", snap)
	}

	b.gate.open()
	var end runView
	for {
		m, err := sse.next()
		if err != nil {
			t.Fatalf("stream broke before the run's end: %v (statuses %v)", err, statuses)
		}
		if m.Event == "end" {
			if err := json.Unmarshal([]byte(m.Data), &end); err != nil {
				t.Fatal(err)
			}
			break
		}
		if m.Event != "ev" || m.ID == "" {
			t.Fatalf("message %+v, want ev with the entry id", m)
		}
		var ev eventMsg
		if err := json.Unmarshal([]byte(m.Data), &ev); err != nil {
			t.Fatal(err)
		}
		if ev.Seq != m.ID || ev.Type == "" {
			t.Errorf("ev %+v: want its seq (%s) and type", ev, m.ID)
		}
		for _, tv := range ev.Tasks {
			statuses[tv.ID] = tv.Status
		}
	}
	if end.Status != "succeeded" || statuses["a"] != "succeeded" || statuses["b"] != "succeeded" {
		t.Errorf("at the end: run %+v, tasks %v; want every one succeeded", end, statuses)
	}
	if m, err := sse.next(); !errors.Is(err, io.EOF) {
		t.Errorf("after end: %+v, %v; want the server to close the stream", m, err)
	}
	waitFor(t, b.streamEnded, 10*time.Second, "the stream's handler to return")

	t.Run("a finished run streams its snapshot, then end", func(t *testing.T) {
		sse, stream := b.openStream(t, ctx, run)
		defer stream.Close()
		var got []string
		for {
			m, err := sse.next()
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, m.Event)
		}
		if !cmp.Equal(got, []string{"snapshot", "end"}) {
			t.Errorf("events %v, want snapshot and end", got)
		}
		waitFor(t, b.streamEnded, 10*time.Second, "the stream's handler to return")
	})
	t.Run("the DAG fragment draws the tasks as they are now", func(t *testing.T) {
		frag := b.mustGet(t, "/runs/"+run+"/dag")
		if !strings.HasPrefix(frag, "<svg") || !cmp.Equal(attr(frag, "data-status"), []string{"succeeded", "succeeded"}) {
			t.Errorf("dag fragment:\n%s\nwant an svg with both tasks succeeded", frag)
		}
	})
}

func TestStreamEndsWhenTheBrowserGoesAway(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{config: func(c *Config) { c.MaxStreams = 1 }}) // no engine: the run never ends
	wf := graflow.NewWorkflow("forever")
	wf.Task("a", builtin.Noop)
	run := b.submit(t, wf)

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	sctx, leave := context.WithCancel(ctx)
	sse, stream := b.openStream(t, sctx, run)
	defer stream.Close()
	if m, err := sse.next(); err != nil || m.Event != "snapshot" {
		t.Fatalf("first message %+v, %v; want the snapshot", m, err)
	}
	if code, body := b.get(t, "/runs/"+run+"/events"); code != http.StatusServiceUnavailable || !strings.Contains(body, "too many live pages") {
		t.Errorf("a second stream beyond MaxStreams 1: %d %q, want 503 and why", code, body)
	}
	waitFor(t, b.streamEnded, 10*time.Second, "the refused stream's handler to return")

	leave() // the browser closes the tab
	waitFor(t, b.streamEnded, 10*time.Second, "the stream's handler to return after its client left")

	// Its slot is free again.
	sse2, stream2 := b.openStream(t, ctx, run)
	defer stream2.Close()
	if m, err := sse2.next(); err != nil || m.Event != "snapshot" {
		t.Fatalf("stream after the first one ended: %+v, %v; want a snapshot", m, err)
	}
}

func TestStreamOfAnUnknownRun(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	if code, body := b.get(t, "/runs/nope/events"); code != http.StatusNotFound || !strings.Contains(body, `run "nope" not found`) {
		t.Errorf("stream of an unknown run: %d %q, want 404 and why", code, body)
	}
	if code, body := b.get(t, "/runs/nope"); code != http.StatusNotFound || !strings.Contains(body, "run not found") {
		t.Errorf("page of an unknown run: %d %q, want 404 and why", code, body)
	}
}

func TestTaskAndTimelinePages(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{engine: true})
	wf := graflow.NewWorkflow("mixed")
	fl := wf.Task("flaky", builtin.Flaky).Args(map[string]any{"fail": 1, "value": 7}).Retries(1)
	wf.Task("boom", builtin.Fail).Args(map[string]any{"permanent": true, "message": "<b>kaput</b>"})
	wf.Task("after", builtin.Sum).After(fl)
	run := b.submit(t, wf)
	if info := b.wait(t, run); info.Status != "failed" {
		t.Fatalf("run %+v, want failed (boom)", info)
	}

	t.Run("a task that succeeded on its second attempt", func(t *testing.T) {
		body := b.mustGet(t, "/runs/"+run+"/tasks/flaky")
		for _, want := range []string{`data-status="succeeded"`, `<pre class="json">7</pre>`, "<dd>2 of 2</dd>", b.worker} {
			if !strings.Contains(body, want) {
				t.Errorf("task page lacks %q:\n%s", want, body)
			}
		}
		if got := attr(body, "data-status"); !cmp.Equal(got, []string{"succeeded", "failed", "succeeded"}) {
			t.Errorf("statuses on the task page %v, want the task's, then its two attempts' outcomes", got)
		}
	})
	t.Run("a task that failed shows its error, escaped", func(t *testing.T) {
		body := b.mustGet(t, "/runs/"+run+"/tasks/boom")
		if !strings.Contains(body, "&lt;b&gt;kaput&lt;/b&gt;") || strings.Contains(body, "<b>kaput") {
			t.Errorf("task page does not show the error escaped:\n%s", body)
		}
	})
	t.Run("an unknown task is not found", func(t *testing.T) {
		if code, _ := b.get(t, "/runs/"+run+"/tasks/ghost"); code != http.StatusNotFound {
			t.Errorf("unknown task: %d, want 404", code)
		}
	})
	t.Run("the timeline lists every attempt and draws them", func(t *testing.T) {
		body := b.mustGet(t, "/runs/"+run+"/timeline")
		if got := attr(body, "data-outcome"); len(got) < 4 { // wait + run bars of flaky's 2 attempts, boom's, after's
			t.Errorf("timeline bars %v, want wait and run bars of every attempt", got)
		}
		for _, want := range []string{`<figure class="gantt">`, "1 retries", ">flaky</a>", ">boom</a>", ">after</a>"} {
			if !strings.Contains(body, want) {
				t.Errorf("timeline lacks %q:\n%s", want, body)
			}
		}
	})
}

func TestWorkersProjectorsQueuesPages(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{engine: true})
	wf := graflow.NewWorkflow("stuck")
	wf.Task("a", builtin.Noop).Pool("nobody")
	b.submit(t, wf) // its root is queued at submission, and no worker serves the pool

	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	registered := func() bool {
		ws, err := b.client.Workers(ctx)
		if err != nil {
			t.Fatal(err)
		}
		ps, err := b.client.Projectors(ctx)
		if err != nil {
			t.Fatal(err)
		}
		return len(ws) == 1 && len(ps) == 1
	}
	// Both register as they start; wait for the records, on a ticker.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !registered() {
		select {
		case <-ctx.Done():
			t.Fatal("the worker and projector never registered")
		case <-tick.C:
		}
	}
	if got := attr(b.mustGet(t, "/workers"), "data-worker"); !cmp.Equal(got, []string{b.worker}) {
		t.Errorf("workers page lists %v, want %s", got, b.worker)
	}
	if body := b.mustGet(t, "/projectors"); !cmp.Equal(attr(body, "data-projector"), []string{b.projector}) || strings.Contains(body, "No projector is running") {
		t.Errorf("projectors page:\n%s\nwant %s listed, live", body, b.projector)
	}
	body := b.mustGet(t, "/queues")
	if !strings.Contains(body, `data-pool="nobody" data-priority="0"`) {
		t.Errorf("queues page:\n%s\nwant pool nobody's band 0", body)
	}
}

func TestRequeueNeedsTheCSRFToken(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{engine: true})
	wf := graflow.NewWorkflow("dlq")
	wf.Task("a", builtin.Flaky).Args(map[string]any{"fail": 1, "permanent": true, "value": 2})
	run := b.submit(t, wf)
	if info := b.wait(t, run); info.Status != "failed" {
		t.Fatalf("run %+v, want failed", info)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// A browser loads the page: it gets the cookie and the form's token.
	load := func(c *http.Client) string {
		resp, err := c.Get(b.url + "/dead-letters")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), `data-dead-letter="`+run+`/a"`) {
			t.Fatalf("dead letters page: %d\n%s\nwant the dead letter listed", resp.StatusCode, body)
		}
		tokens := attr(string(body), "value")
		if len(tokens) < 1 || len(tokens[0]) < 40 {
			t.Fatalf("no CSRF token in the form:\n%s", body)
		}
		return tokens[0]
	}
	user, other := browser(t), browser(t)
	token, otherToken := load(user), load(other)
	if token == otherToken {
		t.Fatal("two browsers got the same token")
	}
	post := func(c *http.Client, token string, header map[string]string) (int, string) {
		form := url.Values{"run": {run}, "task": {"a"}}
		if token != "" {
			form.Set(csrfField, token)
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, b.url+"/dead-letters/requeue", strings.NewReader(form.Encode()))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, resp.Header.Get("Location") + problem(string(body))
	}

	refused := []struct {
		name   string
		client *http.Client
		token  string
		header map[string]string
	}{
		{"no cookie, no token", browser(t), "", nil},
		{"no cookie, a valid token of another browser", browser(t), token, nil},
		{"the cookie, no token", user, "", nil},
		{"the cookie, a wrong token", user, strings.Repeat("A", len(token)), nil},
		{"the cookie, the token of another browser's cookie", user, otherToken, nil},
		{"a cross-site request with the token", user, token, map[string]string{"Sec-Fetch-Site": "cross-site"}},
		{"another origin (no Sec-Fetch-Site) with the token", user, token, map[string]string{"Origin": "http://evil.example"}},
	}
	for _, tt := range refused {
		if code, body := post(tt.client, tt.token, tt.header); code != http.StatusForbidden {
			t.Errorf("POST with %s: %d %q, want 403", tt.name, code, body)
		}
	}
	if info, err := b.client.Status(ctx, run); err != nil || info.Task("a").Status != "failed" {
		t.Fatalf("after refused requeues: %+v, %v; want task a still failed", info, err)
	}
	if code, _ := b.get(t, "/dead-letters/requeue"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /dead-letters/requeue: %d, want 405", code)
	}

	code, loc := post(user, token, map[string]string{"Sec-Fetch-Site": "same-origin"})
	if code != http.StatusSeeOther || loc != "/runs/"+run {
		t.Fatalf("requeue with the token: %d %q, want 303 to the run's page", code, loc)
	}
	if info := b.wait(t, run); !info.Succeeded() || info.Task("a").Attempt != 2 {
		t.Errorf("after requeue: %+v, want success on attempt 2", info)
	}
	if dls, err := b.client.DeadLetters(ctx, 0); err != nil || len(dls) != 0 {
		t.Errorf("dead letters after requeue: %+v, %v; want none", dls, err)
	}
	if code, body := post(user, token, nil); code != http.StatusConflict || !strings.Contains(body, "cannot be requeued") {
		t.Errorf("requeue of a task that succeeded: %d %q, want 409 and why", code, body)
	}
}

func TestSecurityHeadersAndHostCheck(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	_, port, _ := net.SplitHostPort(strings.TrimPrefix(b.url, "http://"))
	do := func(host, path string) (int, http.Header) {
		req, err := http.NewRequest(http.MethodGet, b.url+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		_, _ = io.Copy(io.Discard, resp.Body)
		return resp.StatusCode, resp.Header
	}
	for _, path := range []string{"/runs", "/static/app.js", "/runs/nope", "/runs/nope/events", "/nothing-here"} {
		_, h := do("localhost:"+port, path)
		if got := h.Get("Content-Security-Policy"); got != contentSecurityPolicy {
			t.Errorf("GET %s: Content-Security-Policy %q", path, got)
		}
		if got := h.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("GET %s: X-Content-Type-Options %q", path, got)
		}
	}
	if code, h := do("localhost:"+port, "/static/app.js"); code != http.StatusOK || !strings.HasPrefix(h.Get("Content-Type"), "text/javascript") {
		t.Errorf("GET /static/app.js: %d %s, want 200 JavaScript", code, h.Get("Content-Type"))
	}
	for _, host := range []string{"evil.example:" + port, "evil.example", "192.168.1.7:" + port} {
		if code, _ := do(host, "/runs"); code != http.StatusMisdirectedRequest {
			t.Errorf("GET /runs with Host %s: %d, want 421 (a rebound DNS name)", host, code)
		}
	}
	for _, host := range []string{"127.0.0.1:" + port, "localhost", "[::1]:" + port} {
		if code, _ := do(host, "/runs"); code != http.StatusOK {
			t.Errorf("GET /runs with Host %s: %d, want 200", host, code)
		}
	}

	t.Run("AllowAnyHost serves other names", func(t *testing.T) {
		b := setup(t, setupOpts{config: func(c *Config) { c.AllowAnyHost = true }})
		req, _ := http.NewRequest(http.MethodGet, b.url+"/runs", nil)
		req.Host = "dashboard.internal"
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Errorf("GET /runs with Host dashboard.internal and AllowAnyHost: %d, want 200", resp.StatusCode)
		}
	})
}

func TestServeStopsWithItsContext(t *testing.T) {
	t.Parallel()
	b := setup(t, setupOpts{})
	wf := graflow.NewWorkflow("forever")
	wf.Task("a", builtin.Noop)
	run := b.submit(t, wf)

	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	served := make(chan error, 1)
	go func() { served <- b.srv.Serve(ctx, ln) }()

	rctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, http.MethodGet, "http://"+ln.Addr().String()+"/runs/"+run+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sse := sseReader{bufio.NewReader(resp.Body)}
	if m, err := sse.next(); err != nil || m.Event != "snapshot" {
		t.Fatalf("first message %+v, %v; want the snapshot", m, err)
	}
	stop()
	if err := waitFor(t, served, 10*time.Second, "Serve to return"); err != nil {
		t.Errorf("Serve after its context ended: %v, want nil", err)
	}
	if m, err := sse.next(); !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("open stream after shutdown: %+v, %v; want it closed", m, err)
	}
}

// problem returns the message of an error page (or the body of a plain
// error), for test failures.
func problem(body string) string {
	if m := regexp.MustCompile(`(?s)<p class="problem">(.*?)</p>`).FindStringSubmatch(body); m != nil {
		return m[1]
	}
	return strings.TrimSpace(body)
}
