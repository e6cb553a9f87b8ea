package e2e_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
)

// TestKillDuringSyncs: `slipway server` is killed with SIGKILL at a random
// moment of each of 20 syncs, and started again. Every revision the
// Application's status reports as deployed has its record, each exactly
// once; every start is recorded; and the chain verifies.
func TestKillDuringSyncs(t *testing.T) {
	s := fileStore(t)
	dir, addr := t.TempDir(), freeAddr(t)
	ns := env.TenantNamespace(t)
	repo := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("v0")})
	app := newApp(t, ns, "kill", repo, "deploy")

	srv := startServer(t, s, dir, addr)
	starts := 1
	waitApplied(t, app, head(t, repo))
	var revisions []string
	for i := 1; i <= 20; i++ {
		rev := commit(t, repo, map[string]string{"deploy/cm.yaml": configMap(fmt.Sprintf("v%d", i))})
		revisions = append(revisions, rev)
		// A random moment: before the fetch, during the apply, between the
		// apply and its record, or after.
		time.Sleep(time.Duration(rand.IntN(1500)) * time.Millisecond)
		srv.kill()
		srv = startServer(t, s, dir, addr)
		starts++
		waitApplied(t, app, rev)
	}
	srv.stop(t)

	records, res := s.records(t)
	if !res.OK() {
		t.Fatalf("the chain does not verify after %d kills: %v", starts-1, res.Problems)
	}
	got := &slipwayv1.Application{}
	if err := env.Client.Get(testCtx, client.ObjectKeyFromObject(app), got); err != nil {
		t.Fatal(err)
	}
	applied := map[string]int{}
	refs := map[string]bool{}
	opened := 0
	for _, r := range records {
		switch {
		case r.Kind == audit.KindSyncApplied && r.Subject == "Application "+ns+"/kill":
			applied[r.Details["revision"]]++
			refs[r.Ref] = true
		case r.Kind == audit.KindAuditOpened:
			opened++
		case r.Kind == audit.KindAuditRecovered:
			t.Logf("record %d: %s", r.Seq, r.Details["repair"])
		}
	}
	for i, rev := range revisions {
		if applied[rev] != 1 {
			t.Errorf("revision %d (%s) was deployed and is recorded %d times, want once", i+1, rev[:12], applied[rev])
		}
	}
	for _, h := range got.Status.History {
		if !refs[audit.RefDeploy(string(got.UID), h.Revision, h.ID)] {
			t.Errorf("history entry %d (%s) has no record", h.ID, h.Revision[:12])
		}
	}
	if opened != starts {
		t.Errorf("%d starts, %d audit.opened records", starts, opened)
	}
	t.Logf("%d records, %d starts, head %s", res.Records, starts, res.Head)
}

func configMap(value string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  value: %q\n", value)
}

// newRepo creates a repository holding files and returns its URL.
func newRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	name := fmt.Sprintf("repo-%d.git", repoSeq.Add(1))
	if err := git.CreateRepo(testCtx, name); err != nil {
		t.Fatal(err)
	}
	url := git.RepoURL(name)
	commit(t, url, files)
	return url
}

// commit writes files (an empty value removes one) and returns the new head.
func commit(t *testing.T, url string, files map[string]string) string {
	t.Helper()
	c := gitserver.Commit{Files: map[string][]byte{}, Message: "change", Author: gitserver.Signature{Name: "Alice", Email: "alice@example.com"}}
	for k, v := range files {
		if v == "" {
			c.Remove = append(c.Remove, k)
			continue
		}
		c.Files[k] = []byte(v)
	}
	ctx, cancel := context.WithTimeout(testCtx, 30*time.Second)
	defer cancel()
	sha, err := gitserver.CommitFiles(ctx, url, gitAuth, c)
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

func head(t *testing.T, url string) string {
	t.Helper()
	snap, err := gitsource.NewFetcher(t.TempDir()).Fetch(testCtx, gitsource.Request{URL: url, Auth: &gitsource.Credentials{Username: gitAuth.Username, Password: gitAuth.Password}}, "")
	if err != nil {
		t.Fatal(err)
	}
	return snap.Revision
}

// gitSecret stores the git server's credentials for the namespace.
func gitSecret(t *testing.T, ns string) *slipwayv1.LocalObjectReference {
	t.Helper()
	create(t, secret(ns, "git", map[string]string{"username": gitAuth.Username, "password": gitAuth.Password},
		map[string]string{gitsource.AllowedURLsAnnotation: strings.TrimSuffix(git.RepoURL("x"), "x")}))
	return &slipwayv1.LocalObjectReference{Name: "git"}
}

func newApp(t *testing.T, ns, name, url, path string, opts ...func(*slipwayv1.Application)) *slipwayv1.Application {
	t.Helper()
	ref := &slipwayv1.LocalObjectReference{Name: "git"}
	if err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "git"}, secret(ns, "git", nil, nil)); err != nil {
		ref = gitSecret(t, ns)
	}
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: url, Ref: slipwayv1.GitRef{Branch: "main"}, Path: path, SecretRef: ref, Timeout: &metav1.Duration{Duration: 10 * time.Second}},
			Destination: slipwayv1.ApplicationDestination{Namespace: ns},
			SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
			Interval:    &metav1.Duration{Duration: time.Second},
		},
	}
	for _, o := range opts {
		o(app)
	}
	create(t, app)
	// The test's API server has no namespace controller: delete the
	// Application itself, so that later tests' servers leave it alone.
	t.Cleanup(func() {
		got := &slipwayv1.Application{}
		if env.Client.Get(testCtx, client.ObjectKeyFromObject(app), got) == nil {
			patch := client.MergeFrom(got.DeepCopy())
			got.Finalizers = nil
			env.Client.Patch(testCtx, got, patch)
			env.Client.Delete(testCtx, got)
		}
	})
	return app
}

