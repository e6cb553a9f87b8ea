package pipeline

import (
	"context"
	"errors"
	"math"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/testenv"
)

// TestRunMetricsAndDeployment finishes runs through the controller's finish
// path and checks what they count, then plays the GitOps engine's part by
// writing Application statuses: only an Application deploying the
// promotion's path, Synced and Healthy at the promotion commit, marks the
// run deployed, and the commit-to-running lead time is observed once.
func TestRunMetricsAndDeployment(t *testing.T) {
	env := startAPIServer(t)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	ns := env.Namespace(t)
	now := time.Now().Truncate(time.Second)
	commitTime := now.Add(-time.Hour)

	t.Run("finish", func(t *testing.T) {
		r := &RunReconciler{Client: env.Client}
		run := createRun(ctx, t, env, ns, "tea-run-1")
		started := metav1.NewTime(now.Add(-2 * time.Minute))
		run.Status.Phase, run.Status.StartTime = slipwayv1.RunRunning, &started
		if err := env.Client.Status().Update(ctx, run); err != nil {
			t.Fatal(err)
		}
		step := func(name StepName, from, to time.Duration) StepResult {
			return StepResult{Name: name, State: StepSucceeded, Started: now.Add(from), Finished: now.Add(to)}
		}
		res := &Result{
			Commit: run.Spec.Commit, CommitTime: commitTime, Image: "registry.example/shop/tea@sha256:" + strings.Repeat("0", 64),
			Digest: "sha256:" + strings.Repeat("0", 64), PromotionCommit: strings.Repeat("0", 40),
			Steps: []StepResult{step(StepCheckout, -110*time.Second, -109*time.Second), step(StepBuild, -100*time.Second, -40*time.Second),
				step(StepPromote, -20*time.Second, -10*time.Second)},
		}
		promoteCount, promoteSum := histogram(t, leadTimePromoted)
		buildCount, _ := histogram(t, stepDuration.WithLabelValues("build", "Succeeded"))
		runCount, _ := histogram(t, runDuration.WithLabelValues(slipwayv1.RunSucceeded))
		if err := r.finish(ctx, run, res, nil, slipwayv1.RunSucceeded); err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(runsTotal.WithLabelValues(ns, "tea", slipwayv1.RunSucceeded)); got != 1 {
			t.Errorf("runs_total{Succeeded} = %v, want 1", got)
		}
		if n, _ := histogram(t, runDuration.WithLabelValues(slipwayv1.RunSucceeded)); n != runCount+1 {
			t.Errorf("run duration observations = %d, want %d", n, runCount+1)
		}
		if n, _ := histogram(t, stepDuration.WithLabelValues("build", "Succeeded")); n != buildCount+1 {
			t.Errorf("build step observations = %d, want %d", n, buildCount+1)
		}
		n, sum := histogram(t, leadTimePromoted)
		if want := (time.Hour - 10*time.Second).Seconds(); n != promoteCount+1 || math.Abs(sum-promoteSum-want) > 0.001 {
			t.Errorf("promoted lead time: %d observations summing %vs more, want 1 of %vs", n-promoteCount, sum-promoteSum, want)
		}
		if run.Status.CommitTime == nil || !run.Status.CommitTime.Time.Equal(commitTime) {
			t.Errorf("status.commitTime = %v, want %v", run.Status.CommitTime, commitTime)
		}

		// A run cancelled before the engine ran it is counted but has no duration.
		cancelled := createRun(ctx, t, env, ns, "tea-run-2")
		cancelledCount, _ := histogram(t, runDuration.WithLabelValues(slipwayv1.RunCancelled))
		if err := r.finish(ctx, cancelled, nil, errors.New("cancelled before it started"), slipwayv1.RunCancelled); err != nil {
			t.Fatal(err)
		}
		if got := testutil.ToFloat64(runsTotal.WithLabelValues(ns, "tea", slipwayv1.RunCancelled)); got != 1 {
			t.Errorf("runs_total{Cancelled} = %v, want 1", got)
		}
		if n, _ := histogram(t, runDuration.WithLabelValues(slipwayv1.RunCancelled)); n != cancelledCount {
			t.Errorf("a run that never started observed a duration")
		}
		for _, name := range []string{"slipway_pipeline_runs_total", "slipway_pipeline_run_duration_seconds",
			"slipway_pipeline_step_duration_seconds", "slipway_pipeline_lead_time_promoted_seconds"} {
			if n, err := testutil.GatherAndCount(metrics.Registry, name); err != nil || n == 0 {
				t.Errorf("%s is not served from controller-runtime's registry: %d series, %v", name, n, err)
			}
		}
	})

	t.Run("deployed", func(t *testing.T) {
		const (
			opsURL      = "http://git.example/shop/ops.git"
			promotion   = "abcdefabcdefabcdefabcdefabcdefabcdefabcd"
			otherCommit = "0123456789012345678901234567890123456789"
		)
		pipe := &slipwayv1.Pipeline{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea"},
			Spec: slipwayv1.PipelineSpec{
				Source:    slipwayv1.PipelineSource{URL: "http://git.example/shop/tea"},
				Image:     slipwayv1.ImageTarget{Repository: "registry.example/shop/tea"},
				Signing:   slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing"}},
				Promotion: &slipwayv1.PromotionTarget{URL: opsURL, Path: "apps/tea/kustomization.yaml", ImageName: "tea"},
			},
		}
		if err := env.Client.Create(ctx, pipe); err != nil {
			t.Fatal(err)
		}
		// The run is finished before the controller starts, so it is not executed.
		run := createRun(ctx, t, env, ns, "tea-run-3")
		ct, done := metav1.NewTime(commitTime), metav1.NewTime(now.Add(-30*time.Minute))
		run.Status = slipwayv1.PipelineRunStatus{Phase: slipwayv1.RunSucceeded, CompletionTime: &done, PromotionCommit: promotion, CommitTime: &ct}
		if err := env.Client.Status().Update(ctx, run); err != nil {
			t.Fatal(err)
		}

		// Applications that must not mark it, seen Ready earlier than the one
		// that does so that a wrong match would win: one deploying another
		// path at the promotion commit, one deploying the path at another
		// revision.
		appNS := env.Namespace(t)
		createApp(ctx, t, env, appNS, "coffee", opsURL, "apps/coffee", promotion, now.Add(-50*time.Minute))
		createApp(ctx, t, env, appNS, "tea-staging", opsURL, "apps/tea", otherCommit, now.Add(-40*time.Minute))

		mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
			Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
			Controller: config.Controller{SkipNameValidation: ptr(true)},
		})
		if err != nil {
			t.Fatal(err)
		}
		r := &RunReconciler{Client: mgr.GetClient(), Recorder: mgr.GetEventRecorderFor("test")}
		if err := r.SetupWithManager(mgr); err != nil {
			t.Fatal(err)
		}
		before, beforeSum := histogram(t, leadTimeRunning)
		reconciled := runReconciles(t)
		go func() { _ = mgr.Start(ctx) }()
		// Wait for the runs that exist (three) to be reconciled, so the
		// Application below is found through the watch, not by the first pass.
		for deadline := time.Now().Add(30 * time.Second); runReconciles(t) < reconciled+3; time.Sleep(50 * time.Millisecond) {
			if time.Now().After(deadline) {
				t.Fatal("the existing runs were not reconciled within 30s")
			}
		}

		// The Application that runs it lives in yet another namespace, and
		// names the repository with a trailing slash instead of .git.
		readyAt := now.Add(-10 * time.Minute)
		teaNS := env.Namespace(t)
		createApp(ctx, t, env, teaNS, "tea", "http://git.example/shop/ops/", "apps/tea", promotion, readyAt)

		deadline := time.Now().Add(30 * time.Second)
		for {
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), run); err != nil {
				t.Fatal(err)
			}
			if n, _ := histogram(t, leadTimeRunning); run.Status.DeployedAt != nil && n > before {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("run not marked deployed after 30s: %+v", run.Status)
			}
			time.Sleep(100 * time.Millisecond)
		}
		if !run.Status.DeployedAt.Time.Equal(readyAt) || run.Status.DeployedApplication != teaNS+"/tea" {
			t.Errorf("deployed %v in %q, want %v in %s/tea", run.Status.DeployedAt, run.Status.DeployedApplication, readyAt, teaNS)
		}
		n, sum := histogram(t, leadTimeRunning)
		if want := readyAt.Sub(commitTime).Seconds(); n != before+1 || math.Abs(sum-beforeSum-want) > 0.001 {
			t.Errorf("running lead time: %d observations summing %vs, want 1 of %vs", n-before, sum-beforeSum, want)
		}
	})
}

