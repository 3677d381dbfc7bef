// Package redisserver runs a redis-server binary as a child process listening
// on a loopback port. It backs "graflow dev" (an embedded Redis with AOF in a
// data directory), the chaos tooling (kill -9 and restart on the same port and
// data directory) and the test harness in internal/redistest.
//
// A Server is safe for concurrent use; Start/Stop/Kill/Restart are serialised.
package redisserver

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/rs/zerolog"
)

// Fsync is the AOF appendfsync policy.
type Fsync string

const (
	// FsyncAlways fsyncs the AOF after every write command: no acknowledged
	// write is lost on a crash, at a throughput cost.
	FsyncAlways Fsync = "always"
	// FsyncEverySec fsyncs the AOF once a second: a crash loses at most about
	// one second of acknowledged writes.
	FsyncEverySec Fsync = "everysec"
	// FsyncNo leaves flushing to the operating system.
	FsyncNo Fsync = "no"
)

// Defaults applied to zero Config fields.
const (
	DefaultFsync        = FsyncEverySec
	DefaultStartTimeout = 15 * time.Second
	DefaultStopTimeout  = 10 * time.Second

	// Host is the only interface the server listens on.
	Host = "127.0.0.1"

	// startAttempts bounds retries when a picked free port is taken by
	// someone else between picking and binding (only without Config.Port).
	startAttempts = 3
	// retry interval bounds while waiting for the first PONG.
	minRetry = 2 * time.Millisecond
	maxRetry = 100 * time.Millisecond
	// tailLines is how much redis-server output is kept for error messages.
	tailLines = 40
)

var (
	// ErrNotFound is returned (wrapped) by LookPath and Start when no
	// redis-server binary is installed.
	ErrNotFound = errors.New("redis-server not found")
	// ErrStopped is returned by Restart after Stop.
	ErrStopped = errors.New("redisserver: server was stopped")
)

// Config configures a Server. The zero value is usable: a free port, a
// temporary data directory, no AOF.
type Config struct {
	// Bin is the redis-server binary. Zero means LookPath().
	Bin string
	// Dir is the data and working directory (AOF, RDB, logs go to the
	// Logger). It is created if missing and kept on Stop. Zero means a fresh
	// temporary directory that Stop removes.
	Dir string
	// Port is the TCP port on 127.0.0.1. Zero picks a free port at Start; the
	// port is then kept for Restart.
	Port int
	// AOF turns on the append-only file (appendonly yes) in Dir.
	AOF bool
	// Fsync is the appendfsync policy when AOF is on. Zero means DefaultFsync.
	Fsync Fsync
	// Args are extra redis-server arguments appended after the generated ones
	// (later arguments win), e.g. []string{"--maxmemory", "100mb"}.
	// RDB snapshots are off ("--save ''") unless re-enabled here.
	Args []string
	// StartTimeout bounds how long Start and Restart wait for the server to
	// answer PING (this includes loading the AOF). Zero means DefaultStartTimeout.
	StartTimeout time.Duration
	// StopTimeout bounds how long Stop and Restart wait after SIGTERM before
	// sending SIGKILL. Zero means DefaultStopTimeout.
	StopTimeout time.Duration
	// Logger receives lifecycle events at info level, unexpected exits at
	// error level and the server's own output at debug level. The zero
	// Logger is quiet.
	Logger zerolog.Logger
}

func (c Config) withDefaults() Config {
	if c.Fsync == "" {
		c.Fsync = DefaultFsync
	}
	if c.StartTimeout == 0 {
		c.StartTimeout = DefaultStartTimeout
	}
	if c.StopTimeout == 0 {
		c.StopTimeout = DefaultStopTimeout
	}
	return c
}

