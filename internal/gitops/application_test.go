package gitops_test

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
)

const syncTimeout = 30 * time.Second

func TestFirstSyncThenNewCommit(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "one"), "README.md": "not a manifest"})
	app := newApp(t, ns, url)

	got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return readyAtAny(a)
	})
	first := got.Status.LastAppliedRevision
	cm, err := getConfigMap(t, ns, "settings")
	if err != nil {
		t.Fatalf("first sync did not create the ConfigMap: %v", err)
	}
	if cm.Data["value"] != "one" {
		t.Fatalf("value = %q, want one", cm.Data["value"])
	}
	if cm.Labels["applications.slipway.dev/name"] != "web" || cm.Labels["applications.slipway.dev/namespace"] != ns {
		t.Fatalf("owner labels missing: %v", cm.Labels)
	}
	if len(got.Status.History) != 1 || got.Status.History[0].Revision != first || got.Status.History[0].Result != "Succeeded" {
		t.Fatalf("history after first sync = %+v", got.Status.History)
	}
	if got.Status.ObservedGeneration != got.Generation {
		t.Fatalf("observedGeneration %d, generation %d", got.Status.ObservedGeneration, got.Generation)
	}

	second := commit(t, url, map[string]string{"deploy/a.yaml": configMap("settings", "two"), "deploy/nested/b.yaml": configMap("extra", "x")}, nil)
	got = waitFor(t, app, syncTimeout, readyAt(second))
	if cm, _ := getConfigMap(t, ns, "settings"); cm.Data["value"] != "two" {
		t.Fatalf("new commit not applied: value %q", cm.Data["value"])
	}
	if _, err := getConfigMap(t, ns, "extra"); err != nil {
		t.Fatalf("file in a nested directory not applied: %v", err)
	}
	if len(got.Status.History) != 2 || got.Status.History[0].Revision != second {
		t.Fatalf("history = %+v", got.Status.History)
	}
	waitEvent(t, app, "Applied", "ConfigMap/"+ns+"/extra created")
}

func readyAtAny(a *slipwayv1.Application) error {
	if a.Status.LastAppliedRevision == "" {
		return errors.New("nothing applied yet")
	}
	return readyAt(a.Status.LastAppliedRevision)(a)
}

// waitEvent waits for an Event on app: the recorder sends them asynchronously.
func waitEvent(t *testing.T, app *slipwayv1.Application, reason, msgPart string) {
	t.Helper()
	waitFor(t, app, 10*time.Second, func(*slipwayv1.Application) error {
		events := eventsFor(t, app)
		for _, e := range events {
			if e.Reason == reason && strings.Contains(e.Message, msgPart) {
				return nil
			}
		}
		return fmt.Errorf("no %s event containing %q among %d events", reason, msgPart, len(events))
	})
}

func TestSelfHealRepairsDrift(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "git")})
	app := newApp(t, ns, url)
	waitFor(t, app, syncTimeout, readyAtAny)

	editConfigMap(t, ns, "settings", "edited by hand")
	waitFor(t, app, syncTimeout, func(*slipwayv1.Application) error {
		cm, err := getConfigMap(t, ns, "settings")
		if err != nil {
			return err
		}
		if cm.Data["value"] != "git" {
			return fmt.Errorf("value still %q", cm.Data["value"])
		}
		return nil
	})
}

func TestDriftWithoutSelfHealIsReported(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "git")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.SyncPolicy.SelfHeal = false })
	waitFor(t, app, syncTimeout, readyAtAny)

	editConfigMap(t, ns, "settings", "edited by hand")
	got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.Sync.Status != slipwayv1.SyncStatusOutOfSync {
			return fmt.Errorf("sync %s", a.Status.Sync.Status)
		}
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "OutOfSync", "ConfigMap/"+ns+"/settings")
	})
	if !strings.Contains(got.Status.Sync.Message, "settings") {
		t.Fatalf("sync message does not name the drifted object: %q", got.Status.Sync.Message)
	}
	if cm, _ := getConfigMap(t, ns, "settings"); cm.Data["value"] != "edited by hand" {
		t.Fatalf("drift was repaired without selfHeal: %q", cm.Data["value"])
	}
}