func createRun(ctx context.Context, t *testing.T, env *testenv.Env, ns, name string) *slipwayv1.PipelineRun {
	t.Helper()
	run := &slipwayv1.PipelineRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "tea"}, Commit: strings.Repeat("0", 40)},
	}
	if err := env.Client.Create(ctx, run); err != nil {
		t.Fatal(err)
	}
	return run
}

// createApp creates an Application and writes the status the GitOps engine
// writes once revision is applied (two minutes before readyAt) and healthy.
func createApp(ctx context.Context, t *testing.T, env *testenv.Env, ns, name, url, path, revision string, readyAt time.Time) {
	t.Helper()
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: url, Path: path},
			Destination: slipwayv1.ApplicationDestination{Namespace: name},
		},
	}
	if err := env.Client.Create(ctx, app); err != nil {
		t.Fatal(err)
	}
	applied := metav1.NewTime(readyAt.Add(-2 * time.Minute))
	app.Status = slipwayv1.ApplicationStatus{
		LastAppliedRevision: revision, LastAppliedAt: &applied,
		Sync:    slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: revision},
		Health:  slipwayv1.HealthStatus{Status: slipwayv1.HealthHealthy},
		History: []slipwayv1.RevisionHistory{{ID: 1, Revision: revision, DeployedAt: applied, Result: "Succeeded"}},
		Conditions: []metav1.Condition{{Type: slipwayv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "Succeeded",
			Message: "revision applied and healthy", LastTransitionTime: metav1.NewTime(readyAt)}},
	}
	if err := env.Client.Status().Update(ctx, app); err != nil {
		t.Fatal(err)
	}
}

// runReconciles sums controller-runtime's count of PipelineRun reconciles.
func runReconciles(t *testing.T) float64 {
	t.Helper()
	families, err := metrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	var n float64
	for _, f := range families {
		if f.GetName() != "controller_runtime_reconcile_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "controller" && l.GetValue() == "pipelinerun" {
					n += m.GetCounter().GetValue()
				}
			}
		}
	}
	return n
}

// histogram reads a histogram's observation count and sum.
func histogram(t *testing.T, o prometheus.Observer) (uint64, float64) {
	t.Helper()
	m := &dto.Metric{}
	if err := o.(prometheus.Metric).Write(m); err != nil {
		t.Fatal(err)
	}
	return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
}
