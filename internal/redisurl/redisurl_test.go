package redisurl_test

import (
	"errors"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/graflow-go/graflow/internal/redisurl"
	"github.com/redis/go-redis/v9"
)

func TestClusterURLKeepsSeedsAndOptions(t *testing.T) {
	t.Parallel()
	o, err := redisurl.ClusterOptions("redis+cluster://u:pw@127.0.0.1:7000?addr=127.0.0.1:7001&addr=127.0.0.1:7002&pool_size=7&read_timeout=2s&client_name=g")
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff([]string{"127.0.0.1:7000", "127.0.0.1:7001", "127.0.0.1:7002"}, o.Addrs); diff != "" {
		t.Errorf("Addrs (-want +got):\n%s", diff)
	}
	if o.Username != "u" || o.Password != "pw" || o.PoolSize != 7 || o.ReadTimeout != 2*time.Second || o.ClientName != "g" || o.TLSConfig != nil {
		t.Errorf("options not kept: %+v", o)
	}
	o, err = redisurl.ClusterOptions("rediss+cluster://h:7000")
	if err != nil || o.TLSConfig == nil || o.TLSConfig.ServerName != "h" {
		t.Errorf("rediss+cluster: TLS %+v, %v", o, err)
	}
}

func TestSentinelURLNeedsAMasterName(t *testing.T) {
	t.Parallel()
	o, err := redisurl.FailoverOptions("redis+sentinel://127.0.0.1:26379?master_name=m&addr=127.0.0.1:26380")
	if err != nil {
		t.Fatal(err)
	}
	if o.MasterName != "m" || len(o.SentinelAddrs) != 2 {
		t.Errorf("failover options: %+v", o)
	}
	if _, err := redisurl.FailoverOptions("redis+sentinel://127.0.0.1:26379"); !errors.Is(err, redisurl.ErrNoMasterName) {
		t.Errorf("no master_name: %v, want ErrNoMasterName", err)
	}
}

func TestNewPicksTheClientByScheme(t *testing.T) {
	t.Parallel()
	for url, want := range map[string]string{
		"redis://127.0.0.1:6379/2":                          "*redis.Client",
		"redis+cluster://127.0.0.1:7000":                    "*redis.ClusterClient",
		"REDIS+CLUSTER://127.0.0.1:7000":                    "*redis.ClusterClient",
		"redis+sentinel://127.0.0.1:26379?master_name=main": "*redis.Client", // a failover client is a *redis.Client
	} {
		c, err := redisurl.New(url)
		if err != nil {
			t.Fatalf("%s: %v", url, err)
		}
		got := "*redis.Client"
		if _, ok := c.(*redis.ClusterClient); ok {
			got = "*redis.ClusterClient"
		}
		if got != want {
			t.Errorf("New(%s) = %s, want %s", url, got, want)
		}
		_ = c.Close()
	}
	for _, bad := range []string{"redis+cluster://h:1?bogus=1", "redis+sentinel://h:1?master_name=m&nope=2", "http://h:1"} {
		if _, err := redisurl.New(bad); err == nil {
			t.Errorf("New(%s): no error", bad)
		}
	}
	if got := redisurl.Redact("redis+cluster://u:secret@h:1"); got != "redis+cluster://u:***@h:1" {
		t.Errorf("Redact = %s", got)
	}
}
