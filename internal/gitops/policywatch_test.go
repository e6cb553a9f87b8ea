package gitops_test

import (
	"fmt"
	"slices"
	"testing"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/policy"
)

// hourly makes the interval long enough that only a watch can explain a
// re-evaluation within the test.
func hourly(a *slipwayv1.Application) { a.Spec.Interval = &metav1.Duration{Duration: time.Hour} }

func applied(a *slipwayv1.Application) error {
	if a.Status.LastAppliedRevision == "" {
		return fmt.Errorf("not applied: %s", conditionMessage(a, slipwayv1.ConditionReady))
	}
	return nil
}

func createProfile(t *testing.T, name string, spec slipwayv1.PolicyProfileSpec) *slipwayv1.PolicyProfile {
	t.Helper()
	profile := &slipwayv1.PolicyProfile{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	if err := env.Client.Create(testCtx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })
	return profile
}

// TestPolicyWaiverTakesEffectAtOnce: an Application blocked by an enforcing
// profile syncs as soon as a waiver for its violation is created, although
// its next interval is an hour away.
func TestPolicyWaiverTakesEffectAtOnce(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := createProfile(t, "waived-"+ns, slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "high"})
	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1"), "deploy/app.yaml": deployment("app", true)})
	app := newApp(t, ns, url, hourly, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })

	blocked := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, gitops.ReasonPolicyViolation, "privileged")
	})
	rule := blocked.Status.Policy.Violations[0].Rule

	waiver := createWaiver(t, "agent-"+ns, rule, slipwayv1.WaiverScope{Namespace: ns, Kind: "Deployment", Name: "app"},
		"vendor agent needs host access until Q3", 24*time.Hour)
	synced := waitFor(t, app, syncTimeout, applied)
	if p := synced.Status.Policy; p == nil || !p.Passed || p.Violations[0].Waiver != waiver.Name {
		t.Fatalf("the waived finding is not reported as waived: %+v", p)
	}
	if _, err := getConfigMap(t, ns, "settings"); err != nil {
		t.Fatalf("the waived revision was not applied: %v", err)
	}
}

// TestPolicyProfileChangeTakesEffectAtOnce: switching the profile from
// enforce to audit lets a blocked Application sync without waiting for its
// interval, and an Application naming no profile follows the default profile.
func TestPolicyProfileChangeTakesEffectAtOnce(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := createProfile(t, "switched-"+ns, slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "high"})
	url := newRepo(t, map[string]string{"deploy/app.yaml": deployment("app", true)})
	app := newApp(t, ns, url, hourly, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, gitops.ReasonPolicyViolation, "privileged")
	})

	patch := client.MergeFrom(profile.DeepCopy())
	profile.Spec.Mode = slipwayv1.PolicyModeAudit
	if err := env.Client.Patch(testCtx, profile, patch); err != nil {
		t.Fatal(err)
	}
	got := waitFor(t, app, syncTimeout, applied)
	if p := got.Status.Policy; p == nil || p.Mode != slipwayv1.PolicyModeAudit || p.Passed {
		t.Fatalf("status.policy after the switch to audit: %+v", p)
	}
}

// TestPolicyGateCountsLiveNetworkPolicies: FIN-NET-001 and FIN-NET-002 are
// judged on the namespace as it will be after the sync, so a default deny
// kept outside the Application counts, unless the revision replaces it or
// the Application owns it and is about to prune it.
func TestPolicyGateCountsLiveNetworkPolicies(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := createProfile(t, "netpol-"+ns, slipwayv1.PolicyProfileSpec{Packs: []string{"fin-kr"}, Mode: slipwayv1.PolicyModeAudit, FailOn: "high"})
	catalog, err := policy.NewCatalog()
	if err != nil {
		t.Fatal(err)
	}
	gate := &gitops.PolicyGate{Client: env.Client, Catalog: catalog, Mapper: env.Client.RESTMapper()}
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec:       slipwayv1.ApplicationSpec{PolicyProfile: profile.Name, Destination: slipwayv1.ApplicationDestination{Namespace: ns}},
	}
	web := object(t, fmt.Sprintf(`{apiVersion: apps/v1, kind: Deployment, metadata: {name: web, namespace: %s}, spec: {selector: {matchLabels: {app: web}}, template: {metadata: {labels: {app: web}}, spec: {containers: [{name: web, image: x}]}}}}`, ns))
	netRules := func(objs ...*unstructured.Unstructured) []string {
		t.Helper()
		st, err := gate.Check(testCtx, app, "", &gitops.Desired{Revision: "r", Objects: objs}, nil)
		if err != nil {
			t.Fatal(err)
		}
		var rules []string
		for _, v := range st.Violations {
			if (v.Rule == "FIN-NET-001" || v.Rule == "FIN-NET-002") && !slices.Contains(rules, v.Rule) {
				rules = append(rules, v.Rule)
			}
		}
		slices.Sort(rules)
		return rules
	}
	both := []string{"FIN-NET-001", "FIN-NET-002"}
	if got := netRules(web); !slices.Equal(got, both) {
		t.Fatalf("no policy anywhere: %v, want %v", got, both)
	}

	deny := &networkingv1.NetworkPolicy{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "default-deny"},
		Spec:       networkingv1.NetworkPolicySpec{PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress}},
	}
	if err := env.Client.Create(testCtx, deny); err != nil {
		t.Fatal(err)
	}
	if got := netRules(web); len(got) != 0 {
		t.Errorf("a live default deny: %v, want none", got)
	}
	// The revision brings its own default-deny, which selects only some pods:
	// the rendered version is what the namespace will hold.
	narrowed := object(t, fmt.Sprintf(`{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: default-deny, namespace: %s}, spec: {podSelector: {matchLabels: {app: other}}, policyTypes: [Ingress, Egress]}}`, ns))
	if got := netRules(web, narrowed); !slices.Equal(got, both) {
		t.Errorf("the revision narrows the live default deny: %v, want %v", got, both)
	}

	// Owned by this Application and gone from the revision: pruned if the
	// Application prunes, kept otherwise.
	patch := client.MergeFrom(deny.DeepCopy())
	deny.Labels = map[string]string{"applications.slipway.dev/name": app.Name, "applications.slipway.dev/namespace": app.Namespace}
	if err := env.Client.Patch(testCtx, deny, patch); err != nil {
		t.Fatal(err)
	}
	if got := netRules(web); len(got) != 0 {
		t.Errorf("an owned live default deny without prune: %v, want none", got)
	}
	app.Spec.SyncPolicy.Prune = true
	if got := netRules(web); !slices.Equal(got, both) {
		t.Errorf("an owned live default deny about to be pruned: %v, want %v", got, both)
	}
}

func object(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}
