package pipeline

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// Only runsTotal is labelled by pipeline: a counter costs one series per
// pipeline and result, a histogram a dozen per label set, so the histograms
// stay cluster-wide. A run's own lead times are on its status.
var (
	runsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_pipeline_runs_total",
		Help: "Finished PipelineRuns by namespace, pipeline and result (Succeeded, Failed, Cancelled).",
	}, []string{"namespace", "pipeline", "result"})
	runDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_pipeline_run_duration_seconds",
		Help:    "Time from a run's start to its end, by result.",
		Buckets: prometheus.ExponentialBuckets(5, 2, 10),
	}, []string{"result"})
	stepDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name:    "slipway_pipeline_step_duration_seconds",
		Help:    "Time taken by a run's step, by step and state (Succeeded, Failed, Skipped).",
		Buckets: prometheus.ExponentialBuckets(0.25, 2, 14),
	}, []string{"step", "state"})
	leadTimePromoted = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_pipeline_lead_time_promoted_seconds",
		Help:    "Time from the built commit's committer time to its image's promotion into the ops repository.",
		Buckets: leadTimeBuckets,
	})
	leadTimeRunning = prometheus.NewHistogram(prometheus.HistogramOpts{
		Name:    "slipway_pipeline_lead_time_running_seconds",
		Help:    "Time from the built commit's committer time to its promotion running Synced and Healthy in an Application.",
		Buckets: leadTimeBuckets,
	})
)

// Lead times run from a minute (a push built at once) to weeks (a commit
// that waited on a branch).
var leadTimeBuckets = []float64{30, 60, 120, 300, 600, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 24 * 3600, 2 * 24 * 3600, 7 * 24 * 3600, 30 * 24 * 3600}

func init() {
	metrics.Registry.MustRegister(runsTotal, runDuration, stepDuration, leadTimePromoted, leadTimeRunning)
}

// observeFinished records a run that has just ended; res is nil when the
// engine never ran it (cancelled before it started, interrupted, or the
// Pipeline could not be read), and then only the count is recorded: there is
// no work whose duration would mean anything.
func observeFinished(run *slipwayv1.PipelineRun, res *Result) {
	runsTotal.WithLabelValues(run.Namespace, run.Spec.PipelineRef.Name, run.Status.Phase).Inc()
	if res == nil {
		return
	}
	if start, end := run.Status.StartTime, run.Status.CompletionTime; start != nil && end != nil {
		runDuration.WithLabelValues(run.Status.Phase).Observe(end.Sub(start.Time).Seconds())
	}
	// Durations come from the engine's result, not from the status, whose
	// timestamps are rounded to the second.
	for _, s := range res.Steps {
		if !s.Started.IsZero() {
			stepDuration.WithLabelValues(string(s.Name), string(s.State)).Observe(s.Duration().Seconds())
		}
	}
	if p := res.Step(StepPromote); p != nil && p.State == StepSucceeded && res.PromotionCommit != "" {
		observeLeadTime(leadTimePromoted, res.CommitTime, p.Finished)
	}
}

// observeLeadTime records at-commit. A committer clock ahead of ours gives a
// negative lead time that says nothing about the delivery, so it is left out
// rather than counted as zero.
func observeLeadTime(h prometheus.Histogram, commit, at time.Time) {
	if commit.IsZero() || at.Before(commit) {
		return
	}
	h.Observe(at.Sub(commit).Seconds())
}
