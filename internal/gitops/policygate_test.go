package gitops_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func deployment(name string, privileged bool) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %s
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      containers:
      - name: app
        image: registry.example.com/app:1.0.0
        securityContext:
          privileged: %[2]v
`, name, privileged)
}

// TestPolicyGate: a violating commit changes nothing and says why; a waiver
// lets it sync; once the waiver expires the next change is blocked again.
func TestPolicyGate(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := &slipwayv1.PolicyProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "baseline-" + ns},
		Spec:       slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "high"},
	}
	if err := env.Client.Create(testCtx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })

	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1"), "deploy/app.yaml": deployment("app", true)})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })

	blocked := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "PolicyViolation", "privileged")
	})
	msg := conditionMessage(blocked, slipwayv1.ConditionReady)
	if !strings.Contains(msg, "Deployment/"+ns+"/app") || !strings.Contains(msg, "spec.template.spec.containers[0].securityContext.privileged") {
		t.Fatalf("the block does not name the object and field: %s", msg)
	}
	if p := blocked.Status.Policy; p == nil || p.Passed || p.Failed == 0 || p.Violations[0].Waiver != "" {
		t.Fatalf("status.policy = %+v", p)
	}
	rule := blocked.Status.Policy.Violations[0].Rule
	if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
		t.Fatalf("a blocked revision changed the cluster: %v", err)
	}
	waitEvent(t, app, "PolicyViolation", rule)

	waiver := createWaiver(t, "privileged-"+ns, rule, slipwayv1.WaiverScope{Namespace: ns, Kind: "Deployment", Name: "app"},
		"vendor agent needs host access until Q3", 8*time.Second)
	synced := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.LastAppliedRevision == "" {
			return fmt.Errorf("not applied: %s", conditionMessage(a, slipwayv1.ConditionReady))
		}
		return nil
	})
	if p := synced.Status.Policy; p == nil || !p.Passed || p.Waived == 0 || p.Violations[0].Waiver != waiver.Name {
		t.Fatalf("waived finding not reported as waived: %+v", p)
	}
	if _, err := getConfigMap(t, ns, "settings"); err != nil {
		t.Fatalf("waived revision not applied: %v", err)
	}

	time.Sleep(time.Until(waiver.Spec.Expires.Time))
	commit(t, url, map[string]string{"deploy/cm.yaml": configMap("settings", "v2")}, nil)
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "PolicyViolation", rule)
	})
	if cm, _ := getConfigMap(t, ns, "settings"); cm.Data["value"] != "v1" {
		t.Fatalf("a change was applied after the waiver expired: %q", cm.Data["value"])
	}
}

func TestPolicyAuditModeAppliesAndReports(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := &slipwayv1.PolicyProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "audit-" + ns},
		Spec:       slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeAudit, FailOn: "high"},
	}
	if err := env.Client.Create(testCtx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })
	url := newRepo(t, map[string]string{"deploy/app.yaml": deployment("app", true)})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })
	got := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.LastAppliedRevision == "" || a.Status.Policy == nil {
			return fmt.Errorf("not applied yet: %s", conditionMessage(a, slipwayv1.ConditionReady))
		}
		return nil
	})
	if got.Status.Policy.Passed || got.Status.Policy.Failed == 0 || got.Status.Policy.Mode != "audit" {
		t.Fatalf("audit mode did not report the violation: %+v", got.Status.Policy)
	}
}

// orgPack is an organisation's own pack, loaded from a file by the suite's
// controller as `slipway server --policy-pack` does.
const orgPack = `apiVersion: slipway.dev/v1alpha1
kind: PolicyPack
name: org-gate-test
title: An organisation's additions
version: "1"
rules:
  - id: ORG-LBL-001
    title: ConfigMaps carry an owner label
    severity: low
    targets: [manifest]
    match: {kinds: [ConfigMap]}
    expression: "has(object.metadata.labels) && 'owner' in object.metadata.labels ? [] : ['metadata.labels']"
    message: no owner label
    remediation: Add metadata.labels.owner.
    mappings: [{framework: Org standard, clause: "4.2", relation: direct}]
