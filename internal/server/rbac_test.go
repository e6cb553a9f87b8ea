package server_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/pipeline"
	"slipway.dev/slipway/internal/promotion"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
	"slipway.dev/slipway/internal/webhook"
)

// call is one request the server made with its own identity, as the audit
// log records it.
type call struct {
	verb, group, resource, namespace string
}

func (c call) String() string {
	where := "cluster-wide"
	if c.namespace != "" {
		where = "in " + c.namespace
	}
	group := c.group
	if group == "" {
		group = "core"
	}
	return fmt.Sprintf("%s %s/%s %s", c.verb, group, c.resource, where)
}

// auditEvent is the part of an audit.k8s.io/v1 Event the test reads.
type auditEvent struct {
	Verb             string `json:"verb"`
	User             struct{ Username string }
	ImpersonatedUser *struct{ Username string } `json:"impersonatedUser"`
	ObjectRef        *struct {
		Resource, Namespace, APIGroup, Subresource string
	} `json:"objectRef"`
	RequestURI  string            `json:"requestURI"`
	Annotations map[string]string `json:"annotations"`
}

// readCalls reads the server's calls from the audit log, and those the API
// server refused.
func readCalls() (calls map[call]bool, refused []string, err error) {
	f, err := os.Open(env.AuditLog())
	if err != nil {
		return nil, nil, err
	}
	defer f.Close()
	calls = map[call]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 16<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			return nil, nil, fmt.Errorf("audit log line: %w", err)
		}
		if e.User.Username != serverUser {
			continue
		}
		if e.ImpersonatedUser != nil {
			// The request itself is judged by the impersonated
			// ServiceAccount's RBAC; the server's own right is to
			// impersonate it.
			ns, _, ok := strings.Cut(strings.TrimPrefix(e.ImpersonatedUser.Username, "system:serviceaccount:"), ":")
			if !ok {
				return nil, nil, fmt.Errorf("the server impersonated %q, which is no ServiceAccount", e.ImpersonatedUser.Username)
			}
			calls[call{"impersonate", "", "serviceaccounts", ns}] = true
			continue
		}
		if e.ObjectRef == nil {
			continue // discovery (/api, /apis), which every authenticated user may read
		}
		c := call{e.Verb, e.ObjectRef.APIGroup, e.ObjectRef.Resource, e.ObjectRef.Namespace}
		if e.ObjectRef.Subresource != "" {
			c.resource += "/" + e.ObjectRef.Subresource
		}
		if e.Annotations["authorization.k8s.io/decision"] != "allow" {
			if r := fmt.Sprintf("%s (%s)", c, e.RequestURI); !slices.Contains(refused, r) {
				refused = append(refused, r)
			}
		}
		calls[c] = true
	}
	return calls, refused, sc.Err()
}

// grant is one verb on one resource that a generated role gives, where.
type grant struct {
	call
	role string
}

// generatedGrants expands the server's generated ClusterRole and Roles,
// as `slipway install` applies them, into single grants.
func generatedGrants() ([]grant, error) {
	objs, err := install.Manifests(install.Options{})
	if err != nil {
		return nil, err
	}
	var out []grant
	for _, o := range objs {
		if o.GetName() != install.ServerName || (o.GetKind() != "ClusterRole" && o.GetKind() != "Role") {
			continue
		}
		// A Role's rules have the same shape as a ClusterRole's.
		var rules rbacv1.ClusterRole
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &rules); err != nil {
			return nil, err
		}
		role := o.GetKind() + " " + o.GetName()
		if o.GetNamespace() != "" {
			role += " in " + o.GetNamespace()
		}
		for _, r := range rules.Rules {
			if len(r.ResourceNames) > 0 || len(r.NonResourceURLs) > 0 {
				return nil, fmt.Errorf("%s: rules with resourceNames or nonResourceURLs are not checked here: %+v", role, r)
			}
			for _, g := range r.APIGroups {
				for _, res := range r.Resources {
					for _, v := range r.Verbs {
						if g == "*" || res == "*" || v == "*" {
							return nil, fmt.Errorf("%s grants a wildcard: %+v", role, r)
						}
						out = append(out, grant{call{v, g, res, o.GetNamespace()}, role})
					}
				}
			}
		}
	}
	if len(out) == 0 {
		return nil, errors.New("the generated RBAC grants nothing")
	}
	return out, nil
}

// ungranted lists the calls no grant covers.
func ungranted(calls map[call]bool, grants []grant) []string {
	var out []string
	for c := range calls {
		if !slices.ContainsFunc(grants, func(g grant) bool { return g.allows(c) }) {
			out = append(out, c.String())
		}
	}
	sort.Strings(out)
	return out
}

