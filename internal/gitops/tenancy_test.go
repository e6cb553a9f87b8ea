package gitops_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitserver"
)

// createTenant creates a Tenant and removes it after the test.
func createTenant(t *testing.T, name string, spec slipwayv1.TenantSpec) *slipwayv1.Tenant {
	t.Helper()
	tenant := &slipwayv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: spec}
	if err := env.Client.Create(testCtx, tenant); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, tenant) })
	return tenant
}

// stalledWith waits until the Application is Stalled for reason with a
// message containing every part.
func stalledWith(reason string, parts ...string) func(*slipwayv1.Application) error {
	return func(a *slipwayv1.Application) error {
		for _, p := range parts {
			if err := hasCondition(a, slipwayv1.ConditionStalled, metav1.ConditionTrue, reason, p); err != nil {
				return err
			}
		}
		return nil
	}
}

func createConfigMap(t *testing.T, ns, name, value string, annotations map[string]string) {
	t.Helper()
	cm := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: annotations}, Data: map[string]string{"value": value}}
	if err := env.Client.Create(testCtx, cm); err != nil {
		t.Fatal(err)
	}
}

// TestObjectsStayInTheirNamespace: a revision naming another team's
// namespace is refused whole, naming the file, and the other team's object
// is neither changed nor, when the file leaves git, deleted.
func TestObjectsStayInTheirNamespace(t *testing.T) {
	ns, victim := env.TenantNamespace(t), env.TenantNamespace(t)
	createConfigMap(t, victim, "settings", "theirs", nil)
	foreign := fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: %s\ndata:\n  value: overwritten\n", victim)
	url := newRepo(t, map[string]string{"deploy/own.yaml": configMap("own", "x"), "deploy/foreign.yaml": foreign})
	app := newApp(t, ns, url)

	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonTenancyViolation, "foreign.yaml", "ConfigMap "+victim+"/settings is in namespace "+victim))
	if cm, _ := getConfigMap(t, victim, "settings"); cm.Data["value"] != "theirs" {
		t.Fatalf("another namespace's ConfigMap was changed: %q", cm.Data["value"])
	}
	if _, err := getConfigMap(t, ns, "own"); !apierrors.IsNotFound(err) {
		t.Fatalf("a refused revision was partly applied: %v", err)
	}

	// Its destination cannot point elsewhere either.
	other := newApp(t, ns, newRepo(t, map[string]string{"deploy/a.yaml": configMap("a", "x")}), func(a *slipwayv1.Application) {
		a.Name = "elsewhere"
		a.Spec.Destination.Namespace = victim
	})
	waitFor(t, other, syncTimeout, stalledWith(gitops.ReasonTenancyViolation, "destination namespace "+victim+" is not allowed"))
	if _, err := getConfigMap(t, victim, "a"); !apierrors.IsNotFound(err) {
		t.Fatalf("an Application deployed into a namespace it was not given: %v", err)
	}

	// A Tenant can give a team a second namespace; RBAC there decides what
	// its ServiceAccount may do, and the other namespace's objects are
	// still not taken over.
	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns}, Destinations: []string{victim}})
	waitFor(t, other, syncTimeout, stalledWith(gitops.ReasonForbidden, "ServiceAccount "+ns+"/slipway-deployer"))
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: victim, Name: "from-" + ns},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-tenant"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: "slipway-deployer"}},
	}
	if err := env.Client.Create(testCtx, binding); err != nil {
		t.Fatal(err)
	}
	waitFor(t, other, syncTimeout, readyAtAny)
	if _, err := getConfigMap(t, victim, "a"); err != nil {
		t.Fatalf("a destination the Tenant allows was not deployed to: %v", err)
	}
	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonTenancyViolation, "ConfigMap "+victim+"/settings already exists, not created by Slipway"))
	if cm, _ := getConfigMap(t, victim, "settings"); cm.Data["value"] != "theirs" {
		t.Fatalf("another team's ConfigMap was taken over: %q", cm.Data["value"])
	}
}

