package rdb_test

import (
	"context"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/events"
	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

// write writes key of the channel as task a's attempt 1 held by worker
// at epoch.
func (b scriptBundle) write(worker string, epoch int64, op, key, value string, delta int64) (rdb.ChannelWritten, error) {
	return b.db.WriteChannel(b.ctx, rdb.ChannelWrite{Run: b.run, Task: "a", Worker: worker, Attempt: 1, Epoch: epoch,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 9000,
		Op: op, Key: key, Value: json.RawMessage(value), Delta: delta})
}

// quarantine sets the run aside, as a projector does.
func (b scriptBundle) quarantine(t *testing.T) {
	t.Helper()
	q := events.Event{ID: ulid.Make().String(), Type: events.RunQuarantined, Time: time.Now(), Worker: "p"}.
		WithBody(events.RunQuarantinedBody{Reason: "test"})
	if ok, ierr, err := b.db.Quarantine(b.ctx, b.run, q, "test"); err != nil || ierr != nil || !ok {
		t.Fatalf("quarantine = %v, %v, %v", ok, ierr, err)
	}
}

// unchanged runs call, which must fail with want, and checks that it
// changed neither the channel, nor the state hash, nor the log beyond
// the events listed in appended.
func (b scriptBundle) unchanged(t *testing.T, what string, want error, call func() error, appended ...events.Type) []events.Event {
	t.Helper()
	channel, state := b.hash(t, b.db.K.RunChannel(b.run)), b.hash(t, b.db.K.RunState(b.run))
	n := len(b.log(t))
	if err := call(); !errors.Is(err, want) {
		t.Fatalf("%s: error = %v, want %v", what, err, want)
	}
	if diff := cmp.Diff(channel, b.hash(t, b.db.K.RunChannel(b.run))); diff != "" {
		t.Errorf("%s changed the channel (-before +after):\n%s", what, diff)
	}
	if diff := cmp.Diff(state, b.hash(t, b.db.K.RunState(b.run))); diff != "" {
		t.Errorf("%s changed the state hash (-before +after):\n%s", what, diff)
	}
	log := b.log(t)[n:]
	var got []events.Type
	for _, e := range log {
		got = append(got, e.Type)
	}
	if diff := cmp.Diff(appended, got); diff != "" {
		t.Errorf("%s appended other events than expected (-want +got):\n%s", what, diff)
	}
	return log
}

// Each op writes the key's new value to the channel and appends
// channel_written with the writer's claim and the new value; the entries
// decode to exactly the fields the Go codec writes.
func TestChannelWriteAppliesTheOpAndAppendsChannelWritten(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	cr := b.claim(t, "a", "w1", 1, false)
	writes := []struct {
		op, key, value string
		delta          int64
		want           string // the key's value after the write
	}{
		{rdb.ChannelOpSet, "config", `{"mode":"fast","n":1}`, 0, `{"mode":"fast","n":1}`},
		{rdb.ChannelOpSet, "config", `{"mode":"slow"}`, 0, `{"mode":"slow"}`}, // last write wins
		{rdb.ChannelOpAppend, "seen", `"x"`, 0, `["x"]`},                      // no value: a new array
		{rdb.ChannelOpAppend, "seen", `{"y":[1,2]}`, 0, `["x",{"y":[1,2]}]`},
		{rdb.ChannelOpSet, "empty", `[]`, 0, `[]`},
		{rdb.ChannelOpAppend, "empty", `3`, 0, `[3]`},
		{rdb.ChannelOpIncr, "count", "", 5, `5`}, // no value: 0
		{rdb.ChannelOpIncr, "count", "", -7, `-2`},
		{rdb.ChannelOpSet, "big", `9007199254740993`, 0, `9007199254740993`}, // over 2^53: exact
		{rdb.ChannelOpIncr, "big", "", 1, `9007199254740994`},
		{rdb.ChannelOpSet, `a "quoted"/κλειδί`, `null`, 0, `null`},
	}
	n := len(b.log(t))
	for _, w := range writes {
		res, err := b.write("w1", cr.Epoch, w.op, w.key, w.value, w.delta)
		if err != nil {
			t.Fatalf("%s %s: %v", w.op, w.key, err)
		}
		if w.op == rdb.ChannelOpIncr && strconv.FormatInt(res.Value, 10) != w.want {
			t.Errorf("incr %s returned %d, want %s", w.key, res.Value, w.want)
		}
		if v, ok, err := b.db.ChannelGet(b.ctx, b.run, w.key); err != nil || !ok || v != w.want {
			t.Errorf("after %s %s: ChannelGet = %q, %v, %v; want %s", w.op, w.key, v, ok, err, w.want)
		}
	}
	log := b.log(t)[n:]
	if len(log) != len(writes) {
		t.Fatalf("%d writes appended %d events", len(writes), len(log))
	}
	for i, e := range log {
		var body events.ChannelWrittenBody
		if err := e.DecodeBody(&body); err != nil {
			t.Fatal(err)
		}
		w := writes[i]
		if e.Type != events.ChannelWritten || e.Task != "a" || e.Attempt != 1 || e.Epoch != cr.Epoch || e.Worker != "w1" ||
			body.Key != w.key || body.Op != w.op || string(body.Value) != w.want {
			t.Errorf("write %d appended %s task %s a%d e%d %s %s", i, e.Type, e.Task, e.Attempt, e.Epoch, e.Worker, e.Body)
		}
	}
	raw, err := b.c.XRange(b.ctx, b.db.K.RunLog(b.run), "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range raw[n:] {
		flat, err := b.c.Do(b.ctx, "XRANGE", b.db.K.RunLog(b.run), m.ID, m.ID).Slice()
		if err != nil {
			t.Fatal(err)
		}
		e, err := events.Decode(b.run, m.ID, m.Values)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(e.Fields(), flat[0].([]any)[1]); diff != "" {
			t.Errorf("entry %s: script fields differ from Event.Fields (-Fields +script):\n%s", m.ID, diff)
		}
	}

	all, err := b.db.Channel(b.ctx, b.run)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"config": `{"mode":"slow"}`, "seen": `["x",{"y":[1,2]}]`, "empty": `[3]`, "count": `-2`,
		"big": `9007199254740994`, `a "quoted"/κλειδί`: `null`}
	if diff := cmp.Diff(want, all); diff != "" {
		t.Errorf("Channel (-want +got):\n%s", diff)
	}
	keys, err := b.db.ChannelKeys(b.ctx, b.run)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{`a "quoted"/κλειδί`, "big", "config", "count", "empty", "seen"}, keys); diff != "" {
		t.Errorf("ChannelKeys (-want +got):\n%s", diff)
	}
	if _, ok, err := b.db.ChannelGet(b.ctx, b.run, "nothing"); ok || err != nil {
		t.Errorf("ChannelGet of a key never written = %v, %v", ok, err)
	}
}

