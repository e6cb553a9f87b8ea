package imagebuild

import (
	"context"
	"errors"
	"net/http"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Registry operations are counted by registry host, never by repository,
// tag or digest, which grow with every build.
var (
	registryOperations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_registry_operations_total",
		Help: "Operations on OCI registries (pull, push, sign, verify) by registry host and result (success, timeout, auth_failed, not_found, error).",
	}, []string{"operation", "registry", "result"})
	registryOperationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_registry_operation_duration_seconds",
		Help:    "Time taken by an operation on an OCI registry (pull, push, sign, verify), by result.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	}, []string{"operation", "result"})
)

func init() { metrics.Registry.MustRegister(registryOperations, registryOperationDuration) }

// Registry operations, the values of the operation label.
const (
	RegistryPull   = "pull"
	RegistryPush   = "push"
	RegistrySign   = "sign"
	RegistryVerify = "verify"
)

// ObserveRegistryOperation records one operation on registry (host[:port])
// that started at start and returned err.
func ObserveRegistryOperation(operation, registry string, start time.Time, err error) {
	result := registryResult(err)
	registryOperations.WithLabelValues(operation, registry, result).Inc()
	registryOperationDuration.WithLabelValues(operation, result).Observe(time.Since(start).Seconds())
}

func registryResult(err error) string {
	var terr *transport.Error
	switch {
	case err == nil:
		return "success"
	case errors.Is(err, context.DeadlineExceeded):
		return "timeout"
	case errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden):
		return "auth_failed"
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound:
		return "not_found"
	}
	return "error"
}