// waitApplied waits until the Application reports revision applied.
func waitApplied(t *testing.T, app *slipwayv1.Application, revision string) *slipwayv1.Application {
	t.Helper()
	got := &slipwayv1.Application{}
	eventually(t, 90*time.Second, app.Name+" applied at "+revision[:12], func() error {
		if err := env.Client.Get(testCtx, client.ObjectKeyFromObject(app), got); err != nil {
			return err
		}
		if got.Status.LastAppliedRevision != revision {
			return fmt.Errorf("applied %q; %v", got.Status.LastAppliedRevision, got.Status.Conditions)
		}
		return nil
	})
	return got
}

// TestGapFoundAtStart: what the objects' status reports but the trail
// lacks (a deployment, a finished run: a crash between the action and its
// record, or a store that could not be written) is found when the server
// starts, and recorded as recovered.
func TestGapFoundAtStart(t *testing.T) {
	s := fileStore(t)
	dir, addr := t.TempDir(), freeAddr(t)
	// The trail begins: the server is ready before its audit log is open,
	// so wait for the log's first record before stopping it.
	first := startServer(t, s, dir, addr)
	eventually(t, 30*time.Second, "the audit log's first record", func() error {
		records, _, err := s.read()
		if err == nil && len(records) == 0 {
			err = errors.New("no record yet")
		}
		return err
	})
	first.stop(t)

	ns := env.TenantNamespace(t)
	app := newApp(t, ns, "gap", "https://git.example.com/ops.git", "deploy", func(a *slipwayv1.Application) { a.Spec.Suspend = true })
	revision := strings.Repeat("ab", 20)
	app.Status.History = []slipwayv1.RevisionHistory{{ID: 3, Revision: revision, DeployedAt: metav1.Now(), Result: "Succeeded"}}
	if err := env.Client.Status().Update(testCtx, app); err != nil {
		t.Fatal(err)
	}
	run := &slipwayv1.PipelineRun{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "gap-run"},
		Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "gone"}, Commit: strings.Repeat("cd", 20)}}
	create(t, run)
	now := metav1.Now()
	run.Status = slipwayv1.PipelineRunStatus{Phase: slipwayv1.RunSucceeded, StartTime: &now, CompletionTime: &now, Digest: "sha256:" + strings.Repeat("e", 64)}
	if err := env.Client.Status().Update(testCtx, run); err != nil {
		t.Fatal(err)
	}

	srv := startServer(t, s, dir, addr)
	want := map[string]bool{
		audit.RefDeploy(string(app.UID), revision, 3): false,
		audit.RefRun(string(run.UID), "started"):      false,
		audit.RefRun(string(run.UID), "finished"):     false,
	}
	eventually(t, 30*time.Second, "the gap check's records", func() error {
		records, _ := s.records(t)
		for _, r := range records {
			if _, ok := want[r.Ref]; ok && strings.HasPrefix(r.Details["recovered"], "found by the gap check") {
				want[r.Ref] = true
			}
		}
		var missing []string
		for ref, found := range want {
			if !found {
				missing = append(missing, ref)
			}
		}
		if len(missing) > 0 {
			slices.Sort(missing)
			return fmt.Errorf("no recovered record %s", strings.Join(missing, ", "))
		}
		return nil
	})
	srv.stop(t)
	if _, res := s.records(t); !res.OK() {
		t.Fatalf("after the gap check: %v", res.Problems)
	}
}
