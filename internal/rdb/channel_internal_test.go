package rdb

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/redistest"
)

// The write script enforces the key and value limits itself, whatever
// its caller checked (WriteChannel refuses them before the round trip),
// and refuses an incr delta that is not an integer: nothing is written.
func TestChannelWriteScriptChecksItsLimits(t *testing.T) {
	t.Parallel()
	c := redistest.Client(t)
	d := New(c, redistest.Namespace(t))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	run := "R1"
	if err := c.HSet(ctx, d.K.RunState(run), FieldRunStatus, "running", "a", "running|1|1|w1").Err(); err != nil {
		t.Fatal(err)
	}
	keys := []string{d.K.RunState(run), d.K.RunLog(run), d.K.RunChannel(run)}
	call := func(op, key, value string) []any {
		t.Helper()
		res, err := channelWriteScript.Run(ctx, c, keys, "a", 1, 1, "w1", "ev", 1, op, key, value, "rej",
			ChannelMaxKeyBytes, ChannelMaxValueBytes, ChannelMaxKeys).Slice()
		if err != nil {
			return []any{"error", err.Error()}
		}
		return res[:1]
	}
	for _, tc := range []struct {
		name, op, key, value string
		want                 string
	}{
		{"an empty key", ChannelOpSet, "", "1", "limit"},
		{"a key over the limit", ChannelOpSet, strings.Repeat("k", ChannelMaxKeyBytes+1), "1", "limit"},
		{"a value over the limit", ChannelOpSet, "k", `"` + strings.Repeat("v", ChannelMaxValueBytes-1) + `"`, "limit"},
		{"an append of an element over the limit", ChannelOpAppend, "k", `"` + strings.Repeat("v", ChannelMaxValueBytes-2) + `"`, "limit"},
		{"an incr by a delta that is not an integer", ChannelOpIncr, "k", "1.5", "error"},
		{"an unknown op", "del", "k", "1", "error"},
	} {
		if got := call(tc.op, tc.key, tc.value); got[0] != tc.want {
			t.Errorf("%s: reply %v, want %s", tc.name, got, tc.want)
		}
	}
	if n, err := c.Exists(ctx, d.K.RunLog(run), d.K.RunChannel(run)).Result(); err != nil || n != 0 {
		t.Fatalf("refused writes left %d keys (%v)", n, err)
	}
	if diff := cmp.Diff([]any{"ok"}, call(ChannelOpSet, strings.Repeat("k", ChannelMaxKeyBytes), `"`+strings.Repeat("v", ChannelMaxValueBytes-2)+`"`)); diff != "" {
		t.Errorf("a write at both limits (-want +got):\n%s", diff)
	}
}
