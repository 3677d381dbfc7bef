package redisserver_test

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/graflow-go/graflow/internal/redisserver"
	"github.com/redis/go-redis/v9"
)

// A kill -9 in the middle of the AOF write of a script's effects (a
// MULTI/EXEC block) leaves a truncated transaction at the end of the AOF.
// Redis 7.0's own aof-load-truncated cuts only the partial command and
// leaves MULTI and the first commands in the file; what is written next
// lands after them, and the next restart either drops it (an
// acknowledged write lost) or runs it together with the dead
// transaction's commands (chaos seed 13 got a task result accepted twice
// that way). The server must cut the whole transaction and keep
// every write acknowledged after the restart, over two restarts.
func TestAKillMidTransactionLosesNothingAcknowledgedOverTwoRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	srv, rdb := setup(t, redisserver.Config{Dir: dir, AOF: true, Fsync: redisserver.FsyncAlways})
	ctx := context.Background()
	if err := rdb.Set(ctx, "before", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if err := rdb.Eval(ctx, `redis.call('SET', 'tx1', '1') redis.call('SET', 'tx2', '2') redis.call('SET', 'tx3', '3')`, nil).Err(); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	// Cut the AOF in the middle of the script's last command, as a kill
	// during the write can.
	incr, err := filepath.Glob(filepath.Join(dir, "appendonlydir", "*.incr.aof"))
	if err != nil || len(incr) != 1 {
		t.Fatalf("incr AOF files: %v %v", incr, err)
	}
	data, err := os.ReadFile(incr[0])
	if err != nil {
		t.Fatal(err)
	}
	cut := bytes.LastIndex(data, []byte("tx3"))
	if cut < 0 || !bytes.Contains(data, []byte("MULTI")) {
		t.Fatalf("no transaction in the AOF:\n%q", data)
	}
	if err := os.WriteFile(incr[0], data[:cut+1], 0o644); err != nil {
		t.Fatal(err)
	}

	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("restart after the cut: %v", err)
	}
	check := func(when string) {
		t.Helper()
		for k, want := range map[string]int64{"before": 1, "after": 1, "tx1": 0, "tx2": 0, "tx3": 0} {
			if n, err := rdb.Exists(ctx, k).Result(); err != nil || n != want {
				t.Errorf("%s: EXISTS %s = %d, %v; want %d", when, k, n, err, want)
			}
		}
	}
	if err := rdb.Set(ctx, "after", "1", 0).Err(); err != nil {
		t.Fatal(err)
	}
	check("after the first restart")
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(ctx); err != nil {
		t.Fatalf("second restart: %v", err)
	}
	check("after the second restart")
}
