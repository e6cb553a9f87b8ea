package gitops

import (
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// Series labelled by namespace and name cost one per Application (an
// object someone created, so bounded by what the cluster holds); revisions,
// commits and messages are never labels: they would add a series per push.
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
	readyGauge = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipway_application_ready",
		Help: "1 when the Application's Ready condition is True, else 0; reason is the condition's reason (e.g. GitOperationFailed, PolicyViolation).",
	}, []string{"namespace", "name", "reason"})
	deploymentsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_application_deployments_total",
		Help: "Deployments of a new revision (or a rollback) to an Application, whether they succeeded or not.",
	}, []string{"namespace", "name"})
	deploymentFailuresTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_application_deployment_failures_total",
		Help: "Deployments that failed: the revision could not be applied, or its rollout ended Degraded.",
	}, []string{"namespace", "name"})
	recoveryDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_application_recovery_duration_seconds",
		Help:    "Time from an Application turning Degraded to its being Healthy again (time to restore service).",
		Buckets: []float64{10, 30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 12 * 3600, 24 * 3600, 7 * 24 * 3600},
	})
	syncDuration = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_application_sync_duration_seconds",
		Help:    "Time taken by the reconciliations that deployed a revision (fetch, render, policy, apply, audit record).",
		Buckets: prometheus.ExponentialBuckets(0.01, 2, 14),
	})
	objectsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_application_sync_objects_total",
		Help: "Objects handled by syncs, by action: created, configured, unchanged (applied, nothing changed), skipped (read and found as the last sync left it, so neither dry-run nor applied).",
	}, []string{"action"})
)

func init() {
	metrics.Registry.MustRegister(reconcileDuration, reconcileTotal, syncGauge, healthGauge, readyGauge,
		deploymentsTotal, deploymentFailuresTotal, recoveryDuration, syncDuration, objectsTotal)
}

var (
	syncStates   = []string{slipwayv1.SyncStatusSynced, slipwayv1.SyncStatusOutOfSync, slipwayv1.SyncStatusUnknown}
	healthStates = []string{slipwayv1.HealthHealthy, slipwayv1.HealthProgressing, slipwayv1.HealthDegraded, slipwayv1.HealthUnknown}
)

// appMetrics is what the metrics of one Application remember between
// reconciliations: the reason its ready series carries, and since when it
// has been Degraded.
type appMetrics struct {
	readyReason   string
	degradedSince time.Time
}

var (
	appMetricsMu sync.Mutex
	appStates    = map[types.NamespacedName]*appMetrics{}
)

// recordState sets the one-hot gauges so dashboards can count apps per
// state, and observes a recovery when a Degraded Application is Healthy
// again.
func recordState(app *slipwayv1.Application) {
	for _, s := range syncStates {
		syncGauge.WithLabelValues(app.Namespace, app.Name, s).Set(boolFloat(app.Status.Sync.Status == s))
	}
	for _, s := range healthStates {
		healthGauge.WithLabelValues(app.Namespace, app.Name, s).Set(boolFloat(app.Status.Health.Status == s))
	}
	ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady)
	reason, isReady := "", false
	if ready != nil {
		reason, isReady = ready.Reason, ready.Status == metav1.ConditionTrue
	}

	key := types.NamespacedName{Namespace: app.Namespace, Name: app.Name}
	appMetricsMu.Lock()
	defer appMetricsMu.Unlock()
	st, known := appStates[key]
	if !known {
		st = &appMetrics{}
		appStates[key] = st
		// Counted from zero, so a failure rate is 0 rather than nothing
		// until the first failure.
		deploymentsTotal.WithLabelValues(app.Namespace, app.Name)
		deploymentFailuresTotal.WithLabelValues(app.Namespace, app.Name)
	} else if st.readyReason != reason {
		readyGauge.DeleteLabelValues(app.Namespace, app.Name, st.readyReason)
	}
	st.readyReason = reason
	readyGauge.WithLabelValues(app.Namespace, app.Name, reason).Set(boolFloat(isReady))

	switch app.Status.Health.Status {
	case slipwayv1.HealthDegraded:
		if st.degradedSince.IsZero() {
			st.degradedSince = time.Now()
			// Degraded before this process saw it (a restart): the Ready
			// condition turned False then.
			if ready != nil && ready.Reason == ReasonDegraded && ready.Status == metav1.ConditionFalse {
				st.degradedSince = ready.LastTransitionTime.Time
			}
		}
	case slipwayv1.HealthHealthy:
		if !st.degradedSince.IsZero() {
			recoveryDuration.Observe(time.Since(st.degradedSince).Seconds())
			st.degradedSince = time.Time{}
		}
	}
}

// countDeployment records a deployment of app; failed when its revision
// could not be applied.
func countDeployment(app *slipwayv1.Application, failed bool) {
	deploymentsTotal.WithLabelValues(app.Namespace, app.Name).Inc()
	if failed {
		deploymentFailuresTotal.WithLabelValues(app.Namespace, app.Name).Inc()
	}
}

// countRolloutFailure records a deployment whose rollout ended Degraded.
func countRolloutFailure(app *slipwayv1.Application) {
	deploymentFailuresTotal.WithLabelValues(app.Namespace, app.Name).Inc()
}

func forgetState(namespace, name string) {
	for _, s := range syncStates {
		syncGauge.DeleteLabelValues(namespace, name, s)
	}
	for _, s := range healthStates {
		healthGauge.DeleteLabelValues(namespace, name, s)
	}
	key := types.NamespacedName{Namespace: namespace, Name: name}
	appMetricsMu.Lock()
	defer appMetricsMu.Unlock()
	if st, ok := appStates[key]; ok {
		readyGauge.DeleteLabelValues(namespace, name, st.readyReason)
		delete(appStates, key)
	}
	deploymentsTotal.DeleteLabelValues(namespace, name)
	deploymentFailuresTotal.DeleteLabelValues(namespace, name)
}

func boolFloat(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
