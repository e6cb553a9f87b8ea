package upstream

import (
	"context"
	"strings"
	"testing"
	"time"
)

// TestBuildsResolve asks the go command for the plan of every pinned build
// against the real module proxy, without compiling: a wrong module path or
// version fails here in seconds instead of after a cold build's minutes.
func TestBuildsResolve(t *testing.T) {
	if testing.Short() {
		t.Skip("resolves modules through the module proxy")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if err := DryRun(ctx, t.TempDir()); err != nil {
		t.Fatalf("dry run of the pinned builds: %v", err)
	}
}

// TestDryRunRefusesWrongPaths shows the dry run is a real check: the mistake
// that once broke every fresh machine (the version placed before the package
// path) and a misspelt package of a wrapper module are both reported, naming
// what was asked for.
func TestDryRunRefusesWrongPaths(t *testing.T) {
	if testing.Short() {
		t.Skip("resolves modules through the module proxy")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	kwok := kwokBuild()
	kwok.binaries = []binary{{"kwok", "sigs.k8s.io/kwok@" + kwok.version + "/cmd"}}
	kwok.version = "v0.8.0/kwok"
	err := kwok.dryRun(ctx, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "sigs.k8s.io/kwok@") {
		t.Errorf("dry run of a go install with the version inside the path: got %v, want an error naming it", err)
	}

	etcd := etcdBuild()
	etcd.binaries = []binary{{"etcd", "go.etcd.io/etcd/servr/v3"}}
	err = etcd.dryRun(ctx, t.TempDir())
	if err == nil || !strings.Contains(err.Error(), "go.etcd.io/etcd/servr/v3") {
		t.Errorf("dry run of a misspelt package in a wrapper module: got %v, want an error naming it", err)
	}
}

func TestCacheDirEnv(t *testing.T) {
	t.Setenv("XDG_CACHE_HOME", "/xdg")
	t.Setenv(CacheDirEnv, "")
	if got := CacheDir(); got != "/xdg/slipway" {
		t.Errorf("CacheDir with XDG_CACHE_HOME=/xdg = %q, want /xdg/slipway", got)
	}
	t.Setenv(CacheDirEnv, "/ci/cold")
	if got := CacheDir(); got != "/ci/cold" {
		t.Errorf("CacheDir with %s=/ci/cold = %q, want /ci/cold", CacheDirEnv, got)
	}
	if got := DefaultBinDir(); !strings.HasPrefix(got, "/ci/cold/bin/") {
		t.Errorf("DefaultBinDir = %q, want it under /ci/cold/bin/", got)
	}
}

// TestNodeSetHoldsWhatTheLabRuns: the real-node lab reads these files from
// NodeBinDir by name; each must come from a build (or a module file) the
// dry run checks.
func TestNodeSetHoldsWhatTheLabRuns(t *testing.T) {
	names := map[string]bool{}
	for _, n := range nodeSet().names() {
		names[n] = true
	}
	for _, want := range []string{"kubelet", "kube-proxy", "coredns", "traefik", "metallb-controller", "metallb-speaker", MetalLBManifests} {
		if !names[want] {
			t.Errorf("the nodes' set does not build %s (it has %v)", want, names)
		}
	}
}

// TestPeersAreBuiltOnlyOnRequest: the benchmarks read the peers' binaries
// and Flux's CRDs from PeerBinDir by name, and neither the lab's builds
// (Ensure, EnsureNodes) nor the dry run that `make test` runs include them,
// so a test never starts the minutes-long Flux build.
func TestPeersAreBuiltOnlyOnRequest(t *testing.T) {
	peers := map[string]bool{}
	for _, n := range peerSet().names() {
		peers[n] = true
	}
	for _, want := range append(append([]string{}, Peers...), FluxCRDs) {
		if !peers[want] {
			t.Errorf("the peers' set does not provide %s (it has %v)", want, peers)
		}
	}
	for _, set := range []fileSet{controlPlaneSet(), nodeSet()} {
		for _, n := range set.names() {
			if peers[n] {
				t.Errorf("%s is in a set the lab or the dry run builds", n)
			}
		}
	}
	if dir := PeerBinDir(); dir == DefaultBinDir() || dir == NodeBinDir() {
		t.Errorf("PeerBinDir %s is shared with the lab's binaries", dir)
	}
}
