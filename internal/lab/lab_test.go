package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/promote"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
)

// buildSlipway compiles the binary the lab runs as its git server and server.
func buildSlipway(t *testing.T) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "slipway")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, "slipway.dev/slipway/cmd/slipway")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("building slipway: %v\n%s", err, b)
	}
	return out
}

// TestLabEndToEnd brings the whole lab up, runs the demo, drives the CLI
// through a change and a rollback, and checks that `lab down` leaves no
// process behind.
func TestLabEndToEnd(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole lab")
	}
	exe := buildSlipway(t)
	dir := t.TempDir()
	l := &lab.Lab{Dir: dir, BinDir: testenv.BinDir(), Slipway: exe, Progress: t.Logf, Clusters: []string{lab.ProdCluster}}
	t.Cleanup(func() { _ = l.Down(false) })
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()

	info, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.AllRunning() {
		t.Fatalf("not every component runs after up: %+v", info.Components)
	}
	// Up again is a no-op that keeps the same processes.
	again, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, c := range again.Components {
		if c.PID != info.Components[i].PID {
			t.Fatalf("second up restarted %s", c.Name)
		}
	}

	c, _, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	checkNodes(t, c)
	if err := l.Demo(ctx, info); err != nil {
		t.Fatal(err)
	}
	for _, app := range lab.DemoApps {
		waitPods(t, c, app, 2)
	}
	// `make demo` run again on the same lab finds its work done and
	// delivers one more change.
	if err := l.Demo(ctx, info); err != nil {
		t.Fatalf("second demo run: %v", err)
	}
	for _, app := range lab.DemoApps {
		checkSupplyChain(t, c, l, info, app)
	}

	// The status command gives scripts what they need.
	var status struct {
		Kubeconfig string
		Git        struct{ URL, Username, Password, OpsRepo string }
		Registry   struct{ Host, Username, Password string }
		Components []struct {
			Name    string
			PID     int
			Running bool
			Log     string
		}
	}
	runJSON(t, exe, &status, "lab", "status", "--dir", dir, "-o", "json")
	if status.Kubeconfig != l.Kubeconfig() || status.Git.OpsRepo != info.Git.OpsRepo || status.Git.Password == "" || status.Registry.Host == "" || len(status.Components) != 8 {
		t.Fatalf("lab status -o json = %+v", status)
	}

	kube := []string{"--kubeconfig", l.Kubeconfig(), "-n", lab.DemoNamespace}

	// Each of the lab's people has a context of their own, authenticated
	// by a client certificate, with the rights of their role only.
	for _, p := range lab.People {
		out := run(t, exe, append([]string{"promotion", "list", "--context", p.Name + "@slipway-lab"}, kube...)...)
		if !strings.Contains(out, "REQUESTED-BY") {
			t.Fatalf("promotion list as %s:\n%s", p.Name, out)
		}
	}
	if out, err := exec.Command(exe, append([]string{"run", "list", "--context", "reviewer@slipway-lab", "-A"}, kube[:2]...)...).CombinedOutput(); err == nil {
		t.Fatalf("the reviewer listed PipelineRuns cluster-wide:\n%s", out)
	}
	if out := run(t, exe, append([]string{"app", "list"}, kube...)...); !strings.Contains(out, "tea") || !strings.Contains(out, "Healthy") {
		t.Fatalf("app list:\n%s", out)
	}
	if out := run(t, exe, append([]string{"app", "diff", "tea"}, kube...)...); !strings.Contains(out, "No differences") {
		t.Fatalf("app diff on a synced app:\n%s", out)
	}

	checkPromotionToProd(t, exe, l, c, kube)

	// A push reaches the cluster through the git server's push notification.
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	deploy, err := os.ReadFile(filepath.Join("demo", "apps", "tea", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	scaled := strings.Replace(string(deploy), "replicas: 2", "replicas: 3", 1)
	if _, err := gitserver.CommitFiles(ctx, info.Git.OpsRepo, auth, gitserver.Commit{
		Files: map[string][]byte{"apps/tea/deployment.yaml": []byte(scaled)}, Message: "Scale tea to 3",
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	}); err != nil {
		t.Fatal(err)
	}
	waitPods(t, c, "tea", 3)

	run(t, exe, append([]string{"app", "rollback", "tea", "--timeout", "2m"}, kube...)...)
	waitPods(t, c, "tea", 2)
	var history []struct {
		ID       int64
		Revision string
		Result   string
	}
	runJSON(t, exe, &history, append([]string{"app", "history", "tea", "-o", "json"}, kube...)...)
	if len(history) < 3 || history[0].Revision != history[2].Revision {
		t.Fatalf("history after rollback = %+v", history)
	}
	checkAuditTrail(t, exe, l, info)

	pids := map[string]int{}
	for _, comp := range status.Components {
		pids[comp.Name] = comp.PID
	}
	if err := l.Down(false); err != nil {
		t.Fatal(err)
	}
	for name, pid := range pids {
		if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err == nil {
			if exe, _ := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid)); exe != "" {
				t.Errorf("%s (pid %d, %s) still runs after lab down", name, pid, exe)
			}
		}
	}
	if out, err := exec.Command(exe, "lab", "status", "--dir", dir).CombinedOutput(); err == nil {
		t.Fatalf("lab status exits 0 after down:\n%s", out)
	}
}

