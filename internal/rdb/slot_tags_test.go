package rdb_test

import (
	"context"
	"errors"
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

// TestCheckLayoutRefusesLayout2Partitions: a namespace of several
// partitions that an older release recorded as layout 2 has its keys under
// other tags; this release says so instead of reading empty queues.
func TestCheckLayoutRefusesLayout2Partitions(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	db := rdb.DB{C: c, K: rdb.NewKeysP(ns, 4)}
	t.Cleanup(func() { c.Del(context.Background(), db.K.Layout()) })
	if err := c.Set(ctx, db.K.Layout(), "2:4", 0).Err(); err != nil {
		t.Fatal(err)
	}
	err := db.CheckLayout(ctx)
	if !errors.Is(err, rdb.ErrLayout) || !strings.Contains(err.Error(), "layout 2") {
		t.Fatalf("check of a layout-2 namespace of 4 partitions = %v, want ErrLayout naming layout 2", err)
	}
	// One partition: the same keys in both layouts, accepted.
	one := rdb.DB{C: c, K: rdb.NewKeysP(ns+"-one", 1)}
	t.Cleanup(func() { c.Del(context.Background(), one.K.Layout()) })
	if err := c.Set(ctx, one.K.Layout(), "2:1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := one.CheckLayout(ctx); err != nil {
		t.Fatalf("check of a layout-2 namespace of one partition: %v", err)
	}
}
