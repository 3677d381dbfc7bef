//go:build unix

package bench

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
)

// PersistenceNone describes the private redis-server that bench starts.
const PersistenceNone = "none (private redis-server: AOF off, RDB snapshots off)"

// Env describes where a benchmark ran.
type Env struct {
	RedisVersion     string
	RedisPersistence string
	// RedisTopology describes a private cluster or CPU cap, if any.
	RedisTopology string
	NProc         int
	CPUModel      string
	GoVersion     string
	OS            string
	// Engine is "processes" (worker and projector processes) or
	// "in-process".
	Engine string
	// Build is the VCS revision the binary was built from ("+dirty" with
	// uncommitted changes), if recorded.
	Build string
}

// Line renders the environment in one line.
func (e Env) Line() string {
	redis := e.RedisVersion
	if e.RedisTopology != "" {
		redis += " (" + e.RedisTopology + ")"
	}
	return fmt.Sprintf("machine: %d x %s, %s, %s; Redis %s, persistence %s; engine %s, build %s",
		e.NProc, e.CPUModel, e.OS, e.GoVersion, redis, e.RedisPersistence, e.Engine, e.Build)
}

func probeEnv(ctx context.Context, db rdb.DB, persistence string) (Env, error) {
	e := Env{NProc: runtime.NumCPU(), CPUModel: cpuModel(), GoVersion: runtime.Version(), OS: runtime.GOOS + "/" + runtime.GOARCH, Build: build()}
	info, err := db.Info(ctx, "server")
	if err != nil {
		return e, err
	}
	e.RedisVersion = info["redis_version"]
	e.RedisPersistence = persistence
	if e.RedisPersistence == "" {
		e.RedisPersistence = "unknown (CONFIG GET refused)"
		if p, err := db.Persistence(ctx); err == nil {
			e.RedisPersistence = fmt.Sprintf("existing Redis: appendonly %s, appendfsync %s, save %q", p.AppendOnly, p.AppendFsync, p.Save)
		}
	}
	return e, nil
}

// build is the VCS revision recorded in the binary, "unknown" if none.
func build() string {
	rev, dirty := "", false
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, st := range bi.Settings {
			switch st.Key {
			case "vcs.revision":
				rev = st.Value
			case "vcs.modified":
				dirty = st.Value == "true"
			}
		}
	}
	if rev == "" {
		// Built with -buildvcs=false: ask git about the binary's directory
		// (bin/graflow sits in the repository).
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		dir := "."
		if exe, err := os.Executable(); err == nil {
			dir = filepath.Dir(exe)
		}
		out, err := exec.CommandContext(ctx, "git", "-C", dir, "rev-parse", "HEAD").Output()
		if err != nil {
			return "unknown"
		}
		rev = strings.TrimSpace(string(out))
		st, err := exec.CommandContext(ctx, "git", "-C", dir, "status", "--porcelain", "--untracked-files=no").Output()
		dirty = err == nil && len(bytes.TrimSpace(st)) > 0
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	if dirty {
		rev += "+dirty"
	}
	return rev
}

// cpuModel reads the first "model name" of /proc/cpuinfo.
func cpuModel() string {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return "unknown CPU"
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "model name" {
			return strings.TrimSpace(v)
		}
	}
	return "unknown CPU"
}

type cmdStat struct {
	calls int64
	usec  int64
}

// parseCommandStats reads the cmdstat_* lines of INFO commandstats.
func parseCommandStats(info map[string]string) map[string]cmdStat {
	out := map[string]cmdStat{}
	for k, v := range info {
		name, ok := strings.CutPrefix(k, "cmdstat_")
		if !ok {
			continue
		}
		var s cmdStat
		for _, kv := range strings.Split(v, ",") {
			f, val, _ := strings.Cut(kv, "=")
			switch f {
			case "calls":
				s.calls, _ = strconv.ParseInt(val, 10, 64)
			case "usec":
				s.usec, _ = strconv.ParseInt(val, 10, 64)
			}
		}
		out[name] = s
	}
	return out
}

// counter is a go-redis hook counting the commands and round trips the
// harness itself sends, so that they can be subtracted from Redis' totals.
type counter struct {
	cmds  atomic.Int64
	trips atomic.Int64
	mu    sync.Mutex
	names map[string]int64
}

func newCounter() *counter { return &counter{names: map[string]int64{}} }

func (c *counter) add(cmds []redis.Cmder) {
	c.trips.Add(1)
	c.cmds.Add(int64(len(cmds)))
	c.mu.Lock()
	for _, cmd := range cmds {
		c.names[strings.ToLower(cmd.Name())]++
	}
	c.mu.Unlock()
}

func (c *counter) DialHook(next redis.DialHook) redis.DialHook {
	return func(ctx context.Context, network, addr string) (net.Conn, error) { return next(ctx, network, addr) }
}

func (c *counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		c.add([]redis.Cmder{cmd})
		return next(ctx, cmd)
	}
}

