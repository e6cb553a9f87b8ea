package policy

import (
	"bytes"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// uncheckedSet is a revision whose kinds a pss profile mostly does not check:
// built-in kinds of both scopes, a CRD with an object of its kind, and an
// object of a kind nothing declares.
const uncheckedSet = `
apiVersion: v1
kind: Pod
metadata: {name: app, namespace: team-a}
spec: {containers: [{name: app, image: registry.example/app:1}]}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: team-a}
---
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata: {name: fast}
provisioner: example.com/fast
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: reader}
rules: [{apiGroups: [""], resources: [pods], verbs: [get]}]
---
apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata: {name: inject}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: gadgets.example.com}
spec: {group: example.com, scope: Cluster, names: {kind: Gadget, plural: gadgets}, versions: []}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.example.com}
spec: {group: example.com, scope: Namespaced, names: {kind: Widget, plural: widgets}, versions: []}
---
apiVersion: example.com/v1
kind: Gadget
metadata: {name: g}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w, namespace: team-a}
---
apiVersion: example.com/v1
kind: Widget
metadata: {name: w2, namespace: team-a}
---
apiVersion: other.example/v1
kind: Thing
metadata: {name: t}
`

// checkUncheckedSet evaluates uncheckedSet with a profile and returns its
// results and the scopes the CRDs of the set declare, added to the built-in ones.
func checkUncheckedSet(t *testing.T, prof Profile) (*Policy, []ObjectResult, ScopeFunc) {
	t.Helper()
	pol, err := mustCatalog(t).Compile(prof)
	if err != nil {
		t.Fatal(err)
	}
	declared := DeclaredScopes{}
	set := pol.NewSetEvaluator(time.Now())
	err = ReadManifests(context.Background(), []string{StdinPath}, ReadOptions{Stdin: strings.NewReader(uncheckedSet)}, func(m Manifest) error {
		declared.Add(m.Object)
		set.Add(context.Background(), m.Object, m.Ref)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	results, err := set.Results(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return pol, results, ScopeFunc(BuiltinScope).Or(declared.Scope)
}

// TestUncheckedKinds: the objects of kinds no rule checks are listed by
// kind with their scope, and a profile refusing unchecked cluster-scoped
// kinds refuses those (and those of unknown scope) but the ones it allows.
func TestUncheckedKinds(t *testing.T) {
	pol, results, scope := checkUncheckedSet(t, Profile{Packs: []string{"pss-restricted"},
		Unchecked: UncheckedPolicy{RefuseClusterScoped: true, Allowed: []string{"Namespace"}}})
	want := []UncheckedKind{
		{Kind: "ClusterRole.rbac.authorization.k8s.io", Scope: ScopeCluster, Objects: 1, Refused: true},
		{Kind: "ConfigMap", Scope: ScopeNamespaced, Objects: 1},
		{Kind: "CustomResourceDefinition.apiextensions.k8s.io", Scope: ScopeCluster, Objects: 2, Refused: true},
		{Kind: "Gadget.example.com", Scope: ScopeCluster, Objects: 1, Refused: true},
		{Kind: "MutatingWebhookConfiguration.admissionregistration.k8s.io", Scope: ScopeCluster, Objects: 1, Refused: true},
		{Kind: "Namespace", Scope: ScopeCluster, Objects: 1},
		{Kind: "StorageClass.storage.k8s.io", Scope: ScopeCluster, Objects: 1, Refused: true},
		{Kind: "Thing.other.example", Scope: ScopeUnknown, Objects: 1, Refused: true},
		{Kind: "Widget.example.com", Scope: ScopeNamespaced, Objects: 2},
	}
	if got := pol.Unchecked(results, scope); !slices.Equal(got, want) {
		t.Errorf("unchecked kinds\n got %+v\nwant %+v", got, want)
	}
	var refused []string
	for _, o := range pol.RefusedUnchecked(results, scope) {
		refused = append(refused, o.String())
	}
	wantRefused := []string{"StorageClass/fast", "ClusterRole/reader", "MutatingWebhookConfiguration/inject",
		"CustomResourceDefinition/gadgets.example.com", "CustomResourceDefinition/widgets.example.com", "Gadget/g", "Thing/t"}
	if !slices.Equal(refused, wantRefused) {
		t.Errorf("refused objects %q, want %q", refused, wantRefused)
	}

	report := NewReportWithScopes(pol, results, scope)
	if report.Summary.NotChecked != 11 || report.Summary.Objects != 12 || !report.Refused() || !report.Failed(SeverityCritical) {
		t.Errorf("report: summary %+v, refused %v, failed at critical %v", report.Summary, report.Refused(), report.Failed(SeverityCritical))
	}
	var text bytes.Buffer
	if err := report.WriteText(&text, false); err != nil {
		t.Fatal(err)
	}
	lines := map[string]bool{}
	for _, l := range strings.Split(text.String(), "\n") {
		lines[strings.Join(strings.Fields(l), " ")] = true
	}
	for _, line := range []string{
		"StorageClass.storage.k8s.io 1 object (cluster-scoped, refused by the profile)",
		"Thing.other.example 1 object (scope unknown, refused by the profile)",
		"Widget.example.com 2 objects",
		"Namespace 1 object (cluster-scoped)",
		"Profile pss-restricted failed: 12 objects (11 not checked), 15 checks: 11 passed, 4 failed (2 high, 2 medium), 0 waived, 0 errors",
	} {
		if !lines[line] {
			t.Errorf("text report lacks the line %q:\n%s", line, text.String())
		}
	}
	var junit bytes.Buffer
	if err := report.WriteJUnit(&junit); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(junit.String(), `<testcase name="StorageClass.storage.k8s.io" classname="not checked by profile pss-restricted">`) ||
		!strings.Contains(junit.String(), `<failure message="1 cluster-scoped object of kind StorageClass.storage.k8s.io was not checked`) {
		t.Errorf("JUnit report does not fail the refused kinds:\n%s", junit.String())
	}
	checkWriteJSON(t, "unchecked", report)

	// The same set under fin-kr: its rules check ClusterRoles and webhooks,
	// and a profile that does not refuse reports without refusing.
	finKR, results, scope := checkUncheckedSet(t, Profile{Packs: []string{"fin-kr"}})
	for _, u := range finKR.Unchecked(results, scope) {
		if u.Refused || u.Kind == "ClusterRole.rbac.authorization.k8s.io" || u.Kind == "MutatingWebhookConfiguration.admissionregistration.k8s.io" {
			t.Errorf("fin-kr without refusal: %+v", u)
		}
	}
	if refused := finKR.RefusedUnchecked(results, scope); len(refused) != 0 {
		t.Errorf("fin-kr without refusal refuses %v", refused)
	}

	if _, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Unchecked: UncheckedPolicy{Allowed: []string{"storageclasses"}}}); err == nil {
		t.Error("a profile allowing an unchecked kind written as a resource name compiled")
	}
}

// TestMapperScope: the cluster's RESTMapper decides the scope of a kind,
// and a kind it does not know has no scope.
func TestMapperScope(t *testing.T) {
	m := apimeta.NewDefaultRESTMapper([]schema.GroupVersion{{Group: "example.com", Version: "v1"}, {Version: "v1"}})
	m.Add(schema.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Widget"}, apimeta.RESTScopeNamespace)
	m.Add(schema.GroupVersionKind{Group: "example.com", Version: "v1", Kind: "Gadget"}, apimeta.RESTScopeRoot)
	m.Add(schema.GroupVersionKind{Version: "v1", Kind: "Namespace"}, apimeta.RESTScopeRoot)
	scope := MapperScope(m)
	for kind, want := range map[string]Scope{"Widget.example.com": ScopeNamespaced, "Gadget.example.com": ScopeCluster, "Namespace": ScopeCluster, "Thing.example.com": ScopeUnknown} {
		if got := scope(kind); got != want {
			t.Errorf("%s: scope %q, want %q", kind, got, want)
		}
	}
	u := unstructured.Unstructured{}
	u.SetAPIVersion("example.com/v1")
	u.SetKind("Gadget")
	if kk := (ObjectRef{APIVersion: u.GetAPIVersion(), Kind: u.GetKind()}).KindKey(); kk != "Gadget.example.com" || scope(kk) != ScopeCluster {
		t.Errorf("KindKey %q", kk)
	}
}
