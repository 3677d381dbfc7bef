// Package rediscluster runs a local Redis Cluster: several redis-server
// child processes (internal/redisserver) on loopback ports, cluster mode
// on, joined with CLUSTER MEET, the 16384 slots split evenly over the
// masters (CLUSTER ADDSLOTSRANGE), each master with its replicas (CLUSTER
// REPLICATE). It needs no redis-cli. The integration tests, "graflow chaos
// --cluster" and the cluster benchmark use it; KillMaster and
// WaitFailover are the failover fault.
//
// It is not in internal/redistest because internal/rdb's own tests import
// redistest, and this package sends its commands through internal/rdb.
//
// A Cluster is safe for concurrent use.
package rediscluster

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// Defaults applied to zero Config fields.
const (
	DefaultMasters     = 3
	DefaultReplicas    = 1
	DefaultNodeTimeout = 2 * time.Second
	DefaultWaitTimeout = 60 * time.Second

	slots = 16384
	// poll bounds the interval between two looks at the nodes while
	// waiting for a cluster state (there is no event to wait on: the
	// nodes gossip).
	minPoll = 5 * time.Millisecond
	maxPoll = 100 * time.Millisecond
)

// Config configures a Cluster. The zero value is 3 masters with one
// replica each, no AOF, temporary directories.
type Config struct {
	// Masters is the number of masters (slots are split evenly). Zero
	// means DefaultMasters.
	Masters int
	// Replicas per master. Zero means DefaultReplicas; negative means none.
	Replicas int
	// Dir holds one data directory per node (node-<i>). Zero: each node
	// gets a temporary one, removed by Stop.
	Dir string
	// AOF and Fsync are as in redisserver.Config, for every node.
	AOF   bool
	Fsync redisserver.Fsync
	// NodeTimeout is cluster-node-timeout: how long a master may be
	// unreachable before its replica is promoted. Zero means
	// DefaultNodeTimeout.
	NodeTimeout time.Duration
	// WaitTimeout bounds Start's and WaitFailover's waits. Zero means
	// DefaultWaitTimeout.
	WaitTimeout time.Duration
	// Args are extra redis-server arguments for every node.
	Args []string
	// Logger is handed to each node's redisserver.
	Logger zerolog.Logger
}

func (c Config) withDefaults() Config {
	if c.Masters == 0 {
		c.Masters = DefaultMasters
	}
	if c.Replicas == 0 {
		c.Replicas = DefaultReplicas
	}
	if c.Replicas < 0 {
		c.Replicas = 0
	}
	if c.NodeTimeout == 0 {
		c.NodeTimeout = DefaultNodeTimeout
	}
	if c.WaitTimeout == 0 {
		c.WaitTimeout = DefaultWaitTimeout
	}
	return c
}

// Cluster is a running local Redis Cluster.
type Cluster struct {
	cfg Config

	mu      sync.Mutex
	nodes   []*redisserver.Server
	clients []*redis.Client // one plain client per node, for admin commands
	ids     []string        // node ids
}

