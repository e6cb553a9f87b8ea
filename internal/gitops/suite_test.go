package gitops_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/testenv"
)

var (
	env     *testenv.Env
	git     *gitserver.Server
	gitAuth = gitserver.BasicAuth{Username: "slipway", Password: "s3cret-git-password"}
	logs    syncBuffer
	repoSeq atomic.Int64
	testCtx = context.Background()
)

// syncBuffer collects the controller's logs so tests can assert what never appears in them.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()

	gitRoot, _ := os.MkdirTemp("", "slipway-git-")
	defer os.RemoveAll(gitRoot)
	git, err = gitserver.New(gitRoot, gitAuth.Username, gitAuth.Password)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(testCtx)
	defer cancel()
	if _, err := git.Start(ctx, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer git.Close()

	logger := funcr.New(func(prefix, args string) { fmt.Fprintln(&logs, prefix, args) }, funcr.Options{Verbosity: 1})
	ctrl.SetLogger(logger)
	cacheDir, _ := os.MkdirTemp("", "slipway-gitcache-")
	defer os.RemoveAll(cacheDir)
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:     env.Scheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Logger:     logger,
		Controller: config.Controller{SkipNameValidation: ptr(true)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.Namespace{}}}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	packFile := filepath.Join(cacheDir, "org-pack.yaml")
	if err := os.WriteFile(packFile, []byte(orgPack), 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	if _, err := gitops.Setup(mgr, gitops.Options{
		GitCacheDir: cacheDir, Concurrency: 4, PolicyPacks: []string{packFile}, DefaultServiceAccount: testenv.TenantServiceAccount,
	}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() {
		if err := mgr.Start(ctx); err != nil {
			fmt.Fprintln(os.Stderr, "manager:", err)
		}
	}()
	return m.Run()
}

func ptr[T any](v T) *T { return &v }

// newRepo creates a repository holding files and returns its clone URL.
func newRepo(t *testing.T, files map[string]string) string {
	t.Helper()
	name := fmt.Sprintf("ops-%d.git", repoSeq.Add(1))
	if err := git.CreateRepo(testCtx, name); err != nil {
		t.Fatal(err)
	}
	url := git.RepoURL(name)
	commit(t, url, files, nil)
	return url
}

// commit writes and removes files in the repository and returns the new SHA.
func commit(t *testing.T, url string, files map[string]string, remove []string) string {
	t.Helper()
	content := map[string][]byte{}
	for k, v := range files {
		content[k] = []byte(v)
	}
	ctx, cancel := context.WithTimeout(testCtx, 30*time.Second)
	defer cancel()
	sha, err := gitserver.CommitFiles(ctx, url, gitAuth, gitserver.Commit{
		Files: content, Remove: remove, Message: "test change",
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

// credentials stores the git server's credentials in a Secret and returns its name.
func credentials(t *testing.T, ns, password string) string {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "git-credentials",
			Annotations: map[string]string{gitsource.AllowedURLsAnnotation: strings.TrimSuffix(git.RepoURL("x"), "x")}},
		Data: map[string][]byte{"username": []byte(gitAuth.Username), "password": []byte(password)},
	}
	if err := env.Client.Create(testCtx, s); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	return s.Name
}

type appOption func(*slipwayv1.Application)

func newApp(t *testing.T, ns, url string, opts ...appOption) *slipwayv1.Application {
	t.Helper()
	return newAppWithPassword(t, ns, url, gitAuth.Password, opts...)
}

func newAppWithPassword(t *testing.T, ns, url, password string, opts ...appOption) *slipwayv1.Application {
	t.Helper()
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "web"},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: url, Path: "deploy", Timeout: &metav1.Duration{Duration: 10 * time.Second}},
			Destination: slipwayv1.ApplicationDestination{Namespace: ns},
			SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
			Interval:    &metav1.Duration{Duration: 2 * time.Second},
		},
	}
	app.Spec.Source.SecretRef = &slipwayv1.LocalObjectReference{Name: credentials(t, ns, password)}
	for _, o := range opts {
		o(app)
	}
	if err := env.Client.Create(testCtx, app); err != nil {
		t.Fatal(err)
	}
	return app
}

// waitFor polls the Application until check returns nil, failing the test
// with the last error and the Application's status after timeout.
func waitFor(t *testing.T, app *slipwayv1.Application, timeout time.Duration, check func(*slipwayv1.Application) error) *slipwayv1.Application {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		got := &slipwayv1.Application{}
		if err := env.Client.Get(testCtx, client.ObjectKeyFromObject(app), got); err != nil {
			last = err
		} else if last = check(got); last == nil {
			return got
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %s: %v\nstatus: %+v", timeout, last, got.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// readyAt waits for Ready=True, Synced and Healthy at the given revision.
func readyAt(revision string) func(*slipwayv1.Application) error {
	return func(a *slipwayv1.Application) error {
		if !apimeta.IsStatusConditionTrue(a.Status.Conditions, slipwayv1.ConditionReady) {
			return fmt.Errorf("not Ready: %v", conditionMessage(a, slipwayv1.ConditionReady))
		}
		if a.Status.Sync.Status != slipwayv1.SyncStatusSynced || a.Status.Health.Status != slipwayv1.HealthHealthy {
			return fmt.Errorf("sync %s health %s", a.Status.Sync.Status, a.Status.Health.Status)
		}
		if a.Status.LastAppliedRevision != revision {
			return fmt.Errorf("applied %s, want %s", a.Status.LastAppliedRevision, revision)
		}
		return nil
	}
}

func conditionMessage(a *slipwayv1.Application, t string) string {
	c := apimeta.FindStatusCondition(a.Status.Conditions, t)
	if c == nil {
		return "<no condition>"
	}
	return fmt.Sprintf("%s %s: %s", c.Status, c.Reason, c.Message)
}

func configMap(name, value string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s\ndata:\n  value: %q\n", name, value)
}

func getConfigMap(t *testing.T, ns, name string) (*corev1.ConfigMap, error) {
	t.Helper()
	cm := &corev1.ConfigMap{}
	err := env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: name}, cm)
	return cm, err
}

func eventsFor(t *testing.T, app *slipwayv1.Application) []corev1.Event {
	t.Helper()
	var list corev1.EventList
	if err := env.Client.List(testCtx, &list, client.InNamespace(app.Namespace)); err != nil {
		t.Fatal(err)
	}
	var out []corev1.Event
	for _, e := range list.Items {
		if e.InvolvedObject.Name == app.Name && e.InvolvedObject.Kind == "Application" {
			out = append(out, e)
		}
	}
	return out
}

func hasCondition(a *slipwayv1.Application, condType string, status metav1.ConditionStatus, reason, msgPart string) error {
	c := apimeta.FindStatusCondition(a.Status.Conditions, condType)
	if c == nil || c.Status != status || (reason != "" && c.Reason != reason) || !strings.Contains(c.Message, msgPart) {
		return fmt.Errorf("want %s=%s reason %s containing %q, have %s", condType, status, reason, msgPart, conditionMessage(a, condType))
	}
	return nil
}
