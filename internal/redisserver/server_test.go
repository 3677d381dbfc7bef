package redisserver_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"

	"github.com/graflow-go/graflow/internal/redisserver"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// setup starts a server with cfg, stopped at test end, and a client to it.
func setup(t *testing.T, cfg redisserver.Config) (*redisserver.Server, *redis.Client) {
	t.Helper()
	if _, err := redisserver.LookPath(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := redisserver.Start(ctx, cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Stop(); err != nil {
			t.Errorf("Stop: %v", err)
		}
	})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	t.Cleanup(func() { _ = rdb.Close() })
	return srv, rdb
}

func TestServer(t *testing.T) {
	t.Parallel()

	t.Run("starts on a free loopback port and answers PING", func(t *testing.T) {
		t.Parallel()
		srv, rdb := setup(t, redisserver.Config{})
		if !strings.HasPrefix(srv.Addr(), "127.0.0.1:") || srv.Port() == 0 {
			t.Fatalf("Addr() = %q, Port() = %d", srv.Addr(), srv.Port())
		}
		if want := "redis://" + srv.Addr(); srv.URL() != want {
			t.Fatalf("URL() = %q, want %q", srv.URL(), want)
		}
		if err := rdb.Ping(context.Background()).Err(); err != nil {
			t.Fatalf("PING: %v", err)
		}
		if !srv.Running() || srv.PID() == 0 {
			t.Fatal("Running() = false after Start")
		}
		aof, err := rdb.ConfigGet(context.Background(), "appendonly").Result()
		if err != nil || aof["appendonly"] != "no" {
			t.Fatalf("appendonly = %v (%v), want no", aof, err)
		}
	})

	t.Run("AOF with fsync always survives kill -9 and restarts on the same port", func(t *testing.T) {
		t.Parallel()
		dir := t.TempDir()
		srv, rdb := setup(t, redisserver.Config{Dir: dir, AOF: true, Fsync: redisserver.FsyncAlways})
		ctx := context.Background()
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: "s", Values: []any{"k", "v"}}).Err(); err != nil {
			t.Fatalf("XADD: %v", err)
		}
		port := srv.Port()
		if err := srv.Kill(); err != nil {
			t.Fatalf("Kill: %v", err)
		}
		if srv.Running() {
			t.Fatal("Running() = true after Kill")
		}
		if err := srv.Kill(); err != nil {
			t.Fatalf("second Kill: %v", err)
		}
		if err := rdb.Ping(ctx).Err(); err == nil {
			t.Fatal("PING succeeded after Kill")
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		if srv.Port() != port || srv.Dir() != dir {
			t.Fatalf("after Restart: port %d dir %q, want %d %q", srv.Port(), srv.Dir(), port, dir)
		}
		n, err := rdb.XLen(ctx, "s").Result()
		if err != nil || n != 1 {
			t.Fatalf("XLEN after restart = %d, %v; want 1", n, err)
		}
	})

	t.Run("graceful restart of a running server keeps AOF data", func(t *testing.T) {
		t.Parallel()
		srv, rdb := setup(t, redisserver.Config{AOF: true})
		ctx := context.Background()
		if err := rdb.Set(ctx, "k", "v", 0).Err(); err != nil {
			t.Fatal(err)
		}
		if err := srv.Restart(ctx); err != nil {
			t.Fatalf("Restart: %v", err)
		}
		if got, err := rdb.Get(ctx, "k").Result(); err != nil || got != "v" {
			t.Fatalf("GET = %q, %v; want v", got, err)
		}
	})

	t.Run("Stop is idempotent and removes a temporary data dir", func(t *testing.T) {
		t.Parallel()
		srv, err := redisserver.Start(context.Background(), redisserver.Config{})
		if err != nil {
			t.Fatal(err)
		}
		if err := srv.Stop(); err != nil {
			t.Fatalf("Stop: %v", err)
		}
		if err := srv.Stop(); err != nil {
			t.Fatalf("second Stop: %v", err)
		}
		if _, err := os.Stat(srv.Dir()); !errors.Is(err, os.ErrNotExist) {
			t.Fatalf("data dir still there: %v", err)
		}
		if err := srv.Restart(context.Background()); !errors.Is(err, redisserver.ErrStopped) {
			t.Fatalf("Restart after Stop = %v, want ErrStopped", err)
		}
		if err := srv.Kill(); err != nil {
			t.Fatalf("Kill after Stop = %v", err)
		}
	})

	t.Run("a taken fixed port fails fast with the server's reason", func(t *testing.T) {
		t.Parallel()
		first, _ := setup(t, redisserver.Config{})
		_, err := redisserver.Start(context.Background(), redisserver.Config{Port: first.Port()})
		if err == nil || !strings.Contains(err.Error(), "already in use") {
			t.Fatalf("Start on a taken port: %v", err)
		}
	})

	t.Run("extra args are passed through", func(t *testing.T) {
		t.Parallel()
		_, rdb := setup(t, redisserver.Config{Args: []string{"--maxmemory", "12mb"}})
		got, err := rdb.ConfigGet(context.Background(), "maxmemory").Result()
		if err != nil || got["maxmemory"] != "12582912" {
			t.Fatalf("maxmemory = %v, %v", got, err)
		}
	})

	t.Run("invalid config is rejected", func(t *testing.T) {
		t.Parallel()
		_, err := redisserver.Start(context.Background(), redisserver.Config{Fsync: "sometimes", Port: -1})
		if err == nil || !strings.Contains(err.Error(), "Fsync") || !strings.Contains(err.Error(), "Port") {
			t.Fatalf("Start = %v, want Fsync and Port errors", err)
		}
	})
}
