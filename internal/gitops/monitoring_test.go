package gitops_test

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/testenv"
)

// prometheusOperatorCRDs serves the two kinds of monitoring.coreos.com/v1
// the test needs, with schemas that keep every field: no operator runs,
// only the objects are stored.
func prometheusOperatorCRDs(t *testing.T) {
	t.Helper()
	preserve := true
	for _, kind := range []string{"ServiceMonitor", "Prometheus"} {
		plural := strings.ToLower(kind) + "s"
		if kind == "Prometheus" {
			plural = "prometheuses"
		}
		crd := &apiextensionsv1.CustomResourceDefinition{
			ObjectMeta: metav1.ObjectMeta{Name: plural + ".monitoring.coreos.com"},
			Spec: apiextensionsv1.CustomResourceDefinitionSpec{
				Group: "monitoring.coreos.com", Scope: apiextensionsv1.NamespaceScoped,
				Names: apiextensionsv1.CustomResourceDefinitionNames{Kind: kind, ListKind: kind + "List", Plural: plural, Singular: strings.ToLower(kind)},
				Versions: []apiextensionsv1.CustomResourceDefinitionVersion{{Name: "v1", Served: true, Storage: true,
					Schema: &apiextensionsv1.CustomResourceValidation{OpenAPIV3Schema: &apiextensionsv1.JSONSchemaProps{
						Type: "object", XPreserveUnknownFields: &preserve,
					}}}},
			},
		}
		if err := env.Client.Create(testCtx, crd); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(testCtx, crd) })
		err := wait.PollUntilContextTimeout(testCtx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
			got := &apiextensionsv1.CustomResourceDefinition{}
			if err := env.Client.Get(ctx, client.ObjectKeyFromObject(crd), got); err != nil {
				return false, nil
			}
			for _, c := range got.Status.Conditions {
				if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			t.Fatalf("CRD %s not established: %v", crd.Name, err)
		}
	}
}

func service(name, port string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\nspec:\n  selector: {app: %[1]s}\n  ports:\n  - {name: %s, port: 9100}\n", name, port)
}

func prometheusStore(storage string) string {
	return "apiVersion: monitoring.coreos.com/v1\nkind: Prometheus\nmetadata:\n  name: main\nspec:\n  replicas: 1\n" + storage
}

