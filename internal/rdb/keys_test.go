package rdb_test

import (
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/oklog/ulid/v2"
)

func TestKeyBuilders(t *testing.T) {
	t.Parallel()
	for _, ns := range []string{"", "graflow", "t-01.x_y"} {
		want := ns
		if ns == "" {
			want = rdb.DefaultNamespace
		}
		k := rdb.NewKeys(ns)
		got := map[string]string{
			"Namespace":   k.Namespace(),
			"RunLog":      k.RunLog("R1"),
			"RunState":    k.RunState("R1"),
			"RunOutbox":   k.RunOutbox("R1"),
			"RunChannel":  k.RunChannel("R1"),
			"Queue":       k.Queue(0, "gpu", 7),
			"QueueFor":    k.QueueFor("R1", "default", 0),
			"DeadLetter":  k.DeadLetter(),
			"Feed":        k.Feed(0),
			"FeedFor":     k.FeedFor("R1"),
			"Delayed":     k.Delayed(0),
			"DelayedFor":  k.DelayedFor("R1"),
			"Runs":        k.Runs(),
			"Workers":     k.Workers(),
			"Worker":      k.Worker("w-1"),
			"Idempotency": k.Idempotency("key-1"),
			"Layout":      k.Layout(),
		}
		wantKeys := map[string]string{
			"Namespace":   want,
			"RunLog":      want + ":{p0}:r:R1:log",
			"RunState":    want + ":{p0}:r:R1:state",
			"RunOutbox":   want + ":{p0}:r:R1:outbox",
			"RunChannel":  want + ":{p0}:r:R1:channel",
			"Queue":       want + ":{p0}:q:gpu:7",
			"QueueFor":    want + ":{p0}:q:default:0",
			"DeadLetter":  want + ":{dlq}",
			"Feed":        want + ":{p0}:feed",
			"FeedFor":     want + ":{p0}:feed",
			"Delayed":     want + ":{p0}:delayed",
			"DelayedFor":  want + ":{p0}:delayed",
			"Runs":        want + ":runs",
			"Workers":     want + ":workers",
			"Worker":      want + ":worker:w-1",
			"Idempotency": want + ":idem:key-1",
			"Layout":      want + ":layout",
		}
		if diff := cmp.Diff(wantKeys, got); diff != "" {
			t.Errorf("namespace %q (-want +got):\n%s", ns, diff)
		}
	}
}

// Everything one step of a run touches shares its partition's hash tag:
// its keys, its partition's feed, delayed set and queue streams of every
// pool and band. That is what lets submit, commit and finish be one script
// each, with no relay.
func TestARunsStepsShareItsPartitionsTag(t *testing.T) {
	t.Parallel()
	for _, p := range []int{1, 4, 16} {
		k := rdb.NewKeysP("ns", p)
		for i := range 200 {
			run := "run-" + strconv.Itoa(i)
			tag := strings.Trim(k.PartitionTag(k.Partition(run)), "{}")
			if n := strconv.Itoa(k.Partition(run)); tag != "p"+n && !strings.HasPrefix(tag, "p"+n+".") {
				t.Fatalf("P=%d: partition %s's tag is %s", p, n, tag)
			}
			keys := append(k.RunKeys(run), k.RunLogCompact(run), k.FeedFor(run), k.DelayedFor(run),
				k.QueueFor(run, "default", 0), k.QueueFor(run, "gpu", rdb.MaxPriority))
			keys = append(keys, k.Queues(k.Partition(run), "io")...)
			for _, key := range keys {
				if got := hashTag(key); got != tag {
					t.Fatalf("P=%d: %s has hash tag %q, want %q (run %s's partition)", p, key, got, tag, run)
				}
			}
		}
		if k.RunLog("a") == k.RunLog("b") {
			t.Error("two runs share a log")
		}
	}
}

func TestRunKeysListsEveryKeyOfARun(t *testing.T) {
	t.Parallel()
	k := rdb.NewKeys("ns")
	want := []string{k.RunLog("01HZX"), k.RunState("01HZX"), k.RunOutbox("01HZX"), k.RunChannel("01HZX")}
	if diff := cmp.Diff(want, k.RunKeys("01HZX")); diff != "" {
		t.Errorf("RunKeys (-want +got):\n%s", diff)
	}
}

func TestQueuesOfAPoolHighestFirst(t *testing.T) {
	t.Parallel()
	k := rdb.NewKeysP("ns", 3)
	for part := range 3 {
		qs := k.Queues(part, "gpu")
		if len(qs) != rdb.MaxPriority+1 {
			t.Fatalf("%d queues, want %d", len(qs), rdb.MaxPriority+1)
		}
		for i, q := range qs {
			if want := k.Queue(part, "gpu", rdb.MaxPriority-i); q != want {
				t.Errorf("Queues[%d] = %s, want %s", i, q, want)
			}
		}
	}
	if all := k.AllQueues("gpu"); len(all) != 3*(rdb.MaxPriority+1) || all[0] != k.Queue(0, "gpu", rdb.MaxPriority) || all[len(all)-1] != k.Queue(2, "gpu", 0) {
		t.Errorf("AllQueues = %v", all)
	}
}

