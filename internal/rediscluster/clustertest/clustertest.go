// Package clustertest starts a local Redis Cluster for a test
// (internal/rediscluster). It is apart from rediscluster so that the
// graflow binary, which uses rediscluster for "graflow chaos --cluster",
// does not link the test harness.
package clustertest

import (
	"errors"
	"os"
	"testing"

	"github.com/graflow-go/graflow/internal/rediscluster"
	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/graflow-go/graflow/internal/redistest"
)

// Start starts a cluster for t (cfg as in rediscluster.Start) and stops it when t
// ends. Without a redis-server binary it skips t, unless make test asked
// for every backend (redistest.EnvRequireContainer=1; make test installs
// redis-server), where it fails.
func Start(t testing.TB, cfg rediscluster.Config) *rediscluster.Cluster {
	t.Helper()
	if _, err := redisserver.LookPath(); errors.Is(err, redisserver.ErrNotFound) {
		if os.Getenv(redistest.EnvRequireContainer) == "1" {
			t.Fatalf("the cluster tests need redis-server (make redis installs it): %v", err)
		}
		t.Skipf("the cluster tests need redis-server: %v", err)
	}
	c, err := rediscluster.Start(t.Context(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := c.Stop(); err != nil {
			t.Error(err)
		}
	})
	return c
}