// checkSuiteCalls runs after every test of the package: whatever the
// tests made the server do, the API server granted it, and the generated
// RBAC is what granted it.
func checkSuiteCalls() error {
	calls, refused, err := readCalls()
	if err != nil {
		return err
	}
	if len(refused) > 0 {
		return fmt.Errorf("the API server refused the server's calls during the tests (the markers lack these rights):\n  %s", strings.Join(refused, "\n  "))
	}
	grants, err := generatedGrants()
	if err != nil {
		return err
	}
	if missing := ungranted(calls, grants); len(missing) > 0 {
		return fmt.Errorf("during the tests the server made calls the generated RBAC does not grant:\n  %s", strings.Join(missing, "\n  "))
	}
	return nil
}

// allows reports whether g covers c: a ClusterRole's grant anywhere, a
// Role's in its namespace.
func (g grant) allows(c call) bool {
	return g.verb == c.verb && g.group == c.group && g.resource == c.resource && (g.namespace == "" || g.namespace == c.namespace)
}

// TestServerRBACMatchesItsCalls compares the RBAC generated from the
// +kubebuilder:rbac markers with what the server, running as its
// ServiceAccount, asks the API server for: during this package's tests,
// and during the paths this test drives (a webhook delivery, an
// Application applied as a tenant's ServiceAccount with credentials and a
// policy profile that reads NetworkPolicies, a PipelineRun whose test step
// runs as a Pod, a run of a missing Pipeline, a Promotion waiting for its
// approval). Every call must be granted by the generated rules, and
// every granted right must have been used. TestMain checks the first half
// again once every test of the package has run.
func TestServerRBACMatchesItsCalls(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	driveEveryPath(t, ctx)

	grants, err := generatedGrants()
	if err != nil {
		t.Fatal(err)
	}
	var unused []grant
	var calls map[call]bool
	// Events are written by a background broadcaster: wait for them.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		var refused []string
		if calls, refused, err = readCalls(); err != nil {
			t.Fatal(err)
		}
		if len(refused) > 0 {
			t.Fatalf("the API server refused the server's calls (the markers lack these rights):\n  %s", strings.Join(refused, "\n  "))
		}
		unused = unused[:0]
		for _, g := range grants {
			used := false
			for c := range calls {
				used = used || g.allows(c)
			}
			if !used {
				unused = append(unused, g)
			}
		}
		if len(unused) == 0 || time.Now().After(deadline) {
			break
		}
	}
	if missing := ungranted(calls, grants); len(missing) > 0 {
		t.Errorf("the server made calls the generated RBAC does not grant (another binding allowed them):\n  %s", strings.Join(missing, "\n  "))
	}
	for _, g := range unused {
		t.Errorf("%s grants %s, which the server never used: remove it from the markers", g.role, g.call)
	}
	var seen []string
	for c := range calls {
		seen = append(seen, c.String())
	}
	sort.Strings(seen)
	t.Logf("%d distinct calls, granted by %d generated rights:\n  %s", len(calls), len(grants), strings.Join(seen, "\n  "))
}

