package promotion_test

import (
	"bytes"
	"encoding/json"
	"fmt"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/cli"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/gittest"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/promotion"
)

// delivery is a staging → prod delivery of tea: staging runs image A built
// from a commit by carol, prod runs image B built from alice's.
type delivery struct {
	ns, ops, source string
	staging         *slipwayv1.Application
}

const identities = `alice: [alice@example.com]
carol: [Carol@Example.com]
dev: [dev@example.com]
reviewer: [reviewer@example.com]
`

func newDelivery(t *testing.T, prod slipwayv1.DeliveryStage, sourceAuthor string) *delivery {
	t.Helper()
	d := &delivery{ns: env.Namespace(t)}
	ids := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: promotion.IdentitiesConfigMap}, Data: map[string]string{"identities": identities}}
	if err := env.Client.Create(testCtx, ids); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	var first, second string
	d.source, first = newRepo(t, map[string]string{"main.go": "package main // v1\n"}, "alice@example.com")
	second = commit(t, d.source, map[string]string{"main.go": "package main // v2\n"}, sourceAuthor)
	var opsRev string
	d.ops, opsRev = newRepo(t, map[string]string{
		"staging/kustomization.yaml": kustomization(digestOf('a')), "staging/deploy.yaml": "{}\n",
		"prod/kustomization.yaml": kustomization(digestOf('b')), "prod/deploy.yaml": "{}\n",
	}, "ops@example.com")

	gitSecret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "git", Annotations: map[string]string{gitsource.AllowedURLsAnnotation: strings.TrimSuffix(git.RepoURL("x"), "x")}},
		Data:       map[string][]byte{"username": []byte(gitAuth.Username), "password": []byte(gitAuth.Password)},
	}
	ref := &slipwayv1.LocalObjectReference{Name: gitSecret.Name}
	pipe := &slipwayv1.Pipeline{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "tea"}, Spec: slipwayv1.PipelineSpec{
		Source:  slipwayv1.PipelineSource{URL: d.source, Branches: []string{"main"}, SecretRef: ref},
		Image:   slipwayv1.ImageTarget{Repository: "registry.example.com/cafe/tea"},
		Signing: slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "key"}},
	}}
	create(t, gitSecret, pipe)
	for name, c := range map[string]struct{ commit, digest string }{"tea-b": {first, digestOf('b')}, "tea-a": {second, digestOf('a')}} {
		run := &slipwayv1.PipelineRun{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: name},
			Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "tea"}, Commit: c.commit}}
		create(t, run)
		run.Status.Phase, run.Status.Image = slipwayv1.RunSucceeded, "registry.example.com/cafe/tea@"+c.digest
		setStatus(t, run)
	}
	for _, stage := range []string{"staging", "prod"} {
		app := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "tea-" + stage}, Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: d.ops, Ref: slipwayv1.GitRef{Branch: "main"}, Path: stage, SecretRef: ref},
			Destination: slipwayv1.ApplicationDestination{Namespace: d.ns},
		}}
		create(t, app)
		// The status the GitOps engine would report: synced and healthy.
		app.Status.LastAppliedRevision = opsRev
		app.Status.Sync = slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: opsRev}
		app.Status.Health = slipwayv1.HealthStatus{Status: slipwayv1.HealthHealthy}
		app.Status.Conditions = []metav1.Condition{{Type: slipwayv1.ConditionReady, Status: metav1.ConditionTrue, Reason: "ReconciliationSucceeded", LastTransitionTime: metav1.Now()}}
		setStatus(t, app)
		if stage == "staging" {
			d.staging = app
		}
	}
	prod.Name, prod.Application = "prod", "tea-prod"
	create(t, &slipwayv1.Delivery{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "tea"}, Spec: slipwayv1.DeliverySpec{
		Image: "tea", SecretRef: ref,
		Stages: []slipwayv1.DeliveryStage{{Name: "staging", Application: "tea-staging"}, prod},
	}})
	return d
}

func request(t *testing.T, c client.Client, ns, name, requester, changeID string) *slipwayv1.Promotion {
	t.Helper()
	p := &slipwayv1.Promotion{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: slipwayv1.PromotionSpec{Delivery: "tea", Stage: "prod", ChangeID: changeID, RequestedBy: requester}}
	if err := c.Create(testCtx, p); err != nil {
		t.Fatalf("%s requesting %s: %v", requester, name, err)
	}
	return p
}