func editConfigMap(t *testing.T, ns, name, value string) {
	t.Helper()
	cm, err := getConfigMap(t, ns, name)
	if err != nil {
		t.Fatal(err)
	}
	cm.Data["value"] = value
	if err := env.Client.Update(testCtx, cm, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
}

func TestPrune(t *testing.T) {
	for _, prune := range []bool{true, false} {
		t.Run(fmt.Sprintf("prune=%v", prune), func(t *testing.T) {
			ns := env.TenantNamespace(t)
			url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("keep", "1"), "deploy/b.yaml": configMap("goes", "1")})
			app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.SyncPolicy.Prune = prune })
			waitFor(t, app, syncTimeout, readyAtAny)
			// An object with the same labels but created by someone else must never be pruned.
			if _, err := getConfigMap(t, ns, "goes"); err != nil {
				t.Fatal(err)
			}

			rev := commit(t, url, nil, []string{"deploy/b.yaml"})
			got := waitFor(t, app, syncTimeout, readyAt(rev))
			_, err := getConfigMap(t, ns, "goes")
			switch {
			case prune && !apierrors.IsNotFound(err):
				t.Fatalf("object removed from git was not pruned: %v", err)
			case !prune && err != nil:
				t.Fatalf("object pruned although prune is off: %v", err)
			}
			if _, err := getConfigMap(t, ns, "keep"); err != nil {
				t.Fatalf("object still in git was deleted: %v", err)
			}
			tracked := false
			for _, e := range got.Status.Inventory {
				tracked = tracked || strings.Contains(e.ID, "_goes_")
			}
			if tracked == prune {
				t.Fatalf("inventory tracks the removed object: %v (prune=%v): %+v", tracked, prune, got.Status.Inventory)
			}
		})
	}
}

func TestPruneSparesObjectsItDidNotCreate(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("mine", "1"), "deploy/b.yaml": configMap("shared", "1")})
	app := newApp(t, ns, url)
	waitFor(t, app, syncTimeout, readyAtAny)

	// Another tool takes the object over: it drops Slipway's owner labels.
	cm, _ := getConfigMap(t, ns, "shared")
	delete(cm.Labels, "applications.slipway.dev/name")
	if err := env.Client.Update(testCtx, cm); err != nil {
		t.Fatal(err)
	}
	rev := commit(t, url, nil, []string{"deploy/b.yaml"})
	waitFor(t, app, syncTimeout, readyAt(rev))
	if _, err := getConfigMap(t, ns, "shared"); err != nil {
		t.Fatalf("pruned an object that is no longer Slipway's: %v", err)
	}
}

func TestRollbackRestoresEarlierRevision(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "v1")})
	app := newApp(t, ns, url)
	got := waitFor(t, app, syncTimeout, readyAtAny)
	v1 := got.Status.LastAppliedRevision

	v2 := commit(t, url, map[string]string{"deploy/a.yaml": configMap("settings", "v2"), "deploy/new.yaml": configMap("added-in-v2", "x")}, nil)
	waitFor(t, app, syncTimeout, readyAt(v2))

	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.PinnedRevision = v1
	if err := env.Client.Patch(testCtx, got, patch); err != nil {
		t.Fatal(err)
	}
	got = waitFor(t, app, syncTimeout, readyAt(v1))
	if cm, _ := getConfigMap(t, ns, "settings"); cm.Data["value"] != "v1" {
		t.Fatalf("rollback did not restore v1: %q", cm.Data["value"])
	}
	if _, err := getConfigMap(t, ns, "added-in-v2"); !apierrors.IsNotFound(err) {
		t.Fatalf("object added in v2 survived the rollback: %v", err)
	}
	if got.Status.History[0].Revision != v1 || len(got.Status.History) != 3 {
		t.Fatalf("history after rollback = %+v", got.Status.History)
	}
}

func TestBadManifestsStallAndChangeNothing(t *testing.T) {
	cases := []struct {
		name  string
		files map[string]string
		want  string
	}{
		{"invalid YAML", map[string]string{"deploy/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: should-not-exist-1\n", "deploy/broken.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata: [unclosed\n"}, "broken.yaml: document 1"},
		{"unknown kind", map[string]string{"deploy/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: should-not-exist-2\n", "deploy/widget.yaml": "apiVersion: example.com/v1\nkind: Widget\nmetadata:\n  name: w\n"}, "widget.yaml: Widget \"w\": unknown kind"},
		{"kustomize error", map[string]string{"deploy/kustomization.yaml": "resources:\n- missing.yaml\n", "deploy/ns.yaml": "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: should-not-exist-3\n"}, "kustomization.yaml: kustomize build failed"},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ns := env.TenantNamespace(t)
			url := newRepo(t, tc.files)
			app := newApp(t, ns, url)
			got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
				if err := hasCondition(a, slipwayv1.ConditionStalled, metav1.ConditionTrue, "", tc.want); err != nil {
					return err
				}
				return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "", tc.want)
			})
			if got.Status.LastAppliedRevision != "" || len(got.Status.Inventory) != 0 {
				t.Fatalf("something was applied: %+v", got.Status)
			}
			var nsObj = &metav1.PartialObjectMetadata{}
			nsObj.SetGroupVersionKind(nsGVK)
			err := env.Client.Get(testCtx, client.ObjectKey{Name: fmt.Sprintf("should-not-exist-%d", i+1)}, nsObj)
			if !apierrors.IsNotFound(err) {
				t.Fatalf("a valid object of the bad revision reached the cluster: %v", err)
			}
		})
	}
}

