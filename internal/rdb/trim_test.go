package rdb_test

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/redis/go-redis/v9"
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
			id, err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: fmt.Sprintf("t%d", len(order)), Attempt: 1}).Text()
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

// A fetch reads the bands above 0 only while the pool's QueueHigh mark is
// set. Every writer of a message on such a band sets it (XAddDispatch, and
// enqueue in the scripts: here a queue move), and a fetch that finds those
// bands with nothing new deletes it; a pool that only uses band 0 then
// costs a fetch one band.
func TestFetchReadsBandsAbove0OnlyWhileMarked(t *testing.T) {
	t.Parallel()
	c, db, ctx, _ := queueWithGroup(t)
	for _, s := range db.K.Queues(0, "default") {
		if err := db.EnsureGroup(ctx, s, rdb.GroupWorkers); err != nil {
			t.Fatal(err)
		}
	}
	mark := db.K.QueueHigh(0, "default")
	marked := func() bool {
		t.Helper()
		n, err := c.Exists(ctx, mark).Result()
		if err != nil {
			t.Fatal(err)
		}
		return n == 1
	}
	fetched := func(n int) []string {
		t.Helper()
		res, err := db.Fetch(ctx, 0, "default", "w", n)
		if err != nil {
			t.Fatal(err)
		}
		var tasks []string
		for _, s := range res {
			for _, m := range s.Messages {
				task, _ := m.Values[rdb.MsgTask].(string)
				tasks = append(tasks, task)
			}
		}
		return tasks
	}
	queue := func(task string, prio int) {
		t.Helper()
		if err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: task, Attempt: 1, Priority: prio}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	queue("low", 0)
	if marked() {
		t.Fatal("a band-0 message set the mark")
	}
	queue("high", 5)
	if !marked() {
		t.Fatal("a band-5 message did not set the mark")
	}
	if got := fmt.Sprint(fetched(1)); got != "[high]" {
		t.Fatalf("first fetch read %s, want [high]: the highest band first", got)
	}
	if !marked() {
		t.Fatal("the mark went while band 5 could still hold messages (the fetch took all it asked for)")
	}
	if got := fmt.Sprint(fetched(5)); got != "[low]" {
		t.Fatalf("second fetch read %s, want [low]", got)
	}
	if marked() {
		t.Fatal("the mark stayed after a fetch found every band above 0 with nothing new")
	}
	// Unmarked, band 5 is not read: the mark is what tells the fetch.
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.Queue(0, "default", 5), Values: []any{rdb.MsgRun, "R", rdb.MsgTask, "unmarked", rdb.MsgAttempt, "1"}}).Err(); err != nil {
		t.Fatal(err)
	}
	if got := fetched(5); len(got) != 0 {
		t.Fatalf("an unmarked band 5 was read: %v", got)
	}
	// A script's enqueue marks too: a pending band-0 message moved to band 7.
	queue("moved", 0)
	res, err := db.Fetch(ctx, 0, "default", "w", 1)
	if err != nil || len(res) != 1 || len(res[0].Messages) != 1 {
		t.Fatalf("fetch of the band-0 message: %v %v", res, err)
	}
	if err := db.QueueMove(ctx, c, res[0].Stream, "w", res[0].Messages[0].ID, rdb.Dispatch{Pool: "default", Run: "R", Task: "moved", Attempt: 1, Priority: 7}).Err(); err != nil {
		t.Fatal(err)
	}
	if !marked() {
		t.Fatal("a queue move to band 7 did not set the mark")
	}
	if got := fmt.Sprint(fetched(5)); got != "[moved unmarked]" {
		t.Fatalf("fetch after the move read %s, want [moved unmarked]", got)
	}
}

// The clean-up behind a long-pending message tells pending entries from
// acked ones by the group's pending list over its window. Entries deleted
// from the stream by hand while pending stay in that list: counted in the
// window's XPENDING COUNT, they pushed live pending entries out of it, and
// those were deleted as acked (a review found it: 44 of 100 gone).
func TestCleanUpKeepsPendingEntriesBehindHandDeletedOnes(t *testing.T) {
	t.Parallel()
	c, db, ctx, q := queueWithGroup(t)
	add := func(n int) []string {
		t.Helper()
		ids := make([]string, n)
		for i := range ids {
			id, err := db.XAddDispatch(ctx, c, rdb.Dispatch{Pool: "default", Run: "R", Task: fmt.Sprintf("t%d", i), Attempt: 1}).Text()
			if err != nil {
				t.Fatal(err)
			}
			ids[i] = id
		}
		if _, err := db.Fetch(ctx, 0, "default", "w", n); err != nil {
			t.Fatal(err)
		}
		return ids
	}
	add(1)             // the long-pending message
	gone := add(200)   // pending, then deleted from the stream by hand
	live := add(100)   // pending
	acked := add(1200) // acked: held back by the long one
	if err := c.XDel(ctx, q, gone...).Err(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(acked); i += 500 {
		if _, err := db.QueueAck(ctx, c, q, "w", acked[i:min(i+500, len(acked))]...).Result(); err != nil {
			t.Fatal(err)
		}
	}
	for range 3 { // fetches that find nothing new clean up a window each
		if _, err := db.Fetch(ctx, 0, "default", "w", 1); err != nil {
			t.Fatal(err)
		}
	}
	msgs, err := c.XRange(ctx, q, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	in := map[string]bool{}
	for _, m := range msgs {
		in[m.ID] = true
	}
	missing := 0
	for _, id := range live {
		if !in[id] {
			missing++
		}
	}
	if missing > 0 {
		t.Errorf("%d of %d pending entries deleted by the clean-up", missing, len(live))
	}
	left := 0
	for _, id := range acked {
		if in[id] {
			left++
		}
	}
	if left == len(acked) {
		t.Errorf("the clean-up deleted none of the %d acked entries", len(acked))
	}
}
