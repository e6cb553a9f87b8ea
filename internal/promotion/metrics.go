package promotion

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// Counted once, when a promotion reaches its final phase. Stage and
// Delivery names are left out: the counts are for the whole cluster, and a
// promotion's own story is on its status.
var (
	promotionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_promotions_total",
		Help: "Promotions that reached a final phase, by result (Landed, Rejected, Expired, Failed).",
	}, []string{"result"})
	promotionDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_promotion_duration_seconds",
		Help:    "Time from a promotion's request to its final phase, by result.",
		Buckets: waitBuckets,
	}, []string{"result"})
	decisionsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_promotion_decisions_total",
		Help: "Reviewers' decisions on promotions that reached a final phase, by decision (Approve, Reject).",
	}, []string{"decision"})
	decisionWait = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_promotion_decision_wait_seconds",
		Help:    "Time from a promotion's request to each reviewer's decision, by decision.",
		Buckets: waitBuckets,
	}, []string{"decision"})
)

// Waits run from seconds (a reviewer at hand) to the 72 hours a promotion
// may wait by default.
var waitBuckets = []float64{10, 60, 300, 900, 1800, 3600, 3 * 3600, 8 * 3600, 24 * 3600, 72 * 3600}

func init() {
	metrics.Registry.MustRegister(promotionsTotal, promotionDuration, decisionsTotal, decisionWait)
	for _, phase := range []string{slipwayv1.PromotionLanded, slipwayv1.PromotionRejected, slipwayv1.PromotionExpired, slipwayv1.PromotionFailed} {
		promotionsTotal.WithLabelValues(phase)
		promotionDuration.WithLabelValues(phase)
	}
	for _, d := range []string{slipwayv1.DecisionApprove, slipwayv1.DecisionReject} {
		decisionsTotal.WithLabelValues(d)
		decisionWait.WithLabelValues(d)
	}
}

// observeFinished records a promotion that has just reached phase at now.
func observeFinished(p *slipwayv1.Promotion, phase string, now time.Time) {
	promotionsTotal.WithLabelValues(phase).Inc()
	promotionDuration.WithLabelValues(phase).Observe(now.Sub(p.CreationTimestamp.Time).Seconds())
	for _, a := range p.Spec.Approvals {
		decisionsTotal.WithLabelValues(a.Decision).Inc()
		if wait := a.At.Sub(p.CreationTimestamp.Time); wait >= 0 {
			decisionWait.WithLabelValues(a.Decision).Observe(wait.Seconds())
		}
	}
}
