package policy_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"slipway.dev/slipway/internal/policy"
)

// TestAdmissionExport installs `slipway policy export --profile fin-kr` into a
// real kube-apiserver and checks that the API server itself refuses violating
// Pods with the rule id and field path in the error, admits a compliant one,
// and honours an exported waiver.
func TestAdmissionExport(t *testing.T) {
	env := apiServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := env.Client
	ns := env.Namespace(t)

	cat, err := policy.NewCatalog()
	if err != nil {
		t.Fatal(err)
	}
	// A privileged container cannot set allowPrivilegeEscalation: false (API
	// validation refuses the combination), so FIN-WL-004 is waived for the
	// privileged probe: the refusal must then come from FIN-WL-001 alone, and
	// the waiver's match condition is exercised too.
	waivers, err := policy.ParseWaivers([]byte(fmt.Sprintf(`
apiVersion: slipway.dev/v1alpha1
kind: PolicyWaiver
metadata: {name: privileged-probe}
spec:
  rule: FIN-WL-004
  scope: {namespace: %s, selector: {matchLabels: {probe: privileged}}}
  reason: the probe must be refused by FIN-WL-001 alone
  approver: security-officer
  expires: "2099-01-01"
`, ns)), "waivers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := cat.Compile(policy.Profile{Packs: []string{"fin-kr"}, Waivers: waivers})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := pol.ExportAdmission(policy.ExportOptions{Mode: policy.ExportEnforce, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := exp.YAML()
	if err != nil {
		t.Fatal(err)
	}
	// Install the stream exactly as `slipway policy export | kubectl apply -f -` would.
	installed := 0
	for _, doc := range strings.Split(string(stream), "\n---\n")[1:] {
		obj := &unstructured.Unstructured{}
		if err := yaml.Unmarshal([]byte(doc), &obj.Object); err != nil {
			t.Fatalf("reading exported document: %v\n%s", err, doc)
		}
		if err := c.Create(ctx, obj); err != nil {
			t.Fatalf("installing %s %s: %v", obj.GetKind(), obj.GetName(), err)
		}
		installed++
	}
	if installed != 2*len(exp.Policies) || installed == 0 {
		t.Fatalf("installed %d objects for %d policies", installed, len(exp.Policies))
	}

	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "app", Namespace: ns}, AutomountServiceAccountToken: new(false)}
	if err := c.Create(ctx, sa); err != nil {
		t.Fatal(err)
	}

	// Each probe breaks exactly one rule, so the API server's message (it names
	// the first denying policy only) must name that rule.
	probes := []struct {
		name, rule, path string
		mutate           func(*corev1.Pod)
	}{
		{"privileged", "FIN-WL-001", "spec.containers[0].securityContext.privileged", func(p *corev1.Pod) {
			p.Labels = map[string]string{"probe": "privileged"}
			p.Spec.Containers[0].SecurityContext.Privileged = new(true)
			p.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = nil
		}},
		{"host-network", "FIN-WL-002", "spec.hostNetwork", func(p *corev1.Pod) { p.Spec.HostNetwork = true }},
		{"untagged-image", "FIN-SC-002", "spec.containers[0].image", func(p *corev1.Pod) {
			p.Spec.Containers[0].Image = "registry.slipway.internal/payments/ledger"
		}},
	}
	for _, pr := range probes {
		t.Run(pr.name, func(t *testing.T) {
			pod := compliantPod(ns, pr.name)
			pr.mutate(pod)
			// The engine and the API server must agree.
			if rules := engineRules(t, pol, pod); len(rules) != 1 || rules[0] != pr.rule {
				t.Fatalf("the engine reports %v for the probe, want only %s", rules, pr.rule)
			}
			refusedWith(ctx, t, c, pod, pr.rule, pr.path)
		})
	}

	// Every kind that carries a pod is refused like a Pod, and each RBAC grant
	// that escalates is refused by its rule.
	template := func(name string) map[string]any {
		pod := compliantPod(ns, name)
		pod.Spec.Containers[0].SecurityContext.Privileged = new(true)
		pod.Spec.Containers[0].SecurityContext.AllowPrivilegeEscalation = nil
		spec, err := runtime.DefaultUnstructuredConverter.ToUnstructured(&pod.Spec)
		if err != nil {
			t.Fatal(err)
		}
		return map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": name}}, "spec": spec}
	}
	privilegedLabels := map[string]any{"probe": "privileged"}
	objectProbes := []struct {
		name, rule, path string
		obj              map[string]any
	}{
		{"replicationcontroller", "FIN-WL-001", "spec.template.spec.containers[0].securityContext.privileged", map[string]any{
			"apiVersion": "v1", "kind": "ReplicationController",
			"metadata": map[string]any{"name": "privileged", "namespace": ns, "labels": privilegedLabels},
			"spec":     map[string]any{"replicas": int64(1), "selector": map[string]any{"app": "rc"}, "template": template("rc")},
		}},
		{"podtemplate", "FIN-WL-001", "template.spec.containers[0].securityContext.privileged", map[string]any{
			"apiVersion": "v1", "kind": "PodTemplate",
			"metadata": map[string]any{"name": "privileged", "namespace": ns, "labels": privilegedLabels},
			"template": template("tpl"),
		}},
		{"escalate", "FIN-IAM-010", "rules[0].verbs[0]", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": map[string]any{"name": "probe-escalate"},
			"rules": []any{map[string]any{"apiGroups": []any{"rbac.authorization.k8s.io"}, "resources": []any{"clusterroles"}, "verbs": []any{"escalate"}}},
		}},
		{"nodes-proxy", "FIN-IAM-011", "rules[0].resources[0]", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": map[string]any{"name": "probe-nodes-proxy"},
			"rules": []any{map[string]any{"apiGroups": []any{""}, "resources": []any{"nodes/proxy"}, "verbs": []any{"get"}}},
		}},
		{"admin-in-namespace", "FIN-IAM-008", "subjects[0]", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding", "metadata": map[string]any{"name": "probe-admin", "namespace": ns},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "admin"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "app", "namespace": ns}},
		}},
		{"edit-cluster-wide", "FIN-IAM-001", "subjects[0]", map[string]any{
			"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": map[string]any{"name": "probe-edit"},
			"roleRef":  map[string]any{"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "edit"},
			"subjects": []any{map[string]any{"kind": "ServiceAccount", "name": "app", "namespace": ns}},
		}},
	}
	for _, pr := range objectProbes {
		t.Run(pr.name, func(t *testing.T) {
			if rules := engineRulesOf(t, pol, pr.obj); len(rules) != 1 || rules[0] != pr.rule {
				t.Fatalf("the engine reports %v for the probe, want only %s", rules, pr.rule)
			}
			refusedWith(ctx, t, c, &unstructured.Unstructured{Object: pr.obj}, pr.rule, pr.path)
		})
	}

	t.Run("compliant", func(t *testing.T) {
		pod := compliantPod(ns, "compliant")
		if rules := engineRules(t, pol, pod); len(rules) != 0 {
			t.Fatalf("the engine reports %v for the compliant pod", rules)
		}
		if err := c.Create(ctx, pod); err != nil {
			var status apierrors.APIStatus
			if errors.As(err, &status) {
				t.Fatalf("the compliant pod was refused: %s", status.Status().Message)
			}
			t.Fatalf("creating the compliant pod: %v", err)
		}
	})
}