// TestApplicationMonitoring: an Application whose workload exposes metrics
// says so in spec.monitoring, and Slipway renders the ServiceMonitor with
// its revision, applied as the Application's identity after the policy
// gate saw it; fin-kr's FIN-OPS-004 checks the revision's monitoring
// stores; a cluster without the Prometheus Operator's CRDs gets a message
// that names spec.monitoring.
func TestApplicationMonitoring(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/svc.yaml": service("web", "metrics"), "deploy/cm.yaml": configMap("settings", "v1")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) {
		a.Spec.Monitoring = &slipwayv1.ApplicationMonitoring{Port: "metrics", Path: "/stats", Interval: &metav1.Duration{Duration: 15 * time.Second},
			Labels: map[string]string{"release": "prometheus"}}
	})
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "", "spec.monitoring of Application "+ns+"/web")
	})

	prometheusOperatorCRDs(t)
	// The platform team lets this namespace run its own Prometheus.
	role := &rbacv1.Role{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prometheus-stores"},
		Rules: []rbacv1.PolicyRule{{APIGroups: []string{"monitoring.coreos.com"}, Resources: []string{"prometheuses"}, Verbs: []string{"*"}}}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prometheus-stores"},
		RoleRef:  rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects: []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: testenv.TenantServiceAccount}}}
	for _, o := range []client.Object{role, binding} {
		if err := env.Client.Create(testCtx, o); err != nil {
			t.Fatal(err)
		}
	}
	profile := &slipwayv1.PolicyProfile{
		ObjectMeta: metav1.ObjectMeta{Name: "fin-kr-audit-" + ns},
		Spec:       slipwayv1.PolicyProfileSpec{Packs: []string{"fin-kr"}, Mode: slipwayv1.PolicyModeAudit, FailOn: "high"},
	}
	if err := env.Client.Create(testCtx, profile); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, profile) })
	rev := commit(t, url, map[string]string{"deploy/prometheus.yaml": prometheusStore("")}, nil)
	patch := client.MergeFrom(app.DeepCopy())
	app.Spec.PolicyProfile = profile.Name
	if err := env.Client.Patch(testCtx, app, patch); err != nil {
		t.Fatal(err)
	}
	ephemeral := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.LastAppliedRevision != rev || a.Status.Policy == nil || a.Status.Policy.Revision != rev {
			return fmt.Errorf("revision %s not applied and checked: %s", rev[:12], conditionMessage(a, slipwayv1.ConditionReady))
		}
		return nil
	})
	if !slices.ContainsFunc(ephemeral.Status.Policy.Violations, func(v slipwayv1.PolicyViolation) bool {
		return v.Rule == "FIN-OPS-004" && v.Object == "Prometheus/"+ns+"/main" && v.Path == "spec.storage"
	}) {
		t.Errorf("FIN-OPS-004 does not report the Prometheus without storage: %+v", ephemeral.Status.Policy.Violations)
	}
	if !slices.ContainsFunc(ephemeral.Status.Policy.NotChecked, func(k string) bool { return strings.HasPrefix(k, "ServiceMonitor.monitoring.coreos.com") }) {
		t.Errorf("the policy gate did not see the rendered ServiceMonitor: not checked %v", ephemeral.Status.Policy.NotChecked)
	}

	sm := &unstructured.Unstructured{}
	sm.SetAPIVersion("monitoring.coreos.com/v1")
	sm.SetKind("ServiceMonitor")
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "web"}, sm); err != nil {
		t.Fatalf("the rendered ServiceMonitor: %v", err)
	}
	if sm.GetLabels()["release"] != "prometheus" {
		t.Errorf("ServiceMonitor labels %v lack spec.monitoring.labels", sm.GetLabels())
	}
	endpoints, _, _ := unstructured.NestedSlice(sm.Object, "spec", "endpoints")
	if len(endpoints) != 1 || fmt.Sprint(endpoints[0]) != "map[interval:15s path:/stats port:metrics]" {
		t.Errorf("ServiceMonitor endpoints = %v", endpoints)
	}
	namespaces, _, _ := unstructured.NestedStringSlice(sm.Object, "spec", "namespaceSelector", "matchNames")
	selector, _, _ := unstructured.NestedStringMap(sm.Object, "spec", "selector", "matchLabels")
	svc := &corev1.Service{}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "web"}, svc); err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(namespaces, []string{ns}) || len(selector) == 0 {
		t.Fatalf("ServiceMonitor selects %v in %v", selector, namespaces)
	}
	for k, v := range selector {
		if svc.Labels[k] != v {
			t.Errorf("the ServiceMonitor's selector %v does not select the Application's Service (labels %v)", selector, svc.Labels)
		}
	}
	if inventory := ephemeral.Status.Inventory; !slices.ContainsFunc(inventory, func(e slipwayv1.InventoryEntry) bool {
		return strings.Contains(e.ID, "_web_monitoring.coreos.com_ServiceMonitor")
	}) {
		t.Errorf("the ServiceMonitor is not in the inventory (it would never be pruned): %+v", inventory)
	}

	// With its data on a claim, the store passes.
	rev = commit(t, url, map[string]string{"deploy/prometheus.yaml": prometheusStore("  storage:\n    volumeClaimTemplate:\n      spec:\n        resources: {requests: {storage: 10Gi}}\n")}, nil)
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.Policy == nil || a.Status.Policy.Revision != rev {
			return fmt.Errorf("revision %s not checked", rev[:12])
		}
		if slices.ContainsFunc(a.Status.Policy.Violations, func(v slipwayv1.PolicyViolation) bool { return v.Rule == "FIN-OPS-004" }) {
			return fmt.Errorf("FIN-OPS-004 still fails: %+v", a.Status.Policy.Violations)
		}
		return nil
	})

	// Without spec.monitoring, the ServiceMonitor is pruned with the next sync.
	patch = client.MergeFrom(app.DeepCopy())
	app.Spec.Monitoring = nil
	if err := env.Client.Patch(testCtx, app, patch); err != nil {
		t.Fatal(err)
	}
	err := wait.PollUntilContextTimeout(testCtx, 200*time.Millisecond, syncTimeout, true, func(ctx context.Context) (bool, error) {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, sm)), nil
	})
	if err != nil {
		t.Fatalf("the ServiceMonitor outlived spec.monitoring: %v", err)
	}
}

