package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/graflow-go/graflow/internal/redistest"
	"github.com/oklog/ulid/v2"
	"github.com/redis/go-redis/v9"
)

func TestRedisURLs(t *testing.T) {
	t.Parallel()
	t.Run("host:port is redis://host:port, and the URL's query options are kept", func(t *testing.T) {
		c := &common{redisURL: "127.0.0.1:6390", getenv: func(string) string { return "" }}
		r, err := c.newRedis()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if o := r.(*redis.Client).Options(); o.Addr != "127.0.0.1:6390" {
			t.Errorf("addr %s", o.Addr)
		}
		c.redisURL = "redis://u:p@127.0.0.1:6390/2?pool_size=7&client_name=graflow-test&dial_timeout=3s&read_timeout=4s&protocol=2"
		r2, err := c.newRedis()
		if err != nil {
			t.Fatal(err)
		}
		defer r2.Close()
		o := r2.(*redis.Client).Options()
		if o.PoolSize != 7 || o.ClientName != "graflow-test" || o.DialTimeout != 3*time.Second || o.ReadTimeout != 4*time.Second || o.Protocol != 2 || o.DB != 2 || o.Username != "u" || o.Password != "p" {
			t.Errorf("options lost: %+v", o)
		}
	})
	t.Run("a comma in the password or the query is not a node list", func(t *testing.T) {
		c := &common{redisURL: "redis://u:pa,ss@127.0.0.1:6390/0?client_name=a,b", getenv: func(string) string { return "" }}
		r, err := c.newRedis()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		cl, ok := r.(*redis.Client)
		if !ok {
			t.Fatalf("client %T, want one node's", r)
		}
		if o := cl.Options(); o.Addr != "127.0.0.1:6390" || o.Password != "pa,ss" || o.ClientName != "a,b" {
			t.Errorf("addr %s password %q client name %q", o.Addr, o.Password, o.ClientName)
		}
		for _, list := range []string{"127.0.0.1:6390,127.0.0.1:6391", "redis://u:p@127.0.0.1:6390,redis://u:p@127.0.0.1:6391"} {
			if !isNodeList(withScheme(list)) {
				t.Errorf("%s: not read as a node list", list)
			}
		}
	})
	t.Run("REDIS_PASSWORD fills a URL without one", func(t *testing.T) {
		c := &common{redisURL: "redis://127.0.0.1:6390", getenv: func(k string) string { return map[string]string{"REDIS_PASSWORD": "pw"}[k] }}
		r, err := c.newRedis()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if o := r.(*redis.Client).Options(); o.Password != "pw" {
			t.Errorf("password %q", o.Password)
		}
	})
	t.Run("--tls-ca turns TLS on", func(t *testing.T) {
		ca := writeTestCA(t)
		c := &common{redisURL: "127.0.0.1:6390", tls: tlsFiles{ca: ca}, getenv: func(string) string { return "" }}
		r, err := c.newRedis()
		if err != nil {
			t.Fatal(err)
		}
		defer r.Close()
		if o := r.(*redis.Client).Options(); o.TLSConfig == nil || o.TLSConfig.RootCAs == nil || o.TLSConfig.ServerName != "127.0.0.1" {
			t.Errorf("TLS config %+v", o.TLSConfig)
		}
	})
}