// A write sent twice (go-redis retries a command whose reply timed out)
// is applied once: the second call finds its event in the log, replies
// as the first did, and writes nothing.
func TestChannelWriteTwiceAppliesOnce(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	e := b.claim(t, "a", "w1", 1, false).Epoch
	for _, w := range []rdb.ChannelWrite{
		{Op: rdb.ChannelOpIncr, Key: "n", Delta: 5},
		{Op: rdb.ChannelOpAppend, Key: "list", Value: json.RawMessage(`"x"`)},
		{Op: rdb.ChannelOpSet, Key: "k", Value: json.RawMessage(`{"v":1}`)},
	} {
		w.Run, w.Task, w.Worker, w.Attempt, w.Epoch, w.TimeMS = b.run, "a", "w1", 1, e, 9000
		w.EventID, w.RejectID = ulid.Make().String(), ulid.Make().String()
		first, err := b.db.WriteChannel(b.ctx, w)
		if err != nil {
			t.Fatal(err)
		}
		// Another write in between, as from another task.
		if _, err := b.write("w1", e, rdb.ChannelOpSet, "other", `1`, 0); err != nil {
			t.Fatal(err)
		}
		var again rdb.ChannelWritten
		b.unchanged(t, "the same "+w.Op+" again", nil, func() error { again, err = b.db.WriteChannel(b.ctx, w); return err })
		if again != first {
			t.Errorf("the same %s again replied %+v, the first %+v", w.Op, again, first)
		}
	}
	want := map[string]string{"n": "5", "list": `["x"]`, "k": `{"v":1}`, "other": "1"}
	if diff := cmp.Diff(want, b.hash(t, b.db.K.RunChannel(b.run))); diff != "" {
		t.Errorf("channel (-want +got):\n%s", diff)
	}
}