func (c Config) validate() error {
	var errs []error
	switch c.Fsync {
	case FsyncAlways, FsyncEverySec, FsyncNo:
	default:
		errs = append(errs, fmt.Errorf("redisserver: Fsync %q: want %q, %q or %q", c.Fsync, FsyncAlways, FsyncEverySec, FsyncNo))
	}
	if c.Port < 0 || c.Port > 65535 {
		errs = append(errs, fmt.Errorf("redisserver: Port %d out of range", c.Port))
	}
	if c.StartTimeout < 0 {
		errs = append(errs, fmt.Errorf("redisserver: negative StartTimeout %s", c.StartTimeout))
	}
	if c.StopTimeout < 0 {
		errs = append(errs, fmt.Errorf("redisserver: negative StopTimeout %s", c.StopTimeout))
	}
	return errors.Join(errs...)
}

// Server is a running (or stopped) redis-server child process.
type Server struct {
	cfg    Config // Port and Dir are final after Start
	bin    string
	ownDir bool
	log    zerolog.Logger
	out    *output

	mu      sync.Mutex
	proc    *process // nil when not running
	stopped bool
}

// process is one run of the binary.
type process struct {
	cmd      *exec.Cmd
	done     chan struct{} // closed once cmd.Wait returned
	err      error         // cmd.Wait's error, valid after done
	expected atomic.Bool   // set before we stop it on purpose
}

// LookPath finds the redis-server binary in PATH or in the usual install
// locations. The error wraps ErrNotFound and says how to install it.
func LookPath() (string, error) {
	if p, err := exec.LookPath("redis-server"); err == nil {
		return p, nil
	}
	candidates := []string{
		"/usr/bin/redis-server",
		"/usr/sbin/redis-server",
		"/usr/local/bin/redis-server",
		"/opt/homebrew/bin/redis-server",
	}
	for _, p := range candidates {
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w in PATH or %s: install it (Debian/Ubuntu: \"apt-get install redis-server\", macOS: \"brew install redis\") or point REDIS_URL at an existing Redis",
		ErrNotFound, strings.Join(candidates, ", "))
}

// Start launches redis-server with cfg and returns once it answers PING.
// ctx bounds the startup only; the server runs until Stop or Kill, or until
// this process dies (on Linux the child gets SIGKILL when its parent exits).
// On error nothing is left running and a temporary Dir is removed.
func Start(ctx context.Context, cfg Config) (*Server, error) {
	cfg = cfg.withDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	s := &Server{cfg: cfg, log: cfg.Logger}
	s.out = newOutput(s.log)

	s.bin = cfg.Bin
	if s.bin == "" {
		bin, err := LookPath()
		if err != nil {
			return nil, err
		}
		s.bin = bin
	}

	if s.cfg.Dir == "" {
		dir, err := os.MkdirTemp("", "graflow-redis-*")
		if err != nil {
			return nil, fmt.Errorf("redisserver: create data dir: %w", err)
		}
		s.cfg.Dir, s.ownDir = dir, true
	} else if err := os.MkdirAll(s.cfg.Dir, 0o750); err != nil {
		return nil, fmt.Errorf("redisserver: create data dir: %w", err)
	}
	dir, err := filepath.Abs(s.cfg.Dir)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("redisserver: data dir: %w", err), s.removeOwnDir())
	}
	s.cfg.Dir = dir

	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.start(ctx); err != nil {
		return nil, errors.Join(err, s.removeOwnDir())
	}
	return s, nil
}

// Addr returns "127.0.0.1:<port>".
func (s *Server) Addr() string { return net.JoinHostPort(Host, strconv.Itoa(s.cfg.Port)) }

// URL returns "redis://127.0.0.1:<port>", suitable for REDIS_URL.
func (s *Server) URL() string { return "redis://" + s.Addr() }

// Port returns the TCP port; it does not change across Restart.
func (s *Server) Port() int { return s.cfg.Port }

// Dir returns the absolute data directory.
func (s *Server) Dir() string { return s.cfg.Dir }

// PID returns the process id of the running redis-server, or 0.
func (s *Server) PID() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.proc == nil || s.proc.exited() {
		return 0
	}
	return s.proc.cmd.Process.Pid
}

// Running reports whether the redis-server process is alive.
func (s *Server) Running() bool { return s.PID() != 0 }

