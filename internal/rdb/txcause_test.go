package rdb_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/rdb"
	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/redis/go-redis/v9"
)

// A MULTI block that Redis discards (EXECABORT: a command was refused as
// it was queued) reports the refused command's own error, which callers
// can classify: a soak's checker got a bare EXECABORT from ReadLive while
// Redis restarted (the queued commands' LOADING) and gave up on a
// transient error. Here the refusal is an ACL's NOPERM.
func TestReadLiveReportsWhyItsTransactionWasDiscarded(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	admin := redistest.Client(t)
	user := "nohgetall-" + redistest.Namespace(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">pw", "~*", "+@all", "-hgetall").Err(); err != nil {
		t.Fatal(err)
	}
	defer admin.Do(context.Background(), "ACL", "DELUSER", user)
	c := redis.NewClient(&redis.Options{Addr: admin.Options().Addr, Username: user, Password: "pw"})
	defer c.Close()
	_, err := rdb.New(c, redistest.Namespace(t)).ReadLive(ctx, "run-1")
	if err == nil || !strings.Contains(err.Error(), "NOPERM") {
		t.Fatalf("ReadLive = %v, want the queued command's NOPERM", err)
	}
}
