package server

import (
	"runtime"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"slipway.dev/slipway/internal/version"
)

var (
	buildInfo = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipway_build_info",
		Help: "Always 1; labels name the running build's version and Go version.",
	}, []string{"version", "goversion"})
	leader = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "slipway_server_leader",
		Help: "1 when this replica leads (runs the controllers), 0 while it waits for the lease. Without leader election every replica leads.",
	})
)

func init() {
	ctrlmetrics.Registry.MustRegister(buildInfo, leader)
	buildInfo.WithLabelValues(version.Version, runtime.Version()).Set(1)
}
