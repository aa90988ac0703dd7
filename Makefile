# modelcast — developer entry points. `make help` lists them.
SHELL := /bin/bash
GO ?= go
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)
LDFLAGS := -X github.com/modelcast/modelcast/internal/version.version=$(VERSION)
BIN := bin

.PHONY: help build test verify update generate bench bench-quick chaos demo manifests e2e clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-10s %s\n", $$1, $$2}'

build: ## build bin/csi-plugin and bin/ossemu
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/ ./cmd/csi-plugin ./test/ossemu/cmd/ossemu ./test/redisd

test: ## every test CI runs (real emulator over HTTP, real tmpfs and mounts as root), with -race
	bash hack/ensure-deps.sh
	bash hack/tools.sh
	$(GO) test -race -count=1 -timeout 30m ./...

verify: ## gofmt, go vet, staticcheck, go mod tidy: checks only, never writes
	@out=$$(gofmt -l $$(git ls-files '*.go' --cached --others --exclude-standard)); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...
	$(GO) mod tidy -diff

update: ## apply gofmt and go mod tidy (what verify checks)
	gofmt -w $$(git ls-files '*.go' --cached --others --exclude-standard)
	$(GO) mod tidy

bench: ## benchmarks (root: tmpfs, network namespaces); writes docs/benchmarks.md, about 20 minutes
	bash hack/ensure-deps.sh
	bash hack/bench.sh

bench-quick: ## four shaped hosts broadcast a 256 MiB model, and a chain head alone against a direct fetch: correctness and byte counts (part of make test)
	bash hack/ensure-deps.sh
	$(GO) test -count=1 -run 'TestBenchQuick|TestHeadQuick' -v ./test/netbench/

chaos: ## chaos soak: agents killed, frozen, released, late joiners, Redis and OSS faults, invariants checked (CHAOS_S seconds, default 300; CHAOS_SEED replays)
	CHAOS_S=$${CHAOS_S:-300} $(GO) test -count=1 -timeout 30m -run TestChaos -v ./test/chaos/

generate: ## deepcopy methods and the chart's CRDs from the API types in pkg/apis, with controller-gen (a test checks they are current)
	bash hack/generate.sh

manifests: generate ## render the Helm chart into deploy/modelcast.yaml (a test checks it is current)
	bash hack/manifests.sh

demo: ## the emulator serves a generated model; csi-plugin fetch downloads and verifies it
	bash hack/demo.sh

.PHONY: e2e-cluster e2e-down
e2e: ## a real single-node Kubernetes (built once, cached): helm install the chart, pods read models (about 7 min cold, 1.5 min warm)
	bash hack/e2e/run.sh

e2e-cluster: ## build and start the local cluster (cached under /var/tmp/modelcast-e2e)
	bash hack/e2e/cluster.sh all

e2e-down: ## stop the local cluster
	bash hack/e2e/cluster.sh down

clean: ## remove build output
	rm -rf $(BIN)
