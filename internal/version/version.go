// Package version holds the build's version and the upstream versions Slipway targets.
package version

// Version is set at build time with -ldflags "-X slipway.dev/slipway/internal/version.Version=...".
var Version = "v0.1.0-dev"

// Upstream versions the lab runs and the tests are pinned to.
const (
	Kubernetes = "v1.34.4"
	Etcd       = "v3.6.5"
	KWOK       = "v0.8.0"
)

// Upstream versions of what the lab's real nodes run besides Kubernetes:
// cluster DNS, the ingress controller and the load-balancer implementation.
const (
	CoreDNS = "v1.15.0"
	Traefik = "v3.6.12"
	MetalLB = "v0.15.2"
)

// Peer versions the benchmarks compare Slipway with: Flux's
// source-controller and kustomize-controller (one release number for
// both), built from the Go module proxy only when a benchmark asks.
const (
	Flux = "v1.9.6"
	// FluxArtifact is the github.com/fluxcd/pkg/artifact version
	// source-controller v1.9.6 builds with from the module proxy, in place
	// of the one its go.mod requires.
	FluxArtifact = "v0.18.0"
)
