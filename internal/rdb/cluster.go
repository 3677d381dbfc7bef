package rdb

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// This file holds the commands that build and watch a Redis Cluster of
// local servers (internal/rediscluster: tests, chaos, bench). They run on
// one node's own connection (a plain client per node), touch no engine key
// and are never issued by the engine itself.

// ClusterNode is one node's view of itself, from CLUSTER NODES (myself
// line) and INFO replication.
type ClusterNode struct {
	ID     string
	Master bool
	// MasterID is the master a replica follows ("" on a master).
	MasterID string
	// State is cluster_state from CLUSTER INFO ("ok" or "fail").
	State string
	// KnownNodes is cluster_known_nodes from CLUSTER INFO.
	KnownNodes int
	// LinkUp: a replica's link to its master is up and its initial sync is
	// done (master_link_status:up, master_sync_in_progress:0).
	LinkUp bool
	// Replicas is connected_slaves on a master.
	Replicas int
	// Offset is the replication offset (master_repl_offset on a master,
	// slave_repl_offset on a replica).
	Offset int64
}

// ClusterMeet tells node c about the node at host:port (CLUSTER MEET).
func ClusterMeet(ctx context.Context, c *redis.Client, host string, port int) error {
	return c.ClusterMeet(ctx, host, strconv.Itoa(port)).Err()
}

// ClusterAddSlots assigns the slots lo..hi (inclusive) to node c.
func ClusterAddSlots(ctx context.Context, c *redis.Client, lo, hi int) error {
	return c.ClusterAddSlotsRange(ctx, lo, hi).Err()
}

// ClusterReplicate makes node c a replica of the master with id master.
func ClusterReplicate(ctx context.Context, c *redis.Client, master string) error {
	return c.ClusterReplicate(ctx, master).Err()
}

// ClusterNodeInfo returns node c's view of itself and of the cluster.
func ClusterNodeInfo(ctx context.Context, c *redis.Client) (ClusterNode, error) {
	var n ClusterNode
	nodes, err := c.ClusterNodes(ctx).Result()
	if err != nil {
		return n, fmt.Errorf("CLUSTER NODES: %w", err)
	}
	for _, line := range strings.Split(nodes, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || !strings.Contains(f[2], "myself") {
			continue
		}
		n.ID, n.Master = f[0], strings.Contains(f[2], "master")
		if f[3] != "-" {
			n.MasterID = f[3]
		}
	}
	info, err := c.ClusterInfo(ctx).Result()
	if err != nil {
		return n, fmt.Errorf("CLUSTER INFO: %w", err)
	}
	fields := infoFields(info)
	n.State = fields["cluster_state"]
	n.KnownNodes, _ = strconv.Atoi(fields["cluster_known_nodes"])
	repl, err := c.Info(ctx, "replication").Result()
	if err != nil {
		return n, fmt.Errorf("INFO replication: %w", err)
	}
	fields = infoFields(repl)
	n.LinkUp = fields["master_link_status"] == "up" && fields["master_sync_in_progress"] == "0"
	n.Replicas, _ = strconv.Atoi(fields["connected_slaves"])
	if n.Master {
		n.Offset, _ = strconv.ParseInt(fields["master_repl_offset"], 10, 64)
	} else {
		n.Offset, _ = strconv.ParseInt(fields["slave_repl_offset"], 10, 64)
	}
	return n, nil
}

// infoFields parses "name:value" lines of INFO and CLUSTER INFO.
func infoFields(s string) map[string]string {
	m := map[string]string{}
	for _, line := range strings.Split(s, "\n") {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), ":"); ok {
			m[k] = v
		}
	}
	return m
}

// infoCluster is INFO on every master of a cluster, summed: numeric
// fields add up (commands processed, memory, CPU), and so do the numeric
// parts of "calls=3,usec=12,..." fields (commandstats); any other field
// keeps one master's value.
func infoCluster(ctx context.Context, cc *redis.ClusterClient, sections []string) (map[string]string, error) {
	var mu sync.Mutex
	sum := map[string]string{}
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		raw, err := c.Info(ctx, sections...).Result()
		if err != nil {
			return err
		}
		mu.Lock()
		defer mu.Unlock()
		for k, v := range ParseInfo(raw) {
			sum[k] = addInfo(sum[k], v)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("INFO %s on every master: %w", strings.Join(sections, " "), err)
	}
	return sum, nil
}

// addInfo adds INFO value b to a (see infoCluster).
func addInfo(a, b string) string {
	if a == "" {
		return b
	}
	if x, err := strconv.ParseFloat(a, 64); err == nil {
		if y, err := strconv.ParseFloat(b, 64); err == nil {
			if strings.ContainsAny(a+b, ".eE") {
				return strconv.FormatFloat(x+y, 'f', -1, 64)
			}
			return strconv.FormatInt(int64(x)+int64(y), 10)
		}
		return a
	}
	as, bs := strings.Split(a, ","), strings.Split(b, ",")
	if len(as) != len(bs) || !strings.Contains(a, "=") {
		return a
	}
	for i := range as {
		ka, va, okA := strings.Cut(as[i], "=")
		kb, vb, okB := strings.Cut(bs[i], "=")
		if !okA || !okB || ka != kb {
			return a
		}
		as[i] = ka + "=" + addInfo(va, vb)
	}
	return strings.Join(as, ",")
}

// deleteNamespaceCluster is DeleteNamespace on a cluster: SCAN on every
// master, and one UNLINK per key (a multi-key DEL must stay in one slot).
func (d DB) deleteNamespaceCluster(ctx context.Context, cc *redis.ClusterClient) error {
	err := cc.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		var cursor uint64
		for {
			keys, next, err := c.Scan(ctx, cursor, d.namespacePattern(), 2000).Result()
			if err != nil {
				return err
			}
			if len(keys) > 0 {
				if _, err := c.Pipelined(ctx, func(p redis.Pipeliner) error {
					for _, k := range keys {
						p.Unlink(ctx, k)
					}
					return nil
				}); err != nil {
					return err
				}
			}
			if next == 0 {
				return nil
			}
			cursor = next
		}
	})
	if err != nil {
		return fmt.Errorf("delete namespace %s: %w", d.K.Namespace(), err)
	}
	return nil
}
