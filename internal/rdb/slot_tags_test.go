package rdb_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
)

// TestPartitionTagsSpreadOverTheSlotSpace: partition n of P lies in the
// middle half of the n-th of P equal slot ranges, so masters holding equal
// slot ranges hold equal numbers of partitions when they divide P. Layout
// 2's {p0}, {p1}, {p2} put two partitions of three on one master of three.
func TestPartitionTagsSpreadOverTheSlotSpace(t *testing.T) {
	t.Parallel()
	if got := rdb.NewKeysP("ns", 1).PartitionTag(0); got != "{p0}" {
		t.Errorf("one partition's tag = %s, want {p0} (the keys layout 2 wrote)", got)
	}
	for _, p := range []int{2, 3, 4, 5, 6, 8, 12, 16, 64, 100, rdb.MaxPartitions} {
		k := rdb.NewKeysP("ns", p)
		seen := map[string]bool{}
		for n := range p {
			tag := k.PartitionTag(n)
			if !strings.HasPrefix(tag, "{p"+strconv.Itoa(n)+"}") && !strings.HasPrefix(tag, "{p"+strconv.Itoa(n)+".") {
				t.Fatalf("P=%d: partition %d's tag %s does not name it", p, n, tag)
			}
			if seen[tag] {
				t.Fatalf("P=%d: tag %s used twice", p, tag)
			}
			seen[tag] = true
			w := rdb.ClusterSlots / p
			lo, hi := n*rdb.ClusterSlots/p, (n+1)*rdb.ClusterSlots/p
			s := rdb.KeySlot(k.Feed(n))
			if s < lo+w/4 || s >= hi-w/4 {
				t.Errorf("P=%d: partition %d (%s) is in slot %d, want the middle of [%d, %d)", p, n, tag, s, lo, hi)
			}
			for _, key := range []string{k.Queue(n, "default", 0), k.Delayed(n), k.Expiries(n)} {
				if rdb.KeySlot(key) != s {
					t.Errorf("P=%d: %s is not in its partition's slot %d", p, key, s)
				}
			}
		}
	}
	// Three masters with the slot ranges `redis-cli --cluster create`
	// gives them: P = 3, 6, 12 put P/3 partitions on each.
	masters := []int{0, 5461, 10923} // first slot of each
	for _, p := range []int{3, 6, 12} {
		k := rdb.NewKeysP("ns", p)
		per := make([]int, 3)
		for n := range p {
			s := rdb.KeySlot(k.Feed(n))
			m := 0
			for i, first := range masters {
				if s >= first {
					m = i
				}
			}
			per[m]++
		}
		for m, got := range per {
			if got != p/3 {
				t.Errorf("P=%d over 3 masters: %v partitions per master, want %d each (master %d)", p, per, p/3, m)
			}
		}
	}
}

// TestCheckLayoutRefusesOlderLayouts: a namespace an older release
// recorded has its keys elsewhere (layout 2 of several partitions: other
// tags) or its runs' metadata and results in hashes this release does not
// read (layouts 2 and 3: dag and results hashes); this release says so
// instead of reading empty queues or runs without metadata. A fresh
// namespace records this layout.
func TestCheckLayoutRefusesOlderLayouts(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	for _, tc := range []struct {
		parts    int
		recorded string
	}{{4, "2:4"}, {1, "2:1"}, {4, "3:4"}, {1, "3:1"}} {
		db := rdb.DB{C: c, K: rdb.NewKeysP(ns+"-"+tc.recorded, tc.parts)}
		t.Cleanup(func() { c.Del(context.Background(), db.K.Layout()) })
		if err := c.Set(ctx, db.K.Layout(), tc.recorded, 0).Err(); err != nil {
			t.Fatal(err)
		}
		err := db.CheckLayout(ctx)
		if !errors.Is(err, rdb.ErrLayout) || !strings.Contains(err.Error(), "older release") {
			t.Errorf("check of a namespace recorded %q with %d partitions = %v, want ErrLayout naming an older release", tc.recorded, tc.parts, err)
		}
	}
	fresh := rdb.DB{C: c, K: rdb.NewKeysP(ns+"-fresh", 1)}
	t.Cleanup(func() { c.Del(context.Background(), fresh.K.Layout()) })
	if err := fresh.CheckLayout(ctx); err != nil {
		t.Fatal(err)
	}
	if got := c.Get(ctx, fresh.K.Layout()).Val(); got != fmt.Sprintf("%d:1", rdb.LayoutVersion) {
		t.Errorf("a fresh namespace of one partition records %q, want %d:1", got, rdb.LayoutVersion)
	}
}
