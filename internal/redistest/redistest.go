// Package redistest gives tests a real Redis, shared by every test in the
// test binary and isolated per test by namespace (never FLUSHALL).
//
// The Redis is chosen once per process, on first use:
//
//  1. REDIS_URL, if set, is used as is.
//  2. GRAFLOW_TEST_REDIS=process forces a redis-server child process;
//     GRAFLOW_TEST_REDIS=container forces a container (failing if impossible).
//  3. Otherwise a testcontainers-go container from the local image
//     graflow/redis:7.0 (built by scripts/redis-image.sh, which is run when the
//     image is missing) if a Docker engine answers,
//  4. else a redis-server child process on a free loopback port.
//
// If none works the test fails with the reasons; it is never skipped.
//
// Packages that use this harness call Main (or Wrap) from TestMain, so the
// container or process is removed after the tests:
//
//	func TestMain(m *testing.M) { redistest.Main(m) }
//
// Without it the harness does not start a container (nothing would remove
// it; the Ryuk reaper cannot be pulled here) and prefers a child process,
// which dies with the test binary.
package redistest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/graflow-go/graflow/internal/redisserver"
)

// Modes reported by Mode.
const (
	ModeURL       = "url"
	ModeContainer = "container"
	ModeProcess   = "process"
)

// Environment variables read by the harness.
const (
	// EnvRedisURL points the tests at an existing Redis.
	EnvRedisURL = "REDIS_URL"
	// EnvMode forces a backend: "process" or "container"; empty means auto.
	EnvMode = "GRAFLOW_TEST_REDIS"
	// EnvRequireContainer=1 makes this package's own test assert that the
	// container path was used (CI sets it through "make test").
	EnvRequireContainer = "GRAFLOW_TEST_REQUIRE_CONTAINER"
)

const setupTimeout = 5 * time.Minute

// backend is the Redis the process shares.
type backend struct {
	mode     string
	opts     *redis.Options
	url      string
	desc     string   // for the log line, without credentials
	skipped  []string // why earlier choices were not used
	shutdown func(context.Context) error
}

var (
	setupOnce sync.Once
	current   atomic.Pointer[backend]
	setupErr  error
	logOnce   sync.Once

	// mainInstalled is set by Wrap/Main before the tests run.
	mainInstalled atomic.Bool

	shutdownMu   sync.Mutex
	shutdownDone bool
)

// Client returns a new client to the shared Redis, closed when t ends. The
// first call in the process starts the Redis; if no Redis can be had, t
// fails (it is not skipped). Safe for concurrent use.
func Client(t testing.TB) *redis.Client {
	t.Helper()
	b := get(t)
	opts := *b.opts
	c := redis.NewClient(&opts)
	t.Cleanup(func() { _ = c.Close() })
	return c
}

// Namespace returns a fresh namespace "t<16 hex digits>" for isolating a
// test's keys and streams from every other test sharing the Redis.
func Namespace(t testing.TB) string {
	t.Helper()
	var b [8]byte
	if _, err := rand.Read(b[:]); err != nil {
		t.Fatalf("redistest: namespace: %v", err)
	}
	return "t" + hex.EncodeToString(b[:])
}

// Addr returns the shared Redis' host:port, e.g. for worker subprocesses.
// Use URL when the Redis may need credentials.
func Addr(t testing.TB) string {
	t.Helper()
	return get(t).opts.Addr
}

// URL returns a redis:// URL for the shared Redis (REDIS_URL verbatim in url
// mode, credentials included), e.g. to pass REDIS_URL to a subprocess.
func URL(t testing.TB) string {
	t.Helper()
	return get(t).url
}

// Mode reports how the shared Redis was provided: ModeContainer,
// ModeProcess or ModeURL; "" before the first Client, Addr or URL call.
func Mode() string {
	if b := current.Load(); b != nil {
		return b.mode
	}
	return ""
}

// M is the part of *testing.M that Wrap needs (goleak.TestingM has the same shape).
type M interface{ Run() int }

// Main runs the tests, stops the shared Redis and exits with the tests'
// code. Call it from TestMain.
func Main(m *testing.M) { os.Exit(Wrap(m).Run()) }

// Wrap returns m with Run extended: while the tests run, SIGINT and SIGTERM
// stop the shared Redis before the process exits (128+signal); afterwards
// it is stopped in any case. For composing with other TestMain wrappers:
//
//	goleak.VerifyTestMain(redistest.Wrap(m))
//
// Tests in such packages must not deliver SIGINT/SIGTERM to their own
// process; cancel a context instead.
func Wrap(m M) M { return wrapped{m} }

type wrapped struct{ m M }

func (w wrapped) Run() int {
	mainInstalled.Store(true)
	setEnvDefaults()

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, os.Interrupt, syscall.SIGTERM)
	quit := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case sig := <-sigs:
			fmt.Fprintf(os.Stderr, "redistest: %v: stopping Redis\n", sig)
			if err := shutdown(); err != nil {
				fmt.Fprintf(os.Stderr, "redistest: %v\n", err)
			}
			code := 1
			if s, ok := sig.(syscall.Signal); ok {
				code = 128 + int(s)
			}
			os.Exit(code)
		case <-quit:
		}
	})

	code := w.m.Run()

	signal.Stop(sigs)
	close(quit)
	wg.Wait()
	if err := shutdown(); err != nil {
		fmt.Fprintf(os.Stderr, "redistest: %v\n", err)
	}
	return code
}

