//go:build unix

package bench

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/projector"
)

// tinySizes keep the in-process run of every workload short.
var tinySizes = Sizes{
	CeilingBatched: 600, CeilingUnbatched: 200, FloorRuns: 450, IndependentRuns: 30, FanoutTasks: 40,
	DynamicTasks: 40, ChainRuns: 10, LatencyRuns: 10, ReplayEvents: 2_000,
}

func TestRunPrintsTheOutputContract(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var out bytes.Buffer
	prefix := redistest.Namespace(t)
	rep, err := Run(ctx, Config{RedisURL: redistest.URL(t), NamespacePrefix: prefix, Runs: 2, Sizes: tinySizes,
		Concurrency: 4, Submitters: 4, Out: &out})
	if err != nil {
		t.Fatal(err)
	}
	type line map[string]any
	var lines []line
	sc := bufio.NewScanner(&out)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var l line
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("not a JSON line: %q: %v", sc.Text(), err)
		}
		lines = append(lines, l)
	}
	if len(lines) != len(rep.Results) {
		t.Fatalf("%d lines printed, %d results returned", len(lines), len(rep.Results))
	}
	// Per workload (and mode): 2 runs + 1 median.
	want := map[string]int{"ceiling/batched": 3, "ceiling/unbatched": 3, "floor/single": 3, "floor/fanout": 3, "floor/chain3": 3, "independent/": 3, "fanout/": 3,
		"fanout_3procs/": 3, "dynamic/": 3, "chain/": 3, "latency/": 3, "replay/": 3, "trace/single": 3, "trace/chain3": 3}
	got := map[string]int{}
	common := []string{"workload", "run", "redis_cmds_per_task", "events_per_task", "redis_bytes_per_task", "worker_cpu_ms_per_task", "redis_version", "nproc", "cpu_model"}
	perWorkload := map[string][]string{
		Ceiling: {"mode", "tasks_per_sec"}, Floor: {"tasks_per_sec", "redis_cpu_ms_per_task"}, Independent: {"tasks_per_sec"}, Fanout: {"tasks_per_sec"}, Fanout3: {"tasks_per_sec"}, Dynamic: {"tasks_per_sec"},
		Chain: {"tasks_per_sec", "runs_per_sec"}, Latency: {"p50_ms", "p90_ms", "p99_ms"}, Replay: {"events_per_sec"},
		Trace: {"mode", "trace"},
	}
	for _, l := range lines {
		w, _ := l["workload"].(string)
		mode, _ := l["mode"].(string)
		got[w+"/"+mode]++
		for _, k := range append(common, perWorkload[w]...) {
			if _, ok := l[k]; !ok {
				t.Errorf("%s line lacks %q: %v", w, k, l)
			}
		}
		if w != Replay && w != Ceiling {
			if ept, _ := l["events_per_task"].(float64); ept < 1 {
				t.Errorf("%s: events_per_task %v, want at least one event per task", w, ept)
			}
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("lines per workload (-want +got):\n%s", diff)
	}
	if m := rep.Median(Independent, ""); m == nil || !m.Median || m.Of != 2 || m.VsBatchedCeiling <= 0 {
		t.Errorf("independent median: %+v", m)
	}

	// Every namespace was cleaned up.
	keys, err := redistest.Client(t).Keys(ctx, prefix+"*").Result()
	if err != nil {
		t.Fatal(err)
	}
	if len(keys) > 0 {
		t.Errorf("%d keys left behind, e.g. %s", len(keys), keys[0])
	}
}

func TestSyntheticHistoryFoldsToASucceededRun(t *testing.T) {
	t.Parallel()
	evs := SyntheticHistory(100_000)
	if len(evs) != 100_002 {
		t.Fatalf("%d events, want 100,002 (submit, 25,000 x 4, run_succeeded)", len(evs))
	}
	r := projector.NewRun(replayRun)
	for _, e := range evs {
		if err := projector.Apply(r, e); err != nil {
			t.Fatal(err)
		}
	}
	if r.Status != projector.RunSucceeded || len(r.Tasks) != 25_000 {
		t.Fatalf("status %s with %d tasks, want succeeded with 25,000", r.Status, len(r.Tasks))
	}
}