// A worker that lost its claim (reclaimed: its epoch is stale; or
// finished) cannot write: the write is refused with a *StaleError, the
// channel and the state are unchanged, and the refusal is recorded as
// result_rejected (what "channel"), never as channel_written.
func TestChannelWriteIsFenced(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	if cr := b.claim(t, "a", "w1", 1, false); cr.Epoch != 1 {
		t.Fatalf("claim epoch %d", cr.Epoch)
	}
	if _, err := b.write("w1", 1, rdb.ChannelOpSet, "k", `"from w1"`, 0); err != nil {
		t.Fatal(err)
	}
	if cr := b.claim(t, "a", "w2", 1, true); cr.Epoch != 3 { // task_reclaimed (2) + task_claimed (3)
		t.Fatalf("reclaim epoch %d", cr.Epoch)
	}

	for _, op := range []struct {
		name  string
		write func() error
	}{
		{"a zombie's set", func() error { _, err := b.write("w1", 1, rdb.ChannelOpSet, "k", `"zombie"`, 0); return err }},
		{"a zombie's set of a new key", func() error { _, err := b.write("w1", 1, rdb.ChannelOpSet, "new", `1`, 0); return err }},
		{"a zombie's append", func() error { _, err := b.write("w1", 1, rdb.ChannelOpAppend, "k", `1`, 0); return err }},
		{"a zombie's incr", func() error { _, err := b.write("w1", 1, rdb.ChannelOpIncr, "n", "", 1); return err }},
		{"the current epoch with another owner", func() error {
			_, err := b.write("w1", 3, rdb.ChannelOpSet, "k", `"zombie"`, 0)
			return err
		}},
	} {
		log := b.unchanged(t, op.name, rdb.ErrStaleClaim, op.write, events.ResultRejected)
		var body events.ResultRejectedBody
		if err := log[0].DecodeBody(&body); err != nil {
			t.Fatal(err)
		}
		if e := log[0]; e.Task != "a" || e.Attempt != 1 || e.Worker != "w1" || body.What != "channel" || body.CurrentEpoch != 3 {
			t.Errorf("%s: result_rejected task %s a%d e%d %s %+v", op.name, e.Task, e.Attempt, e.Epoch, e.Worker, body)
		}
	}
	_, err := b.write("w1", 1, rdb.ChannelOpSet, "k", `"zombie"`, 0)
	var se *rdb.StaleError
	if !errors.As(err, &se) || se.Status != "running" || se.Epoch != "3" || se.Owner != "w2" {
		t.Errorf("StaleError = %+v (%v), want running at epoch 3 owned by w2", se, err)
	}

	// The holder writes; once its result is accepted, it cannot either.
	if _, err := b.write("w2", 3, rdb.ChannelOpSet, "k", `"from w2"`, 0); err != nil {
		t.Fatal(err)
	}
	if v, _, _ := b.db.ChannelGet(b.ctx, b.run, "k"); v != `"from w2"` {
		t.Errorf("k = %s after the holder's write", v)
	}
	if _, err := b.finish("a", "w2", 1, 3, true); err != nil {
		t.Fatal(err)
	}
	b.unchanged(t, "a write after the task's own result", rdb.ErrStaleClaim, func() error {
		_, err := b.write("w2", 3, rdb.ChannelOpSet, "k", `"late"`, 0)
		return err
	}, events.ResultRejected)
}

