package redistest

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/moby/moby/api/types/container"
	"github.com/moby/moby/api/types/network"
	"github.com/moby/moby/client"
	"github.com/redis/go-redis/v9"
	"github.com/testcontainers/testcontainers-go"
	tclog "github.com/testcontainers/testcontainers-go/log"
	"github.com/testcontainers/testcontainers-go/wait"
)

// Image is the local image run in container mode. It cannot be pulled from
// a registry; scripts/redis-image.sh builds it from the host's redis-server.
const Image = "graflow/redis:7.0"

const (
	redisPort = "6379/tcp"

	// Labels on our containers, so a later run can remove containers left
	// by a test binary that died before its cleanup (Ryuk is disabled).
	labelOwner = "io.graflow.redistest"
	labelPID   = "io.graflow.redistest.pid"
	labelHost  = "io.graflow.redistest.host"

	imageScript = "scripts/redis-image.sh"
)

func startContainer(ctx context.Context) (*backend, error) {
	// testcontainers prints a banner and progress through its global
	// logger; keep it for error messages rather than every test run.
	logs := &captureLogger{}
	prevLog := tclog.Default()
	tclog.SetDefault(logs)
	defer tclog.SetDefault(prevLog)

	cli, err := dockerClient(ctx)
	if err != nil {
		return nil, fmt.Errorf("%w%s", err, logs.tail())
	}
	defer cli.Close()

	removeStale(ctx, cli)
	if err := ensureImage(ctx, cli); err != nil {
		return nil, err
	}

	// Bind the mapped port to loopback when the engine is local: the server
	// runs with protected mode off and no password.
	hostIP := netip.IPv4Unspecified()
	if ip, err := netip.ParseAddr(os.Getenv("TESTCONTAINERS_HOST_OVERRIDE")); err == nil && ip.IsLoopback() {
		hostIP = ip
	}
	hostname, _ := os.Hostname()
	ctr, err := testcontainers.Run(ctx, Image,
		testcontainers.WithLogger(logs),
		testcontainers.WithCmd("/usr/bin/redis-server",
			"--protected-mode", "no", "--bind", "0.0.0.0", "--port", "6379",
			"--save", "", "--appendonly", "no"),
		testcontainers.WithExposedPorts(redisPort),
		testcontainers.WithHostConfigModifier(func(hc *container.HostConfig) {
			hc.PortBindings = network.PortMap{
				network.MustParsePort(redisPort): {{HostIP: hostIP, HostPort: "0"}},
			}
		}),
		testcontainers.WithLabels(map[string]string{
			labelOwner: "1",
			labelPID:   strconv.Itoa(os.Getpid()),
			labelHost:  hostname,
		}),
		testcontainers.WithWaitStrategy(wait.ForLog("Ready to accept connections").WithStartupTimeout(time.Minute)),
	)
	terminate := func(ctx context.Context) error {
		if ctr == nil {
			return nil
		}
		return ctr.Terminate(ctx, testcontainers.StopTimeout(0))
	}
	if err != nil {
		return nil, errors.Join(fmt.Errorf("run %s: %w%s", Image, err, logs.tail()), terminate(ctx))
	}
	host, err := ctr.Host(ctx)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("container host: %w", err), terminate(ctx))
	}
	port, err := ctr.MappedPort(ctx, redisPort)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("container port: %w", err), terminate(ctx))
	}
	addr := net.JoinHostPort(host, port.Port())
	opts := &redis.Options{Addr: addr}
	if err := pingOpts(ctx, opts); err != nil {
		return nil, errors.Join(fmt.Errorf("container Redis at %s: %w", addr, err), terminate(ctx))
	}
	id := ctr.GetContainerID()
	return &backend{
		mode:     ModeContainer,
		opts:     opts,
		url:      "redis://" + addr,
		desc:     fmt.Sprintf("%s (container %.12s, image %s)", addr, id, Image),
		shutdown: terminate,
	}, nil
}

// dockerClient connects to the engine, failing fast when it does not answer.
func dockerClient(ctx context.Context) (*testcontainers.DockerClient, error) {
	ctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	cli, err := testcontainers.NewDockerClientWithOpts(ctx)
	if err != nil {
		return nil, fmt.Errorf("docker engine not answering: %w", err)
	}
	return cli, nil
}

// ensureImage builds Image with scripts/redis-image.sh when it is missing.
func ensureImage(ctx context.Context, cli *testcontainers.DockerClient) error {
	if _, err := cli.ImageInspect(ctx, Image); err == nil {
		return nil
	}
	script, err := findScript()
	if err != nil {
		return fmt.Errorf("image %s missing and %w", Image, err)
	}
	buildMu.Lock()
	defer buildMu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "bash", script).CombinedOutput()
	if err != nil {
		return fmt.Errorf("image %s missing; %s failed: %w\n%s", Image, script, err, out)
	}
	if _, err := cli.ImageInspect(ctx, Image); err != nil {
		return fmt.Errorf("image %s still missing after %s: %w\n%s", Image, script, err, out)
	}
	return nil
}

// buildMu serialises builds within the process; the script locks across processes.
var buildMu sync.Mutex

// findScript walks up from the working directory (a package directory
// under go test) to the directory holding go.mod.
func findScript() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			p := filepath.Join(dir, imageScript)
			if _, err := os.Stat(p); err != nil {
				return "", fmt.Errorf("%s not found in module root %s", imageScript, dir)
			}
			return p, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.mod above the working directory to find " + imageScript)
		}
		dir = parent
	}
}

// removeStale removes our containers whose test binary, on this host, is
// gone (killed by a timeout or SIGKILL before it could clean up).
func removeStale(ctx context.Context, cli *testcontainers.DockerClient) {
	hostname, _ := os.Hostname()
	res, err := cli.ContainerList(ctx, client.ContainerListOptions{
		All:     true,
		Filters: make(client.Filters).Add("label", labelOwner+"=1"),
	})
	if err != nil {
		return
	}
	for _, c := range res.Items {
		pid, err := strconv.Atoi(c.Labels[labelPID])
		if err != nil || c.Labels[labelHost] != hostname || pid == os.Getpid() || processAlive(pid) {
			continue
		}
		_, _ = cli.ContainerRemove(ctx, c.ID, client.ContainerRemoveOptions{Force: true, RemoveVolumes: true})
	}
}

// captureLogger keeps testcontainers' log lines for error messages instead
// of printing them into every test run.
type captureLogger struct {
	mu    sync.Mutex
	lines []string
}

func (l *captureLogger) Printf(format string, v ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.lines = append(l.lines, strings.TrimSpace(fmt.Sprintf(format, v...)))
	if len(l.lines) > 20 {
		l.lines = l.lines[len(l.lines)-20:]
	}
}

func (l *captureLogger) tail() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.lines) == 0 {
		return ""
	}
	return "\ntestcontainers log:\n  " + strings.Join(l.lines, "\n  ")
}