// decide appends user's decision to the promotion, as `slipway approve`
// and `slipway reject` do, and returns the API server's answer.
func decide(c client.Client, key client.ObjectKey, user, decision string, groups ...string) error {
	p := &slipwayv1.Promotion{}
	if err := c.Get(testCtx, key, p); err != nil {
		return err
	}
	patch := client.MergeFrom(p.DeepCopy())
	p.Spec.Approvals = append(p.Spec.Approvals, slipwayv1.PromotionApproval{User: user, Groups: groups, Decision: decision, Reason: "reviewed", At: metav1.Now()})
	return c.Patch(testCtx, p, patch)
}

func pending(part string) func(*slipwayv1.Promotion) error {
	return func(p *slipwayv1.Promotion) error {
		if p.Status.Phase != slipwayv1.PromotionPending || !slices.ContainsFunc(p.Status.Missing, func(m string) bool { return strings.Contains(m, part) }) {
			return fmt.Errorf("phase %s, missing %v, want Pending missing %q", p.Status.Phase, p.Status.Missing, part)
		}
		return nil
	}
}

func phase(want string) func(*slipwayv1.Promotion) error {
	return func(p *slipwayv1.Promotion) error {
		if p.Status.Phase != want {
			return fmt.Errorf("phase %q (missing %v), want %s", p.Status.Phase, p.Status.Missing, want)
		}
		return nil
	}
}

func refused(t *testing.T, err error, part string) {
	t.Helper()
	if err == nil || !apierrors.IsForbidden(err) && !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), part) {
		t.Fatalf("the API server answered %v, want a refusal containing %q", err, part)
	}
}

// TestSeparationOfDuties: the requester and the author of a commit the
// promotion carries cannot approve it, nor can anyone claim another's name
// or groups or change what was requested; the API server refuses each. A
// second person's approval lands exactly the image that ran in staging,
// with trailers naming the promotion, its requester and its approver.
func TestSeparationOfDuties(t *testing.T) {
	d := newDelivery(t, slipwayv1.DeliveryStage{
		Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}, RequireChangeID: true,
	}, "carol@example.com")
	dev := person(t, d.ns, "dev", "developers")
	carol := person(t, d.ns, "carol", "release-approvers")
	mallory := person(t, d.ns, "mallory", "readers")
	reviewer := person(t, d.ns, "reviewer", "release-approvers")

	forged := &slipwayv1.Promotion{ObjectMeta: metav1.ObjectMeta{Namespace: d.ns, Name: "forged"},
		Spec: slipwayv1.PromotionSpec{Delivery: "tea", Stage: "prod", RequestedBy: "reviewer"}}
	refused(t, dev.Create(testCtx, forged), "spec.requestedBy must be the user creating the promotion")

	p := request(t, dev, d.ns, "tea-to-prod", "dev", "CHG-1")
	key := client.ObjectKeyFromObject(p)
	got := waitPromotion(t, env.Client, key, 30*time.Second, pending("1 more approval(s) from release-approvers"))
	if f := got.Status.Freight; f == nil || f.Image != "registry.example.com/cafe/tea@"+digestOf('a') || !slices.Equal(f.AuthorUsers, []string{"carol"}) || len(f.UnmappedAuthors) != 0 {
		t.Fatalf("freight = %+v, want image A carrying carol's commit only", got.Status.Freight)
	}

	refused(t, decide(dev, key, "dev", slipwayv1.DecisionApprove, "developers"), "the requester of a promotion cannot approve or reject it")
	refused(t, decide(carol, key, "carol", slipwayv1.DecisionApprove, "release-approvers"), "user carol authored a commit this promotion carries")
	refused(t, decide(mallory, key, "mallory", slipwayv1.DecisionApprove, "release-approvers"), "only name groups its author belongs to")
	refused(t, decide(mallory, key, "reviewer", slipwayv1.DecisionApprove, "readers"), "only be added by the user it names")
	p = &slipwayv1.Promotion{}
	_ = reviewer.Get(testCtx, key, p)
	p.Spec.ChangeID = "CHG-2"
	refused(t, reviewer.Update(testCtx, p), "only approvals can be added")

	// Approved by someone the stage does not trust: not counted.
	if err := decide(mallory, key, "mallory", slipwayv1.DecisionApprove, "readers"); err != nil {
		t.Fatal(err)
	}
	waitPromotion(t, env.Client, key, 10*time.Second, pending("not counted: mallory is in none of the groups release-approvers"))

	if err := decide(reviewer, key, "reviewer", slipwayv1.DecisionApprove, "release-approvers"); err != nil {
		t.Fatal(err)
	}
	landed := waitPromotion(t, env.Client, key, 30*time.Second, phase(slipwayv1.PromotionLanded))
	head, file := gittest.Head(t, d.ops, gitAuth.Username, gitAuth.Password, "prod/kustomization.yaml")
	if head.Hash.String() != landed.Status.Commit || !strings.Contains(file, "digest: "+digestOf('a')) {
		t.Fatalf("prod's file at %s (status says %s):\n%s", head.Hash, landed.Status.Commit, file)
	}
	for _, trailer := range []string{"Slipway-Promotion: " + d.ns + "/tea-to-prod", "Slipway-Requested-By: dev", "Slipway-Approved-By: reviewer", "Change-Id: CHG-1", "Slipway-From-Stage: staging@"} {
		if !strings.Contains(head.Message, trailer) {
			t.Errorf("the promotion commit lacks %q:\n%s", trailer, head.Message)
		}
	}
	if slices.Contains(landed.Status.Approvers, "mallory") || !slices.Equal(landed.Status.Approvers, []string{"reviewer"}) {
		t.Errorf("approvers = %v", landed.Status.Approvers)
	}
}

