package main

import (
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
)

// goRedis is the import path prefix of the Redis client.
const goRedis = "github.com/redis/go-redis/"

// redisBoundary lists, with the reason for each, the non-test Go files
// outside internal/rdb (the Redis boundary: every key, script and command)
// that may import go-redis. A file not listed that imports it fails
// TestRedisBoundary; so does a listed file that no longer does, so the
// list can only shrink. Paths are relative to the module root, with '/'.
var redisBoundary = map[string]string{
	// The connection: building clients from URLs, no commands.
	"cmd/graflow/common.go":            "the CLI's connection constructor (ParseURL, NewUniversalClient)",
	"cmd/graflow/main.go":              "quiets go-redis' logger; no commands",
	"internal/redisurl/redisurl.go":    "cluster and sentinel URLs to clients (ParseClusterURL, ParseFailoverURL); no commands",
	"internal/rediscluster/cluster.go": "a plain client per node it started; its cluster commands go through rdb (cluster.go)",

	// Types only: error classes, hooks and clients handed to the engine.
	"internal/retry/retry.go":               "classifies go-redis errors (redis.Error, ErrPoolTimeout); no commands",
	"cmd/graflow/internal/bench/measure.go": "a redis.Hook counting the harness' own commands; no commands",
	"cmd/graflow/internal/bench/trace.go":   "a redis.Hook recording each component's commands; no commands",
	"cmd/graflow/internal/bench/bench.go":   "builds the measuring client (ParseURL, NewClient, the counting hook); reads go through rdb",
	"cmd/graflow/internal/bench/stack.go":   "builds the clients of the engine under test (with trace hooks); reads go through rdb",
	"cmd/graflow/internal/chaos/stack.go":   "builds the client of the stack under faults (ParseURL, NewClient); reads go through rdb",
	"internal/redistest/redistest.go":       "the test harness: hands tests a client",
	"internal/redistest/container.go":       "the test harness: pings the container it started",
	"internal/redistest/failonce.go":        "the test harness: a go-redis hook that fails one chosen call (types only, no command)",
	"cmd/graflow/internal/bench/ceiling.go": "THE allowed exception: the raw ceiling measures plain XADD/XREADGROUP/XACK throughput with no engine in between",
	"cmd/graflow/dev.go":                    "types only: graflow dev holds its stack's client (made by the connection constructor) and closes it; every command goes through rdb",
	"client.go":                             "types only: Config.Redis; every command goes through rdb",
	"scheduler/scheduler.go":                "types only: Config.Redis; every command goes through rdb",
	"projector/projector.go":                "types only: Config.Redis; every command goes through rdb",
	"worker/worker.go":                      "types only: Config.Redis; every command goes through rdb",
	"tracing.go":                            "types only: InstrumentRedis takes the client it hands to rdb's redisotel hook",
	"cmd/graflow/tracing.go":                "types only: the client connect made, handed to graflow.InstrumentRedis",
}

// TestRedisBoundary: go-redis is imported by internal/rdb and by the files
// in redisBoundary only (tests excepted), so no other package formats a
// key or sends a command behind the boundary's back.
func TestRedisBoundary(t *testing.T) {
	t.Parallel()
	root, err := filepath.Abs("../..") // this package is cmd/graflow
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(root, "go.mod")); err != nil {
		t.Fatalf("module root not found from cmd/graflow: %v", err)
	}
	importers := map[string]bool{}
	fset := token.NewFileSet()
	err = filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "bin") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			return nil
		}
		rel, err := filepath.Rel(root, path)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if strings.HasPrefix(rel, "internal/rdb/") {
			return nil // the boundary itself
		}
		f, err := parser.ParseFile(fset, path, nil, parser.ImportsOnly)
		if err != nil {
			return err
		}
		for _, imp := range f.Imports {
			if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, goRedis) {
				importers[rel] = true
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var offenders, stale []string
	for f := range importers {
		if _, ok := redisBoundary[f]; !ok {
			offenders = append(offenders, f)
		}
	}
	for f := range redisBoundary {
		if !importers[f] {
			stale = append(stale, f)
		}
	}
	sort.Strings(offenders)
	sort.Strings(stale)
	if len(offenders) > 0 {
		t.Errorf("these files import go-redis outside internal/rdb; send their Redis commands through an rdb function instead (or, for client construction or types only, add them to redisBoundary with the reason):\n  %s",
			strings.Join(offenders, "\n  "))
	}
	if len(stale) > 0 {
		t.Errorf("these files in redisBoundary no longer import go-redis; remove them from the list:\n  %s",
			strings.Join(stale, "\n  "))
	}
}
