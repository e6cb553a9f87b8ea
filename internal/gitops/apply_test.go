package gitops_test

import (
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/fluxcd/pkg/ssa"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
)

// requestCounter counts the requests a client sends, by kind of request.
type requestCounter struct {
	mu     sync.Mutex
	counts map[string]int
	next   http.RoundTripper
}

func (c *requestCounter) RoundTrip(req *http.Request) (*http.Response, error) {
	kind := req.Method
	if req.URL.Query().Get("dryRun") != "" {
		kind += " dry-run"
	}
	c.mu.Lock()
	c.counts[kind]++
	c.mu.Unlock()
	return c.next.RoundTrip(req)
}

// take returns the counts so far and starts again from zero.
func (c *requestCounter) take() map[string]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.counts
	c.counts = map[string]int{}
	return out
}

func countingClient(t *testing.T) (client.Client, *requestCounter) {
	t.Helper()
	counter := &requestCounter{counts: map[string]int{}}
	cfg := rest.CopyConfig(env.Config)
	cfg.WrapTransport = func(rt http.RoundTripper) http.RoundTripper { counter.next = rt; return counter }
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	// Discovery of the ConfigMap kind, which a client does once, is not
	// part of what is counted.
	if err := c.List(testCtx, &corev1.ConfigMapList{}, client.Limit(1)); err != nil {
		t.Fatal(err)
	}
	counter.take()
	return c, counter
}

func configMapObject(ns, name, value string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "ConfigMap",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": map[string]any{"app": name}},
		"data":     map[string]any{"value": value},
	}}
	return u
}

func desiredSet(ns string, values ...string) []*unstructured.Unstructured {
	var out []*unstructured.Unstructured
	for i, v := range values {
		out = append(out, configMapObject(ns, fmt.Sprintf("cm-%d", i), v))
	}
	return out
}

func wantActions(t *testing.T, ns string, got map[string]ssa.Action, want ...ssa.Action) {
	t.Helper()
	for i, w := range want {
		subject := fmt.Sprintf("ConfigMap/%s/cm-%d", ns, i)
		if got[subject] != w {
			t.Errorf("%s: %q, want %q (all: %v)", subject, got[subject], w, got)
		}
	}
}

func wantRequests(t *testing.T, got map[string]int, want map[string]int) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("requests %v, want %v", got, want)
	}
}