// TestStageRules: a promotion without the change id the stage requires
// stays pending and expires; one for an image that has not soaked long
// enough in staging waits; a rejection ends a promotion; an unmapped
// commit author keeps every approval from counting.
func TestStageRules(t *testing.T) {
	d := newDelivery(t, slipwayv1.DeliveryStage{
		RequireChangeID: true, Soak: &metav1.Duration{Duration: 3 * time.Second}, PromotionTTL: &metav1.Duration{Duration: 8 * time.Second},
	}, "stranger@elsewhere.example")
	dev := person(t, d.ns, "dev", "developers")
	reviewer := person(t, d.ns, "reviewer", "release-approvers")

	noTicket := request(t, dev, d.ns, "no-ticket", "dev", "")
	waitPromotion(t, env.Client, client.ObjectKeyFromObject(noTicket), 20*time.Second, pending("a change id"))
	waitPromotion(t, env.Client, client.ObjectKeyFromObject(noTicket), 20*time.Second, phase(slipwayv1.PromotionExpired))

	// Staging started running its image just now.
	d.staging.Status.Conditions[0].LastTransitionTime = metav1.Now()
	setStatus(t, d.staging)
	soaking := request(t, dev, d.ns, "soaking", "dev", "CHG-7")
	key := client.ObjectKeyFromObject(soaking)
	waitPromotion(t, env.Client, key, 10*time.Second, pending("a soak of 3s in stage staging"))
	refused(t, decide(reviewer, key, "reviewer", slipwayv1.DecisionApprove, "release-approvers"), "stranger@elsewhere.example are not mapped to users")

	// No approvals are required here, so it lands after the soak.
	waitPromotion(t, env.Client, key, 20*time.Second, phase(slipwayv1.PromotionLanded))
}

// TestRejection: one rejection by a reviewer ends the promotion; it never
// lands, even if approved afterwards.
func TestRejection(t *testing.T) {
	d := newDelivery(t, slipwayv1.DeliveryStage{Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}}, "carol@example.com")
	dev := person(t, d.ns, "dev", "developers")
	reviewer := person(t, d.ns, "reviewer", "release-approvers")
	p := request(t, dev, d.ns, "rejected", "dev", "")
	key := client.ObjectKeyFromObject(p)
	waitPromotion(t, env.Client, key, 30*time.Second, pending("1 more approval"))
	if err := decide(reviewer, key, "reviewer", slipwayv1.DecisionReject, "release-approvers"); err != nil {
		t.Fatal(err)
	}
	got := waitPromotion(t, env.Client, key, 20*time.Second, phase(slipwayv1.PromotionRejected))
	if _, file := gittest.Head(t, d.ops, gitAuth.Username, gitAuth.Password, "prod/kustomization.yaml"); !strings.Contains(file, digestOf('b')) {
		t.Fatalf("a rejected promotion changed prod:\n%s", file)
	}
	if c := got.Status.Conditions; len(c) == 0 || !strings.Contains(c[0].Message, "rejected by reviewer") {
		t.Fatalf("conditions = %+v", c)
	}
}

