// Package redisurl builds a go-redis client from a Redis Cluster or
// Sentinel URL, with go-redis's own parsers (redis.ParseClusterURL,
// redis.ParseFailoverURL), so every query option they know (pool_size,
// dial_timeout, read_timeout, client_name, protocol, ...) is kept:
//
//	redis+cluster://[user:pass@]host:port?addr=host2:port2&addr=host3:port3
//	rediss+cluster://...                   (TLS)
//	redis+sentinel://[user:pass@]sentinel:26379?master_name=mymaster&addr=sentinel2:26379
//	rediss+sentinel://...                  (TLS)
//
// The part of the scheme before '+' is what go-redis parses ("redis" or
// "rediss"); the host and every addr= are the seed nodes (cluster) or the
// sentinels (sentinel). Plain redis:// and rediss:// URLs are not this
// package's: IsCluster and IsSentinel report false for them.
package redisurl

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// Scheme suffixes.
const (
	clusterSuffix  = "+cluster"
	sentinelSuffix = "+sentinel"
)

// ErrNoMasterName is returned (wrapped) for a sentinel URL without
// master_name.
var ErrNoMasterName = errors.New("a redis+sentinel:// URL needs ?master_name=<name>")

func scheme(raw string) string {
	if i := strings.Index(raw, "://"); i >= 0 {
		return strings.ToLower(raw[:i])
	}
	return ""
}

// IsCluster reports whether raw is a redis+cluster:// or rediss+cluster://
// URL.
func IsCluster(raw string) bool { return strings.HasSuffix(scheme(raw), clusterSuffix) }

// IsSentinel reports whether raw is a redis+sentinel:// or
// rediss+sentinel:// URL.
func IsSentinel(raw string) bool { return strings.HasSuffix(scheme(raw), sentinelSuffix) }

// Is reports whether raw is a cluster or sentinel URL (one New takes).
func Is(raw string) bool { return IsCluster(raw) || IsSentinel(raw) }

// base turns "redis+cluster://..." into "redis://...".
func base(raw, suffix string) string {
	i := strings.Index(raw, "://")
	return strings.TrimSuffix(strings.ToLower(raw[:i]), suffix) + raw[i:]
}

// ClusterStateReload is how often a cluster client re-reads the slot map
// (CLUSTER SLOTS) while it is used, set on every client ClusterOptions
// returns. go-redis re-reads it at once on MOVED and ASK, but not when a
// master is unreachable: after a master dies, its slots' commands keep
// dialing it until the next periodic reload (go-redis' default: 60 s).
// Measured with internal/rediscluster (node timeout 2 s): with the default
// the engine stalled for the whole minute after the replica was promoted;
// with 1 s it resumes about a second after the promotion, for one CLUSTER
// SLOTS a second per client.
const ClusterStateReload = time.Second

// ClusterOptions parses a redis+cluster:// URL.
func ClusterOptions(raw string) (*redis.ClusterOptions, error) {
	if !IsCluster(raw) {
		return nil, fmt.Errorf("not a redis+cluster:// URL: %q", Redact(raw))
	}
	o, err := redis.ParseClusterURL(base(raw, clusterSuffix))
	if err != nil {
		return nil, fmt.Errorf("invalid cluster URL %q: %w", Redact(raw), err)
	}
	o.ClusterStateReloadInterval = ClusterStateReload
	return o, nil
}

// FailoverOptions parses a redis+sentinel:// URL.
func FailoverOptions(raw string) (*redis.FailoverOptions, error) {
	if !IsSentinel(raw) {
		return nil, fmt.Errorf("not a redis+sentinel:// URL: %q", Redact(raw))
	}
	o, err := redis.ParseFailoverURL(base(raw, sentinelSuffix))
	if err != nil {
		return nil, fmt.Errorf("invalid sentinel URL %q: %w", Redact(raw), err)
	}
	if o.MasterName == "" {
		return nil, fmt.Errorf("invalid sentinel URL %q: %w", Redact(raw), ErrNoMasterName)
	}
	return o, nil
}

// New returns a cluster client for a redis+cluster:// URL, a failover
// (Sentinel) client for a redis+sentinel:// URL, and a plain client for
// redis:// or rediss:// (redis.ParseURL). It does not connect.
func New(raw string) (redis.UniversalClient, error) {
	switch {
	case IsCluster(raw):
		o, err := ClusterOptions(raw)
		if err != nil {
			return nil, err
		}
		return redis.NewClusterClient(o), nil
	case IsSentinel(raw):
		o, err := FailoverOptions(raw)
		if err != nil {
			return nil, err
		}
		return redis.NewFailoverClient(o), nil
	default:
		o, err := redis.ParseURL(raw)
		if err != nil {
			return nil, fmt.Errorf("invalid Redis URL %q: %w", Redact(raw), err)
		}
		return redis.NewClient(o), nil
	}
}

// Redact hides a password in a URL for messages.
func Redact(u string) string {
	at := strings.LastIndex(u, "@")
	s := strings.Index(u, "://")
	if at < 0 || s < 0 || at < s {
		return u
	}
	cred := u[s+3 : at]
	if i := strings.Index(cred, ":"); i >= 0 {
		return u[:s+3] + cred[:i] + ":***" + u[at:]
	}
	return u
}