// compliantPod is a Pod every fin-kr rule passes outside production.
func compliantPod(ns, name string) *corev1.Pod {
	probe := func(path string) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: intstr.FromInt32(8080)}}}
	}
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: corev1.PodSpec{
			ServiceAccountName:           "app",
			AutomountServiceAccountToken: new(false),
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot:   new(true),
				RunAsUser:      new(int64(10001)),
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			Containers: []corev1.Container{{
				Name:  "app",
				Image: "registry.slipway.internal/payments/ledger:1.8.2",
				SecurityContext: &corev1.SecurityContext{
					AllowPrivilegeEscalation: new(false),
					ReadOnlyRootFilesystem:   new(true),
					Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				},
				Resources: corev1.ResourceRequirements{
					Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("128Mi")},
					Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("256Mi")},
				},
				LivenessProbe:  probe("/healthz"),
				ReadinessProbe: probe("/readyz"),
			}},
		},
	}
}

// refusedWith creates obj as a dry run until the API server refuses it with
// rule, and checks the refusal. A binding takes effect when the API server's
// policy informer has caught up; until then the object is admitted (as a dry
// run, so nothing is left behind).
func refusedWith(ctx context.Context, t *testing.T, c client.Client, obj client.Object, rule, path string) {
	t.Helper()
	var last error
	deadline := time.Now().Add(30 * time.Second)
	for {
		last = c.Create(ctx, obj.DeepCopyObject().(client.Object), client.DryRunAll)
		if last != nil && strings.Contains(last.Error(), rule) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the API server did not refuse %s with %s within 30s; last result: %v", obj.GetName(), rule, last)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !apierrors.IsForbidden(last) {
		t.Errorf("refusal is not Forbidden: %v", last)
	}
	if !strings.Contains(last.Error(), path) {
		t.Errorf("refusal does not name the field path %s: %v", path, last)
	}
}

// engineRules returns the ids of the rules the engine reports (failed, not
// waived) for pod.
func engineRules(t *testing.T, pol *policy.Policy, pod *corev1.Pod) []string {
	t.Helper()
	pod = pod.DeepCopy()
	pod.APIVersion, pod.Kind = "v1", "Pod"
	obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
	if err != nil {
		t.Fatal(err)
	}
	return engineRulesOf(t, pol, obj)
}

// engineRulesOf returns the ids of the rules the engine reports (failed, not
// waived) for obj.
func engineRulesOf(t *testing.T, pol *policy.Policy, obj map[string]any) []string {
	t.Helper()
	var rules []string
	for _, f := range pol.EvaluateObject(context.Background(), obj, policy.ObjectRef{}, time.Now()).Findings {
		if f.Outcome != policy.OutcomeWaived {
			rules = append(rules, f.Rule)
		}
	}
	return rules
}
