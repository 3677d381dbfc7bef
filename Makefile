# graflow developer targets. CI runs the same targets (.ci/run calls `make test`).
# `make` alone lists them.

GO ?= go

# testcontainers-go: no Ryuk (its image cannot be pulled here; the harness
# removes its containers itself) and reach mapped ports on loopback, never on
# a guessed gateway address. internal/redistest sets the same defaults when
# `go test` runs without make.
export TESTCONTAINERS_RYUK_DISABLED ?= true
export TESTCONTAINERS_HOST_OVERRIDE ?= 127.0.0.1

# Packages that exist so far among those test-race covers.
RACE_PKGS := ./worker/... ./projector/... ./internal/... ./replay/... ./cmd/graflow/internal/ui/... .

.DEFAULT_GOAL := help
.PHONY: help redis test test-race test-integration fmt lint build build-testhooks demo bench bench-smoke chaos chaos-broken-fencing soak

help: ## Show this help
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z0-9_-]+:.*## / {printf "  \033[36m%-18s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

redis: ## Install redis-server if missing and build the local graflow/redis:7.0 test image
	./scripts/redis-image.sh

.PHONY: browser
browser: ## Install Debian's chromium with apt-get if missing: the dashboard's browser test (cmd/graflow/internal/ui) drives it headless
	@if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then \
		echo "browser: chromium not found; installing it with apt-get"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium \
		|| { $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium; }; \
	fi

# Under make test a missing chromium fails the browser test instead of
# skipping it.
test: export GRAFLOW_TEST_REQUIRE_BROWSER = 1
test: redis browser ## Run all tests (Redis in a container), vet/gofmt, the race detector on the concurrent packages, 8 chaos seeds (plus 2 on a 3-partition namespace), a seed on a local Redis Cluster with a failover, a 20 s soak, the broken-fencing proof and a one-iteration benchmark smoke
	GRAFLOW_TEST_REQUIRE_CONTAINER=1 $(GO) test -count=1 ./...
	$(MAKE) --no-print-directory lint
	$(MAKE) --no-print-directory test-race
	$(MAKE) --no-print-directory chaos CHAOS_SEEDS=1-8
	$(MAKE) --no-print-directory chaos CHAOS_SEEDS=41-42 CHAOS_FLAGS='--partitions 3'
	$(MAKE) --no-print-directory chaos-cluster
	$(MAKE) --no-print-directory soak SOAK_DURATION=20s SOAK_FLAGS='--run-ttl 5s --sample-every 4s'
	$(MAKE) --no-print-directory chaos-broken-fencing
	$(MAKE) --no-print-directory bench-smoke
	$(MAKE) --no-print-directory compose-test

.PHONY: image compose-test

image: ## Build the graflow/graflow:dev image (Dockerfile: multi-stage, static, FROM scratch, non-root); no registry needed
	GO=$(GO) ./scripts/graflow-image.sh

compose-test: redis image ## Build the images, start deploy/compose.yaml (Redis with AOF, a projector, three workers), run workflows through it (one worker stopped mid-run must drain), always tear it down
	./scripts/compose-test.sh

test-race: redis ## Run the concurrent packages (worker, projector, internal, replay, the dashboard, root) with the race detector
	$(GO) test -count=1 -race $(RACE_PKGS)

test-integration: redis ## Run end-to-end tests in integration/ (real processes, real Redis)
	@if [ -d integration ]; then \
		echo "$(GO) test -count=1 ./integration/..."; \
		$(GO) test -count=1 ./integration/...; \
	else \
		echo "no integration/ tests yet"; \
	fi

fmt: ## Format all Go files in place
	gofmt -l -w .

GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT := $(CURDIR)/bin/tools/golangci-lint-$(GOLANGCI_LINT_VERSION)

$(GOLANGCI_LINT):
	@echo "lint: installing golangci-lint $(GOLANGCI_LINT_VERSION) from the Go module proxy (once; a few minutes)"
	@mkdir -p $(CURDIR)/bin/tools
	GOBIN=$(CURDIR)/bin/tools $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION)
	@mv $(CURDIR)/bin/tools/golangci-lint $(GOLANGCI_LINT)

