# gpupass build. `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X gpupass/internal/buildinfo.Version=$(VERSION)
PROTOC_GEN_GO_VERSION := v1.36.12
STATICCHECK_VERSION := v0.8.2
GOBIN ?= $(shell $(GO) env GOPATH)/bin
PREFIX ?= /usr/local

.PHONY: help build deb install uninstall test lint proto proto-check bench e2e demo demo-clean fuzz soak clean

help: ## list the documented targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

build: ## build bin/gpupass, bin/gpupass-host-agent and the static bin/gpupass-guest-agent
	@mkdir -p $(BIN)
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gpupass ./controller
	$(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gpupass-host-agent ./agent-host
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN)/gpupass-guest-agent ./agent-guest

deb: build ## the Debian packages gpupass, gpupass-host-agent, gpupass-guest-agent in build/deb (nfpm; version from git describe)
	cd packaging/deb && $(GO) build -trimpath -o ../../$(BIN)/gpupass-deb .
	$(BIN)/gpupass-deb --describe "$$(git describe --tags --long --always --dirty --match 'v[0-9]*')" \
	  --commits "$$(git rev-list --count HEAD)" --mtime "$$(git log -1 --format=%ct)" --bin $(BIN) --out build/deb

install: build ## copy the three binaries to $(DESTDIR)$(PREFIX)/bin (default /usr/local/bin), so that gpupass is on PATH
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 $(BIN)/gpupass $(BIN)/gpupass-host-agent $(BIN)/gpupass-guest-agent $(DESTDIR)$(PREFIX)/bin/

uninstall: ## remove what make install copied
	rm -f $(DESTDIR)$(PREFIX)/bin/gpupass $(DESTDIR)$(PREFIX)/bin/gpupass-host-agent $(DESTDIR)$(PREFIX)/bin/gpupass-guest-agent

test: build ## run unit and integration tests (root + LXC parts skip locally without them, never with CI=true)
	$(GO) test -count=1 -timeout 20m ./...

lint: ## gofmt, go vet, staticcheck and deadcode (pinned), go mod tidy drift, systemd unit checks
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GOBIN)/staticcheck ./...
	@out=$$($(GOBIN)/deadcode -test ./... 2>/tmp/gpupass-deadcode.err) || { cat /tmp/gpupass-deadcode.err; exit 1; }; \
	  if [ -n "$$out" ]; then echo "unreachable code (deadcode -test, also from tests): delete it"; echo "$$out"; exit 1; fi
	@cp go.mod /tmp/gpupass.go.mod.bak; cp go.sum /tmp/gpupass.go.sum.bak; $(GO) mod tidy; \
	  if ! git diff --quiet -- go.mod go.sum; then echo "go mod tidy changes go.mod/go.sum"; git --no-pager diff -- go.mod go.sum; exit 1; fi
	@./scripts/check-units.sh

proto: ## regenerate proto/gpupass/v1/*.pb.go with pinned protoc-gen-go
	@test "$$($(GOBIN)/protoc-gen-go --version)" = "protoc-gen-go $(PROTOC_GEN_GO_VERSION)" || $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	PATH=$(GOBIN):$$PATH protoc --proto_path=proto --go_out=. --go_opt=module=gpupass proto/gpupass/v1/*.proto

proto-check: proto ## fail when regenerating the protobuf code changes tracked files
	@git diff --exit-code -- proto/ || { echo "generated protobuf code is stale: run make proto and commit"; exit 1; }

e2e: build ## end-to-end scenarios on real LXC containers (root)
	$(GO) test -count=1 -timeout 10m -v ./test/...

bench: build ## benchmarks side by side with their baselines; writes bench/results.json and docs/benchmarks.md
	./scripts/bench.sh

fuzz: ## run every fuzz target for FUZZTIME (default 30s)
	./scripts/fuzz.sh $${FUZZTIME:-30s}

soak: build ## 60 s of 200 reporting guests and 50 concurrent status queries
	./scripts/soak.sh

demo: build ## local demo: host agent + real LXC container on a simulated GPU host, plan/apply/status
	./scripts/demo.sh

demo-clean: ## remove what the demo made (it says what stays: bin/, packages, Go caches)
	./scripts/demo.sh clean

clean: ## remove build outputs
	rm -rf $(BIN) build