// driveEveryPath makes the server use each of its rights at least once.
func driveEveryPath(t *testing.T, ctx context.Context) {
	t.Helper()
	gitAuth := gitserver.BasicAuth{Username: "slipway", Password: "rbac-test-git-password"}
	git, err := gitserver.New(t.TempDir(), gitAuth.Username, gitAuth.Password)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := git.Start(ctx, ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = git.Close() })
	repo := func(name string, files map[string]string) (string, string) {
		if err := git.CreateRepo(ctx, name); err != nil {
			t.Fatal(err)
		}
		content := map[string][]byte{}
		for k, v := range files {
			content[k] = []byte(v)
		}
		sha, err := gitserver.CommitFiles(ctx, git.RepoURL(name), gitAuth, gitserver.Commit{Files: content, Message: "initial", Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"}})
		if err != nil {
			t.Fatal(err)
		}
		return git.RepoURL(name), sha
	}

	ns := env.TenantNamespace(t)
	create := func(objs ...client.Object) {
		t.Helper()
		for _, o := range objs {
			if err := env.Client.Create(ctx, o); err != nil {
				t.Fatal(err)
			}
			if o.GetNamespace() == "" {
				t.Cleanup(func() { _ = env.Client.Delete(context.Background(), o) })
			}
		}
	}
	creds := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "git", Annotations: map[string]string{gitsource.AllowedURLsAnnotation: git.RepoURL("")}},
		Data:       map[string][]byte{"username": []byte(gitAuth.Username), "password": []byte(gitAuth.Password)},
	}
	create(creds)

	// An Application applied as the tenant's ServiceAccount, gated by a
	// profile with rules about the namespace's NetworkPolicies.
	opsURL, _ := repo("rbac-ops.git", map[string]string{
		"staging/kustomization.yaml": "resources: [deploy.yaml]\nimages:\n- name: web\n  newName: registry.example/web\n  digest: " + webDigest + "\n",
		"staging/deploy.yaml": `apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web}]}
`})
	create(
		&slipwayv1.PolicyProfile{ObjectMeta: metav1.ObjectMeta{Name: ns}, Spec: slipwayv1.PolicyProfileSpec{Packs: []string{"fin-kr"}, Mode: slipwayv1.PolicyModeAudit}},
		&slipwayv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: ns}, Spec: slipwayv1.TenantSpec{
			Namespaces: []string{ns}, ServiceAccountName: testenv.TenantServiceAccount, PolicyProfile: ns,
		}},
		&slipwayv1.Application{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
			Spec: slipwayv1.ApplicationSpec{
				Source:      slipwayv1.ApplicationSource{URL: opsURL, Path: "staging", SecretRef: &slipwayv1.LocalObjectReference{Name: creds.Name}},
				Destination: slipwayv1.ApplicationDestination{Namespace: ns},
				SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true},
				Interval:    &metav1.Duration{Duration: time.Hour},
			},
		},
	)

	// A Pipeline whose run a push starts; its test step runs as a Pod.
	srcURL, srcSHA := repo("rbac-src.git", map[string]string{"slipway.yaml": "test:\n  command: go test ./...\n"})
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, err := signing.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	create(
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"cosign.key": keyPEM}},
		&slipwayv1.Pipeline{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "svc"}, Spec: slipwayv1.PipelineSpec{
			Source:  slipwayv1.PipelineSource{URL: srcURL, SecretRef: &slipwayv1.LocalObjectReference{Name: creds.Name}},
			Image:   slipwayv1.ImageTarget{Repository: "127.0.0.1:1/rbac/svc"},
			Signing: slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing"}},
		}},
	)
	body := []byte(`{"ref":"refs/heads/main","after":"` + srcSHA + `","repository":{"clone_url":"` + srcURL + `"}}`)
	if code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "rbac-1", "X-Hub-Signature-256": webhook.Sign(secret, body)}); code != http.StatusAccepted {
		t.Fatalf("push: %d %s", code, resp)
	}

	// Play the kubelet: bind the test Pod (to a node that does not
	// exist, so reading its log fails after the right was checked) and
	// end it with a failure, which ends the run.
	pod := waitReleasedPod(t, ctx)
	binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: "no-such-node"}}
	if err := env.Client.SubResource("binding").Create(ctx, pod, binding); err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Get(ctx, client.ObjectKeyFromObject(pod), pod); err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodFailed, ContainerStatuses: []corev1.ContainerStatus{{
		Name: "test", State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 3, Reason: "Error"}},
	}}}
	if err := env.Client.Status().Update(ctx, pod); err != nil {
		t.Fatal(err)
	}

	eventually(t, ctx, "the PipelineRun fails at its test step", func() (bool, string) {
		var runs slipwayv1.PipelineRunList
		if err := env.Client.List(ctx, &runs, client.InNamespace(ns)); err != nil || len(runs.Items) != 1 {
			return false, fmt.Sprintf("%d runs, %v", len(runs.Items), err)
		}
		r := runs.Items[0]
		return r.Status.Phase == slipwayv1.RunFailed, fmt.Sprintf("phase %q %+v", r.Status.Phase, r.Status.Conditions)
	})
	// A run of a Pipeline that does not exist: the controller looks for it
	// past its cache, by name.
	gone := &slipwayv1.PipelineRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gone"},
		Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "gone"}, Commit: srcSHA, Branch: "main"}}
	create(gone)
	waitRunPhase(t, ctx, gone, slipwayv1.RunFailed)
	eventually(t, ctx, "the Application is synced as the tenant's ServiceAccount", func() (bool, string) {
		app := &slipwayv1.Application{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, app); err != nil {
			return false, err.Error()
		}
		ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady)
		return app.Status.Sync.Status == slipwayv1.SyncStatusSynced, fmt.Sprintf("sync %q, ready %+v", app.Status.Sync.Status, ready)
	})
	// A push to the ops repository reconciles the Application again: the
	// same policy findings repeat, and the event recorder counts them on
	// the Events it wrote (patch).
	body = []byte(`{"ref":"refs/heads/main","after":"` + strings.Repeat("1", 40) + `","repository":{"clone_url":"` + opsURL + `"}}`)
	if code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": "rbac-2", "X-Hub-Signature-256": webhook.Sign(secret, body)}); code != http.StatusAccepted {
		t.Fatalf("push: %d %s", code, resp)
	}
	eventually(t, ctx, "the push reconciles the Application again", func() (bool, string) {
		app := &slipwayv1.Application{}
		if err := env.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "web"}, app); err != nil {
			return false, err.Error()
		}
		token := app.Annotations[slipwayv1.ReconcileRequestAnnotation]
		return token != "" && app.Status.LastHandledReconcileAt == token, fmt.Sprintf("request %q handled %q", token, app.Status.LastHandledReconcileAt)
	})

	drivePromotion(t, ctx, ns, srcSHA, create)
}