// TestApplyOnlyWhatChanged shows a sync sending the API server only what
// can change something: one read for an object as the last sync left it,
// a dry-run and an apply for the others; and that a change made behind
// Slipway's back (an edited value, a removed label, an object deleted and
// made again) is still found and undone.
func TestApplyOnlyWhatChanged(t *testing.T) {
	ns := env.Namespace(t)
	c, counter := countingClient(t)

	inv, actions, err := gitops.ApplyTracked(testCtx, c, nil, nil, desiredSet(ns, "a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.CreatedAction, ssa.CreatedAction, ssa.CreatedAction)
	wantRequests(t, counter.take(), map[string]int{"PATCH": 3, "PATCH dry-run": 3})
	for _, e := range inv {
		if e.Applied == "" || e.Live == "" {
			t.Fatalf("inventory entry without digests: %+v", e)
		}
	}
	before := resourceVersions(t, ns, 3)

	inv, actions, err = gitops.ApplyTracked(testCtx, c, nil, inv, desiredSet(ns, "a", "b", "c"))
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.UnchangedAction, ssa.UnchangedAction, ssa.UnchangedAction)
	wantRequests(t, counter.take(), map[string]int{"GET": 3})
	if after := resourceVersions(t, ns, 3); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("an unchanged sync wrote objects: resourceVersions %v, then %v", before, after)
	}

	// An inventory without digests (written before they existed) costs a
	// dry-run and an apply per object once; the API server writes nothing.
	bare := make([]slipwayv1.InventoryEntry, len(inv))
	for i, e := range inv {
		bare[i] = slipwayv1.InventoryEntry{ID: e.ID, Version: e.Version}
	}
	if _, actions, err = gitops.ApplyTracked(testCtx, c, nil, bare, desiredSet(ns, "a", "b", "c")); err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.UnchangedAction, ssa.UnchangedAction, ssa.UnchangedAction)
	wantRequests(t, counter.take(), map[string]int{"PATCH": 3, "PATCH dry-run": 3})
	if after := resourceVersions(t, ns, 3); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("applying unchanged objects wrote them: resourceVersions %v, then %v", before, after)
	}

	inv, actions, err = gitops.ApplyTracked(testCtx, c, nil, inv, desiredSet(ns, "a", "B", "c"))
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.UnchangedAction, ssa.ConfiguredAction, ssa.UnchangedAction)
	wantRequests(t, counter.take(), map[string]int{"GET": 2, "PATCH": 1, "PATCH dry-run": 1})

	// Behind Slipway's back: cm-0's value edited, cm-1's label removed,
	// cm-2 deleted and created again with the same content.
	cm := &corev1.ConfigMap{}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-0"}, cm); err != nil {
		t.Fatal(err)
	}
	cm.Data["value"] = "edited by hand"
	if err := env.Client.Update(testCtx, cm, client.FieldOwner("kubectl-edit")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-1"}, cm); err != nil {
		t.Fatal(err)
	}
	delete(cm.Labels, "app")
	if err := env.Client.Update(testCtx, cm, client.FieldOwner("kubectl-label")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-2"}, cm); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Delete(testCtx, cm); err != nil {
		t.Fatal(err)
	}
	again := &corev1.ConfigMap{ObjectMeta: cm.ObjectMeta, Data: cm.Data}
	again.ResourceVersion, again.UID, again.ManagedFields = "", "", nil
	if err := env.Client.Create(testCtx, again, client.FieldOwner("someone-else")); err != nil {
		t.Fatal(err)
	}

	inv, actions, err = gitops.ApplyTracked(testCtx, c, nil, inv, desiredSet(ns, "a", "B", "c"))
	if err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.ConfiguredAction, ssa.ConfiguredAction, ssa.ConfiguredAction)
	for i, value := range []string{"a", "B", "c"} {
		if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("cm-%d", i)}, cm); err != nil {
			t.Fatal(err)
		}
		if cm.Data["value"] != value || cm.Labels["app"] != cm.Name {
			t.Errorf("cm-%d not repaired: data %v, labels %v", i, cm.Data, cm.Labels)
		}
		if !managedBy(cm.ManagedFields, gitops.FieldManager) {
			t.Errorf("cm-%d: Slipway does not manage it after the repair", i)
		}
	}

	// A writer who changes a value and then puts the managed fields back
	// as they were does not hide the change.
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-1"}, cm); err != nil {
		t.Fatal(err)
	}
	before = []string{cm.ResourceVersion}
	original := cm.ManagedFields
	cm.Data["value"] = "forged"
	if err := env.Client.Update(testCtx, cm, client.FieldOwner("forger")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-1"}, cm); err != nil {
		t.Fatal(err)
	}
	cm.ManagedFields = original
	if err := env.Client.Update(testCtx, cm, client.FieldOwner("forger")); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-1"}, cm); err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(cm.ManagedFields) != fmt.Sprint(original) || cm.Data["value"] != "forged" {
		t.Fatalf("the forgery did not take: value %q, managed fields %v", cm.Data["value"], cm.ManagedFields)
	}
	if _, actions, err = gitops.ApplyTracked(testCtx, c, nil, inv, desiredSet(ns, "a", "B", "c")); err != nil {
		t.Fatal(err)
	}
	wantActions(t, ns, actions, ssa.UnchangedAction, ssa.ConfiguredAction, ssa.UnchangedAction)
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "cm-1"}, cm); err != nil {
		t.Fatal(err)
	}
	if cm.Data["value"] != "B" {
		t.Fatalf("a change whose managed fields were put back was not repaired: value %q (resourceVersion was %s)", cm.Data["value"], before[0])
	}
}

