package integration

import (
	"context"
	"fmt"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/graflow-go/graflow"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/rediscluster"
	"github.com/graflow-go/graflow/internal/rediscluster/clustertest"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/graflow-go/graflow/worker/builtin"
	"github.com/redis/go-redis/v9"
)

// clusterPartitions is the namespaces' partition count on the cluster: on
// an even three-way slot split, three partitions put one on each master
// (the partition tags are spread over the slot space; layout 2's {p0},
// {p1}, {p2} left one master idle, and testClusterPatterns failed with
// "the runs' keys are on 2 masters, want 3").
const clusterPartitions = 3

// newClusterStack is newStack on the cluster: a fresh namespace of
// clusterPartitions partitions, processes started with the cluster URL.
func newClusterStack(t *testing.T, c *rediscluster.Cluster) *stack {
	t.Helper()
	binary(t)
	u, err := redisurl.New(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = u.Close() })
	ns := redistest.Namespace(t)
	cl, err := graflow.NewClient(graflow.Config{Redis: u, Namespace: ns, NamespacePartitions: clusterPartitions})
	if err != nil {
		t.Fatal(err)
	}
	return &stack{t: t, ns: ns, url: c.URL(), rdb: u, keys: rdb.NewKeysP(ns, clusterPartitions), client: cl,
		logDir: t.TempDir(), partitions: clusterPartitions}
}

// TestCluster runs workflows with worker and projector processes on a
// local Redis Cluster (3 masters, 3 replicas), in a namespace whose
// partitions reach every master; then it kills a master mid-run.
func TestCluster(t *testing.T) {
	t.Parallel()
	c := clustertest.Start(t, rediscluster.Config{Dir: t.TempDir()})
	t.Run("work", func(t *testing.T) {
		t.Run("chains, fan-outs and map-reduces spread over the three masters and every history checks", func(t *testing.T) {
			t.Parallel()
			testClusterPatterns(t, newClusterStack(t, c))
		})
		t.Run("a worker killed with SIGKILL has its task reclaimed", func(t *testing.T) {
			testReclaimAfterSIGKILL(t, func(t *testing.T) *stack { return newClusterStack(t, c) }, 2)
		})
	})
	t.Run("a master killed mid-run fails over to its replica and the runs finish", func(t *testing.T) {
		testClusterFailover(t, c, newClusterStack(t, c))
	})
}

// clusterWorkflows returns the i-th of: a 3-step chain, an 8-wide fan-out
// into a sum, and a map-reduce of 6.
func clusterWorkflow(i int) (*graflow.Workflow, float64) {
	wf := graflow.NewWorkflow(fmt.Sprintf("cluster-%d", i))
	switch i % 3 {
	case 0:
		wf.Sequence(
			wf.Task("a", builtin.Sleep).Args(sleepArgs(5, 1)),
			wf.Task("b", builtin.Sleep).Args(sleepArgs(5, 2)),
			wf.Task("c", builtin.Sleep).Args(sleepArgs(5, 3)),
		)
		return wf, 3
	case 1:
		root := wf.Task("root", builtin.Noop)
		wf.MapReduce(root, "branch", builtin.Sleep, 8, func(j int) any { return sleepArgs(5, j) }, "sum", builtin.Sum)
		return wf, 28
	default:
		split := wf.Task("split", builtin.Noop)
		wf.MapReduce(split, "map", builtin.Sleep, 6, func(j int) any { return sleepArgs(5, j+1) }, "reduce", builtin.Sum)
		return wf, 21
	}
}

// submitClusterWorkflows submits clusterWorkflow(0..n-1).
func submitClusterWorkflows(t *testing.T, s *stack, ctx context.Context, n int) []string {
	t.Helper()
	ids := make([]string, n)
	for i := range ids {
		wf, _ := clusterWorkflow(i)
		ids[i] = submit(t, s, ctx, wf)
	}
	return ids
}

// lastResult is the result of the task that ends a clusterWorkflow.
func lastResult(t *testing.T, info *graflow.RunInfo, i int) float64 {
	t.Helper()
	switch i % 3 {
	case 0:
		return number(t, info.Task("c").Result)
	case 1:
		return number(t, info.Task("sum").Result)
	default:
		return number(t, info.Task("reduce").Result)
	}
}