// Start starts Masters*(1+Replicas) nodes, builds the cluster and returns
// once every node reports cluster_state:ok, knows every other node, and
// every replica has finished its initial sync. On error nothing is left
// running.
func Start(ctx context.Context, cfg Config) (_ *Cluster, err error) {
	cfg = cfg.withDefaults()
	if cfg.Masters < 1 {
		return nil, fmt.Errorf("rediscluster: Masters %d: want at least 1", cfg.Masters)
	}
	c := &Cluster{cfg: cfg}
	defer func() {
		if err != nil {
			_ = c.Stop()
		}
	}()
	n := cfg.Masters * (1 + cfg.Replicas)
	args := append([]string{
		"--cluster-enabled", "yes",
		"--cluster-config-file", "nodes.conf",
		"--cluster-node-timeout", strconv.FormatInt(cfg.NodeTimeout.Milliseconds(), 10),
		// A replica takes over whatever its offset: the failover test
		// measures what that costs instead of leaving slots unserved.
		"--cluster-replica-validity-factor", "0",
	}, cfg.Args...)
	for i := range n {
		sc := redisserver.Config{AOF: cfg.AOF, Fsync: cfg.Fsync, Args: args, Logger: cfg.Logger}
		if cfg.Dir != "" {
			sc.Dir = filepath.Join(cfg.Dir, "node-"+strconv.Itoa(i))
		}
		srv, err := redisserver.Start(ctx, sc)
		if err != nil {
			return nil, fmt.Errorf("rediscluster: node %d: %w", i, err)
		}
		c.nodes = append(c.nodes, srv)
		c.clients = append(c.clients, redis.NewClient(&redis.Options{Addr: srv.Addr(), MaxRetries: -1}))
	}
	for i, cl := range c.clients {
		info, err := rdb.ClusterNodeInfo(ctx, cl)
		if err != nil {
			return nil, fmt.Errorf("rediscluster: node %d: %w", i, err)
		}
		c.ids = append(c.ids, info.ID)
	}
	// Slots first, then MEET: each master owns its range from the start.
	for m := range cfg.Masters {
		lo, hi := m*slots/cfg.Masters, (m+1)*slots/cfg.Masters-1
		if err := rdb.ClusterAddSlots(ctx, c.clients[m], lo, hi); err != nil {
			return nil, fmt.Errorf("rediscluster: add slots %d-%d to node %d: %w", lo, hi, m, err)
		}
	}
	for i := 1; i < n; i++ {
		if err := rdb.ClusterMeet(ctx, c.clients[i], redisserver.Host, c.nodes[0].Port()); err != nil {
			return nil, fmt.Errorf("rediscluster: node %d meets node 0: %w", i, err)
		}
	}
	// A replica can follow its master once it knows it.
	if err := c.waitAll(ctx, "every node knows every other", func(v map[int]rdb.ClusterNode) bool {
		return every(v, func(_ int, n rdb.ClusterNode) bool { return n.KnownNodes == len(c.nodes) })
	}); err != nil {
		return nil, err
	}
	for i := cfg.Masters; i < n; i++ {
		m := (i - cfg.Masters) % cfg.Masters
		if err := rdb.ClusterReplicate(ctx, c.clients[i], c.ids[m]); err != nil {
			return nil, fmt.Errorf("rediscluster: node %d replicates node %d: %w", i, m, err)
		}
	}
	if err := c.waitAll(ctx, "cluster_state:ok and replicas in sync", func(v map[int]rdb.ClusterNode) bool {
		return every(v, func(i int, n rdb.ClusterNode) bool {
			if n.State != "ok" {
				return false
			}
			if i < cfg.Masters {
				return n.Master && n.Replicas == cfg.Replicas
			}
			return !n.Master && n.LinkUp
		})
	}); err != nil {
		return nil, err
	}
	return c, nil
}

// waitAll polls every running node until ok holds for their views
// (indexed by node; a node not running is absent), or the wait times out.
func (c *Cluster) waitAll(ctx context.Context, what string, ok func(views map[int]rdb.ClusterNode) bool) error {
	ctx, cancel := context.WithTimeout(ctx, c.cfg.WaitTimeout)
	defer cancel()
	delay := minPoll
	for {
		views, err := c.views(ctx)
		if err == nil && ok(views) {
			return nil
		}
		timer := time.NewTimer(delay)
		delay = min(2*delay, maxPoll)
		select {
		case <-ctx.Done():
			timer.Stop()
			if err == nil {
				err = fmt.Errorf("views %+v", views)
			}
			return fmt.Errorf("rediscluster: waiting for %s: %w (last: %w)", what, context.Cause(ctx), err)
		case <-timer.C:
		}
	}
}

// views returns every running node's view of itself.
func (c *Cluster) views(ctx context.Context) (map[int]rdb.ClusterNode, error) {
	views := map[int]rdb.ClusterNode{}
	for i, cl := range c.liveClients() {
		if cl == nil {
			continue
		}
		n, err := rdb.ClusterNodeInfo(ctx, cl)
		if err != nil {
			return nil, fmt.Errorf("node %d: %w", i, err)
		}
		views[i] = n
	}
	return views, nil
}