// A write over a limit (key size, value size, also after an append, key
// count) or of the wrong type for its op (append to a non-array, incr of
// a non-integer or past int64) is refused and writes nothing.
func TestChannelWriteLimitsAndTypes(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	e := b.claim(t, "a", "w1", 1, false).Epoch
	write := func(op, key, value string, delta int64) func() error {
		return func() error { _, err := b.write("w1", e, op, key, value, delta); return err }
	}
	str := func(n int) string { return `"` + strings.Repeat("v", n-2) + `"` } // a JSON string of n bytes

	if err := write(rdb.ChannelOpSet, strings.Repeat("k", rdb.ChannelMaxKeyBytes), `1`, 0)(); err != nil {
		t.Fatalf("a key of the largest size: %v", err)
	}
	if err := write(rdb.ChannelOpSet, "max", str(rdb.ChannelMaxValueBytes), 0)(); err != nil {
		t.Fatalf("a value of the largest size: %v", err)
	}
	if err := write(rdb.ChannelOpSet, "list", "["+str(rdb.ChannelMaxValueBytes-20)+"]", 0)(); err != nil {
		t.Fatal(err)
	}
	if err := write(rdb.ChannelOpSet, "obj", `{"a":1}`, 0)(); err != nil {
		t.Fatal(err)
	}
	if err := write(rdb.ChannelOpSet, "top", `9223372036854775807`, 0)(); err != nil {
		t.Fatal(err)
	}
	b.unchanged(t, "an empty key", rdb.ErrChannelLimit, write(rdb.ChannelOpSet, "", `1`, 0))
	b.unchanged(t, "a key over the limit", rdb.ErrChannelLimit, write(rdb.ChannelOpSet, strings.Repeat("k", rdb.ChannelMaxKeyBytes+1), `1`, 0))
	b.unchanged(t, "a key that is not UTF-8", rdb.ErrChannelLimit, write(rdb.ChannelOpSet, "k\xff", `1`, 0))
	b.unchanged(t, "a value over the limit", rdb.ErrChannelLimit, write(rdb.ChannelOpSet, "max", str(rdb.ChannelMaxValueBytes+1), 0))
	b.unchanged(t, "an append past the value limit", rdb.ErrChannelLimit, write(rdb.ChannelOpAppend, "list", str(30), 0))
	b.unchanged(t, "an append to an object", rdb.ErrChannelType, write(rdb.ChannelOpAppend, "obj", `1`, 0))
	b.unchanged(t, "an incr of an object", rdb.ErrChannelType, write(rdb.ChannelOpIncr, "obj", "", 1))
	b.unchanged(t, "an incr past int64", rdb.ErrChannelType, write(rdb.ChannelOpIncr, "top", "", 1))
	if err := write(rdb.ChannelOpSet, "bad", `{"a":`, 0)(); err == nil {
		t.Error("a value that is not JSON was accepted")
	}

	// Up to ChannelMaxKeys keys; then only the existing ones can change.
	have := len(b.hash(t, b.db.K.RunChannel(b.run)))
	for i := have; i < rdb.ChannelMaxKeys; i++ {
		if err := write(rdb.ChannelOpIncr, "key-"+strconv.Itoa(i), "", 1)(); err != nil {
			t.Fatalf("key %d of %d: %v", i+1, rdb.ChannelMaxKeys, err)
		}
	}
	b.unchanged(t, "a key past the key limit", rdb.ErrChannelLimit, write(rdb.ChannelOpSet, "one-more", `1`, 0))
	if err := write(rdb.ChannelOpIncr, "key-"+strconv.Itoa(rdb.ChannelMaxKeys-1), "", 1)(); err != nil {
		t.Errorf("a write of an existing key at the key limit: %v", err)
	}
}

// A run that is not running takes no writes, even from a task whose
// record still says it holds the claim (a quarantined run); a run that
// does not exist takes none and gets no log.
func TestChannelWriteNeedsARunningRun(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	e := b.claim(t, "a", "w1", 1, false).Epoch
	b.quarantine(t)
	b.unchanged(t, "a write to a quarantined run", rdb.ErrRunNotRunning, func() error {
		_, err := b.write("w1", e, rdb.ChannelOpSet, "k", `1`, 0)
		return err
	})

	gone := b
	gone.run = "R" + ulid.Make().String()
	if _, err := gone.write("w1", 1, rdb.ChannelOpSet, "k", `1`, 0); !errors.Is(err, rdb.ErrRunMissing) {
		t.Fatalf("write to a run that does not exist = %v, want ErrRunMissing", err)
	}
	if n, err := b.c.Exists(b.ctx, b.db.K.RunKeys(gone.run)...).Result(); err != nil || n != 0 {
		t.Errorf("a write to a missing run left %d keys (%v)", n, err)
	}
}