// The three ways a connection fails give three different messages.
func TestRedisConnectionFailuresAreToldApart(t *testing.T) {
	t.Parallel()
	ctx := withTestTimeout(t, 30*time.Second)
	connect := func(url string, env map[string]string) error {
		c := &common{redisURL: url, namespace: "graflow", getenv: func(k string) string { return env[k] }}
		r, err := c.connect(ctx)
		if err == nil {
			_ = r.Close()
		}
		return err
	}
	if err := connect("127.0.0.1:1", nil); !errors.Is(err, errRedisUnreachable) {
		t.Errorf("nothing listening: %v", err)
	}
	addr := redistest.Addr(t)
	if err := connect("rediss://"+addr, nil); !errors.Is(err, errRedisTLS) {
		t.Errorf("rediss:// to a plain server: %v", err)
	}
	user := "graflow-auth-" + strings.ToLower(ulid.Make().String())
	admin := redistest.Client(t)
	if err := admin.Do(ctx, "ACL", "SETUSER", user, "on", ">right", "+ping").Err(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", user) })
	err := connect("redis://"+user+":wrong@"+addr, nil)
	if !errors.Is(err, errRedisAuth) || strings.Contains(err.Error(), "wrong") {
		t.Errorf("wrong password: %v (want %v, without the password)", err, errRedisAuth)
	}
	if err := connect("redis://"+user+"@"+addr, map[string]string{"REDIS_PASSWORD": "right"}); err != nil {
		t.Errorf("password from REDIS_PASSWORD: %v", err)
	}
}

// The ACL line of docs/operations.md is enough to run a workflow.
func TestACLUserRunsAWorkflow(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile("../../docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	line := regexp.MustCompile(`(?m)^ACL SETUSER graflow on >secret .*$`).FindString(string(doc))
	if line == "" {
		t.Fatal("no ACL SETUSER line in docs/operations.md")
	}
	ctx := withTestTimeout(t, 90*time.Second)
	ns := redistest.Namespace(t)
	user := "graflow-acl-" + strings.ToLower(ulid.Make().String())
	args := strings.Fields(line)[2:] // after ACL SETUSER
	args[0] = user
	for i, a := range args {
		switch a {
		case ">secret":
			args[i] = ">pw-" + user
		case "~graflow:*":
			args[i] = "~" + ns + ":*"
		}
	}
	admin := redistest.Client(t)
	cmd := []any{"ACL", "SETUSER"}
	for _, a := range args {
		cmd = append(cmd, a)
	}
	if err := admin.Do(ctx, cmd...).Err(); err != nil {
		t.Fatalf("%s: %v", line, err)
	}
	t.Cleanup(func() { admin.Do(context.Background(), "ACL", "DELUSER", user) })
	url := "redis://" + user + ":pw-" + user + "@" + redistest.Addr(t)
	common := []string{"--redis", url, "--namespace", ns, "--log-level", "warn"}

	sctx, stop := context.WithCancel(ctx)
	done := make(chan error, 2)
	var logs [2]*lockedBuffer
	for i, verb := range []string{"projector", "worker"} {
		m, out := newTestMain("", nil)
		logs[i] = out
		go func() { done <- m.Run(sctx, append([]string{verb}, common...)) }()
	}
	code, out := runCLI(t, ctx, nil, append([]string{"submit", "../../examples/etl.yaml", "--wait", "--json"}, common...)...)
	stop()
	for range 2 {
		if err := <-done; err != nil {
			t.Errorf("projector/worker as the ACL user: %v", err)
		}
	}
	if code != ExitOK || !strings.Contains(out, `"succeeded"`) {
		t.Errorf("submit --wait as the ACL user: exit %d\n%s\nprojector log:\n%s\nworker log:\n%s", code, out, logs[0], logs[1])
	}
	for i, l := range logs {
		if strings.Contains(l.String(), "NOPERM") {
			t.Errorf("process %d was refused a command:\n%s", i, l)
		}
	}
	// The inspection commands too.
	for _, verb := range [][]string{{"runs"}, {"workers"}, {"projectors"}, {"queues"}, {"dlq", "list"}, {"replay", "verify", "--all"}} {
		if code, out := runCLI(t, ctx, nil, append(verb, common...)...); code != ExitOK {
			t.Errorf("graflow %s as the ACL user: exit %d\n%s", strings.Join(verb, " "), code, out)
		}
	}
}

// writeTestCA writes a self-signed CA certificate (PEM) and returns its path.
func writeTestCA(t *testing.T) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "graflow test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
