package ui

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"
	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/worker/builtin"
)

// Environment read by the browser test.
const (
	// envRequireBrowser makes a missing Chromium a failure (make test sets
	// it; its browser target installs Debian's chromium).
	envRequireBrowser = "GRAFLOW_TEST_REQUIRE_BROWSER"
	// envScreenshots names a directory to save the run page's screenshots
	// in (run.png mid-run, done.png at the end), to look at them.
	envScreenshots = "GRAFLOW_UI_SCREENSHOTS"
)

// chromium returns the path of a Chromium (or Chrome) binary, or skips the
// test (fails it under envRequireBrowser) when there is none.
func chromium(t *testing.T) string {
	t.Helper()
	for _, name := range []string{"chromium", "chromium-browser", "google-chrome", "headless-shell"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	const why = "no chromium on PATH: the dashboard's browser test needs one (make browser installs Debian's chromium)"
	if os.Getenv(envRequireBrowser) != "" {
		t.Fatal(why + "; " + envRequireBrowser + " is set")
	}
	t.Skip(why + "; set " + envRequireBrowser + "=1 to make this a failure")
	return ""
}

// TestBrowserSeesTheDAGTurnGreen drives a real headless Chromium: it opens
// the page of a run whose tasks wait for the test, sees them not green,
// lets them finish, and sees every node turn green with no reload, which
// only the live stream can do.
func TestBrowserSeesTheDAGTurnGreen(t *testing.T) {
	t.Parallel()
	exe := chromium(t)
	b := setup(t, setupOpts{engine: true})
	wf := graflow.NewWorkflow("browser")
	a := wf.Task("a", gateHandler)
	left := wf.Task("left", gateHandler).After(a)
	right := wf.Task("right", gateHandler).After(a)
	wf.Task("join", gateHandler).After(left, right)
	run := b.submit(t, wf)
	waitFor(t, b.gate.started, 20*time.Second, "task a to start")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	opts := append(slices.Clone(chromedp.DefaultExecAllocatorOptions[:]), chromedp.ExecPath(exe), chromedp.WindowSize(1200, 900))
	if os.Geteuid() == 0 {
		// Chromium refuses to start as root with its sandbox on (the
		// sandbox needs an unprivileged user namespace or setuid helper);
		// test machines and CI containers run tests as root.
		opts = append(opts, chromedp.NoSandbox)
	}
	actx, cancelAlloc := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelAlloc()
	bctx, cancelBrowser := chromedp.NewContext(actx)
	defer cancelBrowser()

	// Every script error and console error (a CSP violation is one) fails
	// the test. Listen starts the browser.
	var mu sync.Mutex
	var problems []string
	if err := chromedp.Listen(bctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			problems = append(problems, "exception: "+ev.ExceptionDetails.Text)
		case *log.EventEntryAdded:
			if ev.Entry.Level == log.EntryLevelError {
				problems = append(problems, "console ("+string(ev.Entry.Source)+"): "+ev.Entry.Text)
			}
		}
	}); err != nil {
		t.Fatalf("start chromium (%s): %v", exe, err)
	}

	const nodes = `Array.from(document.querySelectorAll("svg.dag .node"))`
	const nodeStates = nodes + `.map(n => n.getAttribute("data-task") + "=" + n.getAttribute("data-status"))`
	if err := chromedp.Do(bctx,
		chromedp.Navigate(b.url+"/runs/"+run),
		chromedp.WaitVisible(`svg.dag .node[data-task="join"]`),
		// The stream is open: the script applied its snapshot.
		chromedp.Poll[chromedp.Void](`document.querySelector(".live").getAttribute("data-state") === "open"`, chromedp.WithPollingTimeout(20*time.Second)),
		// A marker that a reload would wipe.
		chromedp.Evaluate[chromedp.Void](`window.graflowTestMarker = "still here"`),
	); err != nil {
		t.Fatalf("open the run page: %v", err)
	}
	before, err := chromedp.Run(bctx, chromedp.Evaluate[[]string](nodeStates))
	if err != nil {
		t.Fatal(err)
	}
	if len(before) != 4 || !slices.Contains(before, "a=running") {
		t.Fatalf("nodes before the tasks finish: %v, want 4 with a running", before)
	}
	for _, n := range before {
		if strings.HasSuffix(n, "=succeeded") {
			t.Fatalf("node %s is green before any task finished (nodes %v)", n, before)
		}
	}
	screenshot(t, bctx, "run.png")

	b.gate.open()
	if err := chromedp.Do(bctx, chromedp.Poll[chromedp.Void](
		nodes+`.every(n => n.getAttribute("data-status") === "succeeded") && document.querySelector(".live").getAttribute("data-state") === "ended"`,
		chromedp.WithPollingTimeout(30*time.Second))); err != nil {
		now, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](nodeStates))
		t.Fatalf("waiting for every node to turn green: %v (nodes now %v)", err, now)
	}
	screenshot(t, bctx, "done.png")
	marker, err := chromedp.Run(bctx, chromedp.Evaluate[string](`window.graflowTestMarker || "reloaded"`))
	if err != nil || marker != "still here" {
		t.Errorf("the page was reloaded (marker %q, %v): the colours must come from the live stream", marker, err)
	}
	// The colour fades in (a CSS transition): wait for it to settle.
	const green = "rgb(47, 163, 90)" // --succeeded in app.css
	const fills = nodes + `.map(n => getComputedStyle(n.querySelector("rect")).fill)`
	if err := chromedp.Do(bctx, chromedp.Poll[chromedp.Void](fills+`.every(f => f === "`+green+`")`, chromedp.WithPollingTimeout(10*time.Second))); err != nil {
		now, _ := chromedp.Run(bctx, chromedp.Evaluate[[]string](fills))
		t.Errorf("nodes filled %v, want every one green %s: %v", now, green, err)
	}
	if info := b.wait(t, run); !info.Succeeded() {
		t.Errorf("run %+v, want succeeded", info)
	}
	if os.Getenv(envScreenshots) != "" { // the other pages, to look at
		bad := graflow.NewWorkflow("doomed")
		bad.Task("boom", builtin.Fail).Args(map[string]any{"permanent": true, "message": "disk full"})
		b.wait(t, b.submit(t, bad)) // a dead letter to show
		for name, path := range map[string]string{"timeline.png": "/runs/" + run + "/timeline", "task.png": "/runs/" + run + "/tasks/a",
			"runs.png": "/runs", "workers.png": "/workers", "queues.png": "/queues?all=1", "deadletters.png": "/dead-letters"} {
			if err := chromedp.Do(bctx, chromedp.Navigate(b.url+path)); err != nil {
				t.Fatal(err)
			}
			screenshot(t, bctx, name)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(problems) > 0 {
		t.Errorf("the page reported errors:\n%s", strings.Join(problems, "\n"))
	}
}

// screenshot saves the page as name in envScreenshots' directory, if set.
func screenshot(t *testing.T, ctx context.Context, name string) {
	t.Helper()
	dir := os.Getenv(envScreenshots)
	if dir == "" {
		return
	}
	png, err := chromedp.Run(ctx, chromedp.FullScreenshot(100))
	if err != nil {
		t.Errorf("screenshot: %v", err)
		return
	}
	if err := os.WriteFile(filepath.Join(dir, name), png, 0o644); err != nil {
		t.Error(err)
	}
}
