package bench

import (
	"fmt"
	"math"
	"sort"
	"strings"
)

// Result is one line of output: one run of a workload (Run 1..N), or the
// median of its runs (Run 0, Median true). Throughput and latency fields
// are present only for the workloads that measure them; the cost fields
// are always present.
type Result struct {
	Workload string `json:"workload"`
	// Mode is "batched" or "unbatched" for the ceiling.
	Mode   string `json:"mode,omitempty"`
	Run    int    `json:"run"`
	Median bool   `json:"median,omitempty"`
	// Of is the number of runs a median is taken over.
	Of int `json:"of,omitempty"`

	// Tasks counted by the per-task figures; WorkflowRuns submitted.
	Tasks        int `json:"tasks"`
	WorkflowRuns int `json:"workflow_runs,omitempty"`
	// Events in the runs' logs (or in the folded history).
	Events int `json:"events,omitempty"`
	// WorkerProcesses, each with Concurrency; Worker and Projector say
	// whether they ran as processes or inside the bench process.
	WorkerProcesses int    `json:"worker_processes,omitempty"`
	Concurrency     int    `json:"concurrency,omitempty"`
	Worker          string `json:"worker,omitempty"`
	Projector       string `json:"projector,omitempty"`
	// WallMS is the measured interval: first submit to last run end
	// (server clock), producers' start to last ack, or the fold.
	WallMS float64 `json:"wall_ms"`

	TasksPerSec float64 `json:"tasks_per_sec,omitempty"`
	RunsPerSec  float64 `json:"runs_per_sec,omitempty"`
	// VsBatchedCeiling is TasksPerSec over the median batched ceiling.
	VsBatchedCeiling float64 `json:"vs_batched_ceiling,omitempty"`

	// Latency: submit → handler start (P*), submit → Wait returns (WaitP*).
	P50MS     float64 `json:"p50_ms,omitempty"`
	P90MS     float64 `json:"p90_ms,omitempty"`
	P99MS     float64 `json:"p99_ms,omitempty"`
	MaxMS     float64 `json:"max_ms,omitempty"`
	WaitP50MS float64 `json:"wait_p50_ms,omitempty"`
	WaitP90MS float64 `json:"wait_p90_ms,omitempty"`
	WaitP99MS float64 `json:"wait_p99_ms,omitempty"`

	// Replay: projector.Apply alone, and events.Decode + Apply.
	EventsPerSec       float64 `json:"events_per_sec,omitempty"`
	DecodeEventsPerSec float64 `json:"decode_events_per_sec,omitempty"`

	// Cost per task. RedisCmdsPerTask counts every command Redis executed,
	// those run inside Lua scripts included (INFO total_commands_processed);
	// RedisRoundTripsPerTask counts client requests (INFO
	// total_reads_processed: a pipeline is one); RedisScriptsPerTask counts
	// EVALSHA/EVAL calls. The harness' own commands are subtracted.
	RedisCmdsPerTask       float64 `json:"redis_cmds_per_task"`
	RedisRoundTripsPerTask float64 `json:"redis_round_trips_per_task"`
	RedisScriptsPerTask    float64 `json:"redis_scripts_per_task"`
	// EventsPerTask: XLEN of the runs' logs over tasks.
	EventsPerTask float64 `json:"events_per_task"`
	// RedisBytesPerTask: INFO used_memory after the work (before cleanup)
	// minus before, over tasks.
	RedisBytesPerTask float64 `json:"redis_bytes_per_task"`
	// CPU per task: worker process(es) and projector process from
	// /proc/<pid>/stat; in-process components and the ceiling's clients are
	// counted in BenchCPUMSPerTask (getrusage of this process); Redis from
	// INFO used_cpu_user + used_cpu_sys.
	WorkerCPUMSPerTask    float64 `json:"worker_cpu_ms_per_task"`
	ProjectorCPUMSPerTask float64 `json:"projector_cpu_ms_per_task"`
	RedisCPUMSPerTask     float64 `json:"redis_cpu_ms_per_task"`
	BenchCPUMSPerTask     float64 `json:"bench_cpu_ms_per_task"`
	// RedisTop is where Redis spent its time (INFO commandstats delta, the
	// commands inside scripts included), most expensive first.
	RedisTop []CmdCost `json:"redis_top,omitempty"`
	// Trace (workload "trace"): what each engine component sent to Redis
	// for one run on an idle engine.
	Trace map[string]Component `json:"trace,omitempty"`

	// LoadAvg1 is the machine's 1-minute load average when the run
	// started: other processes compete for the CPUs the figures depend on.
	LoadAvg1 float64 `json:"load_avg_1m"`

	RedisVersion     string `json:"redis_version,omitempty"`
	RedisPersistence string `json:"redis_persistence,omitempty"`
	// RedisTopology names a private cluster or CPU cap (--cluster-masters,
	// --redis-cpus), if any.
	RedisTopology string `json:"redis_topology,omitempty"`
	NProc         int    `json:"nproc,omitempty"`
	CPUModel      string `json:"cpu_model,omitempty"`
	GoVersion     string `json:"go_version,omitempty"`
}

// CmdCost is one command's share of Redis' work per task.
type CmdCost struct {
	Cmd          string  `json:"cmd"`
	CallsPerTask float64 `json:"calls_per_task"`
	USecPerTask  float64 `json:"usec_per_task"`
}

// primary is the figure a workload is judged by (higher is better, except
// latency).
func (r *Result) primary() float64 {
	switch r.Workload {
	case Latency:
		return r.P50MS
	case Replay:
		return r.EventsPerSec
	}
	return r.TasksPerSec
}

