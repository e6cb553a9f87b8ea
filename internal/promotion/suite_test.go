package promotion_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/promotion"
	"slipway.dev/slipway/internal/testenv"
)

var (
	env     *testenv.Env
	git     *gitserver.Server
	gitAuth = gitserver.BasicAuth{Username: "slipway", Password: "promotion-git-password"}
	repoSeq atomic.Int64
	testCtx = context.Background()
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	root, _ := os.MkdirTemp("", "promotion-git-")
	defer os.RemoveAll(root)
	if git, err = gitserver.New(root, gitAuth.Username, gitAuth.Password); err != nil {
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
	cache, _ := os.MkdirTemp("", "promotion-cache-")
	defer os.RemoveAll(cache)
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme: env.Scheme, Metrics: metricsserver.Options{BindAddress: "0"},
		Controller: config.Controller{SkipNameValidation: ptr(true)},
		Client:     client.Options{Cache: &client.CacheOptions{DisableFor: []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}}}},
	})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	r := &promotion.Reconciler{Client: mgr.GetClient(), Fetcher: gitsource.NewFetcher(cache), Namespace: install.Namespace}
	if err := r.SetupWithManager(mgr); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	go func() { _ = mgr.Start(ctx) }()
	return m.Run()
}

func ptr[T any](v T) *T { return &v }

// person is a client authenticated as a user in some groups, as the lab's
// client certificates authenticate its people, bound to the roles
// `slipway install` ships for requesters and approvers.
func person(t *testing.T, ns, user string, groups ...string) client.Client {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.Impersonate = rest.ImpersonationConfig{UserName: user, Groups: append([]string{"system:authenticated"}, groups...)}
	c, err := client.New(cfg, client.Options{Scheme: env.Scheme})
	if err != nil {
		t.Fatal(err)
	}
	for _, role := range []string{"slipway-promotion-requester", "slipway-promotion-approver"} {
		binding := &rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: role + "-" + user},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: user}},
		}
		if err := env.Client.Create(testCtx, binding); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

func newRepo(t *testing.T, files map[string]string, author string) (string, string) {
	t.Helper()
	name := fmt.Sprintf("repo-%d.git", repoSeq.Add(1))
	if err := git.CreateRepo(testCtx, name); err != nil {
		t.Fatal(err)
	}
	url := git.RepoURL(name)
	return url, commit(t, url, files, author)
}

func commit(t *testing.T, url string, files map[string]string, author string) string {
	t.Helper()
	content := map[string][]byte{}
	for k, v := range files {
		content[k] = []byte(v)
	}
	ctx, cancel := context.WithTimeout(testCtx, 30*time.Second)
	defer cancel()
	name, _, _ := strings.Cut(author, "@")
	sha, err := gitserver.CommitFiles(ctx, url, gitAuth, gitserver.Commit{Files: content, Message: "change by " + name,
		Author: gitserver.Signature{Name: name, Email: author}})
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

func kustomization(digest string) string {
	return "resources: [deploy.yaml]\nimages:\n- name: tea\n  newName: registry.example.com/cafe/tea\n  digest: " + digest + "\n"
}

func digestOf(c byte) string { return "sha256:" + strings.Repeat(string(c), 64) }

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := env.Client.Create(testCtx, o); err != nil {
			t.Fatalf("creating %T %s: %v", o, o.GetName(), err)
		}
	}
}

// setStatus writes an object's status as its controller would.
func setStatus(t *testing.T, o client.Object) {
	t.Helper()
	if err := env.Client.Status().Update(testCtx, o); err != nil {
		t.Fatalf("setting the status of %T %s: %v", o, o.GetName(), err)
	}
}

func waitPromotion(t *testing.T, c client.Client, key client.ObjectKey, timeout time.Duration, check func(*slipwayv1.Promotion) error) *slipwayv1.Promotion {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		p := &slipwayv1.Promotion{}
		err := c.Get(testCtx, key, p)
		if err == nil {
			if err = check(p); err == nil {
				return p
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("promotion %s: %v\nstatus: %+v", key.Name, err, p.Status)
		}
		time.Sleep(200 * time.Millisecond)
	}
}