// checkPromotionToProd carries tea from the lab's cluster into the prod
// cluster as the lab's people would: the developer requests it and cannot
// approve it; a reviewer approves, and prod then runs exactly the image
// that runs in dev.
func checkPromotionToProd(t *testing.T, exe string, l *lab.Lab, c client.Client, kube []string) {
	t.Helper()
	as := func(person string, args ...string) []string {
		return append(append(args, kube...), "--context", person+"@slipway-lab")
	}
	var p slipwayv1.Promotion
	runJSON(t, exe, &p, as("dev", "promote", "tea", "--to", lab.ProdCluster, "--change-id", "CHG-1", "-o", "json")...)
	if p.Spec.RequestedBy != "dev" {
		t.Fatalf("promotion requested by %q, want dev", p.Spec.RequestedBy)
	}
	if out, err := exec.Command(exe, as("dev", "approve", p.Name)...).CombinedOutput(); err == nil || !strings.Contains(string(out), "cannot approve or reject") {
		t.Fatalf("the requester approving their own promotion: %v\n%s", err, out)
	}
	// The reviewer's approval is accepted once the promotion's commits and
	// their authors are resolved (a moment after it is created).
	deadline := time.Now().Add(time.Minute)
	for {
		out, err := exec.Command(exe, as("reviewer", "approve", p.Name)...).CombinedOutput()
		if err == nil {
			break
		}
		if time.Now().After(deadline) || !strings.Contains(string(out), "not resolved yet") {
			t.Fatalf("the reviewer approving: %v\n%s", err, out)
		}
		time.Sleep(time.Second)
	}
	prod, _, err := l.Cluster(lab.ProdCluster).Client()
	if err != nil {
		t.Fatal(err)
	}
	var dev appsv1.Deployment
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: lab.DemoNamespace, Name: "tea"}, &dev); err != nil {
		t.Fatal(err)
	}
	want := dev.Spec.Template.Spec.Containers[0].Image
	deadline = time.Now().Add(2 * time.Minute)
	for {
		var d appsv1.Deployment
		err := prod.Get(context.Background(), client.ObjectKey{Namespace: lab.DemoNamespace, Name: "tea"}, &d)
		if err == nil && d.Spec.Template.Spec.Containers[0].Image == want {
			break
		}
		if time.Now().After(deadline) {
			var got slipwayv1.Promotion
			runJSON(t, exe, &got, as("reviewer", "promotion", "get", p.Name, "-o", "json")...)
			t.Fatalf("prod does not run %s (%v, %+v); promotion status %+v", want, err, d.Spec.Template.Spec.Containers, got.Status)
		}
		time.Sleep(time.Second)
	}
	if !strings.Contains(want, "@sha256:") {
		t.Fatalf("dev runs %s, not an image pinned by digest", want)
	}
}

