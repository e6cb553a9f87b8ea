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
