package retry_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/retry"
	"github.com/redis/go-redis/v9"
)

const waitTimeout = 30 * time.Second

// classified is an error and where it came from.
type classified struct {
	name string
	err  error
	want bool
}

// The classifier over errors produced by a real Redis 7 (the shared test
// server for data, script and ACL errors; private servers for the states
// that would disturb other tests: OOM, replica, busy script, cluster), by
// real sockets, and by the engine's own code. The few rows no single test
// can provoke (LOADING, TRYAGAIN, Redis 6's script error format) are typed
// from the Redis source and marked "typed".
func TestTransientClassifiesRealErrors(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 2*waitTimeout)
	defer cancel()
	var cases []classified
	add := func(name string, err error, want bool) {
		t.Helper()
		if err == nil {
			t.Fatalf("%s: the command did not fail", name)
		}
		cases = append(cases, classified{name, err, want})
	}

	// The shared server: data, script and permission errors.
	c := redistest.Client(t)
	ns := redistest.Namespace(t)
	hash, str := ns+":h", ns+":s"
	if err := c.HSet(ctx, hash, "f", "v").Err(); err != nil {
		t.Fatal(err)
	}
	if err := c.Set(ctx, str, "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	add("script runtime error (error())", c.Eval(ctx, "error('boom')", nil).Err(), false)
	add("script cjson decode error", c.Eval(ctx, "return cjson.decode(ARGV[1])", nil, "{").Err(), false)
	add("script compile error", c.Eval(ctx, "return (", nil).Err(), false)
	add("unknown command called from a script", c.Eval(ctx, "return redis.call('nosuch')", nil).Err(), false)
	add("WRONGTYPE", c.HGet(ctx, str, "f").Err(), false)
	add("WRONGTYPE inside a script", c.Eval(ctx, "return redis.call('HGET', KEYS[1], 'f')", []string{str}).Err(), false)
	add("syntax error", c.Do(ctx, "SET", str, "v", "NOSUCHOPTION").Err(), false)
	if err := c.Set(ctx, ns+":notint", "x", 0).Err(); err != nil {
		t.Fatal(err)
	}
	add("ERR value is not an integer", c.Incr(ctx, ns+":notint").Err(), false)
	add("BUSYGROUP", func() error {
		_ = c.XGroupCreateMkStream(ctx, ns+":st", "g", "$").Err()
		return c.XGroupCreateMkStream(ctx, ns+":st", "g", "$").Err()
	}(), false)
	add("NOGROUP", c.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "nosuch", Consumer: "c", Streams: []string{ns + ":st", ">"}, Block: -1}).Err(), false)
	add("NOSCRIPT", c.EvalSha(ctx, strings.Repeat("0", 40), nil).Err(), true)
	add("redis.Nil", c.Get(ctx, ns+":missing").Err(), false)
	user, pass := ns+"-acl", "pw-"+ns
	if err := c.Do(ctx, "ACL", "SETUSER", user, "on", ">"+pass, "~*", "&*", "-@all", "+@connection", "+get", "+eval").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Do(context.Background(), "ACL", "DELUSER", user) })
	opt := *c.Options()
	opt.Username, opt.Password = user, pass
	limited := redis.NewClient(&opt)
	defer limited.Close()
	add("NOPERM", limited.Set(ctx, str, "v", 0).Err(), false)
	add("ACL refusal inside a script", limited.Eval(ctx, "return redis.call('SET', KEYS[1], 'v')", []string{str}).Err(), false)
	add("WRONGPASS", func() error {
		o := opt
		o.Password = "wrong"
		cl := redis.NewClient(&o)
		defer cl.Close()
		return cl.Ping(ctx).Err()
	}(), false)

	// Context errors, a closed client, the engine's own errors.
	cctx, ccancel := context.WithCancel(ctx)
	ccancel()
	add("context canceled", c.Get(cctx, str).Err(), false)
	dctx, dcancel := context.WithDeadline(ctx, time.Now().Add(-time.Second))
	defer dcancel()
	add("context deadline exceeded", c.Get(dctx, str).Err(), false)
	closed := redis.NewClient(&redis.Options{Addr: c.Options().Addr})
	_ = closed.Close()
	add("closed client", closed.Ping(ctx).Err(), false)
	var v map[string]any
	add("JSON decode error", json.Unmarshal([]byte(`{"a":`), &v), false)
	add("stale claim", fmt.Errorf("finish: %w", rdb.ErrStaleClaim), false)

	// A private server for states that would disturb other tests.
	srv, err := redisserver.Start(ctx, redisserver.Config{Args: []string{"--busy-reply-threshold", "20"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = srv.Stop() }()
	p := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
	defer p.Close()
	set := func(args ...any) {
		t.Helper()
		if err := p.Do(ctx, append([]any{"CONFIG", "SET"}, args...)...).Err(); err != nil {
			t.Fatal(err)
		}
	}
	set("maxmemory", "1")
	add("OOM", p.Set(ctx, "k", "v", 0).Err(), true)
	add("OOM inside a script", p.Eval(ctx, "redis.call('GET', 'x'); return redis.call('SET', KEYS[1], 'v')", []string{"k"}).Err(), true)
	set("maxmemory", "0")
	set("min-replicas-to-write", "1")
	add("NOREPLICAS", p.Set(ctx, "k", "v", 0).Err(), true)
	add("NOREPLICAS inside a script", p.Eval(ctx, "return redis.call('SET', KEYS[1], 'v')", []string{"k"}).Err(), true)
	set("min-replicas-to-write", "0")
	dead := closedPort(t)
	if err := p.Do(ctx, "REPLICAOF", "127.0.0.1", dead).Err(); err != nil {
		t.Fatal(err)
	}
	add("READONLY", p.Set(ctx, "k", "v", 0).Err(), true)
	add("READONLY inside a script", p.Eval(ctx, "return redis.call('SET', KEYS[1], 'v')", []string{"k"}).Err(), true)
	set("replica-serve-stale-data", "no")
	add("MASTERDOWN", p.Get(ctx, "k").Err(), true)
	if err := p.Do(ctx, "REPLICAOF", "NO", "ONE").Err(); err != nil {
		t.Fatal(err)
	}
	set("replica-serve-stale-data", "yes")
	set("maxclients", "1")
	add("maxclients reached (the server closes the connection first: broken pipe)", func() error {
		cl := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1})
		defer cl.Close()
		return cl.Ping(ctx).Err()
	}(), true)
	set("maxclients", "100")
	busy, timeout := busyScript(t, ctx, srv.Addr())
	add("BUSY (a script running past busy-reply-threshold)", busy, true)
	add("read timeout", timeout, true)
	unblocked := func() error {
		if err := p.XGroupCreateMkStream(ctx, "st", "g", "$").Err(); err != nil {
			t.Fatal(err)
		}
		reader := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ClientName: "blocked-reader"})
		defer reader.Close()
		errc := make(chan error, 1)
		go func() {
			errc <- reader.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "g", Consumer: "c", Streams: []string{"st", ">"}, Block: waitTimeout}).Err()
		}()
		waitBlocked(t, ctx, p, "blocked-reader")
		if err := p.Del(ctx, "st").Err(); err != nil {
			t.Fatal(err)
		}
		return <-errc
	}()
	add("UNBLOCKED (the stream of a blocked read deleted)", unblocked, true)
	eof := func() error {
		reader := redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1, ClientName: "killed-reader"})
		defer reader.Close()
		errc := make(chan error, 1)
		go func() { errc <- reader.BLPop(ctx, waitTimeout, "nothing").Err() }()
		waitBlocked(t, ctx, p, "killed-reader")
		if err := p.Do(ctx, "CLIENT", "KILL", "SKIPME", "yes", "TYPE", "normal").Err(); err != nil {
			t.Fatal(err)
		}
		return <-errc
	}()
	add("EOF (connection killed by the server)", eof, true)
	if err := srv.Stop(); err != nil {
		t.Fatal(err)
	}
	add("connection refused (server stopped)", p.Ping(ctx).Err(), true)

	// A cluster node that serves no slot yet.
	cl, err := redisserver.Start(ctx, redisserver.Config{Args: []string{"--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"}})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = cl.Stop() }()
	cc := redis.NewClient(&redis.Options{Addr: cl.Addr(), MaxRetries: -1})
	defer cc.Close()
	add("CLUSTERDOWN", cc.Get(ctx, "k").Err(), true)

	// Typed from the Redis source: states a test cannot reach on demand.
	typed := func(msg string) error { return fmt.Errorf("typed: %w", redisError(msg)) }
	add("typed: LOADING", typed("LOADING Redis is loading the dataset in memory"), true)
	add("typed: TRYAGAIN", typed("TRYAGAIN Multiple keys request during rehashing of slot"), true)
	add("typed: MOVED", typed("MOVED 3999 127.0.0.1:6381"), true)
	add("typed: MISCONF", typed("MISCONF Redis is configured to save RDB snapshots, but it's currently unable to persist to disk."), true)
	add("typed: Redis 6 script runtime error", typed("ERR Error running script (call to f_3684ed04c5bb8f36046ee1478f879f8d73dc1bd2): @user_script:1: user_script:1: Expected value but found invalid token at character 1"), false)
	add("typed: Redis 6 READONLY inside a script", typed("ERR Error running script (call to f_948f): @user_script:1: @user_script: 1: -READONLY You can't write against a read only replica."), true)
	add("typed: max number of clients (when the reply wins the race)", typed("ERR max number of clients reached"), true)
	add("typed: BUSYKEY", typed("BUSYKEY Target key name already exists."), false)

	for _, tc := range cases {
		if got := retry.Transient(tc.err); got != tc.want {
			t.Errorf("Transient(%s: %q) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
	if t.Failed() || testing.Verbose() {
		for _, tc := range cases {
			t.Logf("%-50s transient=%-5v %q", tc.name, tc.want, tc.err)
		}
	}
}

type redisError string

func (e redisError) Error() string { return string(e) }
func (e redisError) RedisError()   {}

// closedPort returns a TCP port on 127.0.0.1 that nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	_ = l.Close()
	return port
}

// waitBlocked waits until the client named name is blocked in a command.
func waitBlocked(t *testing.T, ctx context.Context, admin *redis.Client, name string) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for time.Now().Before(deadline) {
		list, err := admin.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, line := range strings.Split(list, "\n") {
			if strings.Contains(line, "name="+name+" ") && strings.Contains(line, "flags=b") {
				return
			}
		}
	}
	t.Fatalf("client %s never blocked", name)
}

