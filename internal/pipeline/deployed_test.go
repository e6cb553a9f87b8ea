package pipeline

import (
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func TestRunningSince(t *testing.T) {
	const (
		promoted = "1111111111111111111111111111111111111111"
		later    = "2222222222222222222222222222222222222222"
		earlier  = "3333333333333333333333333333333333333333"
	)
	now := time.Date(2030, 1, 1, 12, 0, 0, 0, time.UTC)
	applied, ready := now.Add(-10*time.Minute), now.Add(-8*time.Minute)
	app := func(current string, readyStatus metav1.ConditionStatus, readyAt time.Time, history ...slipwayv1.RevisionHistory) *slipwayv1.Application {
		return &slipwayv1.Application{Status: slipwayv1.ApplicationStatus{
			LastAppliedRevision: current,
			Sync:                slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: current},
			Health:              slipwayv1.HealthStatus{Status: slipwayv1.HealthHealthy},
			Conditions: []metav1.Condition{{Type: slipwayv1.ConditionReady, Status: readyStatus,
				LastTransitionTime: metav1.NewTime(readyAt)}},
			History: history,
		}}
	}
	entry := func(rev, result string, at time.Time) slipwayv1.RevisionHistory {
		return slipwayv1.RevisionHistory{Revision: rev, Result: result, DeployedAt: metav1.NewTime(at)}
	}
	pinned := app(later, metav1.ConditionTrue, ready, entry(later, "Succeeded", applied), entry(promoted, "Succeeded", applied.Add(-time.Hour)))
	pinned.Spec.PinnedRevision = later
	outOfSync := app(promoted, metav1.ConditionTrue, ready, entry(promoted, "Succeeded", applied))
	outOfSync.Status.Sync.Status = slipwayv1.SyncStatusOutOfSync
	// A push that left the Application's path as it was moves its revision
	// without a sync, hence without a history entry.
	movedOn := app(later, metav1.ConditionTrue, ready, entry(promoted, "Succeeded", applied))
	movedOn.Status.LastAppliedAt = &metav1.Time{Time: applied}
	movedOnWithout := app(later, metav1.ConditionTrue, ready, entry(earlier, "Succeeded", applied))
	movedOnWithout.Status.LastAppliedAt = &metav1.Time{Time: applied}
	degraded := app(promoted, metav1.ConditionFalse, ready, entry(promoted, "Succeeded", applied))
	degraded.Status.Health.Status = slipwayv1.HealthDegraded

	for _, tc := range []struct {
		name string
		app  *slipwayv1.Application
		ok   bool
		at   time.Time
	}{
		{"ready after the apply", app(promoted, metav1.ConditionTrue, ready, entry(promoted, "Succeeded", applied)), true, ready},
		{"ready since before the apply", app(promoted, metav1.ConditionTrue, applied.Add(-time.Hour), entry(promoted, "Succeeded", applied)), true, applied},
		{"ready lost since", app(promoted, metav1.ConditionFalse, ready, entry(promoted, "Succeeded", applied)), true, now},
		{"later revision applied after it", app(later, metav1.ConditionTrue, ready, entry(later, "Succeeded", applied), entry(promoted, "Failed", applied), entry(promoted, "Succeeded", applied.Add(-time.Hour))), true, ready},
		{"later revision, pinned", pinned, false, time.Time{}},
		{"only failed applies of it", app(later, metav1.ConditionTrue, ready, entry(later, "Succeeded", applied), entry(promoted, "Failed", applied.Add(-time.Hour))), false, time.Time{}},
		{"later revision reached without a sync", movedOn, true, ready},
		{"later revision reached without a sync, it never applied", movedOnWithout, false, time.Time{}},
		{"another revision", app(earlier, metav1.ConditionTrue, ready, entry(earlier, "Succeeded", applied)), false, time.Time{}},
		{"out of sync", outOfSync, false, time.Time{}},
		{"degraded", degraded, false, time.Time{}},
	} {
		at, ok := runningSince(tc.app, promoted, now)
		if ok != tc.ok || !at.Equal(tc.at) {
			t.Errorf("%s: runningSince = %v, %v; want %v, %v", tc.name, at, ok, tc.at, tc.ok)
		}
	}
}

func TestDeploysPath(t *testing.T) {
	const file = "apps/tea/kustomization.yaml"
	for appPath, want := range map[string]bool{
		"": true, ".": true, "apps": true, "apps/tea": true, "./apps/tea/": true, "/apps/tea": true,
		"apps/te": false, "apps/coffee": false, "apps/tea/kustomization.yaml": false,
	} {
		if got := (slipwayv1.ApplicationSource{Path: appPath}).HoldsFile(file); got != want {
			t.Errorf("path %q holds %q: %v", appPath, file, got)
		}
	}
	if normalizeRepoURL("https://git.example/ops.git/") != normalizeRepoURL("https://git.example/ops") {
		t.Error("a trailing .git or slash changes the repository")
	}
}
