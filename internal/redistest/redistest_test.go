package redistest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/redis/go-redis/v9"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(Wrap(m))
}

func TestClient(t *testing.T) {
	t.Parallel()

	t.Run("pings the shared Redis", func(t *testing.T) {
		t.Parallel()
		rdb := Client(t)
		if err := rdb.Ping(context.Background()).Err(); err != nil {
			t.Fatalf("PING: %v", err)
		}
		switch Mode() {
		case ModeContainer, ModeProcess, ModeURL:
		default:
			t.Fatalf("Mode() = %q after Client", Mode())
		}
	})

	t.Run("streams work: XADD then XREADGROUP in a namespace", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		rdb := Client(t)
		stream := Namespace(t) + ":log"
		if err := rdb.XGroupCreateMkStream(ctx, stream, "g", "0").Err(); err != nil {
			t.Fatalf("XGROUP CREATE: %v", err)
		}
		id, err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"type", "run.started"}}).Result()
		if err != nil {
			t.Fatalf("XADD: %v", err)
		}
		got, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
			Group: "g", Consumer: "c", Streams: []string{stream, ">"}, Count: 10, Block: time.Second,
		}).Result()
		if err != nil {
			t.Fatalf("XREADGROUP: %v", err)
		}
		want := []redis.XStream{{Stream: stream, Messages: []redis.XMessage{{ID: id, Values: map[string]any{"type": "run.started"}}}}}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Fatalf("XREADGROUP (-want +got):\n%s", diff)
		}
		if n, err := rdb.XAck(ctx, stream, "g", id).Result(); err != nil || n != 1 {
			t.Fatalf("XACK = %d, %v", n, err)
		}
	})

	t.Run("namespaces differ", func(t *testing.T) {
		t.Parallel()
		seen := map[string]bool{}
		for range 100 {
			ns := Namespace(t)
			if !strings.HasPrefix(ns, "t") || len(ns) != 17 {
				t.Fatalf("Namespace() = %q, want t + 16 hex digits", ns)
			}
			if seen[ns] {
				t.Fatalf("Namespace() repeated %q", ns)
			}
			seen[ns] = true
		}
	})

	t.Run("Addr and URL reach the same Redis, for subprocesses", func(t *testing.T) {
		t.Parallel()
		ctx := context.Background()
		key := Namespace(t) + ":k"
		if err := Client(t).Set(ctx, key, "v", time.Minute).Err(); err != nil {
			t.Fatal(err)
		}
		opts, err := redis.ParseURL(URL(t))
		if err != nil {
			t.Fatalf("URL() = %q: %v", URL(t), err)
		}
		if opts.Addr != Addr(t) {
			t.Fatalf("URL() addr %q != Addr() %q", opts.Addr, Addr(t))
		}
		other := redis.NewClient(opts)
		defer other.Close()
		if got, err := other.Get(ctx, key).Result(); err != nil || got != "v" {
			t.Fatalf("GET via URL() = %q, %v; want v", got, err)
		}
	})
}

// TestContainerMode makes sure CI really exercises the testcontainers path:
// "make test" sets GRAFLOW_TEST_REQUIRE_CONTAINER=1.
func TestContainerMode(t *testing.T) {
	if os.Getenv(EnvRequireContainer) != "1" {
		t.Skipf("%s is not 1; Redis mode is %q", EnvRequireContainer, Mode())
	}
	Client(t) // start the shared Redis if no other test has
	if got := Mode(); got != ModeContainer {
		t.Fatalf("Mode() = %q, want %q (%s=1); reasons:\n  %s",
			got, ModeContainer, EnvRequireContainer, strings.Join(current.Load().skipped, "\n  "))
	}
}
