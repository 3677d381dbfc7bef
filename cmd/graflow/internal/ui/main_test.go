package ui

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/cookiejar"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
	"github.com/graflow-go/graflow/worker"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

// goleak: no test leaves a goroutine behind, live streams included.
func TestMain(m *testing.M) { goleak.VerifyTestMain(redistest.Wrap(m)) }

// gateHandler is the handler name of tasks that wait for the test to open
// their gate.
const gateHandler = "ui.gate"

// gate holds tasks of gateHandler until open is called.
type gate struct {
	release chan struct{}
	once    sync.Once
	// started receives the id of each task as its handler starts.
	started chan string
}

func newGate() *gate { return &gate{release: make(chan struct{}), started: make(chan string, 64)} }

func (g *gate) open() { g.once.Do(func() { close(g.release) }) }

func (g *gate) handle(ctx context.Context, t *worker.Task) (any, error) {
	select {
	case g.started <- t.ID:
	default:
	}
	select {
	case <-g.release:
		return t.ID + " done", nil
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

type bundle struct {
	rdb    *redis.Client
	ns     string
	client *graflow.Client
	srv    *Server
	url    string
	gate   *gate
	// worker and projector are the ids of the engine's worker and
	// projector (with setupOpts.engine).
	worker, projector string
	// streamEnded receives the path of each live stream whose handler
	// returned.
	streamEnded chan string
}

type setupOpts struct {
	// engine starts a projector and a worker with the built-in handlers
	// and gateHandler.
	engine bool
	config func(*Config)
}

// setup serves a dashboard over a fresh namespace with httptest.
func setup(t *testing.T, o setupOpts) *bundle {
	t.Helper()
	rc := redistest.Client(t)
	ns := redistest.Namespace(t)
	client, err := graflow.NewClient(graflow.Config{Redis: rc, Namespace: ns})
	if err != nil {
		t.Fatal(err)
	}
	b := &bundle{rdb: rc, ns: ns, client: client, gate: newGate(), worker: "w-ui", projector: "p-ui", streamEnded: make(chan string, 64)}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	t.Cleanup(func() { b.gate.open(); cancel(); wg.Wait() })
	if o.engine {
		p, err := projector.New(projector.Config{Redis: rc, Namespace: ns, ID: b.projector, FeedBlock: 200 * time.Millisecond, RetryInitial: 20 * time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		w, err := worker.New(worker.Config{Redis: rc, Namespace: ns, ID: b.worker, Concurrency: 4, FetchBlock: 200 * time.Millisecond, DrainTimeout: time.Second})
		if err != nil {
			t.Fatal(err)
		}
		builtin.Register(w)
		w.HandleFunc(gateHandler, b.gate.handle)
		wg.Go(func() { _ = p.Run(ctx) })
		wg.Go(func() { _ = w.Run(ctx) })
	}
	cfg := Config{Client: client, FollowBlock: 100 * time.Millisecond, PageSize: 2}
	if o.config != nil {
		o.config(&cfg)
	}
	b.srv, err = New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := b.srv.Handler()
	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(w, r)
		if strings.HasSuffix(r.URL.Path, "/events") {
			b.streamEnded <- r.URL.Path
		}
	}))
	ts.Start()
	b.url = ts.URL
	// Runs before the engine stops (cleanups run last first). Close waits
	// for every handler; one still running is a stream that outlived its
	// client: fail rather than hang.
	t.Cleanup(func() {
		closed := make(chan struct{})
		go func() { ts.Close(); close(closed) }()
		select {
		case <-closed:
		case <-time.After(10 * time.Second):
			t.Error("a request handler still runs 10s after the test ended: a live stream outlived its client")
		}
	})
	return b
}

// get fetches path and returns the status and body.
func (b *bundle) get(t *testing.T, path string) (int, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(body)
}

// mustGet fetches path and fails unless it answers 200.
func (b *bundle) mustGet(t *testing.T, path string) string {
	t.Helper()
	code, body := b.get(t, path)
	if code != http.StatusOK {
		t.Fatalf("GET %s: %d, want 200:\n%s", path, code, body)
	}
	return body
}

// browser returns an HTTP client with a cookie jar that does not follow
// redirects, like a form submission we can inspect.
func browser(t *testing.T) *http.Client {
	t.Helper()
	jar, err := cookiejar.New(nil)
	if err != nil {
		t.Fatal(err)
	}
	return &http.Client{Jar: jar, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

// submit submits wf and returns the run id.
func (b *bundle) submit(t *testing.T, wf *graflow.Workflow) string {
	t.Helper()
	run, err := b.client.Submit(context.Background(), wf, nil)
	if err != nil {
		t.Fatal(err)
	}
	return run
}

// wait waits for run to end.
func (b *bundle) wait(t *testing.T, run string) *graflow.RunInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	info, err := b.client.Wait(ctx, run)
	if err != nil {
		t.Fatalf("wait for run %s: %v", run, err)
	}
	return info
}

// waitFor receives from ch or fails after d.
func waitFor[T any](t *testing.T, ch <-chan T, d time.Duration, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-time.After(d):
		t.Fatalf("timed out after %v waiting for %s", d, what)
		panic("unreachable")
	}
}

// sseMsg is one server-sent event.
type sseMsg struct{ Event, ID, Data string }

// sseReader reads server-sent events from a live stream's body.
type sseReader struct{ r *bufio.Reader }

// next returns the next event with an event name (a block holding only
// "retry:" is skipped), or io.EOF when the server closed the stream.
func (s sseReader) next() (sseMsg, error) {
	var m sseMsg
	for {
		line, err := s.r.ReadString('\n')
		if err != nil {
			if errors.Is(err, io.EOF) && line == "" {
				return m, io.EOF
			}
			return m, err
		}
		line = strings.TrimRight(line, "\n")
		if line == "" {
			if m.Event != "" {
				return m, nil
			}
			continue
		}
		k, v, _ := strings.Cut(line, ": ")
		switch k {
		case "event":
			m.Event = v
		case "id":
			m.ID = v
		case "data":
			m.Data += v
		}
	}
}

// openStream opens run's live stream with ctx and checks it answers 200.
// Close the returned body to leave, as a browser closing the tab.
func (b *bundle) openStream(t *testing.T, ctx context.Context, run string) (sseReader, io.Closer) {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, b.url+"/runs/"+run+"/events", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || resp.Header.Get("Content-Type") != "text/event-stream" {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		t.Fatalf("GET /runs/%s/events: %d %s, want 200 text/event-stream:\n%s", run, resp.StatusCode, resp.Header.Get("Content-Type"), body)
	}
	return sseReader{bufio.NewReader(resp.Body)}, resp.Body
}

// attr returns every value of the HTML attribute name in body, in order.
func attr(body, name string) []string {
	var out []string
	for _, m := range regexp.MustCompile(` `+regexp.QuoteMeta(name)+`="([^"]*)"`).FindAllStringSubmatch(body, -1) {
		out = append(out, m[1])
	}
	return out
}