// shutdown stops the shared backend once; later calls are no-ops.
func shutdown() error {
	shutdownMu.Lock()
	defer shutdownMu.Unlock()
	if shutdownDone {
		return nil
	}
	shutdownDone = true
	b := current.Load()
	if b == nil || b.shutdown == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := b.shutdown(ctx); err != nil {
		return fmt.Errorf("stop %s Redis: %w", b.mode, err)
	}
	return nil
}

// get returns the shared backend, starting it on first use.
func get(t testing.TB) *backend {
	t.Helper()
	setupOnce.Do(func() {
		b, err := setup()
		if err != nil {
			setupErr = err
			return
		}
		current.Store(b)
	})
	if setupErr != nil {
		t.Fatalf("redistest: %v", setupErr)
	}
	b := current.Load()
	logOnce.Do(func() {
		t.Logf("redistest: Redis in %s mode at %s", b.mode, b.desc)
		for _, s := range b.skipped {
			t.Logf("redistest: skipped %s", s)
		}
	})
	return b
}

// setEnvDefaults configures testcontainers-go for our machines unless the
// environment already says otherwise: no Ryuk (its image cannot be pulled;
// we remove containers ourselves), and a local engine's mapped ports reached
// on loopback rather than through a guessed gateway address.
func setEnvDefaults() {
	if _, ok := os.LookupEnv("TESTCONTAINERS_RYUK_DISABLED"); !ok {
		_ = os.Setenv("TESTCONTAINERS_RYUK_DISABLED", "true")
	}
	if _, ok := os.LookupEnv("TESTCONTAINERS_HOST_OVERRIDE"); !ok && localDocker() {
		_ = os.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
	}
}

// localDocker reports whether DOCKER_HOST names a local engine (or is unset).
func localDocker() bool {
	h := os.Getenv("DOCKER_HOST")
	return h == "" || strings.HasPrefix(h, "unix://") || strings.HasPrefix(h, "npipe://")
}

func setup() (*backend, error) {
	setEnvDefaults()
	ctx, cancel := context.WithTimeout(context.Background(), setupTimeout)
	defer cancel()

	if u := os.Getenv(EnvRedisURL); u != "" {
		return fromURL(ctx, u)
	}

	var skipped []string
	switch mode := os.Getenv(EnvMode); mode {
	case ModeProcess:
		return startProcess(ctx)
	case ModeContainer:
		return startContainer(ctx)
	case "", "auto":
	default:
		return nil, fmt.Errorf("%s=%q: want %q, %q or empty", EnvMode, mode, ModeProcess, ModeContainer)
	}

	starters := map[string]func(context.Context) (*backend, error){
		ModeContainer: startContainer,
		ModeProcess:   startProcess,
	}
	order := []string{ModeContainer, ModeProcess}
	if !mainInstalled.Load() {
		// Nothing would remove a container after the tests; a child
		// process at least dies with the test binary.
		order = []string{ModeProcess, ModeContainer}
		skipped = append(skipped, "container as first choice: this test binary does not call redistest.Main from TestMain")
	}
	for _, mode := range order {
		b, err := starters[mode](ctx)
		if err == nil {
			b.skipped = skipped
			return b, nil
		}
		skipped = append(skipped, mode+": "+err.Error())
	}

	return nil, fmt.Errorf("no Redis for tests:\n  - %s\nSet %s, install redis-server (apt-get install redis-server), or run scripts/redis-image.sh with a Docker engine",
		strings.Join(skipped, "\n  - "), EnvRedisURL)
}

func fromURL(ctx context.Context, u string) (*backend, error) {
	opts, err := redis.ParseURL(u)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvRedisURL, err)
	}
	desc := u
	if pu, err := url.Parse(u); err == nil {
		desc = pu.Redacted()
	}
	if err := pingOpts(ctx, opts); err != nil {
		return nil, fmt.Errorf("%s=%s not reachable: %w: start that Redis or unset %s", EnvRedisURL, desc, err, EnvRedisURL)
	}
	return &backend{mode: ModeURL, opts: opts, url: u, desc: desc}, nil
}

// processDirPrefix names the process-mode data directories; the test
// binary's pid follows, so a later run can remove those of dead binaries
// (the server itself dies with the binary through Pdeathsig).
const processDirPrefix = "graflow-redistest-"

func startProcess(ctx context.Context) (*backend, error) {
	removeStaleDirs()
	dir, err := os.MkdirTemp("", processDirPrefix+strconv.Itoa(os.Getpid())+"-*")
	if err != nil {
		return nil, err
	}
	srv, err := redisserver.Start(ctx, redisserver.Config{Dir: dir})
	if err != nil {
		return nil, errors.Join(err, os.RemoveAll(dir))
	}
	stop := func(context.Context) error {
		return errors.Join(srv.Stop(), os.RemoveAll(dir))
	}
	opts := &redis.Options{Addr: srv.Addr()}
	if err := pingOpts(ctx, opts); err != nil {
		return nil, errors.Join(err, stop(ctx))
	}
	return &backend{
		mode:     ModeProcess,
		opts:     opts,
		url:      srv.URL(),
		desc:     fmt.Sprintf("%s (redis-server pid %d)", srv.Addr(), srv.PID()),
		shutdown: stop,
	}, nil
}

func removeStaleDirs() {
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), processDirPrefix+"*"))
	for _, m := range matches {
		rest := strings.TrimPrefix(filepath.Base(m), processDirPrefix)
		pidStr, _, _ := strings.Cut(rest, "-")
		if pid, err := strconv.Atoi(pidStr); err == nil && pid != os.Getpid() && !processAlive(pid) {
			_ = os.RemoveAll(m)
		}
	}
}

func pingOpts(ctx context.Context, opts *redis.Options) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	c := redis.NewClient(opts)
	defer c.Close()
	return c.Ping(ctx).Err()
}