// Stop shuts the server down with SIGTERM, waits up to Config.StopTimeout,
// then SIGKILLs it. It removes a temporary data directory. Stop is
// idempotent; after it Restart returns ErrStopped. The error reports a
// forced kill or a failure to remove the directory.
func (s *Server) Stop() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return nil
	}
	s.stopped = true
	err := s.terminate(s.proc, true)
	s.proc = nil
	s.log.Info().Str("addr", s.Addr()).Msg("redis-server stopped")
	return errors.Join(err, s.removeOwnDir())
}

// Kill sends SIGKILL (a crash: no final fsync, no shutdown save) and waits
// for the process to exit. The data directory is kept, so Restart recovers
// from whatever reached the AOF. Killing a server that is not running is a
// no-op.
func (s *Server) Kill() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	p := s.proc
	s.proc = nil
	if p == nil {
		return nil
	}
	if err := s.terminate(p, false); err != nil {
		return err
	}
	s.log.Info().Str("addr", s.Addr()).Msg("redis-server killed")
	return nil
}

// Restart stops the server gracefully if it is running (see Stop), then
// starts it again on the same port and data directory and waits until it
// answers PING. It returns ErrStopped after Stop.
func (s *Server) Restart(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopped {
		return ErrStopped
	}
	err := s.terminate(s.proc, true)
	s.proc = nil
	if err != nil {
		return err
	}
	return s.start(ctx)
}

// start runs the binary and waits for readiness. s.mu is held.
func (s *Server) start(ctx context.Context) error {
	fixed := s.cfg.Port != 0
	repaired := false
	port := s.cfg.Port
	for attempt := 1; ; attempt++ {
		if !fixed {
			p, err := freePort()
			if err != nil {
				return err
			}
			port = p
		}
		p, err := s.spawn(port)
		if err != nil {
			return err
		}
		err = s.waitReady(ctx, p, port)
		if err == nil {
			s.cfg.Port, s.proc = port, p
			s.log.Info().Str("addr", s.Addr()).Str("dir", s.cfg.Dir).Bool("aof", s.cfg.AOF).
				Int("pid", p.cmd.Process.Pid).Msg("redis-server ready")
			return nil
		}
		_ = s.terminate(p, false)
		if errors.Is(err, errTruncatedAOF) && !repaired {
			if rerr := s.repairAOF(ctx); rerr != nil {
				return errors.Join(err, rerr)
			}
			repaired, fixed = true, true // and again on the same port
			continue
		}
		if fixed || attempt == startAttempts || !errors.Is(err, errAddrInUse) {
			return err
		}
		s.log.Debug().Int("port", port).Msg("port taken meanwhile; retrying on another")
	}
}

func (s *Server) args(port int) []string {
	args := []string{
		"--port", strconv.Itoa(port),
		"--bind", Host,
		"--dir", s.cfg.Dir,
		"--daemonize", "no",
		"--logfile", "",
		"--save", "",
	}
	if s.cfg.AOF {
		// A truncated AOF stops the start (see repairAOF): Redis 7.0's own
		// truncation leaves a cut transaction's MULTI in the file.
		args = append(args, "--appendonly", "yes", "--appendfsync", string(s.cfg.Fsync), "--aof-load-truncated", "no")
	} else {
		args = append(args, "--appendonly", "no")
	}
	return append(args, s.cfg.Args...)
}

func (s *Server) spawn(port int) (*process, error) {
	s.out.reset()
	cmd := exec.Command(s.bin, s.args(port)...)
	cmd.Dir = s.cfg.Dir
	cmd.Stdout = s.out
	cmd.Stderr = s.out
	cmd.SysProcAttr = sysProcAttr()
	// A forked child (AOF rewrite) may hold the output pipe after a kill;
	// do not let Wait block on it for long.
	cmd.WaitDelay = time.Second
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("redisserver: start %s: %w", s.bin, err)
	}
	p := &process{cmd: cmd, done: make(chan struct{})}
	go func() {
		p.err = cmd.Wait()
		close(p.done)
		if !p.expected.Load() {
			s.log.Error().Err(p.err).Int("port", port).Str("output", s.out.String()).
				Msg("redis-server exited unexpectedly")
		}
	}()
	return p, nil
}