func (c *counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error {
		c.add(cmds)
		return next(ctx, cmds)
	}
}

type counts struct {
	cmds, trips int64
	names       map[string]int64
}

func (c *counter) snapshot() counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := make(map[string]int64, len(c.names))
	for k, v := range c.names {
		n[k] = v
	}
	return counts{cmds: c.cmds.Load(), trips: c.trips.Load(), names: n}
}

// sample is the state of every meter at one instant.
type sample struct {
	at       time.Time
	own      counts // harness commands sent before this sample's INFO
	info     map[string]string
	cmds     map[string]cmdStat
	workers  time.Duration // CPU of the worker processes
	proj     time.Duration // CPU of the projector process
	self     time.Duration // CPU of this process
	redisCPU time.Duration
}

// take samples every meter. pids are the worker and projector processes.
func (h *harness) take(ctx context.Context, workers []int, projector int) (sample, error) {
	s := sample{at: time.Now(), own: h.hook.snapshot()}
	info, err := h.mdb.Info(ctx, "stats", "memory", "cpu", "commandstats")
	if err != nil {
		return s, err
	}
	s.info = info
	s.cmds = parseCommandStats(s.info)
	sec := func(k string) float64 { v, _ := strconv.ParseFloat(s.info[k], 64); return v }
	s.redisCPU = time.Duration((sec("used_cpu_user") + sec("used_cpu_sys")) * float64(time.Second))
	for _, pid := range workers {
		s.workers += procCPU(pid)
	}
	if projector > 0 {
		s.proj = procCPU(projector)
	}
	s.self = selfCPU()
	return s, nil
}

func (s sample) int(k string) int64 {
	v, _ := strconv.ParseInt(s.info[k], 10, 64)
	return v
}

// cost fills r's per-task cost fields from two samples taken around the
// work (tasks done between them).
func cost(r *Result, a, b sample, tasks int) {
	own := b.own.cmds - a.own.cmds
	ownTrips := b.own.trips - a.own.trips
	r.RedisCmdsPerTask = perTask(float64(b.int("total_commands_processed")-a.int("total_commands_processed")-own), tasks)
	r.RedisRoundTripsPerTask = perTask(float64(b.int("total_reads_processed")-a.int("total_reads_processed")-ownTrips), tasks)
	scripts := b.cmds["evalsha"].calls - a.cmds["evalsha"].calls + b.cmds["eval"].calls - a.cmds["eval"].calls
	r.RedisScriptsPerTask = perTask(float64(scripts), tasks)
	r.RedisBytesPerTask = perTask(float64(b.int("used_memory")-a.int("used_memory")), tasks)
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	r.WorkerCPUMSPerTask = perTask(ms(b.workers-a.workers), tasks)
	r.ProjectorCPUMSPerTask = perTask(ms(b.proj-a.proj), tasks)
	r.RedisCPUMSPerTask = perTask(ms(b.redisCPU-a.redisCPU), tasks)
	r.BenchCPUMSPerTask = perTask(ms(b.self-a.self), tasks)

	// Where Redis spent its time, minus the harness' own commands (their
	// time is estimated at the command's average).
	var top []CmdCost
	for name, sb := range b.cmds {
		sa := a.cmds[name]
		calls, usec := sb.calls-sa.calls, sb.usec-sa.usec
		if mine := b.own.names[name] - a.own.names[name]; mine > 0 && calls > 0 {
			usec -= usec * min(mine, calls) / calls
			calls -= min(mine, calls)
		}
		if calls <= 0 {
			continue
		}
		top = append(top, CmdCost{Cmd: name, CallsPerTask: perTask(float64(calls), tasks), USecPerTask: perTask(float64(usec), tasks)})
	}
	sort.Slice(top, func(i, j int) bool {
		if top[i].USecPerTask != top[j].USecPerTask {
			return top[i].USecPerTask > top[j].USecPerTask
		}
		return top[i].Cmd < top[j].Cmd
	})
	if len(top) > 8 {
		top = top[:8]
	}
	r.RedisTop = top
}

// clockTicks is USER_HZ, fixed at 100 by the Linux ABI for /proc.
const clockTicks = 100

// procCPU is the user+system CPU time of process pid (0 if unreadable).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	return parseProcStat(string(b))
}

// parseProcStat reads utime + stime (fields 14 and 15) of a /proc/<pid>/stat
// line. The command name (field 2) may hold spaces and parentheses: fields
// are counted after its last ')'.
func parseProcStat(s string) time.Duration {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	ut, err1 := strconv.ParseInt(f[11], 10, 64)
	st, err2 := strconv.ParseInt(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0
	}
	return time.Duration(ut+st) * time.Second / clockTicks
}

// loadAvg1 is the 1-minute load average (0 if unknown).
func loadAvg1() float64 {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b))
	if len(f) == 0 {
		return 0
	}
	v, _ := strconv.ParseFloat(f[0], 64)
	return v
}

// selfCPU is this process' user+system CPU time.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