func TestMediansTakeEachFigureOverTheRuns(t *testing.T) {
	t.Parallel()
	runs := []Result{
		{Workload: Chain, Run: 1, TasksPerSec: 300, RunsPerSec: 100, RedisCmdsPerTask: 9, RedisTop: []CmdCost{{Cmd: "a"}}},
		{Workload: Chain, Run: 2, TasksPerSec: 100, RunsPerSec: 33, RedisCmdsPerTask: 7, RedisTop: []CmdCost{{Cmd: "b"}}},
		{Workload: Chain, Run: 3, TasksPerSec: 200, RunsPerSec: 66, RedisCmdsPerTask: 8, RedisTop: []CmdCost{{Cmd: "c"}}},
		{Workload: Ceiling, Mode: ModeBatched, Run: 1, TasksPerSec: 10},
		{Workload: Ceiling, Mode: ModeUnbatched, Run: 1, TasksPerSec: 1},
	}
	got := medians(runs)
	want := []Result{
		{Workload: Chain, Median: true, Of: 3, TasksPerSec: 200, RunsPerSec: 66, RedisCmdsPerTask: 8, RedisTop: []CmdCost{{Cmd: "c"}}},
		{Workload: Ceiling, Mode: ModeBatched, Median: true, Of: 1, TasksPerSec: 10},
		{Workload: Ceiling, Mode: ModeUnbatched, Median: true, Of: 1, TasksPerSec: 1},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("medians (-want +got):\n%s", diff)
	}
}

func TestPercentileIsNearestRank(t *testing.T) {
	t.Parallel()
	v := make([]float64, 100)
	for i := range v {
		v[i] = float64(i + 1)
	}
	for p, want := range map[float64]float64{50: 50, 90: 90, 99: 99, 100: 100, 1: 1} {
		if got := percentile(v, p); got != want {
			t.Errorf("p%v = %v, want %v", p, got, want)
		}
	}
	if got := percentile([]float64{7}, 99); got != 7 {
		t.Errorf("p99 of one value = %v", got)
	}
}

func TestParseProcStat(t *testing.T) {
	t.Parallel()
	// Field 2 may hold spaces and parentheses; utime and stime are fields 14 and 15.
	line := "4242 (graflow (x) y) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 75 0 0 20 0 12 0 100 0 0"
	if got, want := parseProcStat(line), 3250*time.Millisecond; got != want {
		t.Errorf("parseProcStat = %v, want %v", got, want)
	}
	if got := parseProcStat("garbage"); got != 0 {
		t.Errorf("parseProcStat(garbage) = %v, want 0", got)
	}
	if procCPU(os.Getpid()) < 0 {
		t.Error("negative CPU time")
	}
}

func TestParseWorkloads(t *testing.T) {
	t.Parallel()
	got, err := ParseWorkloads("replay, ceiling")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{Ceiling, Replay}, got); diff != "" {
		t.Errorf("run order (-want +got):\n%s", diff)
	}
	if all, _ := ParseWorkloads("all"); len(all) != len(All) {
		t.Errorf("all = %v", all)
	}
	if _, err := ParseWorkloads("ceiling,nope"); err == nil || !strings.Contains(err.Error(), "nope") {
		t.Errorf("unknown workload: err = %v", err)
	}
}

func TestWriteDocKeepsTheHandWrittenText(t *testing.T) {
	t.Parallel()
	rep := &Report{Env: Env{RedisVersion: "7.0.15", NProc: 2, CPUModel: "CPU", Engine: "processes"}, Results: []Result{
		{Workload: Ceiling, Mode: ModeBatched, Median: true, Of: 1, Tasks: 10, TasksPerSec: 1000},
		{Workload: Independent, Median: true, Of: 1, Tasks: 10, WorkflowRuns: 10, TasksPerSec: 50, RedisBytesPerTask: 2000},
	}}
	path := filepath.Join(t.TempDir(), "perf.md")
	now := time.Date(2025, 1, 2, 3, 4, 5, 0, time.UTC)
	if err := WriteDoc(path, rep, "graflow bench", now); err != nil {
		t.Fatal(err)
	}
	first, _ := os.ReadFile(path)
	if !strings.HasPrefix(string(first), "# Performance\n") || !strings.Contains(string(first), "| 50 tasks/s = 0.050× batched ceiling |") {
		t.Fatalf("new doc:\n%s", first)
	}
	doc := "# Perf\n\nintro\n\n" + string(first[len("# Performance\n\n"):]) + "\n## Cost model\n\nhand-written\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	rep.Results[1].TasksPerSec = 70
	if err := WriteDoc(path, rep, "graflow bench", now); err != nil {
		t.Fatal(err)
	}
	second, _ := os.ReadFile(path)
	s := string(second)
	if !strings.HasPrefix(s, "# Perf\n\nintro\n\n"+DocBegin) || !strings.HasSuffix(s, DocEnd+"\n\n## Cost model\n\nhand-written\n") {
		t.Errorf("hand-written text not kept:\n%s", s)
	}
	if !strings.Contains(s, "70 tasks/s") || strings.Contains(s, "50 tasks/s") || strings.Count(s, DocBegin) != 1 {
		t.Errorf("generated section not replaced:\n%s", s)
	}
	if !strings.Contains(s, "| **no** |") {
		t.Errorf("missed targets are not flagged:\n%s", s)
	}
}