// webDigest is the digest of the image the Application's stage runs.
var webDigest = "sha256:" + strings.Repeat("ab", 32)

// drivePromotion requests a promotion of what the Application "web" runs
// into a stage that needs an approval: the controller resolves the image,
// the run that built it and its commits' authors (mapped to users by the
// identities ConfigMap), and waits for the approval.
func drivePromotion(t *testing.T, ctx context.Context, ns, commit string, create func(...client.Object)) {
	t.Helper()
	identities := &corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: promotion.IdentitiesConfigMap},
		Data:       map[string]string{"identities": "dev: [dev@example.com]\n"},
	}
	create(identities)
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), identities) })
	// The run that built the image the stage runs. Its branch is not one
	// the Pipeline builds, so the controller ends it at once; then it is
	// given the outcome of a build of that image, which a real build would
	// take minutes and a registry to produce.
	built := &slipwayv1.PipelineRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "built"},
		Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "svc"}, Commit: commit, Branch: "release"}}
	create(built)
	waitRunPhase(t, ctx, built, slipwayv1.RunFailed)
	if err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(built), built); err != nil {
			return err
		}
		built.Status.Phase, built.Status.Image = slipwayv1.RunSucceeded, "registry.example/web@"+webDigest
		return env.Client.Status().Update(ctx, built)
	}); err != nil {
		t.Fatal(err)
	}
	create(&slipwayv1.Delivery{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"}, Spec: slipwayv1.DeliverySpec{
		Image: "web",
		Stages: []slipwayv1.DeliveryStage{
			{Name: "staging", Application: "web"},
			{Name: "prod", Application: "web-prod", Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}},
		},
	}})
	// The requester is a person, as the admission policy demands.
	create(&rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "dev-requests"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-promotion-requester"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: "dev"}},
	})
	devCfg := rest.CopyConfig(env.Config)
	devCfg.Impersonate = rest.ImpersonationConfig{UserName: "dev", Groups: []string{"system:authenticated", "developers"}}
	dev, err := client.New(devCfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	p := &slipwayv1.Promotion{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web-to-prod"},
		Spec: slipwayv1.PromotionSpec{Delivery: "web", Stage: "prod", RequestedBy: "dev"}}
	if err := dev.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	eventually(t, ctx, "the promotion waits for its approval", func() (bool, string) {
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(p), p); err != nil {
			return false, err.Error()
		}
		f := p.Status.Freight
		return p.Status.Phase == slipwayv1.PromotionPending && f != nil && slices.Equal(f.AuthorUsers, []string{"dev"}),
			fmt.Sprintf("phase %q, freight %+v, conditions %+v", p.Status.Phase, f, p.Status.Conditions)
	})
}

func waitRunPhase(t *testing.T, ctx context.Context, run *slipwayv1.PipelineRun, phase string) {
	t.Helper()
	eventually(t, ctx, "PipelineRun "+run.Name+" "+phase, func() (bool, string) {
		got := &slipwayv1.PipelineRun{}
		if err := env.Client.Get(ctx, client.ObjectKeyFromObject(run), got); err != nil {
			return false, err.Error()
		}
		return got.Status.Phase == phase, fmt.Sprintf("phase %q %+v", got.Status.Phase, got.Status.Conditions)
	})
}

// waitReleasedPod returns the test Pod once the executor released it.
func waitReleasedPod(t *testing.T, ctx context.Context) *corev1.Pod {
	t.Helper()
	var pod *corev1.Pod
	eventually(t, ctx, "a released test Pod in "+install.RunNamespace, func() (bool, string) {
		var pods corev1.PodList
		if err := env.Client.List(ctx, &pods, client.InNamespace(install.RunNamespace), client.HasLabels{pipeline.RunLabel}); err != nil {
			return false, err.Error()
		}
		for i := range pods.Items {
			if len(pods.Items[i].Spec.SchedulingGates) == 0 {
				pod = &pods.Items[i]
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d pods", len(pods.Items))
	})
	return pod
}

// eventually waits for cond, and stops at once when the API server has
// refused the server a call: a missing right is the likely cause.
func eventually(t *testing.T, ctx context.Context, what string, cond func() (bool, string)) {
	t.Helper()
	for {
		ok, state := cond()
		if ok {
			return
		}
		if _, refused, err := readCalls(); err != nil {
			t.Fatal(err)
		} else if len(refused) > 0 {
			t.Fatalf("%s: not yet, and the API server refused the server's calls (the markers lack these rights):\n  %s\nlast: %s",
				what, strings.Join(refused, "\n  "), state)
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%s: not by the deadline; last: %s", what, state)
		case <-time.After(200 * time.Millisecond):
		}
	}
}
