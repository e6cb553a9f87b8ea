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
