package rdb_test

import (
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
)

func TestParseQueueInvertsQueue(t *testing.T) {
	t.Parallel()
	k := rdb.NewKeys("ns")
	for _, tt := range []struct {
		pool string
		prio int
	}{{"default", 0}, {"gpu", 9}, {"a:b.c", 5}} {
		pool, prio, ok := k.ParseQueue(k.Queue(tt.pool, tt.prio))
		if !ok || pool != tt.pool || prio != tt.prio {
			t.Errorf("ParseQueue(Queue(%q, %d)) = %q, %d, %v", tt.pool, tt.prio, pool, prio, ok)
		}
	}
	for _, bad := range []string{"ns:runs", "other:{q:default}:0", "ns:{q:default}:10", "ns:{q:default}:x", k.Feed(0)} {
		if _, _, ok := k.ParseQueue(bad); ok {
			t.Errorf("ParseQueue(%q) ok, want not a queue", bad)
		}
	}
}