// kubeconfigAs writes a kubeconfig that reaches the test API server as
// user, in groups, as each of the lab's people has one.
func kubeconfigAs(t *testing.T, user string, groups ...string) string {
	t.Helper()
	raw, err := env.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := clientcmd.Load(raw)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range cfg.AuthInfos {
		a.Impersonate, a.ImpersonateGroups = user, append([]string{"system:authenticated"}, groups...)
	}
	path := filepath.Join(t.TempDir(), user+".kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

func slipway(t *testing.T, kubeconfig string, args ...string) (string, error) {
	t.Helper()
	root := cli.NewRootCommand()
	var out bytes.Buffer
	root.SetOut(&out)
	root.SetErr(&out)
	root.SetArgs(append(args, "--kubeconfig", kubeconfig))
	err := root.ExecuteContext(testCtx)
	return out.String(), err
}

// TestPromotionCLI: the same flow through the CLI, as people use it: the
// requester cannot approve their own promotion; a reviewer can, and it
// lands; list and get show who did what.
func TestPromotionCLI(t *testing.T) {
	d := newDelivery(t, slipwayv1.DeliveryStage{Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}}, "carol@example.com")
	dev, reviewer := kubeconfigAs(t, "dev", "developers"), kubeconfigAs(t, "reviewer", "release-approvers")
	person(t, d.ns, "dev")
	person(t, d.ns, "reviewer")

	if out, err := slipway(t, dev, "promote", "tea", "--to", "nowhere", "-n", d.ns); err == nil || !strings.Contains(err.Error(), "stages are staging, prod") {
		t.Fatalf("promote to an unknown stage: %v\n%s", err, out)
	}
	out, err := slipway(t, dev, "promote", "tea", "--to", "prod", "--change-id", "CHG-9", "-n", d.ns, "-o", "json")
	if err != nil {
		t.Fatalf("promote: %v\n%s", err, out)
	}
	var p slipwayv1.Promotion
	if err := json.Unmarshal([]byte(out), &p); err != nil || p.Spec.RequestedBy != "dev" {
		t.Fatalf("promote -o json: %v\n%s", err, out)
	}
	waitPromotion(t, env.Client, client.ObjectKeyFromObject(&p), 30*time.Second, pending("1 more approval"))
	if out, err := slipway(t, dev, "approve", p.Name, "-n", d.ns); err == nil || !strings.Contains(err.Error(), "cannot approve or reject") {
		t.Fatalf("the requester approving through the CLI: %v\n%s", err, out)
	}
	if out, err := slipway(t, reviewer, "reject", p.Name, "-n", d.ns); err == nil || !strings.Contains(err.Error(), "--reason is required") {
		t.Fatalf("reject without a reason: %v\n%s", err, out)
	}
	if out, err := slipway(t, reviewer, "approve", p.Name, "-n", d.ns); err != nil || !strings.Contains(out, "approved by reviewer") {
		t.Fatalf("approve: %v\n%s", err, out)
	}
	waitPromotion(t, env.Client, client.ObjectKeyFromObject(&p), 30*time.Second, phase(slipwayv1.PromotionLanded))
	out, err = slipway(t, reviewer, "promotion", "get", p.Name, "-n", d.ns)
	if err != nil || !strings.Contains(out, "Phase:        Landed") || !strings.Contains(out, "reviewer   Approve") || !strings.Contains(out, "Authors:      carol@example.com") {
		t.Fatalf("promotion get: %v\n%s", err, out)
	}
	if out, err := slipway(t, reviewer, "promotion", "list", "-n", d.ns); err != nil || !strings.Contains(out, "CHG-9") {
		t.Fatalf("promotion list: %v\n%s", err, out)
	}
}