lint: $(GOLANGCI_LINT) ## go vet (plain and with the graflowtest tag), gofmt, and golangci-lint (.golangci.yml)
	$(GO) vet ./...
	$(GO) vet -tags graflowtest ./...
	@files="$$(gofmt -l .)"; \
	if [ -n "$$files" ]; then echo "gofmt needed (run make fmt):"; echo "$$files"; exit 1; fi
	$(GOLANGCI_LINT) run --allow-serial-runners ./...
	$(GOLANGCI_LINT) run --allow-serial-runners --build-tags graflowtest ./...

build: ## Build bin/graflow
	$(GO) build -o bin/graflow ./cmd/graflow

build-testhooks: ## Build bin/graflow-testhooks: with the test-only switches (crash points, --unsafe-no-fencing); never deploy it
	$(GO) build -tags graflowtest -o bin/graflow-testhooks ./cmd/graflow

demo: ## Run the demo workflow with live progress: installs redis-server if missing, builds bin/graflow, runs graflow dev (flags in DEMO_ARGS)
	@if ! command -v redis-server >/dev/null 2>&1 && [ ! -x /usr/bin/redis-server ]; then \
		echo "demo: redis-server not found; installing it with apt-get"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server \
		|| { $$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends redis-server; } \
		|| echo "demo: could not install redis-server; graflow dev falls back to its in-process Redis"; \
	fi
	$(GO) build -o bin/graflow ./cmd/graflow
	./bin/graflow dev $(DEMO_ARGS)

BENCH_RUNS ?= 3
bench: build ## Measure throughput, latency and cost per task against the raw Redis ceiling (BENCH_RUNS=3; BENCH_ARGS="--write-doc docs/performance.md" refreshes the doc)
	./bin/graflow bench --runs $(BENCH_RUNS) $(BENCH_ARGS)

bench-smoke: build ## Run every Go benchmark once and "graflow bench --smoke" (tiny sizes): proves the benchmarks work
	$(GO) test -count=1 -run '^$$' -bench . -benchtime=1x ./...
	./bin/graflow bench --smoke --json-only
	@echo "bench-smoke: ok"

CHAOS_SEEDS ?= 1-5
CHAOS_FLAGS ?=
chaos: build ## Run the chaos suite: a 1,000-task run and a 3,000-wide fan-out, 3 projectors on one feed, under SIGKILL/SIGSTOP of workers and projectors (a feed takeover mid-projection), Redis restarts; one line per seed (CHAOS_SEEDS=1-5)
	./bin/graflow chaos --seeds $(CHAOS_SEEDS) --quiet $(CHAOS_FLAGS)

SOAK_DURATION ?= 10m
SOAK_FLAGS ?=
soak: build ## Soak: mixed workflows under the chaos faults for SOAK_DURATION (10m), runs expiring (--run-ttl 30s); samples Redis memory/keys/consumers and fails if a run fails its check or they grow
	./bin/graflow chaos --duration $(SOAK_DURATION) --quiet $(SOAK_FLAGS)

.PHONY: test-cluster chaos-cluster
test-cluster: redis ## Run the Redis Cluster tests alone (a local 3-master, 3-replica cluster from redis-server: the harness, workflows over 4 partitions, a master killed mid-run); go test ./... runs them too
	$(GO) test -count=1 -run 'TestFailover|TestCluster' ./internal/rediscluster/... ./integration/...

CLUSTER_CHAOS_SEEDS ?= 51
chaos-cluster: build ## Run chaos seeds on a local Redis Cluster (3 masters + 3 replicas, 4 partitions): the Redis fault SIGKILLs a master (failover) (CLUSTER_CHAOS_SEEDS=51)
	./bin/graflow chaos --cluster --partitions 3 --seeds $(CLUSTER_CHAOS_SEEDS) --quiet $(CHAOS_FLAGS)

chaos-broken-fencing: build-testhooks ## Prove the chaos checker can fail: with fencing switched off (a graflowtest build) it must report duplicates
	./bin/graflow-testhooks chaos --seeds 1-3 --break-fencing --quiet

