package pipeline

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// A PipelineRun that promoted an image is marked deployed when the GitOps
// engine reports the promotion running. The join is across all namespaces:
// Pipelines usually live in a CI namespace and the Applications deploying
// their ops repository elsewhere, and the ops repository, path and commit
// identify the deployment wherever its Application lives.

const (
	// indexUndeployedPromotion indexes succeeded runs not yet marked
	// deployed by their promotion commit, so an Application's revisions
	// find the runs waiting for them without scanning every run.
	indexUndeployedPromotion = "pipeline.slipway.dev/undeployed-promotion-commit"
	// indexApplicationRepo indexes Applications by normalized source URL.
	indexApplicationRepo = "pipeline.slipway.dev/application-repo"

	// historySucceeded is the result the GitOps engine records in an
	// Application's history for a successful apply.
	historySucceeded = "Succeeded"
)

// setupDeploymentJoin registers the indexes the join reads through the cache.
func setupDeploymentJoin(ctx context.Context, mgr ctrl.Manager) error {
	idx := mgr.GetFieldIndexer()
	if err := idx.IndexField(ctx, &slipwayv1.PipelineRun{}, indexUndeployedPromotion, func(o client.Object) []string {
		run := o.(*slipwayv1.PipelineRun)
		if !awaitsDeployment(run) {
			return nil
		}
		return []string{run.Status.PromotionCommit}
	}); err != nil {
		return fmt.Errorf("indexing PipelineRuns by promotion commit: %w", err)
	}
	if err := idx.IndexField(ctx, &slipwayv1.Application{}, indexApplicationRepo, func(o client.Object) []string {
		return []string{normalizeRepoURL(o.(*slipwayv1.Application).Spec.Source.URL)}
	}); err != nil {
		return fmt.Errorf("indexing Applications by source URL: %w", err)
	}
	return nil
}

func awaitsDeployment(run *slipwayv1.PipelineRun) bool {
	return run.Status.Phase == slipwayv1.RunSucceeded && run.Status.PromotionCommit != "" && run.Status.DeployedAt == nil
}

// runsAwaiting maps an Application to the runs that promoted a revision it
// has deployed and that are not marked yet. Whether the Application really
// deploys their promotion is decided in recordDeployment.
func (r *RunReconciler) runsAwaiting(ctx context.Context, o client.Object) []reconcile.Request {
	app, ok := o.(*slipwayv1.Application)
	if !ok || !runningCleanly(app) {
		return nil
	}
	revisions := map[string]bool{app.Status.LastAppliedRevision: true}
	for _, h := range app.Status.History {
		if h.Result == historySucceeded {
			revisions[h.Revision] = true
		}
	}
	var reqs []reconcile.Request
	for rev := range revisions {
		var runs slipwayv1.PipelineRunList
		if err := r.List(ctx, &runs, client.MatchingFields{indexUndeployedPromotion: rev}); err != nil {
			log.FromContext(ctx).Error(err, "listing runs that promoted a revision", "revision", rev)
			continue
		}
		for _, run := range runs.Items {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: run.Namespace, Name: run.Name}})
		}
	}
	return reqs
}