`

// TestPolicyGateOrganisationPack: a profile selects a pack the server loaded
// from a file, and its rule blocks a sync like an embedded one.
func TestPolicyGateOrganisationPack(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := &slipwayv1.PolicyProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "org-" + ns},
		Spec:       slipwayv1.PolicyProfileSpec{Packs: []string{"org-gate-test"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "low"},
	}
	if err := env.Client.Create(testCtx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })
	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "PolicyViolation", "ORG-LBL-001")
	})
	if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
		t.Fatalf("a revision the organisation's rule blocks changed the cluster: %v", err)
	}
}

// TestExpiredWaiverIsCheckedAgain: an Application synced under a waiver is
// checked again when the waiver expires, without a commit and long before
// its (hourly) interval, and reports the violation it no longer covers:
// both when it is Ready (a ConfigMap) and while a rollout is still polled
// (a Deployment, which never becomes ready without a kubelet).
func TestExpiredWaiverIsCheckedAgain(t *testing.T) {
	cases := map[string]struct {
		pack, rule, kind, name, file string
	}{
		"ready":       {"org-gate-test", "ORG-LBL-001", "ConfigMap", "settings", configMap("settings", "v1")},
		"rolling out": {"pss-baseline", "PSS-B-003", "Deployment", "app", deployment("app", true)},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			ns := env.TenantNamespace(t)
			profile := &slipwayv1.PolicyProfile{
				ObjectMeta: metav1.ObjectMeta{Name: "expiry-" + ns},
				Spec:       slipwayv1.PolicyProfileSpec{Packs: []string{tc.pack}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "low"},
			}
			if err := env.Client.Create(testCtx, profile); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })
			waiver := createWaiver(t, "expiry-"+ns, tc.rule, slipwayv1.WaiverScope{Namespace: ns, Kind: tc.kind, Name: tc.name},
				"a short exception", 10*time.Second)

			url := newRepo(t, map[string]string{"deploy/object.yaml": tc.file})
			app := newApp(t, ns, url, hourly, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })
			synced := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
				if a.Status.LastAppliedRevision == "" || a.Status.Policy == nil || a.Status.Policy.Waived == 0 {
					return fmt.Errorf("not applied under the waiver: %s", conditionMessage(a, slipwayv1.ConditionReady))
				}
				return nil
			})
			if got := synced.Status.Policy.WaiversExpireAt; got == nil || !got.Equal(&waiver.Spec.Expires) {
				t.Fatalf("status.policy.waiversExpireAt = %v, want %v", got, waiver.Spec.Expires)
			}
			waitFor(t, app, syncTimeout+10*time.Second, func(a *slipwayv1.Application) error {
				return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "PolicyViolation", tc.rule)
			})
		})
	}
}

// createWaiver creates a PolicyWaiver approved by the security officer that
// expires after ttl, deleted when the test ends.
func createWaiver(t *testing.T, name, rule string, scope slipwayv1.WaiverScope, reason string, ttl time.Duration) *slipwayv1.PolicyWaiver {
	t.Helper()
	waiver := &slipwayv1.PolicyWaiver{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: slipwayv1.PolicyWaiverSpec{
			Rule: rule, Scope: scope, Reason: reason, Approver: "security-officer@example.com",
			Expires: metav1.NewTime(time.Now().Add(ttl)),
		},
	}
	if err := env.Client.Create(testCtx, waiver); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, waiver) })
	return waiver
}

// TestUncheckedClusterKindsRefused: a profile that refuses cluster-scoped
// kinds it has no rule for blocks them whatever its failOn, and every
// profile reports the kinds it did not check.
func TestUncheckedClusterKindsRefused(t *testing.T) {
	ns := env.TenantNamespace(t)
	profile := createProfile(t, "unchecked-"+ns, slipwayv1.PolicyProfileSpec{
		Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "critical",
		Unchecked: &slipwayv1.UncheckedKinds{ClusterScoped: slipwayv1.UncheckedRefuse},
	})
	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns}, PolicyProfile: profile.Name,
		ClusterResources: []metav1.GroupKind{{Group: "", Kind: "Namespace"}}})
	extra := "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: extra-" + ns + "\n"
	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1"), "deploy/ns.yaml": extra})
	app := newApp(t, ns, url)
	blocked := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "PolicyViolation", "NOT-CHECKED")
	})
	p := blocked.Status.Policy
	if p == nil || !slices.Contains(p.NotChecked, "Namespace (1)") || !slices.Contains(p.NotChecked, "ConfigMap (1)") {
		t.Fatalf("status.policy.notChecked = %+v", p)
	}
	if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
		t.Fatalf("a revision with a refused unchecked kind was applied: %v", err)
	}
}
