package rdb_test

import (
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
)

func TestParseQueueInvertsQueue(t *testing.T) {
	t.Parallel()
	k := rdb.NewKeysP("ns", 12)
	for _, tt := range []struct {
		part int
		pool string
		prio int
	}{{0, "default", 0}, {11, "gpu", 9}, {5, "a:b.c", 5}} {
		part, pool, prio, ok := k.ParseQueue(k.Queue(tt.part, tt.pool, tt.prio))
		if !ok || part != tt.part || pool != tt.pool || prio != tt.prio {
			t.Errorf("ParseQueue(Queue(%d, %q, %d)) = %d, %q, %d, %v", tt.part, tt.pool, tt.prio, part, pool, prio, ok)
		}
	}
	for _, bad := range []string{"ns:runs", "other:{p0}:q:default:0", "ns:{p0}:q:default:10", "ns:{p0}:q:default:x",
		"ns:{p12}:q:default:0", "ns:{px}:q:default:0", "ns:{p0}:q::0", "ns:{q:default}:0", k.Feed(0),
		"ns:{p1.99999}:q:default:0"} { // another tag of partition 1

		if _, _, _, ok := k.ParseQueue(bad); ok {
			t.Errorf("ParseQueue(%q) ok, want not a queue", bad)
		}
	}
}
