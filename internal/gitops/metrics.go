package gitops

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

var (
	reconcileDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_application_reconcile_duration_seconds",
		Help:    "Time taken by one reconciliation of an Application, by result.",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	}, []string{"result"})
	reconcileTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_application_reconcile_total",
		Help: "Reconciliations of Applications by result (success, error, stalled).",
	}, []string{"result"})
	syncGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipway_application_sync_status",
		Help: "1 for the Application's current sync status (Synced, OutOfSync, Unknown), 0 for the others.",
	}, []string{"namespace", "name", "status"})
	healthGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipway_application_health_status",
		Help: "1 for the Application's current health (Healthy, Progressing, Degraded, Unknown), 0 for the others.",
	}, []string{"namespace", "name", "status"})
	syncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_application_sync_duration_seconds",
		Help:    "Time taken by the reconciliations that deployed a revision (fetch, render, policy, apply, audit record).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	})
	gitFetchDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_git_fetch_duration_seconds",
		Help:    "Time taken to fetch a revision from git, by result.",
		Buckets: prometheus.ExponentialBuckets(0.005, 2, 14),
	}, []string{"result"})
)

func init() {
	metrics.Registry.MustRegister(reconcileDuration, syncDuration, reconcileTotal, syncGauge, healthGauge, gitFetchDuration)
}

var (
	syncStates   = []string{slipwayv1.SyncStatusSynced, slipwayv1.SyncStatusOutOfSync, slipwayv1.SyncStatusUnknown}
	healthStates = []string{slipwayv1.HealthHealthy, slipwayv1.HealthProgressing, slipwayv1.HealthDegraded, slipwayv1.HealthUnknown}
)

// recordState sets the one-hot gauges so dashboards can count apps per state.
func recordState(app *slipwayv1.Application) {
	for _, s := range syncStates {
		syncGauge.WithLabelValues(app.Namespace, app.Name, s).Set(boolFloat(app.Status.Sync.Status == s))
	}
	for _, s := range healthStates {
		healthGauge.WithLabelValues(app.Namespace, app.Name, s).Set(boolFloat(app.Status.Health.Status == s))
	}
}

func forgetState(namespace, name string) {
	for _, s := range syncStates {
		syncGauge.DeleteLabelValues(namespace, name, s)
	}
	for _, s := range healthStates {
		healthGauge.DeleteLabelValues(namespace, name, s)
	}
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