// gathered returns the value of the series of name whose labels include
// labels, and whether it exists.
func gathered(t *testing.T, name string, labels map[string]string) (float64, bool) {
	t.Helper()
	families, err := ctrlmetrics.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			if !hasLabels(m, labels) {
				continue
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	n := 0
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; ok {
			if v != l.GetValue() {
				return false
			}
			n++
		}
	}
	return n == len(want)
}

// TestApplicationMetrics follows one Application through a deployment, a
// failing sync, a rollout that ends Degraded and its recovery, as
// Prometheus would see them.
func TestApplicationMetrics(t *testing.T) {
	ns := env.TenantNamespace(t)
	id := map[string]string{"namespace": ns, "name": "web"}
	withReason := func(reason string) map[string]string {
		return map[string]string{"namespace": ns, "name": "web", "reason": reason}
	}
	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) {
		a.Spec.RolloutTimeout = &metav1.Duration{Duration: 2 * time.Second}
	})
	rev := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.LastAppliedRevision == "" || a.Status.Health.Status != slipwayv1.HealthHealthy {
			return fmt.Errorf("not applied and healthy: %s", conditionMessage(a, slipwayv1.ConditionReady))
		}
		return nil
	}).Status.LastAppliedRevision
	if v, ok := gathered(t, "slipway_application_ready", withReason("ReconciliationSucceeded")); !ok || v != 1 {
		t.Errorf("slipway_application_ready{reason=ReconciliationSucceeded} = %v (exists %v), want 1", v, ok)
	}
	if v, _ := gathered(t, "slipway_application_deployments_total", id); v != 1 {
		t.Errorf("deployments after the first sync = %v, want 1", v)
	}
	if v, ok := gathered(t, "slipway_application_deployment_failures_total", id); !ok || v != 0 {
		t.Errorf("deployment failures = %v (exists %v), want an existing 0", v, ok)
	}

	// A wrong password: the sync fails, and the series says why.
	secret := &corev1.Secret{}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: app.Spec.Source.SecretRef.Name}, secret); err != nil {
		t.Fatal(err)
	}
	secret.Data["password"] = []byte("wrong")
	if err := env.Client.Update(testCtx, secret); err != nil {
		t.Fatal(err)
	}
	commit(t, url, map[string]string{"deploy/cm.yaml": configMap("settings", "v2")}, nil)
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, "GitOperationFailed", "")
	})
	if v, ok := gathered(t, "slipway_application_ready", withReason("GitOperationFailed")); !ok || v != 0 {
		t.Errorf("slipway_application_ready{reason=GitOperationFailed} = %v (exists %v), want 0", v, ok)
	}
	if _, ok := gathered(t, "slipway_application_ready", withReason("ReconciliationSucceeded")); ok {
		t.Error("the series of the old reason is still exported: the Application would count twice")
	}
	if v, _ := gathered(t, "slipway_git_operations_total", map[string]string{"operation": "fetch", "result": "auth_failed"}); v == 0 {
		t.Error("no git fetch counted as auth_failed")
	}

	// A rollout that never finishes (no controller-manager here) turns
	// Degraded after the rollout timeout: a failed deployment. Removing it
	// restores the Application: a recovery.
	secret.Data["password"] = []byte(gitAuth.Password)
	if err := env.Client.Update(testCtx, secret); err != nil {
		t.Fatal(err)
	}
	recoveries, _ := gathered(t, "slipway_application_recovery_duration_seconds", nil)
	commit(t, url, map[string]string{"deploy/app.yaml": deployment("app", false)}, nil)
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.Health.Status != slipwayv1.HealthDegraded {
			return fmt.Errorf("health %s", a.Status.Health.Status)
		}
		return nil
	})
	if v, _ := gathered(t, "slipway_application_deployment_failures_total", id); v != 1 {
		t.Errorf("deployment failures after a Degraded rollout = %v, want 1", v)
	}
	last := commit(t, url, nil, []string{"deploy/app.yaml"})
	waitFor(t, app, syncTimeout, readyAt(last))
	if v, _ := gathered(t, "slipway_application_recovery_duration_seconds", nil); v != recoveries+1 {
		t.Errorf("recoveries = %v, want %v", v, recoveries+1)
	}
	if v, _ := gathered(t, "slipway_application_deployments_total", id); v < 3 {
		t.Errorf("deployments = %v after three revisions applied (first %s)", v, rev[:12])
	}
}