var errAddrInUse = errors.New("address already in use")

// waitReady polls PING with a bounded backoff until PONG, the process exits,
// ctx ends or StartTimeout passes.
func (s *Server) waitReady(ctx context.Context, p *process, port int) error {
	ctx, cancel := context.WithTimeout(ctx, s.cfg.StartTimeout)
	defer cancel()
	addr := net.JoinHostPort(Host, strconv.Itoa(port))
	delay := minRetry
	for {
		err := ping(ctx, addr, p.cmd.Process.Pid)
		if err == nil {
			return nil
		}
		timer := time.NewTimer(delay)
		delay = min(2*delay, maxRetry)
		select {
		case <-p.done:
			out := s.out.String()
			if strings.Contains(out, "Address already in use") {
				return fmt.Errorf("redisserver: port %d: %w (output: %s)", port, errAddrInUse, out)
			}
			if strings.Contains(out, "Unexpected end of file reading the append only file") {
				return fmt.Errorf("redisserver: %w; output:\n%s", errTruncatedAOF, out)
			}
			return fmt.Errorf("redisserver: redis-server exited during startup (%w); output:\n%s", p.err, out)
		case <-ctx.Done():
			return fmt.Errorf("redisserver: redis-server on %s did not answer PING (last: %w): %w; output:\n%s",
				addr, err, context.Cause(ctx), s.out.String())
		case <-timer.C:
		}
		timer.Stop()
	}
}

// ping sends PING over a fresh connection and expects +PONG (a -LOADING
// reply, AOF still loading, counts as not ready), then checks with INFO
// server that the answer came from pid: on a fixed port another server may
// hold the port while ours is failing to bind it.
func ping(ctx context.Context, addr string, pid int) error {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	if _, err := io.WriteString(conn, "*1\r\n$4\r\nPING\r\n*2\r\n$4\r\nINFO\r\n$6\r\nserver\r\n"); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	if line = strings.TrimSpace(line); line != "+PONG" {
		return fmt.Errorf("PING replied %q", line)
	}
	if line, err = r.ReadString('\n'); err != nil {
		return err
	}
	n, err := strconv.Atoi(strings.TrimPrefix(strings.TrimSpace(line), "$"))
	if err != nil || !strings.HasPrefix(line, "$") || n < 0 {
		return fmt.Errorf("INFO replied %q", line)
	}
	info := make([]byte, n+2)
	if _, err := io.ReadFull(r, info); err != nil {
		return err
	}
	want := "process_id:" + strconv.Itoa(pid) + "\r\n"
	if !bytes.Contains(info, []byte(want)) {
		return fmt.Errorf("%s is answered by another redis-server, not pid %d", addr, pid)
	}
	return nil
}

// terminate stops p (gracefully: SIGTERM, then SIGKILL after StopTimeout)
// and waits for it to exit. p may be nil or already exited.
func (s *Server) terminate(p *process, graceful bool) error {
	if p == nil || p.exited() {
		return nil
	}
	p.expected.Store(true)
	if graceful {
		if err := p.cmd.Process.Signal(syscall.SIGTERM); err == nil {
			timer := time.NewTimer(s.cfg.StopTimeout)
			defer timer.Stop()
			select {
			case <-p.done:
				return nil
			case <-timer.C:
			}
			if err := s.kill(p); err != nil {
				return err
			}
			return fmt.Errorf("redisserver: redis-server (pid %d) ignored SIGTERM for %s; killed it",
				p.cmd.Process.Pid, s.cfg.StopTimeout)
		}
		// Signals unsupported (Windows) or process gone: fall through.
	}
	return s.kill(p)
}

func (s *Server) kill(p *process) error {
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("redisserver: kill pid %d: %w", p.cmd.Process.Pid, err)
	}
	<-p.done
	return nil
}

func (p *process) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

