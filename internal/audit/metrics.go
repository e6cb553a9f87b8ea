package audit

import (
	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

var (
	recordDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_audit_record_duration_seconds",
		Help:    "Time from asking for an audit record to its being durable, by kind (records seen before are not counted).",
		Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14),
	}, []string{"kind"})
	recordFailures = prometheus.NewCounter(prometheus.CounterOpts{
		Name: "slipway_audit_record_failures_total",
		Help: "Audit records that could not be written (their actions were not reported done).",
	})
	batchSize = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_audit_batch_records",
		Help:    "Records written together, with one fsync or one transaction.",
		Buckets: prometheus.ExponentialBuckets(1, 2, 10),
	})
	recordsGauge = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "slipway_audit_records",
		Help: "Records in the audit log.",
	})
	checkpointSize = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "slipway_audit_checkpoint_records",
		Help: "Records covered by the newest signed checkpoint.",
	})
	verified = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "slipway_audit_verified",
		Help: "1 when the last verification of the audit log passed (its tail when it opened, then the whole log), 0 when it failed.",
	})
	witnessedSize = prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "slipway_audit_witnessed_records",
		Help: "Records covered by the newest checkpoint the witness holds.",
	})
)

func init() {
	metrics.Registry.MustRegister(recordDuration, recordFailures, batchSize, recordsGauge, checkpointSize, witnessedSize, verified)
}