// recordDeployment marks a succeeded run deployed, once, when an Application
// shows its promotion running, and observes the commit-to-running lead time.
func (r *RunReconciler) recordDeployment(ctx context.Context, run *slipwayv1.PipelineRun) error {
	if !awaitsDeployment(run) {
		return nil
	}
	pipe := &slipwayv1.Pipeline{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: run.Namespace, Name: run.Spec.PipelineRef.Name}, pipe); err != nil {
		// Without the Pipeline the promotion's repository and path are unknown.
		return client.IgnoreNotFound(err)
	}
	promo := pipe.Spec.Promotion
	if promo == nil {
		return nil
	}
	var apps slipwayv1.ApplicationList
	if err := r.List(ctx, &apps, client.MatchingFields{indexApplicationRepo: normalizeRepoURL(promo.URL)}); err != nil {
		return fmt.Errorf("listing Applications of %s: %w", promo.URL, err)
	}
	now := time.Now()
	var at time.Time
	var by string
	for i := range apps.Items {
		app := &apps.Items[i]
		// Every Application of an ops repository moves to each of its
		// commits, so the revision alone does not say which one carries
		// the image.
		if !app.Spec.Source.HoldsFile(promo.Path) {
			continue
		}
		if t, ok := runningSince(app, run.Status.PromotionCommit, now); ok && (by == "" || t.Before(at)) {
			at, by = t, app.Namespace+"/"+app.Name
		}
	}
	if by == "" {
		return nil
	}

	// Reads come from the cache and may not show our own earlier write yet;
	// the update then conflicts, so the mark and the observation happen once.
	marked := false
	key := client.ObjectKeyFromObject(run)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		marked = false
		if err := r.Get(ctx, key, run); err != nil {
			return err
		}
		if !awaitsDeployment(run) {
			return nil
		}
		run.Status.DeployedAt, run.Status.DeployedApplication = &metav1.Time{Time: at}, by
		if err := r.Status().Update(ctx, run); err != nil {
			return err
		}
		marked = true
		return nil
	})
	if err != nil {
		return fmt.Errorf("marking run %s deployed: %w", run.Name, err)
	}
	if !marked {
		return nil
	}
	if run.Status.CommitTime != nil {
		observeLeadTime(leadTimeRunning, run.Status.CommitTime.Time, at)
	}
	if r.Recorder != nil {
		r.Recorder.Eventf(run, corev1.EventTypeNormal, "Deployed", "ops commit %s is running in Application %s", shortCommit(run.Status.PromotionCommit), by)
	}
	return nil
}

// runningCleanly reports whether the GitOps engine last found the
// Application's live state equal to the revision it applied, and healthy.
func runningCleanly(app *slipwayv1.Application) bool {
	st := app.Status
	return st.Health.Status == slipwayv1.HealthHealthy && st.LastAppliedRevision != "" &&
		st.Sync.Status == slipwayv1.SyncStatusSynced && st.Sync.Revision == st.LastAppliedRevision
}

// runningSince reports whether app shows commit running, and since when.
// commit counts as running when the Application runs it cleanly, or runs a
// revision it applied after commit: the ops branch only moves forward, so
// that revision carries commit's change or a newer one. A pinned
// Application may have rolled back past commit, so only its own revision
// counts. The time is the earliest the status proves: when the current
// revision was applied, or when Ready last turned True if that was later.
// When Ready is not True (a failed fetch after the rollout, say) the status
// no longer tells when the rollout finished, and now is all it proves.
func runningSince(app *slipwayv1.Application, commit string, now time.Time) (time.Time, bool) {
	if !runningCleanly(app) {
		return time.Time{}, false
	}
	current := app.Status.LastAppliedRevision
	if current != commit && (app.Spec.PinnedRevision != "" || !appliedBefore(app.Status.History, commit, current)) {
		return time.Time{}, false
	}
	applied := appliedAt(app)
	ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady)
	if applied.IsZero() || ready == nil || ready.Status != metav1.ConditionTrue {
		return now, true
	}
	if ready.LastTransitionTime.After(applied) {
		return ready.LastTransitionTime.Time, true
	}
	return applied, true
}

// appliedBefore reports whether history (newest first) shows commit applied
// before the latest successful apply of current. A current revision without
// a successful entry of its own was reached without a sync (a push that
// left the Application's path as it was), so the newest successful apply
// is what runs.
func appliedBefore(history []slipwayv1.RevisionHistory, commit, current string) bool {
	seenCurrent := !slices.ContainsFunc(history, func(h slipwayv1.RevisionHistory) bool {
		return h.Result == historySucceeded && h.Revision == current
	})
	for _, h := range history {
		if h.Result != historySucceeded {
			continue
		}
		switch h.Revision {
		case current:
			seenCurrent = true
		case commit:
			return seenCurrent
		}
	}
	return false
}

// appliedAt is when the Application's current revision was applied: its
// newest successful history entry, or LastAppliedAt without history.
func appliedAt(app *slipwayv1.Application) time.Time {
	for _, h := range app.Status.History {
		if h.Result == historySucceeded && h.Revision == app.Status.LastAppliedRevision {
			return h.DeployedAt.Time
		}
	}
	if app.Status.LastAppliedAt != nil {
		return app.Status.LastAppliedAt.Time
	}
	return time.Time{}
}

// normalizeRepoURL lets https://host/ops.git and https://host/ops/ match.
func normalizeRepoURL(u string) string {
	return strings.TrimSuffix(strings.TrimRight(u, "/"), ".git")
}

func shortCommit(c string) string {
	if len(c) > 12 {
		return c[:12]
	}
	return c
}
