package rediscluster_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/rediscluster"
	"github.com/graflow-go/graflow/internal/rediscluster/clustertest"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/redis/go-redis/v9"
)

// TestFailover: a 6-node cluster serves keys of every master through a
// cluster URL; with one master SIGKILLed its replica takes over, the keys
// written before the kill (and replicated: WAIT) are still there, and the
// killed node rejoins as a replica.
func TestFailover(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := clustertest.Start(t, rediscluster.Config{})
	masters, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(masters) != 3 || len(c.Addrs()) != 6 {
		t.Fatalf("masters %v of %d nodes, want 3 of 6", masters, len(c.Addrs()))
	}
	u, err := redisurl.New(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	cl, ok := u.(*redis.ClusterClient)
	if !ok {
		t.Fatalf("redisurl.New(%s) = %T, want a *redis.ClusterClient", c.URL(), u)
	}
	t.Cleanup(func() { _ = cl.Close() })
	const keys = 300
	for i := range keys {
		k := fmt.Sprintf("k{%d}", i)
		if err := cl.Set(ctx, k, i, 0).Err(); err != nil {
			t.Fatal(err)
		}
		// The test owns this WAIT: only replicated writes must survive.
		if n, err := cl.Do(ctx, "WAIT", 1, 5000).Int(); err != nil || n != 1 {
			t.Fatalf("WAIT after %s: %d, %v", k, n, err)
		}
	}
	if err := c.KillMaster(masters[1]); err != nil {
		t.Fatal(err)
	}
	failoverCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitFailover(failoverCtx); err != nil {
		t.Fatal(err)
	}
	// The client learns the new slot map on its first errors: reads
	// may fail until it has (the engine's calls retry the same way).
	cl.ReloadState(ctx)
	for i := range keys {
		k := fmt.Sprintf("k{%d}", i)
		got, err := getRetrying(failoverCtx, cl, k)
		if err != nil || got != i {
			t.Fatalf("after the failover GET %s = %d, %v; want %d", k, got, err, i)
		}
	}
	if err := c.Rejoin(ctx, masters[1]); err != nil {
		t.Fatal(err)
	}
	after, err := c.Masters(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 3 {
		t.Fatalf("masters after the rejoin: %v, want 3", after)
	}
	for _, m := range after {
		if m == masters[1] {
			t.Fatalf("node %d rejoined as a master, want a replica (masters %v)", m, after)
		}
	}
}

// getRetrying reads key until it answers or ctx ends (a connection error
// while the client reloads its slot map is retried; a missing key is not).
func getRetrying(ctx context.Context, cl *redis.ClusterClient, key string) (int, error) {
	for {
		got, err := cl.Get(ctx, key).Int()
		if err == nil || errors.Is(err, redis.Nil) || ctx.Err() != nil {
			return got, err
		}
		select {
		case <-ctx.Done():
			return 0, err
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// TestNamespaceOnEveryMaster: on a cluster, rdb's INFO sums every
// master's figures and DeleteNamespace finds and deletes the keys of a
// namespace on every master (a plain SCAN sees one node, and a DEL of
// keys of several slots is refused).
func TestNamespaceOnEveryMaster(t *testing.T) {
	t.Parallel()
	ctx := t.Context()
	c := clustertest.Start(t, rediscluster.Config{Replicas: -1})
	u, err := redisurl.New(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	cl := u.(*redis.ClusterClient)
	db := rdb.NewP(cl, "ns-every-master", 12)
	for p := range 12 {
		if err := cl.Set(ctx, db.K.Feed(p), p, 0).Err(); err != nil {
			t.Fatal(err)
		}
	}
	if err := cl.Set(ctx, "other-namespace:{p0}:feed", 1, 0).Err(); err != nil {
		t.Fatal(err)
	}
	var perNode int64
	if err := cl.ForEachMaster(ctx, func(ctx context.Context, n *redis.Client) error {
		info := rdb.ParseInfo(n.Info(ctx, "stats").Val())
		v, _ := strconv.ParseInt(info["total_commands_processed"], 10, 64)
		atomic.AddInt64(&perNode, v)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	sum, err := db.Info(ctx, "stats")
	if err != nil {
		t.Fatal(err)
	}
	// The summed INFO comes after the per-node ones: it counts them too.
	if got, _ := strconv.ParseInt(sum["total_commands_processed"], 10, 64); got < perNode {
		t.Errorf("summed total_commands_processed %d < the masters' %d", got, perNode)
	}
	if err := db.DeleteNamespace(ctx); err != nil {
		t.Fatal(err)
	}
	for p := range 12 {
		if n := cl.Exists(ctx, db.K.Feed(p)).Val(); n != 0 {
			t.Errorf("%s survived DeleteNamespace", db.K.Feed(p))
		}
	}
	if n := cl.Exists(ctx, "other-namespace:{p0}:feed").Val(); n != 1 {
		t.Error("DeleteNamespace deleted another namespace's key")
	}
}