func (s *Server) removeOwnDir() error {
	if !s.ownDir {
		return nil
	}
	s.ownDir = false
	if err := os.RemoveAll(s.cfg.Dir); err != nil {
		return fmt.Errorf("redisserver: remove data dir: %w", err)
	}
	return nil
}

// freePort asks the kernel for a free loopback port. Another process may
// take it before redis-server binds it; start retries in that case.
func freePort() (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(Host, "0"))
	if err != nil {
		return 0, fmt.Errorf("redisserver: pick a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// output collects redis-server's stdout/stderr: every line goes to the
// logger at debug level, and the last tailLines are kept for errors.
type output struct {
	log zerolog.Logger

	mu      sync.Mutex
	partial []byte
	lines   []string
}

func newOutput(log zerolog.Logger) *output { return &output{log: log} }

func (o *output) Write(b []byte) (int, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial = append(o.partial, b...)
	for {
		i := bytes.IndexByte(o.partial, '\n')
		if i < 0 {
			break
		}
		line := strings.TrimRight(string(o.partial[:i]), "\r")
		o.partial = o.partial[i+1:]
		if line == "" {
			continue
		}
		o.log.Debug().Str("line", line).Msg("redis-server output")
		o.lines = append(o.lines, line)
		if len(o.lines) > tailLines {
			o.lines = o.lines[len(o.lines)-tailLines:]
		}
	}
	return len(b), nil
}

func (o *output) reset() {
	o.mu.Lock()
	defer o.mu.Unlock()
	o.partial, o.lines = nil, nil
}

func (o *output) String() string {
	o.mu.Lock()
	defer o.mu.Unlock()
	all := append([]string(nil), o.lines...)
	if len(o.partial) > 0 {
		all = append(all, string(o.partial))
	}
	return strings.Join(all, "\n")
}

// errTruncatedAOF: redis-server refused to load an AOF whose end was cut
// (a kill during its write).
var errTruncatedAOF = errors.New("the AOF ends in a cut command (a kill during its write)")

// repairAOF cuts the AOF back to its last whole command outside a
// transaction, with redis-check-aof --fix, which drops a cut MULTI/EXEC
// block whole. Redis 7.0's aof-load-truncated (its default) cuts only the
// partial command: the block's MULTI and first commands stay in the file,
// and after the next write and restart the loader drops that write or
// runs it inside the dead transaction (valkey-io/valkey#4342 fixed the
// same bug). The cut commands were never acknowledged: with appendfsync
// always a reply waits for its whole block.
func (s *Server) repairAOF(ctx context.Context) error {
	check, err := checkAOFBinary(s.bin)
	if err != nil {
		return err
	}
	manifest := filepath.Join(s.cfg.Dir, "appendonlydir", "appendonly.aof.manifest")
	cmd := exec.CommandContext(ctx, check, "--fix", manifest)
	cmd.Dir = s.cfg.Dir
	cmd.Stdin = strings.NewReader("y\n") // "Continue? [y/N]"
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("redisserver: %s --fix %s: %w; output:\n%s", check, manifest, err, out)
	}
	s.log.Warn().Str("dir", s.cfg.Dir).Str("output", strings.TrimSpace(string(out))).
		Msg("the AOF ended in a cut command; cut it back to its last whole transaction (redis-check-aof --fix)")
	return nil
}

// checkAOFBinary finds redis-check-aof: beside bin first (the same
// build, which reads the multi-part AOF layout this server writes; an
// older one on $PATH may not), else on $PATH. It is redis-server itself,
// which checks AOFs when run under that name.
func checkAOFBinary(bin string) (string, error) {
	p := filepath.Join(filepath.Dir(bin), "redis-check-aof")
	if _, err := os.Stat(p); err == nil {
		return p, nil
	}
	if p, err := exec.LookPath("redis-check-aof"); err == nil {
		return p, nil
	}
	return "", fmt.Errorf("redisserver: redis-check-aof not found beside %s or on $PATH: it repairs an AOF cut by a kill", bin)
}