// busyScript runs a script that spins for a while on addr and returns the
// error another client gets meanwhile (BUSY) and the script's own client's
// error (its read timeout is shorter than the script).
func busyScript(t *testing.T, ctx context.Context, addr string) (busy, timeout error) {
	t.Helper()
	spinner := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1, ReadTimeout: 100 * time.Millisecond})
	defer spinner.Close()
	if err := spinner.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	other := redis.NewClient(&redis.Options{Addr: addr, MaxRetries: -1})
	defer other.Close()
	if err := other.Ping(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- spinner.Eval(ctx, `
local t0 = redis.call('TIME')
repeat
  local t = redis.call('TIME')
until (t[1] - t0[1]) * 1000000 + (t[2] - t0[2]) > 1000000`, nil).Err()
	}()
	deadline := time.Now().Add(waitTimeout)
	for busy == nil && time.Now().Before(deadline) {
		if err := other.Get(ctx, "k").Err(); err != nil && !errors.Is(err, redis.Nil) {
			busy = err
		}
	}
	timeout = <-done
	// Wait for the script to end before the server is used again.
	for time.Now().Before(deadline) {
		if err := other.Ping(ctx).Err(); err == nil {
			break
		}
	}
	if busy == nil {
		t.Fatal("no BUSY reply while the script ran")
	}
	return busy, timeout
}