// TestRefusedObjectChangesNothing: one object the API server refuses keeps
// the others' changes from being applied, as a dry-run of the whole set
// comes before any apply.
func TestRefusedObjectChangesNothing(t *testing.T) {
	ns := env.Namespace(t)
	c, _ := countingClient(t)
	inv, _, err := gitops.ApplyTracked(testCtx, c, nil, nil, desiredSet(ns, "a", "b"))
	if err != nil {
		t.Fatal(err)
	}
	objs := desiredSet(ns, "a2", "b2")
	bad := configMapObject(ns, "Not_A_Valid_Name", "x")
	_, _, err = gitops.ApplyTracked(testCtx, c, nil, inv, append(objs, bad))
	if err == nil || !strings.Contains(err.Error(), "Not_A_Valid_Name") {
		t.Fatalf("error %v, want the refused object named", err)
	}
	cm := &corev1.ConfigMap{}
	for i, value := range []string{"a", "b"} {
		if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("cm-%d", i)}, cm); err != nil {
			t.Fatal(err)
		}
		if cm.Data["value"] != value {
			t.Errorf("cm-%d changed to %q by a sync that failed", i, cm.Data["value"])
		}
	}
}

func resourceVersions(t *testing.T, ns string, n int) []string {
	t.Helper()
	var out []string
	for i := 0; i < n; i++ {
		cm := &corev1.ConfigMap{}
		if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: fmt.Sprintf("cm-%d", i)}, cm); err != nil {
			t.Fatal(err)
		}
		out = append(out, cm.ResourceVersion)
	}
	return out
}

func managedBy(fields []metav1.ManagedFieldsEntry, manager string) bool {
	for _, f := range fields {
		if f.Manager == manager {
			return true
		}
	}
	return false
}

// TestSourceFreshness: a reconciliation the webhook asked for may use a
// fetch begun (a second of clock skew allowed) after the webhook; a sync a
// person asked for, or a token that is not a moment, needs the remote as
// it is now; a pass nobody asked for may use a fetch a few seconds old,
// at most a tenth of its interval.
func TestSourceFreshness(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	webhook := now.Add(-10 * time.Second)
	app := func(annotations map[string]string, handled string) *slipwayv1.Application {
		a := &slipwayv1.Application{}
		a.Annotations = annotations
		a.Status.LastHandledReconcileAt = handled
		return a
	}
	token := webhook.Format(time.RFC3339Nano)
	for _, tc := range []struct {
		name string
		app  *slipwayv1.Application
		want time.Time
	}{
		{"webhook", app(map[string]string{slipwayv1.ReconcileRequestAnnotation: token}, ""), webhook.Add(time.Second)},
		{"webhook already handled", app(map[string]string{slipwayv1.ReconcileRequestAnnotation: token}, token), now.Add(-5 * time.Second)},
		{"sync asked by a person", app(map[string]string{slipwayv1.ReconcileRequestAnnotation: token, slipwayv1.SyncRequestAnnotation: "x"}, ""), now},
		{"token from the future", app(map[string]string{slipwayv1.ReconcileRequestAnnotation: now.Add(time.Minute).Format(time.RFC3339Nano)}, ""), now},
		{"opaque token", app(map[string]string{slipwayv1.ReconcileRequestAnnotation: "please"}, ""), now},
		{"interval", app(nil, ""), now.Add(-5 * time.Second)},
		{"short interval", func() *slipwayv1.Application {
			a := app(nil, "")
			a.Spec.Interval = &metav1.Duration{Duration: 2 * time.Second}
			return a
		}(), now.Add(-200 * time.Millisecond)},
	} {
		if got := gitops.SourceFreshAfter(tc.app, now); !got.Equal(tc.want) {
			t.Errorf("%s: fresh after %s, want %s", tc.name, got, tc.want)
		}
	}
}
