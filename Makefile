# levy: `make help` lists the targets.
GO      ?= go
PKGS    ?= ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT  ?= $(shell git rev-parse HEAD 2>/dev/null)
DATE    ?= $(shell date -u +%Y-%m-%dT%H:%M:%SZ)
LDFLAGS := -X main.version=$(VERSION) -X main.commit=$(COMMIT) -X main.date=$(DATE)
CONFIG  ?= examples/levy.yaml
DATA    ?= levy-data

.DEFAULT_GOAL := help

.PHONY: help
help: ## List the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-8s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

.PHONY: build
build: ## Build bin/levy
	$(GO) build -ldflags "$(LDFLAGS)" -o bin/levy ./cmd/levy

.PHONY: run
run: ## Serve the example config on the embedded store with demo consumers, and print their keys
	$(GO) run -ldflags "$(LDFLAGS)" ./cmd/levy serve --demo --config $(CONFIG) --data-dir $(DATA)

.PHONY: test
test: ## Run every test with the race detector (and say how many compat and browser tests could not run here)
	@mkdir -p bin && rm -f bin/compat-skips bin/browser-skips
	@echo "$(GO) test -race -count=1 -timeout 9m $(PKGS)"
	@LEVY_COMPAT_REPORT=$(CURDIR)/bin/compat-skips LEVY_BROWSER_REPORT=$(CURDIR)/bin/browser-skips $(GO) test -race -count=1 -timeout 9m $(PKGS); rc=$$?; \
	if [ -s bin/compat-skips ]; then \
		echo "envoyproxy/ratelimit fixtures not found: skipped $$(awk '{n += $$1} END {print n}' bin/compat-skips) compat tests (set LEVY_COMPAT_DIR)"; \
	fi; \
	if [ -s bin/browser-skips ]; then \
		echo "Chromium not found: skipped $$(awk '{n += $$1} END {print n}' bin/browser-skips) browser tests of the portal and console (apt-get install chromium, or set LEVY_CHROMIUM)"; \
	fi; exit $$rc

IMAGE     ?= ghcr.io/levyhq/levy
CONTAINER ?= $(shell command -v podman || { docker info >/dev/null 2>&1 && command -v docker; } || command -v buildah || echo docker)
# The host's CA bundle: Debian/Ubuntu/Alpine, Fedora/RHEL, macOS.
CA_CERTS  ?= $(firstword $(wildcard /etc/ssl/certs/ca-certificates.crt /etc/pki/tls/certs/ca-bundle.crt /etc/ssl/cert.pem))

.PHONY: image
image: ## Build the container image $(IMAGE):$(VERSION) with podman, docker or buildah (no registry needed)
	@test -n "$(CA_CERTS)" || { echo "make image: no CA bundle found; set CA_CERTS=<PEM bundle>"; exit 1; }
	rm -rf bin/image && mkdir -p bin/image/rootfs/etc/ssl/certs bin/image/data
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "-s -w $(LDFLAGS)" -o bin/image/rootfs/levy ./cmd/levy
	cp $(CA_CERTS) bin/image/rootfs/etc/ssl/certs/ca-certificates.crt
	echo 'nonroot:x:65532:65532:nonroot:/var/lib/levy:/sbin/nologin' >bin/image/rootfs/etc/passwd
	echo 'nonroot:x:65532:' >bin/image/rootfs/etc/group
	$(CONTAINER) build --target prebuilt -t $(IMAGE):$(VERSION) -t $(IMAGE):latest .

.PHONY: soak
soak: ## The randomized billing test with new seeds (SEEDS runs of STEPS steps; a failure prints its seed)
	@log=$$(mktemp); for i in $$(seq $${SEEDS:-5}); do \
		LEVY_SOAK_SEED=random LEVY_SOAK_STEPS=$${STEPS:-300} $(GO) test -count=1 -v -run 'TestRandomTrafficIsBilledExactly' ./test/e2e/ >$$log 2>&1; \
		rc=$$?; grep -E '^(---|ok|FAIL|panic)|seed [0-9]|Stripe holds' $$log; \
		if [ $$rc -ne 0 ]; then echo "full output: $$log"; exit 1; fi; \
	done; rm -f $$log

.PHONY: fuzz
fuzz: ## Run every fuzz target for FUZZTIME each (default 1m); a failing input is kept under testdata/fuzz
	@set -e; for f in $$(git ls-files '*_test.go' | xargs grep -l '^func Fuzz'); do \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "fuzz $$t ./$$(dirname $$f) for $${FUZZTIME:-1m}"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $${FUZZTIME:-1m} ./$$(dirname $$f); \
		done; \
	done

# BENCH selects benchmarks by go test's -bench pattern: make bench BENCH=VersusPeer
BENCH ?= .

.PHONY: bench
bench: ## Benchmarks: levy next to a no-op server in the same run, and next to envoyproxy/ratelimit when LEVY_BENCH_PEER_RLS is set
	@if [ -z "$$LEVY_BENCH_PEER_RLS" ]; then \
		echo "LEVY_BENCH_PEER_RLS is not set: the envoyproxy/ratelimit benchmarks (peer-*, BenchmarkRedisVersusPeer, BenchmarkRedisVersusPeerPaced) skip; test/bench/doc.go says how to run one beside levy"; \
	fi
	$(GO) test -run '^$$' -bench '$(BENCH)' -benchtime 3s -count 3 -timeout 60m ./test/bench/

.PHONY: mem
mem: ## Memory of the local store, with and without a data file, for VALUES (default 1M) client addresses on a day quota
	LEVY_MEM_VALUES=$${VALUES:-1000000} $(GO) test -run '^$$' -bench BenchmarkLocalMemory -benchtime 1x -timeout 30m ./pkg/limiter/

.PHONY: lint
lint: ## go vet, and gofmt must have nothing to change
	$(GO) vet $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go') 2>/dev/null); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

.PHONY: fmt
fmt: ## Format the code
	gofmt -w $$(git ls-files '*.go')

.PHONY: tidy
tidy: ## go mod tidy; fails when it changes go.mod or go.sum
	$(GO) mod tidy
	@git diff --exit-code go.mod go.sum

.PHONY: ci
ci: lint test ## What .ci/run runs

.PHONY: clean
clean: ## Remove build output and the demo data dir
	rm -rf bin $(DATA)
