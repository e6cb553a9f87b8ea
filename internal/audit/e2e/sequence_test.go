package e2e_test

import (
	"bytes"
	"encoding/json"
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
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/promotion"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/webhook"
)

const (
	regUser = "pusher"
	regPass = "e2e-registry-password-0b7a"
)

// TestScriptedDelivery: a push, its build, a promotion to prod with one
// approval that counts and one that does not, a policy block, a waiver and
// a rollback give exactly the expected records, in each store; the
// records carry the evidence each needs and no secret; the evidence pack
// of the period lists the prod changes with their supply chain.
func TestScriptedDelivery(t *testing.T) {
	for _, name := range []string{"file", "postgres"} {
		t.Run(name, func(t *testing.T) {
			s := fileStore
			if name == "postgres" {
				s = postgresStore
			}
			scriptedDelivery(t, s(t))
		})
	}
}

func scriptedDelivery(t *testing.T, s *store) {
	start := time.Now().UTC()
	ns := env.TenantNamespace(t)
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Username: regUser, Password: regPass})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(testCtx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { reg.Close() })
	image := reg.Host() + "/cafe/tea"

	source := newRepo(t, map[string]string{
		"slipway.yaml": "test:\n  command: test -f index.html\nbuild:\n  dockerfile: Dockerfile\n",
		"Dockerfile":   "FROM scratch\nCOPY index.html /srv/index.html\n",
		"index.html":   "<p>tea</p>\n",
	})
	stage := func(name string) map[string]string {
		return map[string]string{
			name + "/kustomization.yaml": fmt.Sprintf("namePrefix: %s-\nresources: [deployment.yaml]\nimages:\n- name: tea\n  newName: %s\n  newTag: \"0\"\n", name, image),
			name + "/deployment.yaml":    deployment("tea", "tea", false),
		}
	}
	opsFiles := stage("staging")
	for k, v := range stage("prod") {
		opsFiles[k] = v
	}
	ops := newRepo(t, opsFiles)

	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	keyPEM, _ := signing.EncodePrivateKey(key)
	gitRef := gitSecret(t, ns)
	create(t,
		secret(ns, "registry", map[string]string{"username": regUser, "password": regPass}, map[string]string{gitsource.AllowedURLsAnnotation: reg.Host() + "/cafe/"}),
		secret(ns, "signing", map[string]string{"cosign.key": string(keyPEM)}, nil),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: promotion.IdentitiesConfigMap},
			Data: map[string]string{"identities": "alice: [alice@example.com]\n"}})
	profile := &slipwayv1.PolicyProfile{ObjectMeta: metav1.ObjectMeta{Name: "prod-" + ns},
		Spec: slipwayv1.PolicyProfileSpec{Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "high"}}
	create(t, profile)
	t.Cleanup(func() { env.Client.Delete(testCtx, profile) })
	create(t, &slipwayv1.Pipeline{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea"}, Spec: slipwayv1.PipelineSpec{
		Source:    slipwayv1.PipelineSource{URL: source, Branches: []string{"main"}, SecretRef: gitRef},
		Image:     slipwayv1.ImageTarget{Repository: image, SecretRef: &slipwayv1.LocalObjectReference{Name: "registry"}},
		Signing:   slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing"}},
		Promotion: &slipwayv1.PromotionTarget{URL: ops, Branch: "main", Path: "staging/kustomization.yaml", ImageName: "tea", SecretRef: gitRef},
	}})
	staging := newApp(t, ns, "tea-staging", ops, "staging")
	prod := newApp(t, ns, "tea-prod", ops, "prod", func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })
	create(t, &slipwayv1.Delivery{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea"}, Spec: slipwayv1.DeliverySpec{
		Image: "tea", SecretRef: gitRef,
		Stages: []slipwayv1.DeliveryStage{{Name: "staging", Application: "tea-staging"},
			{Name: "prod", Application: "tea-prod", RequireChangeID: true, Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}}},
	}})

	dir, addr := t.TempDir(), freeAddr(t)
	srv := startServer(t, s, dir, addr)
	r0 := head(t, ops)
	waitApplied(t, staging, r0)
	waitApplied(t, prod, r0)

	// A forged push, then the real one.
	push, _ := json.Marshal(map[string]any{"ref": "refs/heads/main", "after": head(t, source),
		"repository": map[string]string{"clone_url": source}, "head_commit": map[string]any{"author": map[string]string{"name": "Alice", "email": "alice@example.com"}}})
	if code := deliver(t, addr, push, webhook.Sign([]byte("not-the-secret"), push)); code != http.StatusUnauthorized {
		t.Fatalf("a forged push was answered %d", code)
	}
	if code := deliver(t, addr, push, webhook.Sign([]byte(webhookSecret), push)); code != http.StatusAccepted {
		t.Fatalf("the signed push was answered %d", code)
	}
	run := waitRun(t, ns)
	r1 := run.Status.PromotionCommit
	waitApplied(t, staging, r1)
	waitApplied(t, prod, r1)

	// A promotion to prod: one approval from outside the stage's groups,
	// which does not count, and one that does.
	dev, outsider, reviewer := person(t, ns, "dev", "developers"), person(t, ns, "outsider", "developers"), person(t, ns, "reviewer", "release-approvers")
	p := &slipwayv1.Promotion{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea-to-prod"},
		Spec: slipwayv1.PromotionSpec{Delivery: "tea", Stage: "prod", ChangeID: "CHG-7", RequestedBy: "dev"}}
	if err := dev.Create(testCtx, p); err != nil {
		t.Fatal(err)
	}
	waitPromotion(t, p, func(p *slipwayv1.Promotion) bool {
		return p.Status.Freight != nil && p.Status.Phase == slipwayv1.PromotionPending
	})
	decide(t, outsider, p, "outsider", "developers")
	waitPromotion(t, p, func(p *slipwayv1.Promotion) bool {
		return slices.ContainsFunc(p.Status.Missing, func(m string) bool { return strings.Contains(m, "not counted") })
	})
	decide(t, reviewer, p, "reviewer", "release-approvers")
	landed := waitPromotion(t, p, func(p *slipwayv1.Promotion) bool { return p.Status.Phase == slipwayv1.PromotionLanded })
	r2 := landed.Status.Commit
	waitApplied(t, prod, r2)
	waitApplied(t, staging, r2)

	// A privileged workload in prod is blocked; a waiver lets it in.
	r3 := commit(t, ops, map[string]string{"prod/agent.yaml": deployment("agent", "registry.example.com/agent@sha256:"+strings.Repeat("a", 64), true),
		"prod/kustomization.yaml": fmt.Sprintf("namePrefix: prod-\nresources: [deployment.yaml, agent.yaml]\nimages:\n- name: tea\n  newName: %s\n  digest: %s\n", image, run.Status.Digest)})
	waitApplied(t, staging, r3)
	eventually(t, 60*time.Second, "prod blocked by the policy", func() error {
		got := &slipwayv1.Application{}
		env.Client.Get(testCtx, client.ObjectKeyFromObject(prod), got)
		if c := apimeta.FindStatusCondition(got.Status.Conditions, slipwayv1.ConditionReady); c == nil || c.Reason != gitops.ReasonPolicyViolation {
			return fmt.Errorf("ready: %+v", c)
		}
		return nil
	})
	create(t, &slipwayv1.PolicyWaiver{ObjectMeta: metav1.ObjectMeta{Name: "agent-" + ns}, Spec: slipwayv1.PolicyWaiverSpec{
		Rule: "PSS-B-003", Scope: slipwayv1.WaiverScope{Namespace: ns, Kind: "Deployment", Name: "prod-agent"}, Reason: "the node agent needs the host's devices",
		Approver: "security-officer", Expires: metav1.NewTime(time.Now().Add(24 * time.Hour))}})
	t.Cleanup(func() {
		env.Client.Delete(testCtx, &slipwayv1.PolicyWaiver{ObjectMeta: metav1.ObjectMeta{Name: "agent-" + ns}})
	})
	waitApplied(t, prod, r3)

	// Roll prod back to what the promotion landed.
	got := &slipwayv1.Application{}
	env.Client.Get(testCtx, client.ObjectKeyFromObject(prod), got)
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.PinnedRevision = r2
	if err := env.Client.Patch(testCtx, got, patch); err != nil {
		t.Fatal(err)
	}
	waitApplied(t, prod, r2)
	srv.stop(t)

	records, res := s.records(t)
	if !res.OK() {
		t.Fatalf("the store does not verify: %v", res.Problems)
	}
	app := func(name string) string { return "Application " + ns + "/" + name }
	runSubject := "PipelineRun " + ns + "/" + run.Name
	promo := "Promotion " + ns + "/tea-to-prod"
	steps := [][]string{
		{"policy.profile-created PolicyProfile prod-" + ns, "sync.applied " + app("tea-staging"), "sync.applied " + app("tea-prod")},
		{"webhook.refused webhook /hooks/git"},
		{"run.started " + runSubject, "image.signed " + runSubject, "run.finished " + runSubject, "sync.applied " + app("tea-staging"), "sync.applied " + app("tea-prod")},
		{"promotion.requested " + promo, "promotion.approval-not-counted " + promo, "promotion.approved " + promo, "promotion.landed " + promo,
			"sync.applied " + app("tea-prod"), "sync.applied " + app("tea-staging")},
		{"sync.applied " + app("tea-staging"), "sync.policy-blocked " + app("tea-prod")},
		{"policy.waiver-created PolicyWaiver agent-" + ns, "sync.applied " + app("tea-prod")},
		{"sync.rollback " + app("tea-prod")},
	}
	var mine []*audit.Record
	for _, r := range records {
		if !strings.HasPrefix(r.Kind, "audit.") && (strings.Contains(r.Subject, ns) || r.Kind == audit.KindWebhookRefused) {
			mine = append(mine, r)
		}
	}
	var want, have []string
	i := 0
	for n, step := range steps {
		if i+len(step) > len(mine) {
			t.Fatalf("step %d: %d records in all, want at least %d:\n%s", n, len(mine), i+len(step), list(mine))
		}
		got := make([]string, 0, len(step))
		for _, r := range mine[i : i+len(step)] {
			got = append(got, r.Kind+" "+r.Subject)
		}
		i += len(step)
		w := slices.Clone(step)
		sort.Strings(w)
		sort.Strings(got)
		want, have = append(want, w...), append(have, got...)
	}
	t.Logf("records of the delivery:\n%s", list(mine))
	if i != len(mine) || !slices.Equal(want, have) {
		t.Fatalf("records of the delivery, step by step:\n%s\nwant (sorted within each step):\n%s", list(mine), strings.Join(want, "\n"))
	}
	order := func(kinds ...string) {
		last := -1
		for _, k := range kinds {
			at := slices.IndexFunc(mine, func(r *audit.Record) bool { return r.Kind == k })
			if at < last {
				t.Errorf("%s is recorded before %s", k, kinds[slices.Index(kinds, k)-1])
			}
			last = at
		}
	}
	order(audit.KindRunStarted, audit.KindImageSigned, audit.KindRunFinished)
	order(audit.KindPromotionRequested, audit.KindPromotionApprovalIgnored, audit.KindPromotionApproved, audit.KindPromotionLanded)

	find := func(kind string) *audit.Record {
		i := slices.IndexFunc(mine, func(r *audit.Record) bool { return r.Kind == kind })
		return mine[i]
	}
	if r := find(audit.KindRunFinished); r.Details["commitAuthor"] != "Alice <alice@example.com>" || r.Details["test"] != "Succeeded" ||
		r.Details["testIsolation"] != "container" || r.Details["digest"] != run.Status.Digest || r.Outcome != audit.OutcomeSucceeded {
		t.Errorf("run.finished: %+v", r.Details)
	}
	if r := find(audit.KindImageSigned); r.Details["digest"] != run.Status.Digest || !strings.HasSuffix(r.Details["signature"], ".sig") {
		t.Errorf("image.signed: %+v", r.Details)
	}
	if r := find(audit.KindPromotionApprovalIgnored); r.Actor != "outsider" || !strings.Contains(r.Details["notCounted"], "release-approvers") {
		t.Errorf("the approval not counted: %s %+v", r.Actor, r.Details)
	}
	if r := find(audit.KindPromotionLanded); r.Details["approvers"] != "reviewer" || r.Details["changeID"] != "CHG-7" || r.Details["requestedBy"] != "dev" || r.Details["commit"] != r2 {
		t.Errorf("promotion.landed: %+v", r.Details)
	}
	if r := find(audit.KindPolicyBlocked); r.Details["revision"] != r3 || !strings.Contains(r.Details["policy.violations"], "PSS-B-003") {
		t.Errorf("sync.policy-blocked: %+v", r.Details)
	}
	if r := find(audit.KindRollback); r.Details["revision"] != r2 || r.Details["previousRevision"] != r3 || r.Details["pinnedRevision"] != r2 {
		t.Errorf("sync.rollback: %+v", r.Details)
	}
	waived := mine[slices.IndexFunc(mine, func(r *audit.Record) bool { return r.Kind == audit.KindWaiverCreated })+1]
	if waived.Details["policy.waivers"] != "agent-"+ns || waived.Details["revision"] != r3 {
		t.Errorf("the sync the waiver let through: %+v", waived.Details)
	}

	// No secret of the delivery is in any record.
	all, _ := json.Marshal(records)
	for name, secret := range map[string]string{"git password": gitAuth.Password, "registry password": regPass, "webhook secret": webhookSecret,
		"signing key": string(keyPEM[40:80]), "audit store password": "e2e-writer-password"} {
		if bytes.Contains(all, []byte(secret)) {
			t.Errorf("the %s is in the audit trail", name)
		}
	}

	// The evidence pack of the period: the prod changes since the first
	// promotion, with what brought each in.
	st := s.reader(t)
	defer st.Close()
	pack, err := audit.Export(testCtx, st, &s.key.PublicKey, audit.ExportOptions{From: start, To: time.Now().Add(time.Minute), Filter: audit.Filter{Namespace: ns, Stage: "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	if pack.Summary.Changes != 3 || pack.Summary.Rollbacks != 1 || pack.Summary.Promotions != 1 || pack.Summary.PolicyBlocks != 1 || !pack.Verification.OK {
		t.Fatalf("pack summary %+v, verification %v", pack.Summary, pack.Verification.OK)
	}
	c := pack.Changes[0]
	if c.Revision != r2 || len(c.Images) != 1 || c.Images[0].Author != "Alice <alice@example.com>" || !c.Images[0].Signed || c.Images[0].Test != "Succeeded" ||
		c.Images[0].Requester != "dev" || strings.Join(c.Images[0].Approvers, " ") != "reviewer" || c.Images[0].ChangeID != "CHG-7" {
		t.Errorf("the promoted change: %+v", c)
	}
	if res, err := audit.VerifyPack(pack, &s.key.PublicKey); err != nil || !res.OK() {
		t.Errorf("the pack does not verify offline: %v %+v", err, res)
	}
}

func list(records []*audit.Record) string {
	var b strings.Builder
	for _, r := range records {
		fmt.Fprintf(&b, "  %d %s %s %s %s\n", r.Seq, r.Kind, r.Subject, r.Outcome, r.Details["revision"])
	}
	return b.String()
}

func (s *store) reader(t *testing.T) audit.Store {
	t.Helper()
	password := ""
	if s.passwordFile != "" {
		b, _ := os.ReadFile(s.passwordFile)
		password = strings.TrimSpace(string(b))
	}
	st, err := audit.OpenStore(testCtx, s.location, password, true)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func deployment(name, image string, privileged bool) string {
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
        image: %s
        securityContext:
          privileged: %v
`, name, image, privileged)
}

func deliver(t *testing.T, addr string, body []byte, signature string) int {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/hooks/git", bytes.NewReader(body))
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-Hub-Signature-256", signature)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	return resp.StatusCode
}

// waitRun waits for the namespace's one PipelineRun to succeed.
func waitRun(t *testing.T, ns string) *slipwayv1.PipelineRun {
	t.Helper()
	var run *slipwayv1.PipelineRun
	eventually(t, 5*time.Minute, "the pipeline run", func() error {
		var runs slipwayv1.PipelineRunList
		if err := env.Client.List(testCtx, &runs, client.InNamespace(ns)); err != nil || len(runs.Items) != 1 {
			return fmt.Errorf("%d runs (%v)", len(runs.Items), err)
		}
		run = &runs.Items[0]
		switch run.Status.Phase {
		case slipwayv1.RunSucceeded:
			return nil
		case slipwayv1.RunFailed, slipwayv1.RunCancelled:
			t.Fatalf("the run %s: %+v", run.Status.Phase, run.Status.Conditions)
		}
		return errNotYet
	})
	return run
}

func waitPromotion(t *testing.T, p *slipwayv1.Promotion, ok func(*slipwayv1.Promotion) bool) *slipwayv1.Promotion {
	t.Helper()
	got := &slipwayv1.Promotion{}
	eventually(t, 60*time.Second, "promotion "+p.Name, func() error {
		if err := env.Client.Get(testCtx, client.ObjectKeyFromObject(p), got); err != nil {
			return err
		}
		if !ok(got) {
			return fmt.Errorf("phase %s, missing %v", got.Status.Phase, got.Status.Missing)
		}
		return nil
	})
	return got
}

// decide appends user's approval, as `slipway approve` does.
func decide(t *testing.T, c client.Client, p *slipwayv1.Promotion, user string, groups ...string) {
	t.Helper()
	got := &slipwayv1.Promotion{}
	if err := c.Get(testCtx, client.ObjectKeyFromObject(p), got); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(got.DeepCopy())
	got.Spec.Approvals = append(got.Spec.Approvals, slipwayv1.PromotionApproval{User: user, Groups: groups, Decision: slipwayv1.DecisionApprove, At: metav1.Now()})
	if err := c.Patch(testCtx, got, patch); err != nil {
		t.Fatalf("%s approving: %v", user, err)
	}
}

// person is a client authenticated as user, with the promotion roles in ns.
func person(t *testing.T, ns, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append([]string{"system:authenticated"}, groups...)}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"slipway-promotion-requester", "slipway-promotion-approver"} {
		create(t, &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: role + "-" + user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		})
	}
	return c
}