// xreadSignal is a go-redis hook that reports each XREAD before it is
// sent.
type xreadSignal chan struct{}

func (x xreadSignal) DialHook(next redis.DialHook) redis.DialHook { return next }
func (x xreadSignal) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (x xreadSignal) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if strings.EqualFold(cmd.Name(), "xread") {
			select {
			case x <- struct{}{}:
			default:
			}
		}
		return next(ctx, cmd)
	}
}

// ChannelWait returns a value at once when the key has one; otherwise it
// blocks on the run's log (its XREAD is under way before the key is
// written) and returns the value the channel_written carries; it gives up
// when the run ends first or its context ends.
func TestChannelWaitBlocksOnTheLog(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	e := b.claim(t, "a", "w1", 1, false).Epoch
	if _, err := b.write("w1", e, rdb.ChannelOpSet, "ready", `"now"`, 0); err != nil {
		t.Fatal(err)
	}
	if v, err := b.db.ChannelWait(b.ctx, b.run, "ready", time.Second); err != nil || string(v) != `"now"` {
		t.Fatalf("ChannelWait of a written key = %s, %v", v, err)
	}

	sig := make(xreadSignal, 1)
	wc := redistest.Client(t) // not a copy of a live client's Options: go-redis writes them while it connects
	wc.AddHook(sig)
	wdb := rdb.DB{C: wc, K: b.db.K}
	type reply struct {
		v   json.RawMessage
		err error
	}
	// waiting starts a ChannelWait of key and returns once its XREAD is
	// under way.
	waiting := func(key string) <-chan reply {
		select {
		case <-sig: // left by an earlier wait
		default:
		}
		got := make(chan reply, 1)
		go func() {
			v, err := wdb.ChannelWait(b.ctx, b.run, key, 5*time.Second)
			got <- reply{v, err}
		}()
		select {
		case <-sig:
		case <-time.After(10 * time.Second):
			t.Fatal("ChannelWait sent no XREAD")
		}
		return got
	}
	got := waiting("later")
	if _, err := b.write("w1", e, rdb.ChannelOpSet, "other", `1`, 0); err != nil { // another key: still waiting
		t.Fatal(err)
	}
	if _, err := b.write("w1", e, rdb.ChannelOpAppend, "later", `{"n":1}`, 0); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-got:
		if r.err != nil || string(r.v) != `[{"n":1}]` {
			t.Fatalf("ChannelWait = %s, %v; want the appended array", r.v, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ChannelWait did not return after the key was written")
	}

	short, cancel := context.WithTimeout(b.ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := b.db.ChannelWait(short, b.run, "never", time.Second); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("ChannelWait past its deadline = %v, want DeadlineExceeded", err)
	}

	got = waiting("never")
	b.quarantine(t)
	select {
	case r := <-got:
		if !errors.Is(r.err, rdb.ErrRunNotRunning) {
			t.Fatalf("ChannelWait when the run is set aside = %s, %v; want ErrRunNotRunning", r.v, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("ChannelWait did not return after the run was quarantined")
	}
	if _, err := b.db.ChannelWait(b.ctx, b.run, "never", time.Second); !errors.Is(err, rdb.ErrRunNotRunning) {
		t.Errorf("ChannelWait on a quarantined run = %v, want ErrRunNotRunning at once", err)
	}
	if _, err := b.db.ChannelWait(b.ctx, "R"+ulid.Make().String(), "k", time.Second); !errors.Is(err, rdb.ErrRunMissing) {
		t.Errorf("ChannelWait of a missing run = %v, want ErrRunMissing", err)
	}
}

// keysHook records the KEYS of each script call.
type keysHook struct{ keys [][]string }

func (h *keysHook) DialHook(next redis.DialHook) redis.DialHook { return next }
func (h *keysHook) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (h *keysHook) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		if name := cmd.Name(); name == "evalsha" || name == "eval" {
			args := cmd.Args()
			n, _ := args[2].(int)
			var ks []string
			for _, k := range args[3 : 3+n] {
				ks = append(ks, k.(string))
			}
			h.keys = append(h.keys, ks)
		}
		return next(ctx, cmd)
	}
}

// The write script's KEYS (the run's state, log and channel) hash to one
// cluster slot, on a namespace of several partitions too. (The script is
// not in Scripts(), so TestEveryScriptAndMultiTouchesOneSlot does not see
// it.)
func TestChannelWriteTouchesOneSlot(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	// Loaded first: on a Redis that has not run the script yet, go-redis
	// sends EVALSHA, gets NOSCRIPT and sends EVAL, two calls for one write.
	if err := rdb.New(c, "load").LoadScripts(ctx); err != nil {
		t.Fatal(err)
	}
	h := &keysHook{}
	c.AddHook(h)
	d := rdb.NewP(c, redistest.Namespace(t), 3)
	for _, run := range []string{"R1", "R2", "R3", "R4"} {
		_, err := d.WriteChannel(ctx, rdb.ChannelWrite{Run: run, Task: "a", Worker: "w", Attempt: 1, Epoch: 1, EventID: "e", RejectID: "r",
			Op: rdb.ChannelOpSet, Key: "k", Value: []byte("1")})
		if !errors.Is(err, rdb.ErrRunMissing) {
			t.Fatalf("write to a run that does not exist = %v", err)
		}
	}
	if len(h.keys) != 4 {
		t.Fatalf("%d script calls recorded, want 4", len(h.keys))
	}
	for _, ks := range h.keys {
		if len(ks) != 3 {
			t.Fatalf("KEYS %v, want state, log, channel", ks)
		}
		for _, k := range ks[1:] {
			if keySlot(k) != keySlot(ks[0]) {
				t.Errorf("KEYS %v span slots (%s: %d, %s: %d)", ks, ks[0], keySlot(ks[0]), k, keySlot(k))
			}
		}
	}
}

// A write retried long after its reply was lost (a worker retries a failed
// connection for up to 30 s), with more than channelRetryWindow entries in
// the run's log meanwhile (a busy fan-out), is applied once: the retry
// was looked for in the log's last entries only, and an incr counted twice
// (found by an audit). The claim's last write is kept in the state hash.
func TestChannelWriteRetriedAfterABusyLogAppliesOnce(t *testing.T) {
	t.Parallel()
	b := setupRun(t)
	e := b.claim(t, "a", "w1", 1, false).Epoch
	w := rdb.ChannelWrite{Run: b.run, Task: "a", Worker: "w1", Attempt: 1, Epoch: e,
		EventID: ulid.Make().String(), RejectID: ulid.Make().String(), TimeMS: 9000, Op: rdb.ChannelOpIncr, Key: "n", Delta: 1}
	first, err := b.db.WriteChannel(b.ctx, w) // its reply is lost
	if err != nil {
		t.Fatal(err)
	}
	// 200 entries of other tasks land in the log before the retry.
	for i := range 200 {
		hb := rdb.HeartbeatArgs{Run: b.run, Task: "b", Worker: "w2", Attempt: 1, Epoch: 1, EventID: ulid.Make().String(),
			RejectID: ulid.Make().String(), TimeMS: 9000 + int64(i), Body: []byte(`{}`), Append: true}
		_ = b.db.Heartbeat(b.ctx, b.c, hb).Err() // b is not running: each is a result_rejected entry
	}
	if n := b.c.XLen(b.ctx, b.db.K.RunLog(b.run)).Val(); n < 200 {
		t.Fatalf("%d log entries, want 200 or more", n)
	}
	var again rdb.ChannelWritten
	b.unchanged(t, "the incr retried", nil, func() error { again, err = b.db.WriteChannel(b.ctx, w); return err })
	if again != first {
		t.Errorf("the retry replied %+v, the first %+v", again, first)
	}
	if v := b.hash(t, b.db.K.RunChannel(b.run))["n"]; v != "1" {
		t.Errorf("n = %s after one incr and its retry, want 1", v)
	}
}