func testClusterPatterns(t *testing.T, s *stack) {
	ctx := withTimeout(t, 90*time.Second)
	s.projector("p-1")
	s.workers(3, 4)
	ids := submitClusterWorkflows(t, s, ctx, 24)
	masters := map[string]bool{}
	for i, id := range ids {
		info := s.wait(ctx, id)
		_, want := clusterWorkflow(i)
		if got := lastResult(t, info, i); got != want {
			t.Errorf("run %s (%s): result %v, want %v", id, info.Workflow, got, want)
		}
		s.verifyHistory(ctx, id)
		masters[masterOf(t, ctx, s, s.keys.RunLog(id))] = true
	}
	if len(masters) != 3 {
		t.Errorf("the runs' keys are on %d masters, want 3 (%v)", len(masters), masters)
	}
}

// masterOf returns the address of the master serving key.
func masterOf(t *testing.T, ctx context.Context, s *stack, key string) string {
	t.Helper()
	cc := s.rdb.(*redis.ClusterClient)
	slot, err := cc.ClusterKeySlot(ctx, key).Result()
	if err != nil {
		t.Fatal(err)
	}
	shards, err := cc.ClusterShards(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, sh := range shards {
		for _, r := range sh.Slots {
			if r.Start > slot || slot > r.End {
				continue
			}
			for _, n := range sh.Nodes {
				if n.Role == "master" && n.Health == "online" {
					return net.JoinHostPort(n.IP, strconv.FormatInt(n.Port, 10))
				}
			}
		}
	}
	t.Fatalf("no node serves slot %d of %s", slot, key)
	return ""
}

// testClusterFailover submits runs on every partition, SIGKILLs the master
// of one partition once its runs are under way, and requires every run to
// succeed with a history that checks (replay.Analyze, the invariants
// against the live state, graflow replay verify). Replication is
// asynchronous: what the failover loses, if anything, shows here as a run
// that never ends or a history that does not check.
func testClusterFailover(t *testing.T, c *rediscluster.Cluster, s *stack) {
	ctx := withTimeout(t, 5*time.Minute)
	s.projector("p-1")
	s.projector("p-2")
	s.workers(3, 8)
	const runs = 30
	ids := submitClusterWorkflows(t, s, ctx, runs)
	// The victim: the master of run 0's partition, once run 0 has a
	// claimed task (work in flight on it).
	s.await(ctx, ids[0], "a claim", func(e events.Event) bool { return e.Type == events.TaskClaimed })
	victim := masterOf(t, ctx, s, s.keys.RunLog(ids[0]))
	node := -1
	for i, a := range c.Addrs() {
		if a == victim {
			node = i
		}
	}
	onVictim := make([]bool, runs)
	for i, id := range ids {
		onVictim[i] = masterOf(t, ctx, s, s.keys.RunLog(id)) == victim
	}
	killAt := time.Now()
	s.lostWrites = true // replication is asynchronous: the kill may lose acknowledged writes
	if err := c.KillMaster(node); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitFailover(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("SIGKILL master %s (node %d): replica promoted after %v", victim, node, time.Since(killAt).Round(time.Millisecond))
	var wg sync.WaitGroup
	infos := make([]*graflow.RunInfo, runs)
	errs := make([]error, runs)
	ended := make([]time.Duration, runs)
	for i, id := range ids {
		wg.Add(1)
		go func() {
			defer wg.Done()
			infos[i], errs[i] = s.client.Wait(ctx, id)
			ended[i] = time.Since(killAt)
		}()
	}
	wg.Wait()
	t.Logf("every run ended %v after the kill", time.Since(killAt).Round(time.Millisecond))
	vctx := withTimeout(t, 2*time.Minute)
	for i, id := range ids {
		if ended[i] > 30*time.Second {
			t.Logf("run %s (partition %d, on the killed master: %t) ended %v after the kill:\n%s", id, s.keys.Partition(id),
				onVictim[i], ended[i].Round(time.Millisecond), timeline(s.readLog(vctx, id)))
		}
	}
	for i, id := range ids {
		if errs[i] != nil {
			t.Fatalf("run %s (partition %d) after the failover: %v", id, s.keys.Partition(id), errs[i])
		}
		if !infos[i].Succeeded() {
			t.Fatalf("run %s ended %s (failed task %q: %s)", id, infos[i].Status, infos[i].FailedTask, infos[i].Cause)
		}
		_, want := clusterWorkflow(i)
		if got := lastResult(t, infos[i], i); got != want {
			t.Errorf("run %s: result %v, want %v", id, got, want)
		}
		s.verifyHistory(vctx, id)
	}
	t.Logf("every history checked %v after the kill", time.Since(killAt).Round(time.Millisecond))
	if err := c.Rejoin(vctx, node); err != nil {
		t.Fatal(err)
	}
}