// Summary is a one-line human rendering.
func (r *Result) Summary() string {
	var b strings.Builder
	name := r.Workload
	if r.Mode != "" {
		name += " " + r.Mode
	}
	fmt.Fprintf(&b, "%-22s", name)
	switch r.Workload {
	case Latency:
		fmt.Fprintf(&b, "start p50 %.2f ms p90 %.2f p99 %.2f | done p50 %.2f ms p90 %.2f p99 %.2f",
			r.P50MS, r.P90MS, r.P99MS, r.WaitP50MS, r.WaitP90MS, r.WaitP99MS)
	case Replay:
		fmt.Fprintf(&b, "%s events/s (decode+fold %s events/s)", thousands(r.EventsPerSec), thousands(r.DecodeEventsPerSec))
	case Trace:
		var parts []string
		for _, c := range traceComponents(r.Trace) {
			parts = append(parts, fmt.Sprintf("%s %d", c, r.Trace[c].RoundTrips))
		}
		fmt.Fprintf(&b, "%d round trips for %d task(s): %s", r.traceTrips(), r.Tasks, strings.Join(parts, ", "))
	default:
		fmt.Fprintf(&b, "%s tasks/s", thousands(r.TasksPerSec))
		if r.RunsPerSec > 0 && r.Workload == Chain {
			fmt.Fprintf(&b, " (%s runs/s)", thousands(r.RunsPerSec))
		}
		if r.VsBatchedCeiling > 0 {
			fmt.Fprintf(&b, " = %.3fx ceiling", r.VsBatchedCeiling)
		}
	}
	if r.Workload != Replay {
		fmt.Fprintf(&b, " | %.1f cmds %.1f trips %.1f evts %.0f B/task, cpu ms/task worker %.3f projector %.3f redis %.3f",
			r.RedisCmdsPerTask, r.RedisRoundTripsPerTask, r.EventsPerTask, r.RedisBytesPerTask,
			r.WorkerCPUMSPerTask, r.ProjectorCPUMSPerTask, r.RedisCPUMSPerTask)
	}
	return b.String()
}

// floats lists the fields a median is taken of.
func (r *Result) floats() []*float64 {
	return []*float64{
		&r.WallMS, &r.TasksPerSec, &r.RunsPerSec, &r.VsBatchedCeiling,
		&r.P50MS, &r.P90MS, &r.P99MS, &r.MaxMS, &r.WaitP50MS, &r.WaitP90MS, &r.WaitP99MS,
		&r.EventsPerSec, &r.DecodeEventsPerSec,
		&r.RedisCmdsPerTask, &r.RedisRoundTripsPerTask, &r.RedisScriptsPerTask, &r.EventsPerTask, &r.RedisBytesPerTask,
		&r.WorkerCPUMSPerTask, &r.ProjectorCPUMSPerTask, &r.RedisCPUMSPerTask, &r.BenchCPUMSPerTask, &r.LoadAvg1,
	}
}

// medians returns one median line per workload and mode of runs, in the
// order they first appear. Each figure is the median of that figure over
// the runs; RedisTop is the one of the run whose primary figure is the
// median (the lower middle for an even count).
func medians(runs []Result) []Result {
	var keys []string
	groups := map[string][]Result{}
	for _, r := range runs {
		k := r.Workload + "/" + r.Mode
		if _, ok := groups[k]; !ok {
			keys = append(keys, k)
		}
		groups[k] = append(groups[k], r)
	}
	out := make([]Result, 0, len(keys))
	for _, k := range keys {
		g := groups[k]
		m := g[0]
		m.Run, m.Median, m.Of = 0, true, len(g)
		fs := m.floats()
		for i := range fs {
			vals := make([]float64, len(g))
			for j := range g {
				vals[j] = *g[j].floats()[i]
			}
			*fs[i] = median(vals)
		}
		byPrimary := make([]Result, len(g))
		copy(byPrimary, g)
		sort.SliceStable(byPrimary, func(i, j int) bool { return byPrimary[i].primary() < byPrimary[j].primary() })
		m.RedisTop = byPrimary[(len(byPrimary)-1)/2].RedisTop
		if m.Workload == Trace { // a trace is a record, not a figure: keep the quietest whole
			q := g[0]
			for _, r := range g[1:] {
				if r.traceTrips() < q.traceTrips() {
					q = r
				}
			}
			m = q
			m.Run, m.Median, m.Of = 0, true, len(g)
		}
		out = append(out, m)
	}
	return out
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := append([]float64(nil), v...)
	sort.Float64s(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// percentile is the nearest-rank percentile p (0..100] of sorted values.
func percentile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p/100*float64(len(sorted)))) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

func round(v float64, digits int) float64 {
	p := math.Pow(10, float64(digits))
	return math.Round(v*p) / p
}

// perTask divides by tasks, rounded for output.
func perTask(v float64, tasks int) float64 {
	if tasks <= 0 {
		return 0
	}
	return round(v/float64(tasks), 4)
}

// thousands renders v rounded with thousands separators: 12345.6 → "12,346".
func thousands(v float64) string {
	s := fmt.Sprintf("%.0f", v)
	neg := strings.HasPrefix(s, "-")
	s = strings.TrimPrefix(s, "-")
	var b strings.Builder
	for i, c := range s {
		if i > 0 && (len(s)-i)%3 == 0 {
			b.WriteByte(',')
		}
		b.WriteRune(c)
	}
	if neg {
		return "-" + b.String()
	}
	return b.String()
}
