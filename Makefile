# Slipway: two commands for a newcomer: `make demo` and `make test`.
SHELL := /bin/bash
GO ?= go
BIN := bin/slipway
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
# config/rbac_test.go runs the same generator to find a stale config/rbac/slipway-server.yaml.
RBAC_GEN := rbac:roleName=slipway-server,fileName=slipway-server.yaml,headerFile=hack/rbac-header.yaml.txt
LDFLAGS := -X slipway.dev/slipway/internal/version.Version=$(VERSION)

.PHONY: all build demo demo-real test test-short deps upstream generate verify bench bench-peers fuzz lint clean

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN) ./cmd/slipway

## demo: bring up the lab, deploy tea and coffee from the ops repo, keep running until Ctrl-C
demo: deps build
	$(BIN) lab demo

## demo-real: the demo on real nodes (root): kubelet, containerd and kube-proxy on worker-01 and
## worker-02, Traefik behind the edge load balancer; prints the edge address. The lab installs
## containerd, runc, containernetworking-plugins, iptables and conntrack with apt-get when missing.
demo-real: deps build
	$(BIN) lab demo --real-nodes

## test: install what the tests need, build the pinned upstream binaries, run every test
test: deps upstream
	@unformatted=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
		if [ -n "$$unformatted" ]; then echo "gofmt needed:"; echo "$$unformatted"; exit 1; fi
	$(GO) vet ./...
	SLIPWAY_TEST_REQUIRE_DEPS=1 $(GO) test -count=1 -timeout 30m ./...

## deps: system packages the tests need (git for the git server, runc for isolated test steps,
## Prometheus and Alertmanager for the monitoring tests and `lab up --monitoring`, PostgreSQL for the
## audit store, Chromium and a Korean font for the evidence pack, a static busybox for the runner image)
deps:
	@command -v git >/dev/null || { echo "installing git"; apt-get update -qq && apt-get install -y -qq git; }
	@command -v runc >/dev/null || { echo "installing runc"; apt-get update -qq && apt-get install -y -qq runc; }
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null || { echo "installing prometheus and prometheus-alertmanager"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager && \
		{ [ ! -d /run/systemd/system ] || systemctl disable --now prometheus.service prometheus-alertmanager.service; }; }
	@ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || { echo "installing postgresql"; apt-get update -qq && apt-get install -y -qq postgresql; }
	@command -v chromium >/dev/null || { echo "installing chromium"; apt-get update -qq && apt-get install -y -qq chromium; }
	@test -x /bin/busybox || { echo "installing busybox-static"; apt-get update -qq && apt-get install -y -qq busybox-static; }
	@test -d /usr/share/fonts/truetype/nanum || { echo "installing fonts-nanum"; apt-get update -qq && apt-get install -y -qq fonts-nanum; }
	$(GO) mod download

## upstream: build and cache etcd, Kubernetes and KWOK (minutes the first time, instant later)
upstream: build
	$(BIN) lab build

## generate: regenerate deepcopy code and CRD manifests from api/, and the server's RBAC from the +kubebuilder:rbac markers
generate:
	$(GO) tool controller-gen object:headerFile=hack/boilerplate.go.txt paths=./api/... \
		crd:crdVersions=v1 output:crd:artifacts:config=config/crd
	$(GO) tool controller-gen $(RBAC_GEN) paths=./internal/... output:rbac:artifacts:config=config/rbac

## bench: scale and speed scenarios (see docs/benchmarks.md), bench-peers' included
bench: deps upstream
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 240m ./bench/...

## bench-peers: Slipway beside Flux (built from the Go module proxy the first time: minutes) and a
## direct server-side apply, each on a fresh lab; SLIPWAY_BENCH_APPS=100,1000 (5000 on request),
## SLIPWAY_BENCH_PEER_RUNS=3; writes docs/benchmarks-peers.{json,md,png}
bench-peers: deps upstream
	$(GO) test -run '^$$' -bench GitOpsPeers -benchtime 1x -timeout 240m ./bench/

## fuzz: run each fuzz target for a short while
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParsePush -fuzztime 20s ./internal/webhook
	$(GO) test -run '^$$' -fuzz FuzzDecode -fuzztime 20s ./internal/manifest
	$(GO) test -run '^$$' -fuzz FuzzReadRecords -fuzztime 20s -fuzzminimizetime 1s ./internal/audit
	$(GO) test -run '^$$' -fuzz FuzzVerify -fuzztime 20s -fuzzminimizetime 1s ./internal/audit
	$(GO) test -run '^$$' -fuzz FuzzParseCheckpoint -fuzztime 10s ./internal/audit

lint:
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

clean:
	rm -rf bin