// checkSupplyChain follows the head of app's source repository to the
// cluster: a succeeded PipelineRun built it; the registry holds the image
// at the run's digest, signed by the lab's key with SBOM and provenance
// attestations; the ops repo commit that promoted it names the source
// commit and the digest; and the Deployment runs exactly that image.
func checkSupplyChain(t *testing.T, c client.Client, l *lab.Lab, info *lab.Info, app string) {
	t.Helper()
	ctx := context.Background()
	source, err := git.PlainOpen(filepath.Join(info.Dir, "git", lab.SourceRepo(app)))
	if err != nil {
		t.Fatal(err)
	}
	head, err := source.Reference(plumbing.NewBranchReferenceName("main"), true)
	if err != nil {
		t.Fatal(err)
	}
	var runs slipwayv1.PipelineRunList
	if err := c.List(ctx, &runs, client.InNamespace(lab.DemoNamespace), client.MatchingLabels{"slipway.dev/pipeline": app}); err != nil {
		t.Fatal(err)
	}
	var run *slipwayv1.PipelineRun
	for i := range runs.Items {
		if r := &runs.Items[i]; r.Spec.Commit == head.Hash().String() && r.Status.Phase == slipwayv1.RunSucceeded {
			run = r
		}
	}
	if run == nil {
		t.Fatalf("%s: no succeeded PipelineRun for the source head %s among %d runs", app, head.Hash(), len(runs.Items))
	}

	digest, err := name.NewDigest(run.Status.Image)
	if err != nil {
		t.Fatalf("%s: run %s image %q: %v", app, run.Name, run.Status.Image, err)
	}
	if digest.DigestStr() != run.Status.Digest || !strings.HasPrefix(run.Status.Image, info.Registry.Host+"/cafe/"+app+"@") {
		t.Fatalf("%s: run status image %s, digest %s", app, run.Status.Image, run.Status.Digest)
	}
	pemKey, err := os.ReadFile(l.PublicKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := signing.DecodePublicKey(pemKey)
	if err != nil {
		t.Fatal(err)
	}
	registryAuth := remote.WithAuth(&authn.Basic{Username: info.Registry.Username, Password: info.Registry.Password})
	if _, err := signing.Verify(ctx, digest, pub, []string{imagebuild.PredicateSPDX, imagebuild.PredicateSLSAProvenance}, registryAuth); err != nil {
		t.Fatalf("%s: %v", app, err)
	}

	ops, err := git.PlainOpen(filepath.Join(info.Dir, "git", lab.OpsRepo))
	if err != nil {
		t.Fatal(err)
	}
	promotion, err := ops.CommitObject(plumbing.NewHash(run.Status.PromotionCommit))
	if err != nil {
		t.Fatalf("%s: promotion commit %q: %v", app, run.Status.PromotionCommit, err)
	}
	for _, trailer := range []string{promote.TrailerSourceCommit + ": " + head.Hash().String(), promote.TrailerImageDigest + ": " + run.Status.Digest} {
		if !strings.Contains(promotion.Message, trailer) {
			t.Fatalf("%s: promotion commit message lacks %q:\n%s", app, trailer, promotion.Message)
		}
	}

	var d appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: app}, &d); err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Spec.Containers[0].Image; got != run.Status.Image {
		t.Fatalf("%s: the Deployment runs %s, want the run's %s", app, got, run.Status.Image)
	}
}

func checkNodes(t *testing.T, c client.Client) {
	t.Helper()
	var nodes corev1.NodeList
	if err := c.List(context.Background(), &nodes); err != nil {
		t.Fatal(err)
	}
	got := map[string]corev1.Node{}
	for _, n := range nodes.Items {
		got[n.Name] = n
	}
	for _, name := range append([]string{lab.ControlPlaneNode}, lab.WorkerNodes...) {
		n, ok := got[name]
		if !ok {
			t.Fatalf("node %s missing", name)
		}
		if n.Labels[lab.SubnetLabel] != "private" {
			t.Errorf("node %s not labelled with its subnet: %v", name, n.Labels)
		}
	}
	if taints := got[lab.ControlPlaneNode].Spec.Taints; len(taints) == 0 || taints[0].Effect != corev1.TaintEffectNoSchedule {
		t.Errorf("master has no NoSchedule taint: %v", taints)
	}
}

// waitPods waits until the app's Deployment has want Running pods, all on
// workers and spread over both of them.
func waitPods(t *testing.T, c client.Client, app string, want int) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for {
		err := checkPods(c, app, want)
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", app, err)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

func checkPods(c client.Client, app string, want int) error {
	ctx := context.Background()
	var d appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: app}, &d); err != nil {
		return err
	}
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(lab.DemoNamespace), client.MatchingLabels{"app.kubernetes.io/name": app}); err != nil {
		return err
	}
	nodes := map[string]int{}
	running := 0
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		if p.Status.Phase == corev1.PodRunning {
			running++
			nodes[p.Spec.NodeName]++
		}
	}
	if running != want {
		return fmt.Errorf("%d pods Running, want %d", running, want)
	}
	for node := range nodes {
		if node == lab.ControlPlaneNode {
			return fmt.Errorf("a pod runs on the control-plane node")
		}
	}
	if len(nodes) != len(lab.WorkerNodes) {
		return fmt.Errorf("pods not spread over both workers: %v", nodes)
	}
	return nil
}