func TestPartition(t *testing.T) {
	t.Parallel()
	if k := rdb.NewKeys(""); k.Partitions() != rdb.DefaultPartitions {
		t.Fatalf("Partitions() = %d", k.Partitions())
	}
	k := rdb.NewKeysP("", 4)
	entropy := rand.NewChaCha8([32]byte{1})
	for name, id := range map[string]func(i int) string{
		"ULIDs":            func(i int) string { return ulid.MustNew(uint64(1700000000000+i), entropy).String() },
		"sequential names": func(i int) string { return "job-" + strconv.Itoa(i) },
	} {
		counts := make([]int, k.Partitions())
		const n = 4000
		for i := range n {
			run := id(i)
			p := k.Partition(run)
			if p < 0 || p >= k.Partitions() {
				t.Fatalf("Partition(%q) = %d out of range", run, p)
			}
			if p != k.Partition(run) || p != rdb.NewKeysP("other", 4).Partition(run) {
				t.Fatalf("Partition(%q) is not a function of the run id", run)
			}
			if k.FeedFor(run) != k.Feed(p) {
				t.Fatalf("FeedFor(%q) = %s, want %s", run, k.FeedFor(run), k.Feed(p))
			}
			counts[p]++
		}
		// Runs spread over every partition, none with less than half its share.
		for p, c := range counts {
			if c < n/k.Partitions()/2 {
				t.Errorf("%s: partition %d got %d of %d runs: %v", name, p, c, n, counts)
			}
		}
	}
}

func TestValidNamespace(t *testing.T) {
	t.Parallel()
	for ns, ok := range map[string]bool{
		"graflow": true, "a": true, "t0123456789abcdef": true, "A_b.c-d": true, strings.Repeat("x", 64): true,
		"": false, strings.Repeat("x", 65): false, "a b": false, "a:b": false, "{x}": false, "a*": false, "ns\n": false,
	} {
		if err := rdb.ValidNamespace(ns); (err == nil) != ok {
			t.Errorf("ValidNamespace(%q) = %v, want ok=%v", ns, err, ok)
		}
	}
}

func TestRecordCodec(t *testing.T) {
	t.Parallel()
	for _, r := range []rdb.Record{
		{Status: "running", Attempt: 2, Epoch: 7, Owner: "host-1:w"},
		{Status: "dispatched", Attempt: 1},
		{Status: "failed", Attempt: 3, Epoch: 9, Owner: "owner|with|bars"},
	} {
		got, err := rdb.ParseRecord(r.String())
		if err != nil {
			t.Fatalf("ParseRecord(%q): %v", r.String(), err)
		}
		if diff := cmp.Diff(r, got); diff != "" {
			t.Errorf("round trip (-want +got):\n%s", diff)
		}
	}
	if got, err := rdb.ParseRecord(""); err != nil || got != (rdb.Record{Status: "pending"}) {
		t.Errorf(`ParseRecord("") = %+v, %v; want pending`, got, err)
	}
	for _, bad := range []string{"running", "running|1|2", "running|x|2|w", "running|1|y|w"} {
		if _, err := rdb.ParseRecord(bad); err == nil {
			t.Errorf("ParseRecord(%q) accepted a malformed record", bad)
		}
	}
}

func TestDispatchCodec(t *testing.T) {
	t.Parallel()
	d := rdb.Dispatch{Pool: "gpu", Priority: 4, DueMS: 1700000000000, Run: "R", Task: "t.1", Attempt: 2, EventID: "01HZX"}
	got, err := rdb.ParseDispatch(d.String())
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(d, got); diff != "" {
		t.Errorf("round trip (-want +got):\n%s", diff)
	}
	d.Trace = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	if got, err := rdb.ParseDispatch(d.String()); err != nil || got != d {
		t.Errorf("round trip with a traceparent: %+v, %v; want %+v", got, err, d)
	}
	if n := strings.Count(d.String(), "|"); n != 6 {
		t.Errorf("a traced member has %d separators, want 6 (seven fields, as an untraced one)", n)
	}
	for _, bad := range []string{"", "a|b", "gpu|x|0|R|t|1|e", "gpu|1|x|R|t|1|e", "gpu|1|0|R|t|x|e", "gpu|1|0|R|t|1|e|extra", "gpu|1|0|R|t|1|e@00-bad-01"} {
		if _, err := rdb.ParseDispatch(bad); err == nil {
			t.Errorf("ParseDispatch(%q) accepted a malformed entry", bad)
		}
	}
}