// benchHarness is a harness on the test Redis with the engine in process,
// for Go benchmarks and CPU profiles of the whole engine:
//
//	go test -run '^$' -bench IndependentInProcess -benchtime 20000x -cpuprofile cpu.out ./cmd/graflow/internal/bench
//	go tool pprof -top cpu.out
func benchHarness(b *testing.B, sizes Sizes) *harness {
	b.Helper()
	cfg := Config{RedisURL: redistest.URL(b), NamespacePrefix: redistest.Namespace(b), Sizes: sizes, Out: &bytes.Buffer{}}.withDefaults()
	h, err := newHarness(context.Background(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(h.close)
	return h
}

func reportResult(b *testing.B, r Result) {
	b.ReportMetric(r.TasksPerSec, "tasks/s")
	b.ReportMetric(r.RedisRoundTripsPerTask, "trips/task")
	b.ReportMetric(r.RedisCmdsPerTask, "cmds/task")
	b.ReportMetric(r.BenchCPUMSPerTask*1000, "cpu-µs/task")
}

// BenchmarkIndependentInProcess runs b.N single-task runs through an
// in-process worker (concurrency 16) and projector.
func BenchmarkIndependentInProcess(b *testing.B) {
	h := benchHarness(b, Sizes{IndependentRuns: b.N})
	res, err := h.independent(context.Background(), 1)
	if err != nil {
		b.Fatal(err)
	}
	reportResult(b, res[0])
}

// BenchmarkFanoutInProcess runs one run of b.N parallel tasks and a reduce
// through an in-process worker (concurrency 16) and projector.
func BenchmarkFanoutInProcess(b *testing.B) {
	h := benchHarness(b, Sizes{FanoutTasks: b.N})
	res, err := h.fanout(context.Background(), 1, Fanout, 1)
	if err != nil {
		b.Fatal(err)
	}
	reportResult(b, res[0])
}

// BenchmarkFoldSynthetic100k folds the replay workload's 100,002-event
// history with projector.Apply.
func BenchmarkFoldSynthetic100k(b *testing.B) {
	evs := SyntheticHistory(100_000)
	b.ReportAllocs()
	n := 0
	for b.Loop() {
		r := projector.NewRun(replayRun)
		for _, e := range evs {
			if err := projector.Apply(r, e); err != nil {
				b.Fatal(err)
			}
		}
		n += len(evs)
	}
	b.ReportMetric(float64(n)/b.Elapsed().Seconds(), "events/s")
}

// A batched ceiling that moved by more than a fifth between runs is said,
// in the summary and in the document; a steady one, or a single run, is not.
func TestReportSaysWhenTheCeilingMoved(t *testing.T) {
	t.Parallel()
	report := func(ceilings ...float64) *Report {
		var runs []Result
		for i, c := range ceilings {
			runs = append(runs, Result{Workload: Ceiling, Mode: ModeBatched, Run: i + 1, TasksPerSec: c},
				Result{Workload: Ceiling, Mode: ModeUnbatched, Run: i + 1, TasksPerSec: c / 100})
		}
		return &Report{Results: append(runs, medians(runs)...)}
	}
	for _, c := range []struct {
		ceilings []float64
		want     string
	}{
		{[]float64{210_416, 141_605, 122_006}, "122,006 to 210,416 entries/s (1.72×)"},
		{[]float64{100_000, 119_000, 110_000}, ""},
		{[]float64{100_000}, ""},
	} {
		rep := report(c.ceilings...)
		var table, doc strings.Builder
		Table(&table, rep)
		Markdown(&doc, rep, "graflow bench", time.Unix(0, 0))
		for name, out := range map[string]string{"summary": table.String(), "document": doc.String()} {
			if got := strings.Contains(out, "moved between runs"); got != (c.want != "") || !strings.Contains(out, c.want) {
				t.Errorf("ceilings %v, %s:\n%s\nwant a note with %q (none if empty)", c.ceilings, name, out, c.want)
			}
		}
	}
}