// TestClusterScopedKindsNeedATenant: a ClusterRoleBinding to admin is
// refused without a Tenant granting the kind; granted, the Kubernetes API
// still refuses it, because the Application's ServiceAccount may not bind
// what it does not hold.
func TestClusterScopedKindsNeedATenant(t *testing.T) {
	ns := env.TenantNamespace(t)
	crb := fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: take-over-%[1]s
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: admin}
subjects: [{kind: ServiceAccount, name: default, namespace: %[1]s}]
`, ns)
	url := newRepo(t, map[string]string{"deploy/crb.yaml": crb})
	app := newApp(t, ns, url)
	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonTenancyViolation, "crb.yaml", "cluster-scoped ClusterRoleBinding take-over-"+ns+" is not allowed"))

	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns},
		ClusterResources: []metav1.GroupKind{{Group: rbacv1.GroupName, Kind: "ClusterRoleBinding"}}})
	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonForbidden, "ServiceAccount "+ns+"/slipway-deployer", "forbidden"))
	if err := env.Client.Get(testCtx, client.ObjectKey{Name: "take-over-" + ns}, &rbacv1.ClusterRoleBinding{}); !apierrors.IsNotFound(err) {
		t.Fatalf("the ClusterRoleBinding exists: %v", err)
	}
}

// TestAppliesAsTheServiceAccount: what RBAC does not grant the
// Application's ServiceAccount (Secrets, with the slipway-tenant role) is
// refused by the API server; a Tenant with server rights lifts that.
func TestAppliesAsTheServiceAccount(t *testing.T) {
	ns := env.TenantNamespace(t)
	secret := "apiVersion: v1\nkind: Secret\nmetadata:\n  name: token\nstringData:\n  token: abc\n"
	url := newRepo(t, map[string]string{"deploy/secret.yaml": secret})
	app := newApp(t, ns, url)
	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonForbidden, "as ServiceAccount "+ns+"/slipway-deployer", `resource "secrets"`))

	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns}, ServerRights: true})
	waitFor(t, app, syncTimeout, readyAtAny)
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "token"}, &corev1.Secret{}); err != nil {
		t.Fatalf("server rights did not apply the Secret: %v", err)
	}
}

// TestNoServiceAccountNoSync: with no ServiceAccount configured anywhere,
// the installed default, an Application applies nothing.
func TestNoServiceAccountNoSync(t *testing.T) {
	ns := env.TenantNamespace(t)
	app := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}}
	_, err := gitops.TenancyFor(testCtx, env.Client, app, "")
	if err == nil || !strings.Contains(err.Error(), "no ServiceAccount to apply as") {
		t.Fatalf("tenancy without any ServiceAccount: %v", err)
	}
	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns}, ServiceAccountName: "team"})
	tn, err := gitops.TenancyFor(testCtx, env.Client, app, "")
	if err != nil || tn.ServiceAccount != "team" || tn.Tenant != ns {
		t.Fatalf("tenancy from the Tenant = %+v, %v", tn, err)
	}
	createTenant(t, ns+"-again", slipwayv1.TenantSpec{Namespaces: []string{ns}})
	if _, err := gitops.TenancyFor(testCtx, env.Client, app, ""); err == nil || !strings.Contains(err.Error(), "claimed by Tenants") {
		t.Fatalf("a namespace in two Tenants: %v", err)
	}
}

// TestNoSilentAdoption: an object created by someone else, or owned by
// another Application, is neither taken over nor pruned; the live object's
// owner can hand it over with an annotation.
func TestNoSilentAdoption(t *testing.T) {
	ns := env.TenantNamespace(t)
	createConfigMap(t, ns, "by-hand", "kubectl", nil)
	first := newApp(t, ns, newRepo(t, map[string]string{"deploy/a.yaml": configMap("first-owned", "first")}), func(a *slipwayv1.Application) { a.Name = "first" })
	waitFor(t, first, syncTimeout, readyAtAny)

	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("by-hand", "taken") + "---\n" + configMap("first-owned", "taken")})
	second := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Name = "second" })
	waitFor(t, second, syncTimeout, stalledWith(gitops.ReasonTenancyViolation,
		"ConfigMap "+ns+"/by-hand already exists, not created by Slipway",
		"ConfigMap "+ns+"/first-owned already exists, owned by Application "+ns+"/first",
		gitops.AdoptAnnotation+"="+ns+"/second"))
	for name, want := range map[string]string{"by-hand": "kubectl", "first-owned": "first"} {
		if cm, _ := getConfigMap(t, ns, name); cm.Data["value"] != want {
			t.Fatalf("%s was taken over: %q", name, cm.Data["value"])
		}
	}

	// The owner of by-hand hands it over; first-owned leaves the revision.
	cm, _ := getConfigMap(t, ns, "by-hand")
	cm.Annotations = map[string]string{gitops.AdoptAnnotation: ns + "/second"}
	if err := env.Client.Update(testCtx, cm); err != nil {
		t.Fatal(err)
	}
	rev := commit(t, url, map[string]string{"deploy/a.yaml": configMap("by-hand", "taken")}, nil)
	waitFor(t, second, syncTimeout, readyAt(rev))
	if cm, _ := getConfigMap(t, ns, "by-hand"); cm.Data["value"] != "taken" || cm.Labels["applications.slipway.dev/name"] != "second" {
		t.Fatalf("adopted object: %+v", cm)
	}
	// Removing the adopted object from git prunes it; first's object stays.
	rev = commit(t, url, map[string]string{"deploy/b.yaml": configMap("new", "x")}, []string{"deploy/a.yaml"})
	waitFor(t, second, syncTimeout, readyAt(rev))
	if _, err := getConfigMap(t, ns, "by-hand"); !apierrors.IsNotFound(err) {
		t.Fatalf("adopted object not pruned after it left git: %v", err)
	}
	if cm, err := getConfigMap(t, ns, "first-owned"); err != nil || cm.Data["value"] != "first" {
		t.Fatalf("another Application's object was touched: %v %+v", err, cm)
	}
}

// TestTenantProfileCannotBeWeakened: an Application naming a weak profile
// is still gated by its Tenant's.
func TestTenantProfileCannotBeWeakened(t *testing.T) {
	ns := env.TenantNamespace(t)
	strict := createProfile(t, "strict-"+ns, slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "high"})
	weak := createProfile(t, "weak-"+ns, slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeAudit, FailOn: "critical"})
	createTenant(t, ns, slipwayv1.TenantSpec{Namespaces: []string{ns}, PolicyProfile: strict.Name})

	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1"), "deploy/app.yaml": deployment("app", true)})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = weak.Name })
	blocked := waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, gitops.ReasonPolicyViolation, "policy "+strict.Name+" blocks")
	})
	if p := blocked.Status.Policy; p == nil || p.Profile != strict.Name+", "+weak.Name || p.Mode != slipwayv1.PolicyModeEnforce {
		t.Fatalf("status.policy = %+v, want both profiles in enforce mode", p)
	}
	if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
		t.Fatalf("the weak profile let the revision through: %v", err)
	}
}

// TestCredentialsStayWithTheirHosts: an Application naming a server of its
// author's choosing with the namespace's git Secret is refused before any
// request is made, whether the Secret lists other hosts or none.
func TestCredentialsStayWithTheirHosts(t *testing.T) {
	ns := env.TenantNamespace(t)
	var requests atomic.Int32
	var sawPassword atomic.Bool
	attacker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		requests.Add(1)
		if _, pass, ok := r.BasicAuth(); ok && pass == gitAuth.Password {
			sawPassword.Store(true)
		}
		http.Error(w, "no", http.StatusUnauthorized)
	}))
	defer attacker.Close()

	app := newApp(t, ns, attacker.URL+"/collect.git")
	waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonCredentialsInvalid, "may not be sent to "+attacker.URL+"/collect.git"))

	unscoped := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "unscoped"},
		Data: map[string][]byte{"username": []byte(gitAuth.Username), "password": []byte(gitAuth.Password)}}
	if err := env.Client.Create(testCtx, unscoped); err != nil {
		t.Fatal(err)
	}
	other := newApp(t, ns, attacker.URL+"/collect.git", func(a *slipwayv1.Application) {
		a.Name = "unscoped"
		a.Spec.Source.SecretRef.Name = unscoped.Name
	})
	waitFor(t, other, syncTimeout, stalledWith(gitops.ReasonCredentialsInvalid, "do not say where they may be sent"))
	if n := requests.Load(); n != 0 || sawPassword.Load() {
		t.Fatalf("the attacker's server got %d requests (password seen: %v)", n, sawPassword.Load())
	}
}

// TestTarpitHoldsOnlyItsShare: Applications pointing at a server that
// accepts connections and never answers hold at most their host's share of
// the workers; another team's Application still syncs meanwhile.
func TestTarpitHoldsOnlyItsShare(t *testing.T) {
	staller, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	attackerNS, ns := env.TenantNamespace(t), env.TenantNamespace(t)
	for i := range 4 {
		newApp(t, attackerNS, fmt.Sprintf("%s/tarpit-%d.git", staller.URL(), i), func(a *slipwayv1.Application) {
			a.Name = fmt.Sprintf("tarpit-%d", i)
			a.Spec.Source.SecretRef = nil
			a.Spec.Source.Timeout = &metav1.Duration{Duration: 5 * time.Minute}
		})
	}
	time.Sleep(2 * time.Second) // let the tarpit take what it can
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "x")})
	app := newApp(t, ns, url)
	waitFor(t, app, syncTimeout, readyAtAny)
}

// TestSourceTimeoutIsCapped: the API server refuses a git timeout over five
// minutes, which would let one Application hold a worker for hours.
func TestSourceTimeoutIsCapped(t *testing.T) {
	ns := env.TenantNamespace(t)
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "slow"},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: "https://git.example.com/ops.git", Timeout: &metav1.Duration{Duration: 10 * time.Hour}},
			Destination: slipwayv1.ApplicationDestination{Namespace: ns},
		},
	}
	err := env.Client.Create(testCtx, app)
	if err == nil || !strings.Contains(err.Error(), "at most 5m") {
		t.Fatalf("creating an Application with a 10h git timeout: %v", err)
	}
}

// TestWaiversNeedANamespace: a waiver matching only names, kinds or labels,
// which any repository author can copy, is refused by the API server.
func TestWaiversNeedANamespace(t *testing.T) {
	waiver := &slipwayv1.PolicyWaiver{
		ObjectMeta: metav1.ObjectMeta{Name: "everywhere-" + strings.ToLower(t.Name())},
		Spec: slipwayv1.PolicyWaiverSpec{
			Rule: "PSS-B-003", Scope: slipwayv1.WaiverScope{Kind: "Deployment", Name: "app"},
			Reason: "r", Approver: "a", Expires: metav1.NewTime(time.Now().Add(time.Hour)),
		},
	}
	err := env.Client.Create(testCtx, waiver)
	if err == nil {
		_ = env.Client.Delete(testCtx, waiver)
	}
	if err == nil || !strings.Contains(err.Error(), "spec.scope.namespace") {
		t.Fatalf("creating a waiver without a namespace: %v", err)
	}
}
