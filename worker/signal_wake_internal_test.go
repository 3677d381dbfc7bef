package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/jonboulle/clockwork"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// onBlockingRead signals each XREAD with BLOCK as it is sent.
type onBlockingRead struct{ sent chan struct{} }

func (o onBlockingRead) DialHook(next redis.DialHook) redis.DialHook { return next }
func (o onBlockingRead) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if cmd.Name() == "xread" {
			for _, a := range cmd.Args() {
				if s, ok := a.(string); ok && (s == "block" || s == "BLOCK") {
					select {
					case o.sent <- struct{}{}:
					default:
					}
				}
			}
		}
		return next(ctx, cmd)
	}
}
func (o onBlockingRead) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

// A wait that joins while its partition's signal loop is blocked in a read
// that does not cover its run gets its signal when the signal comes, not
// when that read times out: the loop read the new run only after its read
// ended (up to FetchBlock, 2 s by default, late; here an hour). The new
// wait now wakes the loop.
func TestAWaitJoiningDuringAReadGetsItsSignalAtOnce(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	db := rdb.New(c, ns)
	first, second := "first-0", ""
	for i := 1; second == ""; i++ {
		if r := fmt.Sprintf("second-%d", i); db.K.Partition(r) == db.K.Partition(first) {
			second = r
		}
	}
	last := map[string]string{}
	for _, run := range []string{first, second} {
		id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.RunLog(run), Values: []any{"id", "x"}}).Result()
		if err != nil {
			t.Fatal(err)
		}
		last[run] = id
	}
	hooked := redis.NewClient(c.Options())
	read := onBlockingRead{sent: make(chan struct{}, 1)}
	hooked.AddHook(read)
	t.Cleanup(func() { _ = hooked.Close() })
	h := newSignalHub(rdb.New(hooked, ns), "w1", time.Hour, clockwork.NewRealClock(), zerolog.Nop())
	closed := false
	defer func() {
		if !closed {
			h.close()
		}
	}()

	if _, err := h.register(ctx, first, "go", last[first]); err != nil {
		t.Fatal(err)
	}
	select {
	case <-read.sent: // the loop reads first's log, blocking for an hour
	case <-time.After(30 * time.Second):
		t.Fatal("the signal loop never read")
	}
	w, err := h.register(ctx, second, "go", last[second])
	if err != nil {
		t.Fatal(err)
	}
	sig := events.Event{ID: ulid.Make().String(), Run: second, Type: events.SignalReceived, Time: time.Now()}.
		WithBody(events.SignalReceivedBody{Name: "go", ID: "s1", Payload: json.RawMessage(`1`)})
	if err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.RunLog(second), Values: sig.Fields()}).Err(); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-w.got:
		if s, err := r.signal(); err != nil || s.ID != "s1" {
			t.Fatalf("the wait ended with %+v, %v; want signal s1", s, err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the wait that joined during the loop's read never got its signal")
	}
	h.close()
	closed = true
	if n, err := c.Exists(ctx, db.K.SignalWake(db.K.Partition(first), h.wakeName)).Result(); err != nil || n != 0 {
		t.Errorf("the wake stream is left (%d, %v): a stopped worker deletes its own", n, err)
	}
}

// A stopping worker's signal loop ends at once, not when its read times
// out: go-redis does not cut a blocked read short when its context ends,
// so close wakes it (a review found close waiting for the read).
func TestClosingTheSignalHubEndsABlockedRead(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx := context.Background()
	ns := redistest.Namespace(t)
	db := rdb.New(c, ns)
	run := "run-0"
	id, err := c.XAdd(ctx, &redis.XAddArgs{Stream: db.K.RunLog(run), Values: []any{"id", "x"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	opts := c.Options()
	opts.ClientName = "hub-" + ulid.Make().String()
	named := redis.NewClient(opts)
	t.Cleanup(func() { _ = named.Close() })
	h := newSignalHub(rdb.New(named, ns), "w1", time.Hour, clockwork.NewRealClock(), zerolog.Nop())
	w, err := h.register(ctx, run, "go", id)
	if err != nil {
		t.Fatal(err)
	}
	// Wait until Redis holds the loop's read blocked (CLIENT LIST, flag b).
	deadline := time.Now().Add(30 * time.Second)
	for !blockedIn(t, c, opts.ClientName) {
		if time.Now().After(deadline) {
			t.Fatal("the signal loop's read never blocked")
		}
	}
	closed := make(chan struct{})
	go func() { h.close(); close(closed) }()
	select {
	case <-closed:
	case <-time.After(30 * time.Second):
		t.Fatal("close waited for the loop's hour-long read")
	}
	if r := <-w.got; !errors.Is(r.err, errWorkerStopped) {
		t.Errorf("the wait ended with %v, want errWorkerStopped", r.err)
	}
	if n, err := c.Exists(ctx, db.K.SignalWake(db.K.Partition(run), h.wakeName)).Result(); err != nil || n != 0 {
		t.Errorf("the wake stream is left (%d, %v): close deletes it", n, err)
	}
}

// blockedIn reports whether a connection named name is blocked in XREAD.
func blockedIn(t *testing.T, c *redis.Client, name string) bool {
	t.Helper()
	list, err := c.ClientList(context.Background()).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(list, "\n") {
		if strings.Contains(l, " name="+name+" ") && strings.Contains(l, " cmd=xread ") {
			for _, f := range strings.Fields(l) {
				if flags, ok := strings.CutPrefix(f, "flags="); ok && strings.Contains(flags, "b") {
					return true
				}
			}
		}
	}
	return false
}
