package pipeline

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
)

// TestPipelineRunController runs a PipelineRun through the controller on a
// real API server: the run's status carries the digest the registry holds,
// signed and attested, the ops repo commit that pins it, and how the test
// command was isolated. A branch the Pipeline does not watch is refused.
// Then the same through a server that may not isolate: the status says so.
func TestPipelineRunController(t *testing.T) {
	env := startAPIServer(t)
	l := startLab(t)
	ns := env.Namespace(t)
	keyPEM, err := signing.EncodePrivateKey(l.key)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]map[string]string{
		"git":      {"username": gitUser, "password": gitPass},
		"registry": {"username": regUser, "password": regPass},
		"signing":  {"cosign.key": string(keyPEM)},
	} {
		// Each Secret names where its credentials may go.
		scope := map[string]string{"git": l.srcURL + " " + l.opsURL, "registry": l.registry.Host() + "/shop/"}[name]
		s := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{gitsource.AllowedURLsAnnotation: scope}}, StringData: data}
		if err := env.Client.Create(t.Context(), s); err != nil {
			t.Fatal(err)
		}
	}
	git := &slipwayv1.LocalObjectReference{Name: "git"}
	pipe := &slipwayv1.Pipeline{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea"},
		Spec: slipwayv1.PipelineSpec{
			Source:    slipwayv1.PipelineSource{URL: l.srcURL, SecretRef: git},
			Image:     slipwayv1.ImageTarget{Repository: l.registry.Host() + "/shop/tea", SecretRef: &slipwayv1.LocalObjectReference{Name: "registry"}},
			Signing:   slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing"}},
			Promotion: &slipwayv1.PromotionTarget{URL: l.opsURL, Path: "apps/tea/kustomization.yaml", ImageName: "tea", SecretRef: git},
		},
	}
	if err := env.Client.Create(t.Context(), pipe); err != nil {
		t.Fatal(err)
	}

	stop := startController(t, env, l.engine)
	run := runToTheEnd(t, env, ns, "tea-run-1", l.commit, "main")
	if run.Status.Phase != slipwayv1.RunSucceeded {
		t.Fatalf("run %s: %+v", run.Status.Phase, run.Status.Conditions)
	}
	if len(run.Status.Steps) != 7 || run.Status.Digest == "" || run.Status.PromotionCommit == "" || run.Status.TestIsolation != string(IsolationContainer) {
		t.Fatalf("status = %+v", run.Status)
	}
	digest, err := name.NewDigest(run.Status.Image)
	if err != nil || digest.DigestStr() != run.Status.Digest {
		t.Fatalf("image %q does not carry digest %q: %v", run.Status.Image, run.Status.Digest, err)
	}
	if _, err := signing.Verify(t.Context(), digest, &l.key.PublicKey, []string{imagebuild.PredicateSPDX, imagebuild.PredicateSLSAProvenance}, l.remoteAuth()); err != nil {
		t.Fatalf("the run's image does not verify: %v", err)
	}
	snap, err := gitsource.NewFetcher(t.TempDir()).Fetch(t.Context(), gitsource.Request{
		URL: l.opsURL, Path: "apps/tea", Auth: &gitsource.Credentials{Username: gitUser, Password: gitPass},
	}, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision != run.Status.PromotionCommit || !strings.Contains(string(snap.Files["kustomization.yaml"]), run.Status.Digest) {
		t.Fatalf("ops repo head %s (run says %s) does not pin %s:\n%s", snap.Revision, run.Status.PromotionCommit, run.Status.Digest, snap.Files["kustomization.yaml"])
	}

	feature := runToTheEnd(t, env, ns, "tea-feature", l.commit, "feature")
	if c := feature.Status.Conditions; feature.Status.Phase != slipwayv1.RunFailed || len(c) == 0 || c[0].Reason != ReasonBranchNotWatched {
		t.Fatalf("a run for a branch the Pipeline does not watch: %s %+v", feature.Status.Phase, c)
	}

	// A Pipeline pushing to a registry of its author's choosing with the
	// namespace's registry Secret is refused before anything runs.
	exfil := pipe.DeepCopy()
	exfil.ObjectMeta = metav1.ObjectMeta{Namespace: ns, Name: "exfil"}
	exfil.Spec.Image.Repository = "attacker.example.net/loot"
	if err := env.Client.Create(t.Context(), exfil); err != nil {
		t.Fatal(err)
	}
	out := runPipelineToTheEnd(t, env, ns, "exfil", "exfil-run", l.commit, "main")
	if c := out.Status.Conditions; out.Status.Phase != slipwayv1.RunFailed || len(c) == 0 || c[0].Reason != ReasonCredentialsOutOfScope || !strings.Contains(c[0].Message, "may not be sent to attacker.example.net/loot") {
		t.Fatalf("a run sending registry credentials elsewhere: %s %+v", out.Status.Phase, c)
	}
	stop()

	// A host that cannot isolate, whose operator accepted the risk.
	newer := l.commitSource(t, map[string][]byte{"NOTES.txt": []byte("brewed without a sandbox\n")}, "Unisolated")
	unisolated := *l.engine
	unisolated.Executor = unisolatedExecutor(t, true)
	startController(t, env, &unisolated)
	run = runToTheEnd(t, env, ns, "tea-run-2", newer, "main")
	if run.Status.Phase != slipwayv1.RunSucceeded || run.Status.TestIsolation != string(IsolationNone) ||
		!strings.Contains(run.Status.Conditions[0].Message, "UNISOLATED") {
		t.Fatalf("an unisolated run's status does not say so: %+v", run.Status)
	}
}

// startController runs the PipelineRun controller with engine until the
// returned function (or the test's end) stops it.
func startController(t *testing.T, env *testenv.Env, engine *Engine) func() {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	stop := func() {
		cancel()
		<-done
	}
	t.Cleanup(func() { cancel(); <-done })
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr(true)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}}}},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &RunReconciler{Client: mgr.GetClient(), APIReader: mgr.GetAPIReader(), Engine: engine, Recorder: mgr.GetEventRecorderFor("test")}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(done)
		_ = mgr.Start(ctx)
	}()
	return stop
}

// runToTheEnd creates a PipelineRun of the Pipeline tea and waits until it ends.
func runToTheEnd(t *testing.T, env *testenv.Env, ns, name, commit, branch string) *slipwayv1.PipelineRun {
	t.Helper()
	return runPipelineToTheEnd(t, env, ns, "tea", name, commit, branch)
}

// runPipelineToTheEnd creates a PipelineRun of pipeline and waits until it ends.
func runPipelineToTheEnd(t *testing.T, env *testenv.Env, ns, pipeline, name, commit, branch string) *slipwayv1.PipelineRun {
	t.Helper()
	run := &slipwayv1.PipelineRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec:       slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: pipeline}, Commit: commit, Branch: branch},
	}
	if err := env.Client.Create(t.Context(), run); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(8 * time.Minute)
	for {
		if err := env.Client.Get(t.Context(), client.ObjectKeyFromObject(run), run); err != nil {
			t.Fatal(err)
		}
		if terminal(run.Status.Phase) {
			return run
		}
		if time.Now().After(deadline) {
			t.Fatalf("run %s still %q after 8m", name, run.Status.Phase)
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func ptr[T any](v T) *T { return &v }

// startAPIServer starts etcd and kube-apiserver for one test, skipped in
// -short runs.
func startAPIServer(t *testing.T) *testenv.Env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts an API server")
	}
	env, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Stop() })
	return env
}