func run(t *testing.T, exe string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("slipway %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func runJSON(t *testing.T, exe string, v any, args ...string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, exe, args...).Output()
	if err != nil {
		t.Fatalf("slipway %s: %v", strings.Join(args, " "), err)
	}
	if err := json.Unmarshal(out, v); err != nil {
		t.Fatalf("slipway %s: output is not JSON: %v\n%s", strings.Join(args, " "), err, out)
	}
}

// auditFlags are the flags that reach the lab's audit trail, its key and
// its witness.
func auditFlags(info *lab.Info) []string {
	a := info.Audit
	flags := []string{"--store", a.Store, "--key", a.PublicKey, "--witness", a.Witness, "--witness-credentials-file", a.WitnessCredentialsFile}
	if a.PasswordFile != "" {
		flags = append(flags, "--store-password-file", a.PasswordFile)
	}
	return flags
}

// checkAuditTrail reads the audit trail of everything the lab did: it
// verifies, it recorded the delivery (runs, signatures, syncs, the
// promotion to prod, the rollback), no record holds any of the lab's
// secrets, and the evidence pack of the day is written and verifies.
func checkAuditTrail(t *testing.T, exe string, l *lab.Lab, info *lab.Info) {
	t.Helper()
	var res struct {
		Records  uint64
		Problems []any
	}
	runJSON(t, exe, &res, append([]string{"audit", "verify", "-o", "json"}, auditFlags(info)...)...)
	if res.Records == 0 || len(res.Problems) != 0 {
		t.Fatalf("audit verify: %+v", res)
	}
	out := run(t, exe, append([]string{"audit", "log", "-o", "json"}, auditFlags(info)[:4]...)...)
	for _, kind := range []string{"run.started", "image.signed", "run.finished", "sync.applied", "sync.rollback",
		"promotion.requested", "promotion.approved", "promotion.landed"} {
		if !strings.Contains(out, `"kind": "`+kind+`"`) {
			t.Errorf("the audit trail has no %s record", kind)
		}
	}
	webhook, _ := os.ReadFile(l.WebhookSecretFile())
	witness, _ := os.ReadFile(info.Audit.WitnessCredentialsFile)
	cosign, _ := os.ReadFile(l.SigningKeyFile())
	_, witnessPassword, _ := strings.Cut(string(witness), ":")
	for name, secret := range map[string]string{"git password": info.Git.Password, "registry password": info.Registry.Password,
		"webhook secret": strings.TrimSpace(string(webhook)), "witness password": witnessPassword, "signing key": string(cosign[40:90])} {
		if len(secret) < 8 || strings.Contains(out, secret) {
			t.Errorf("the %s is in the audit trail (or is shorter than 8 characters: %d)", name, len(secret))
		}
	}
	today := time.Now().UTC().Format("2006-01-02")
	tomorrow := time.Now().UTC().Add(24 * time.Hour).Format("2006-01-02")
	pack := filepath.Join(t.TempDir(), "evidence.html")
	run(t, exe, append([]string{"audit", "export", "--from", today, "--to", tomorrow, "--lang", "ko", "--file", pack}, auditFlags(info)...)...)
	if out := run(t, exe, "audit", "verify", "--pack", pack, "--key", info.Audit.PublicKey); !strings.Contains(out, "OK") {
		t.Fatalf("the evidence pack does not verify:\n%s", out)
	}
}

// TestLabAuditPostgres: `lab up --audit postgres` runs Debian's PostgreSQL
// as a lab component; the server records into it as a role that may only
// insert; the trail verifies; `lab down --purge` stops and removes it.
func TestLabAuditPostgres(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the lab")
	}
	if _, err := postgres.BinDir(); err != nil {
		testenv.MissingDependency(t, "PostgreSQL is not installed (make deps installs it): %v", err)
	}
	exe := buildSlipway(t)
	l := &lab.Lab{Dir: t.TempDir(), BinDir: testenv.BinDir(), Slipway: exe, Progress: t.Logf, Audit: lab.AuditPostgres}
	t.Cleanup(func() { _ = l.Down(true) })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	info, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if !info.AllRunning() || info.Audit.Mode != lab.AuditPostgres || !strings.HasPrefix(info.Audit.Store, "postgres://") {
		t.Fatalf("lab up --audit postgres: %+v", info)
	}
	var res struct{ Records uint64 }
	runJSON(t, exe, &res, append([]string{"audit", "verify", "-o", "json"}, auditFlags(info)...)...)
	if res.Records == 0 {
		t.Fatal("the server recorded nothing in PostgreSQL")
	}
	var pgPID int
	for _, c := range info.Components {
		if c.Name == "postgres" {
			pgPID = c.PID
		}
	}
	var st struct {
		Audit struct{ PostgresDir string }
	}
	b, _ := os.ReadFile(filepath.Join(l.Dir, "lab.json"))
	json.Unmarshal(b, &st)
	if err := l.Down(true); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pgPID)); err == nil {
		t.Errorf("postgres (pid %d) still runs after lab down", pgPID)
	}
	if _, err := os.Stat(st.Audit.PostgresDir); st.Audit.PostgresDir == "" || err == nil {
		t.Errorf("the PostgreSQL cluster %q is still there after lab down --purge", st.Audit.PostgresDir)
	}
}
