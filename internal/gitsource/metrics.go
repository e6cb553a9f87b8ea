package gitsource

import (
	"errors"
	neturl "net/url"
	"strings"
	"time"

	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// Git operations are counted by remote host, never by repository or URL: a
// host is one of the few an organisation runs, a URL may carry a token in
// its path or user information, and repositories multiply with teams.
var (
	operations = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_git_operations_total",
		Help: "Git operations (clone, fetch, push) by remote host and result (success, timeout, auth_failed, not_found, rejected, error).",
	}, []string{"operation", "remote", "result"})
	operationDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_git_operation_duration_seconds",
		Help:    "Time taken by a git operation (clone, fetch, push), by result.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 16),
	}, []string{"operation", "result"})
)

// Operations, the values of the operation label.
const (
	OpClone = "clone"
	OpFetch = "fetch"
	OpPush  = "push"
)

// Results, the values of the result label.
const (
	ResultSuccess    = "success"
	ResultTimeout    = "timeout"
	ResultAuthFailed = "auth_failed"
	ResultNotFound   = "not_found"
	ResultRejected   = "rejected"
	ResultError      = "error"
)

func init() { metrics.Registry.MustRegister(operations, operationDuration) }

// OperationResult is the result label of an operation that returned err.
func OperationResult(err error) string {
	switch {
	case err == nil:
		return ResultSuccess
	case errors.Is(err, ErrTimeout):
		return ResultTimeout
	case errors.Is(err, ErrAuthentication):
		return ResultAuthFailed
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return ResultNotFound
	}
	return ResultError
}

// ObserveOperation records one git operation on the remote at url that
// started at start and ended with result (see OperationResult).
func ObserveOperation(operation, url string, start time.Time, result string) {
	operations.WithLabelValues(operation, RemoteHost(url), result).Inc()
	operationDuration.WithLabelValues(operation, result).Observe(time.Since(start).Seconds())
}

// RemoteHost is the host (and port) of a git URL in lower case, without
// user information: https://token@Git.example.com:8443/org/repo.git gives
// git.example.com:8443, git@github.com:org/repo.git gives github.com.
func RemoteHost(raw string) string {
	if u, err := neturl.Parse(raw); err == nil && u.Host != "" {
		return strings.ToLower(u.Host)
	}
	// scp-like ssh: [user@]host:path
	hostPath := raw
	if at := strings.LastIndexByte(hostPath, '@'); at >= 0 {
		hostPath = hostPath[at+1:]
	}
	host, _, found := strings.Cut(hostPath, ":")
	if !found || host == "" || strings.ContainsAny(host, "/\\") {
		return "unknown"
	}
	return strings.ToLower(host)
}