func TestStalledGitServerTimesOut(t *testing.T) {
	staller, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	ns := env.TenantNamespace(t)
	url := staller.URL() + "/ops.git"
	app := newApp(t, ns, url, func(a *slipwayv1.Application) {
		a.Spec.Source.Timeout = &metav1.Duration{Duration: 2 * time.Second}
		a.Spec.Source.SecretRef = nil
	})
	got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "GitOperationFailed", "timed out")
	})
	msg := conditionMessage(got, slipwayv1.ConditionReady)
	for _, part := range []string{"fetch", url, "branch main"} {
		if !strings.Contains(msg, part) {
			t.Fatalf("timeout message %q does not name %q", msg, part)
		}
	}
}

func TestWrongCredentialsNeverLeak(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "x")})
	const wrong = "not-the-password-4af1c9"
	app := newAppWithPassword(t, ns, url, wrong)
	got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "GitOperationFailed", "authentication failed")
	})
	if !strings.Contains(conditionMessage(got, slipwayv1.ConditionReady), url) {
		t.Fatalf("message does not name the remote: %s", conditionMessage(got, slipwayv1.ConditionReady))
	}
	waitEvent(t, app, "GitOperationFailed", "authentication failed")
	for _, e := range eventsFor(t, app) {
		if strings.Contains(e.Message, wrong) || strings.Contains(e.Message, gitAuth.Password) {
			t.Fatalf("event leaks a credential: %s", e.Message)
		}
	}
	for _, c := range got.Status.Conditions {
		if strings.Contains(c.Message, wrong) {
			t.Fatalf("condition leaks the credential: %s", c.Message)
		}
	}
	if l := logs.String(); strings.Contains(l, wrong) || strings.Contains(l, gitAuth.Password) {
		t.Fatal("controller logs contain a credential")
	}
}

var nsGVK = corev1.SchemeGroupVersion.WithKind("Namespace")

// TestPushElsewhereOnlyMovesTheRevision: a webhook's pass for a push that
// left the Application's path as it was moves the revision without a
// sync (no history entry, no apply time, the live object untouched); a
// push that changes the path is synced as always.
func TestPushElsewhereOnlyMovesTheRevision(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "one"), "other/b.yaml": configMap("theirs", "1")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) {
		// Only the webhook's requests wake it during the test.
		a.Spec.Interval = &metav1.Duration{Duration: time.Hour}
	})
	first := waitFor(t, app, syncTimeout, readyAtAny)
	if first.Status.LastAppliedTree == "" {
		t.Fatal("a sync recorded no tree")
	}
	cm, err := getConfigMap(t, ns, "settings")
	if err != nil {
		t.Fatal(err)
	}

	elsewhere := commit(t, url, map[string]string{"other/b.yaml": configMap("theirs", "2")}, nil)
	requestReconcile(t, app)
	got := waitFor(t, app, syncTimeout, readyAt(elsewhere))
	if len(got.Status.History) != len(first.Status.History) || !got.Status.LastAppliedAt.Equal(first.Status.LastAppliedAt) {
		t.Fatalf("a push elsewhere counted as a deployment: history %+v, applied at %v (was %v)", got.Status.History, got.Status.LastAppliedAt, first.Status.LastAppliedAt)
	}
	if got.Status.LastAppliedTree != first.Status.LastAppliedTree {
		t.Fatalf("tree moved from %s to %s for a push elsewhere", first.Status.LastAppliedTree, got.Status.LastAppliedTree)
	}
	if now, _ := getConfigMap(t, ns, "settings"); now.ResourceVersion != cm.ResourceVersion {
		t.Fatalf("the live object was written for a push elsewhere: resourceVersion %s, was %s", now.ResourceVersion, cm.ResourceVersion)
	}

	here := commit(t, url, map[string]string{"deploy/a.yaml": configMap("settings", "two")}, nil)
	requestReconcile(t, app)
	got = waitFor(t, app, syncTimeout, readyAt(here))
	if now, _ := getConfigMap(t, ns, "settings"); now.Data["value"] != "two" {
		t.Fatalf("a push to the path was not applied: value %q", now.Data["value"])
	}
	if len(got.Status.History) != len(first.Status.History)+1 || got.Status.LastAppliedTree == first.Status.LastAppliedTree {
		t.Fatalf("a push to the path was not a deployment: history %+v, tree %s", got.Status.History, got.Status.LastAppliedTree)
	}
}

// requestReconcile does what the webhook receiver does for a push.
func requestReconcile(t *testing.T, app *slipwayv1.Application) {
	t.Helper()
	current := &slipwayv1.Application{}
	if err := env.Client.Get(testCtx, client.ObjectKeyFromObject(app), current); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(current.DeepCopy())
	if current.Annotations == nil {
		current.Annotations = map[string]string{}
	}
	current.Annotations[slipwayv1.ReconcileRequestAnnotation] = time.Now().UTC().Format(time.RFC3339Nano)
	if err := env.Client.Patch(testCtx, current, patch); err != nil {
		t.Fatal(err)
	}
}