// every reports whether ok holds for every view.
func every(views map[int]rdb.ClusterNode, ok func(i int, n rdb.ClusterNode) bool) bool {
	for i, n := range views {
		if !ok(i, n) {
			return false
		}
	}
	return true
}

// liveClients returns the admin clients, nil for a node not running.
func (c *Cluster) liveClients() []*redis.Client {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]*redis.Client, len(c.clients))
	for i, cl := range c.clients {
		if c.nodes[i].Running() {
			out[i] = cl
		}
	}
	return out
}

// Addrs returns every node's "127.0.0.1:<port>".
func (c *Cluster) Addrs() []string {
	out := make([]string, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.Addr()
	}
	return out
}

// PIDs returns the process id of every node (0 for a stopped one).
func (c *Cluster) PIDs() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, len(c.nodes))
	for i, n := range c.nodes {
		out[i] = n.PID()
	}
	return out
}

// URL returns a cluster URL naming every node as a seed:
// "redis+cluster://127.0.0.1:p0?addr=127.0.0.1:p1&addr=..." (see
// internal/redisurl).
func (c *Cluster) URL() string {
	addrs := c.Addrs()
	var b strings.Builder
	b.WriteString("redis+cluster://" + addrs[0])
	for i, a := range addrs[1:] {
		if i == 0 {
			b.WriteString("?")
		} else {
			b.WriteString("&")
		}
		b.WriteString("addr=" + a)
	}
	return b.String()
}

// Masters returns the indexes of the nodes that are masters now (after a
// failover a former replica is one).
func (c *Cluster) Masters(ctx context.Context) ([]int, error) {
	var out []int
	for i, cl := range c.liveClients() {
		if cl == nil {
			continue
		}
		n, err := rdb.ClusterNodeInfo(ctx, cl)
		if err != nil {
			return nil, fmt.Errorf("rediscluster: node %d: %w", i, err)
		}
		if n.Master {
			out = append(out, i)
		}
	}
	return out, nil
}

// KillMaster SIGKILLs node i (a crash: what it had not yet sent to its
// replica is lost). Use WaitFailover to wait for a
// replica to take its slots over, and Rejoin to bring it back.
func (c *Cluster) KillMaster(i int) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i < 0 || i >= len(c.nodes) {
		return fmt.Errorf("rediscluster: no node %d", i)
	}
	return c.nodes[i].Kill()
}

// WaitFailover waits until every running node reports cluster_state:ok
// and as many running masters as the cluster was built with: a replica of
// each dead master was promoted and the others learnt it.
func (c *Cluster) WaitFailover(ctx context.Context) error {
	return c.waitAll(ctx, "a failover (a replica promoted, cluster_state:ok on every running node)", func(v map[int]rdb.ClusterNode) bool {
		masters := 0
		for _, n := range v {
			if n.Master {
				masters++
			}
		}
		return masters == c.cfg.Masters && every(v, func(_ int, n rdb.ClusterNode) bool { return n.State == "ok" })
	})
}

// Rejoin restarts node i (killed by KillMaster) on its port and data
// directory; it rejoins as a replica of the master that took its slots
// over. It returns once every node reports cluster_state:ok and every
// replica is in sync.
func (c *Cluster) Rejoin(ctx context.Context, i int) error {
	c.mu.Lock()
	err := c.nodes[i].Restart(ctx)
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("rediscluster: restart node %d: %w", i, err)
	}
	return c.waitAll(ctx, "the restarted node to rejoin", func(v map[int]rdb.ClusterNode) bool {
		return every(v, func(_ int, n rdb.ClusterNode) bool { return n.State == "ok" && (n.Master || n.LinkUp) })
	})
}

// Stop stops every node and removes temporary directories. Idempotent.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	for _, cl := range c.clients {
		_ = cl.Close()
	}
	for _, n := range c.nodes {
		errs = append(errs, n.Stop())
	}
	c.clients, c.nodes = nil, nil
	return errors.Join(errs...)
}

// Port returns node i's port.
func (c *Cluster) Port(i int) int { return c.nodes[i].Port() }
