package rdb_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
)

// An ack deletes nothing: the fetch removes a band's acked entries
// (trimacked). Random enqueues, fetches by two consumers and acks, with
// one message kept pending throughout (a long task's, which holds every
// entry after it back from the trim): after every fetch each entry still
// pending or not yet delivered is in the stream, the acked ones left are
// bounded (the trim, and the clean-up behind a long-pending message), and
// once everything is acked a fetch that finds nothing new empties the
// stream.
func TestFetchTrimsOnlyAckedEntries(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	seed := rand.Uint64()
	t.Logf("seed %d", seed)
	rng := rand.New(rand.NewPCG(seed, 1))
	var order []string               // every id, in stream order
	acked := map[string]bool{}       // acked ids
	pendingBy := map[string]string{} // delivered, not acked: id -> consumer
	delivered := map[string]bool{}
	enqueue := func(k int) {
		for range k {
			id, err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: fmt.Sprintf("t%d", len(order)), Attempt: 1}).Result()
			if err != nil {
				t.Fatal(err)
			}
			order = append(order, id)
		}
	}
	fetch := func(consumer string, n int) {
		t.Helper()
		res, err := db.Fetch(ctx, 0, "default", consumer, n)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range res {
			for _, m := range s.Messages {
				if delivered[m.ID] {
					t.Fatalf("%s delivered twice", m.ID)
				}
				delivered[m.ID], pendingBy[m.ID] = true, consumer
			}
		}
	}
	ack := func(ids ...string) {
		t.Helper()
		for _, id := range ids {
			got, err := db.QueueAck(ctx, c, q, pendingBy[id], id).Int64Slice()
			if err != nil || len(got) != 1 || got[0] != 1 {
				t.Fatalf("ack %s = %v, %v", id, got, err)
			}
			acked[id] = true
			delete(pendingBy, id)
		}
	}
	check := func(step int) {
		t.Helper()
		msgs, err := c.XRange(ctx, q, "-", "+").Result()
		if err != nil {
			t.Fatal(err)
		}
		in := map[string]bool{}
		left := 0
		for _, m := range msgs {
			in[m.ID] = true
			if acked[m.ID] {
				left++
			}
		}
		for _, id := range order {
			if !acked[id] && !in[id] {
				t.Fatalf("step %d: %s (delivered %v) is gone from the stream but not acked", step, id, delivered[id])
			}
		}
		// A trim frees whole nodes of 100 from 128 entries on; the
		// clean-up behind the long-pending message starts at 1,000 acked
		// entries and deletes up to 256 a fetch.
		if left > 1000+2*256+2*128 {
			t.Fatalf("step %d: %d acked entries left in the stream", step, left)
		}
	}
	enqueue(1)
	fetch("long", 1)
	long := order[0]
	for step := range 400 {
		enqueue(rng.IntN(40))
		fetch([]string{"w1", "w2"}[rng.IntN(2)], 1+rng.IntN(40))
		check(step)
		var ids []string
		for id := range pendingBy {
			if id != long && rng.IntN(4) > 0 {
				ids = append(ids, id)
			}
		}
		slices.Sort(ids)
		ack(ids...)
	}
	if len(order) < 4000 {
		t.Fatalf("only %d messages: too few to hold back 1,000 acked entries", len(order))
	}
	// Everything acked, the long one last: fetches that find nothing new
	// empty the stream.
	for len(pendingBy) > 0 {
		for id := range pendingBy {
			ack(id)
		}
		fetch("w1", 1000)
	}
	fetch("w1", 10)
	if n, err := c.XLen(ctx, q).Result(); err != nil || n != 0 {
		t.Errorf("XLEN %d, %v after every message was acked and a fetch found nothing: want 0", n, err)
	}
}
