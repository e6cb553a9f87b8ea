package lab

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"runtime"
	"strconv"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/promotion"
	"slipway.dev/slipway/internal/signing"
)

// DemoNamespace holds the demo's Pipelines, Applications and workloads.
const DemoNamespace = "cafe"

// DemoApps are the demo services. Each has a source repository NAME.git
// (a Go service and its slipway.yaml) and a directory apps/NAME of the ops
// repo, whose kustomization its Pipeline promotes builds into.
var DemoApps = []string{"tea", "coffee"}

// SourceRepo is the lab's source repository of a demo service.
func SourceRepo(app string) string { return app + ".git" }

// demoTimeout bounds each wait of the demo. The first build compiles the
// services' tests and binaries with a cold Go cache.
const demoTimeout = 5 * time.Minute

//go:embed demo/apps demo/_src
var demoFiles embed.FS

// demoAuthor signs the demo's commits.
var demoAuthor = gitserver.Signature{Name: "Slipway demo", Email: "demo@slipway.dev"}

// Demo delivers the demo services from source: it commits their manifests
// to the ops repo and their code to their source repos, creates a Pipeline
// and an Application for each, and waits until the builds run in the
// cluster, Synced and Healthy. Then it pushes a change to tea's source and
// waits until that build serves. Run again on the same lab, it finds the
// first part done and pushes a new change.
func (l *Lab) Demo(ctx context.Context, info *Info) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	if err := l.pushDemoManifests(ctx, info, auth); err != nil {
		return err
	}
	if err := l.createDemoObjects(ctx, c, info); err != nil {
		return err
	}
	heads := map[string]string{}
	for _, app := range DemoApps {
		repoURL := info.Git.URL + "/" + SourceRepo(app)
		// A source repo with history is the developers' now: build what it holds.
		if sha, err := l.head(repoURL); err == nil {
			heads[app] = sha
			continue
		}
		files, err := DemoSource(app)
		if err != nil {
			return err
		}
		sha, err := l.commit(ctx, repoURL, auth, files, "Add the "+app+" service")
		if err != nil {
			return err
		}
		heads[app] = sha
	}
	for _, app := range DemoApps {
		if err := l.waitDelivered(ctx, c, app, heads[app]); err != nil {
			return err
		}
		if info.Edge != nil {
			if err := l.waitServedThroughEdge(ctx, c, info, app, "a cup of "+app); err != nil {
				return err
			}
		}
	}
	if err := l.setUpProdStage(ctx, c, info, auth); err != nil {
		return err
	}

	// The change a developer makes: a new brew of tea.
	brew := "brewed " + time.Now().UTC().Format(time.RFC3339)
	pushed := time.Now()
	sha, err := l.commit(ctx, info.Git.URL+"/"+SourceRepo("tea"), auth, map[string][]byte{"brew.go": BrewFile(brew)}, "Serve a fresh brew")
	if err != nil {
		return err
	}
	if err := l.waitDelivered(ctx, c, "tea", sha); err != nil {
		return err
	}
	l.progress("tea's new build (%s) serves in the cluster %.1fs after the push", brew, time.Since(pushed).Seconds())
	if info.Edge != nil {
		if err := l.waitServedThroughEdge(ctx, c, info, "tea", brew); err != nil {
			return err
		}
		l.progress("tea's new build answers through the edge (%s/tea) from every pod %.1fs after the push", info.Edge.URL, time.Since(pushed).Seconds())
	}
	return nil
}

// BrewFile is the demo's change to a service: brew.go naming a new brew.
func BrewFile(brew string) []byte {
	return []byte("package main\n\n// brew names this build of the service; the demo changes it to show a\n// push to the source travelling to the cluster.\nconst brew = " + strconv.Quote(brew) + "\n")
}

// DemoSource returns the files of a demo service's source repository. Both
// services start from one template, named for each.
func DemoSource(app string) (map[string][]byte, error) {
	files, err := demoTree("demo/_src/service")
	if err != nil {
		return nil, err
	}
	for p, b := range files {
		files[p] = bytes.ReplaceAll(b, []byte("SERVICE"), []byte(app))
	}
	files["go.mod"] = []byte("module example.com/" + app + "\n\ngo " + goLanguageVersion() + "\n")
	return files, nil
}

// demoTree reads an embedded directory as repository files.
func demoTree(root string) (map[string][]byte, error) {
	files := map[string][]byte{}
	err := fs.WalkDir(demoFiles, root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := demoFiles.ReadFile(p)
		files[strings.TrimPrefix(p, root+"/")] = b
		return err
	})
	return files, err
}

// goLanguageVersion is the running toolchain's language version (1.26 for
// go1.26.1), so the demo services build with the Go the server has.
func goLanguageVersion() string {
	v := strings.TrimPrefix(runtime.Version(), "go")
	if parts := strings.SplitN(v, ".", 3); len(parts) >= 2 {
		return parts[0] + "." + strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' })
	}
	return v
}

// commit pushes files to a lab repository and returns the branch's head,
// whether or not the files changed anything.
func (l *Lab) commit(ctx context.Context, repoURL string, auth gitserver.BasicAuth, files map[string][]byte, message string) (string, error) {
	commitCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	sha, err := gitserver.CommitFiles(commitCtx, repoURL, auth, gitserver.Commit{Files: files, Message: message, Author: demoAuthor})
	switch {
	case err == nil:
		l.progress("pushed %q to %s (commit %s)", message, repoURL, sha[:12])
		return sha, nil
	case errors.Is(err, gitserver.ErrNoChanges):
		return l.head(repoURL)
	default:
		return "", fmt.Errorf("pushing %q to %s: %w", message, repoURL, err)
	}
}

// repoDir is where the lab's git server keeps the repository at repoURL.
func (l *Lab) repoDir(repoURL string) string {
	return l.path("git", path.Base(repoURL))
}

// head reads the main branch of a lab repository from disk.
func (l *Lab) head(repoURL string) (string, error) {
	c, err := l.headCommit(repoURL)
	if err != nil {
		return "", err
	}
	return c.Hash.String(), nil
}

// headCommit is the commit at main of a lab repository, read from disk.
func (l *Lab) headCommit(repoURL string) (*object.Commit, error) {
	dir := l.repoDir(repoURL)
	r, err := git.PlainOpen(dir)
	if err != nil {
		return nil, fmt.Errorf("opening %s: %w", dir, err)
	}
	ref, err := r.Reference(plumbing.NewBranchReferenceName("main"), true)
	if err != nil {
		return nil, fmt.Errorf("reading main of %s: %w", dir, err)
	}
	return r.CommitObject(ref.Hash())
}

// pushDemoManifests commits the services' manifests to the ops repo. A
// kustomization already there is kept: it holds the image the Pipeline
// promoted last, which the demo's placeholder must not undo.
func (l *Lab) pushDemoManifests(ctx context.Context, info *Info, auth gitserver.BasicAuth) error {
	files, err := demoTree("demo")
	if err != nil {
		return err
	}
	for p := range files {
		if !strings.HasPrefix(p, "apps/") {
			delete(files, p)
		}
	}
	// An ops repo without a main branch yet (a new lab) has nothing to keep.
	if commit, err := l.headCommit(info.Git.OpsRepo); err == nil {
		for _, app := range DemoApps {
			p := "apps/" + app + "/kustomization.yaml"
			if _, err := commit.File(p); err == nil {
				delete(files, p)
			}
		}
	}
	_, err = l.commit(ctx, info.Git.OpsRepo, auth, files, "Add the tea and coffee services")
	return err
}

// createDemoObjects creates the namespace, the Secrets (git and registry
// credentials, the signing key), and a Pipeline and an Application per
// service.
func (l *Lab) createDemoObjects(ctx context.Context, c client.Client, info *Info) error {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}
	if err := c.Create(ctx, ns); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("creating namespace %s: %w", DemoNamespace, err)
	}
	key, err := l.signingKey()
	if err != nil {
		return err
	}
	secrets := map[string]map[string][]byte{
		"git":         {"username": []byte(info.Git.Username), "password": []byte(info.Git.Password)},
		"registry":    {"username": []byte(info.Registry.Username), "password": []byte(info.Registry.Password)},
		"signing-key": {"cosign.key": key},
	}
	for name, data := range secrets {
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: name}}
		if _, err := upsert(ctx, c, secret, func() error {
			secret.Data = data
			// Credentials may go to the lab's own git server and registry only.
			switch name {
			case "git":
				secret.Annotations = map[string]string{gitsource.AllowedURLsAnnotation: info.Git.URL + "/"}
			case "registry":
				secret.Annotations = map[string]string{gitsource.AllowedURLsAnnotation: info.Registry.Host + "/" + DemoNamespace + "/"}
			}
			return nil
		}); err != nil {
			return fmt.Errorf("storing Secret %s/%s: %w", DemoNamespace, name, err)
		}
	}
	if err := l.createDemoTenant(ctx, c); err != nil {
		return err
	}
	gitSecret := &slipwayv1.LocalObjectReference{Name: "git"}
	for _, name := range DemoApps {
		pipe := &slipwayv1.Pipeline{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: name}}
		if _, err := upsert(ctx, c, pipe, func() error {
			pipe.Spec = slipwayv1.PipelineSpec{
				Source: slipwayv1.PipelineSource{
					URL: info.Git.URL + "/" + SourceRepo(name), Branches: []string{"main"},
					IgnorePaths: []string{"*.md"}, SecretRef: gitSecret,
				},
				Image:   slipwayv1.ImageTarget{Repository: info.Registry.Host + "/cafe/" + name, SecretRef: &slipwayv1.LocalObjectReference{Name: "registry"}},
				Signing: slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing-key"}},
				Promotion: &slipwayv1.PromotionTarget{
					URL: info.Git.OpsRepo, Branch: "main", Path: "apps/" + name + "/kustomization.yaml",
					ImageName: name, SecretRef: gitSecret,
				},
			}
			return nil
		}); err != nil {
			return fmt.Errorf("creating Pipeline %s: %w", name, err)
		}
		app := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: name}}
		if _, err := upsert(ctx, c, app, func() error {
			app.Spec = slipwayv1.ApplicationSpec{
				Source: slipwayv1.ApplicationSource{
					URL: info.Git.OpsRepo, Ref: slipwayv1.GitRef{Branch: "main"}, Path: "apps/" + name, SecretRef: gitSecret,
				},
				Destination: slipwayv1.ApplicationDestination{Namespace: DemoNamespace},
				SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
				Interval:    &metav1.Duration{Duration: 30 * time.Second},
			}
			return nil
		}); err != nil {
			return fmt.Errorf("creating Application %s: %w", name, err)
		}
	}
	l.progress("created Pipelines and Applications %v in namespace %s", DemoApps, DemoNamespace)
	return nil
}

// DemoServiceAccount is what the demo's Applications apply as.
const DemoServiceAccount = "slipway-deployer"

// createDemoTenant sets the demo's namespace up as a platform team would
// for an application team: a ServiceAccount bound to the slipway-tenant
// ClusterRole in that namespace only, a Tenant naming it, and the people
// who request and approve promotions.
func (l *Lab) createDemoTenant(ctx context.Context, c client.Client) error {
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: DemoServiceAccount}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: DemoServiceAccount}}
	tenant := &slipwayv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}
	type step struct {
		obj    client.Object
		mutate func() error
	}
	steps := []step{
		{sa, func() error { return nil }},
		{binding, func() error {
			binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-tenant"}
			binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: DemoNamespace, Name: DemoServiceAccount}}
			return nil
		}},
		{tenant, func() error {
			tenant.Spec = slipwayv1.TenantSpec{Namespaces: []string{DemoNamespace}, ServiceAccountName: DemoServiceAccount}
			return nil
		}},
	}
	// The lab's people: the demo's commits are the developer's.
	identities := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: promotion.IdentitiesConfigMap}}
	steps = append(steps, step{identities, func() error {
		identities.Data = map[string]string{"identities": "dev: [" + demoAuthor.Email + ", dev@example.com]\nreviewer: [reviewer@slipway.dev]\nsecurity-officer: [security-officer@slipway.dev]\n"}
		return nil
	}})
	// Everyone may request and review: the API server's admission policy,
	// not RBAC, keeps the developer from approving their own promotion.
	for _, person := range People {
		for _, role := range []string{"slipway-promotion-requester", "slipway-promotion-approver"} {
			b := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: role + "-" + person.Name}}
			steps = append(steps, step{b, func() error {
				b.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role}
				b.Subjects = []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: person.Name}}
				return nil
			}})
		}
	}
	for _, step := range steps {
		if _, err := upsert(ctx, c, step.obj, step.mutate); err != nil {
			return fmt.Errorf("setting up the demo's tenancy (%T %s): %w", step.obj, step.obj.GetName(), err)
		}
	}
	return nil
}

// upsert creates or updates obj, retrying when the controllers change it
// between the read and the write (a running lab's Applications get
// finalizers and annotations at any time).
func upsert(ctx context.Context, c client.Client, obj client.Object, mutate controllerutil.MutateFn) (controllerutil.OperationResult, error) {
	var result controllerutil.OperationResult
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		var err error
		result, err = controllerutil.CreateOrUpdate(ctx, c, obj, mutate)
		return err
	})
	return result, err
}

// SigningKeyFile is the demo's cosign private key (PEM); the public key is
// beside it, for `cosign verify --key`.
func (l *Lab) SigningKeyFile() string { return l.path("cosign.key") }

// PublicKeyFile is the public half of SigningKeyFile.
func (l *Lab) PublicKeyFile() string { return l.path("cosign.pub") }

// signingKey returns the lab's signing key, generating it once.
func (l *Lab) signingKey() ([]byte, error) {
	if pem, err := os.ReadFile(l.SigningKeyFile()); err == nil {
		return pem, nil
	}
	key, err := signing.GenerateKey()
	if err != nil {
		return nil, err
	}
	priv, err := signing.EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	pub, err := signing.EncodePublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(l.PublicKeyFile(), pub, 0o644); err != nil {
		return nil, fmt.Errorf("writing the demo's public key: %w", err)
	}
	if err := os.WriteFile(l.SigningKeyFile(), priv, 0o600); err != nil {
		return nil, fmt.Errorf("writing the demo's signing key: %w", err)
	}
	return priv, nil
}

// runGrace is how long the demo waits for a push to start a run before it
// starts one itself.
const runGrace = 15 * time.Second

// waitDelivered waits until a PipelineRun built commit of app's source and
// the Application runs that build: Ready (Synced and Healthy) with the
// Deployment's image pinned to the run's digest. When no run starts for the
// commit (a push the server missed), or its only run ended before this wait
// (an earlier demo stopped mid-run), the demo starts one run itself.
func (l *Lab) waitDelivered(ctx context.Context, c client.Client, app, commit string) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	start := time.Now()
	last, retried := "", false
	for {
		d, err := l.delivery(ctx, c, app, commit)
		if err != nil {
			return err
		}
		stale := d.run == nil && time.Since(start) > runGrace ||
			d.failed != "" && d.run.CreationTimestamp.Time.Before(start.Truncate(time.Second))
		switch {
		case stale && !retried:
			retried = true
			if err := startRun(ctx, c, app, commit); err != nil {
				return err
			}
			d.state = "starting a run"
		case d.failed != "":
			return errors.New(d.failed)
		}
		if d.state != last {
			l.progress("%s %s: %s", app, commit[:12], d.state)
			last = d.state
		}
		if d.state == "running" {
			l.progress("%s runs %s (%.1fs)", app, d.run.Status.Image, time.Since(start).Seconds())
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s was not delivered from commit %s within %s (last state: %s); see `slipway run list -n %s` and `slipway app get %s -n %s` with --kubeconfig %s",
				app, commit[:12], demoTimeout, last, DemoNamespace, app, DemoNamespace, l.Kubeconfig())
		case <-time.After(500 * time.Millisecond):
		}
	}
}

// startRun creates a PipelineRun of app's Pipeline for commit.
func startRun(ctx context.Context, c client.Client, app, commit string) error {
	run := &slipwayv1.PipelineRun{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: DemoNamespace, GenerateName: app + "-" + commit[:8] + "-demo-",
			Labels: map[string]string{"slipway.dev/pipeline": app},
		},
		Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: app}, Commit: commit, Branch: "main", Author: demoAuthor.Name},
	}
	if err := c.Create(ctx, run); err != nil {
		return fmt.Errorf("starting a PipelineRun of %s for commit %s: %w", app, commit[:12], err)
	}
	return nil
}

// delivery is how far a commit has come.
type delivery struct {
	run    *slipwayv1.PipelineRun // the run that best represents the commit; nil before one starts
	state  string                 // "running" once delivered
	failed string                 // why the run failed, when it did
}

func (l *Lab) delivery(ctx context.Context, c client.Client, app, commit string) (delivery, error) {
	var runs slipwayv1.PipelineRunList
	if err := c.List(ctx, &runs, client.InNamespace(DemoNamespace), client.MatchingLabels{"slipway.dev/pipeline": app}); err != nil {
		return delivery{}, fmt.Errorf("listing PipelineRuns: %w", err)
	}
	var d delivery
	for i := range runs.Items {
		r := &runs.Items[i]
		// Prefer a succeeded run, then the newest.
		if r.Spec.Commit == commit && (d.run == nil || r.Status.Phase == slipwayv1.RunSucceeded ||
			d.run.Status.Phase != slipwayv1.RunSucceeded && d.run.CreationTimestamp.Before(&r.CreationTimestamp)) {
			d.run = r
		}
	}
	switch {
	case d.run == nil:
		d.state = "waiting for the push to start a run"
		return d, nil
	case d.run.Status.Phase == slipwayv1.RunFailed || d.run.Status.Phase == slipwayv1.RunCancelled:
		msg := ""
		if cond := apimeta.FindStatusCondition(d.run.Status.Conditions, slipwayv1.ConditionReady); cond != nil {
			msg = ": " + cond.Message
		}
		d.state = strings.ToLower(d.run.Status.Phase)
		d.failed = fmt.Sprintf("PipelineRun %s/%s %s%s (see `slipway run logs %s -n %s`)", DemoNamespace, d.run.Name, d.state, msg, d.run.Name, DemoNamespace)
		return d, nil
	case d.run.Status.Phase != slipwayv1.RunSucceeded:
		d.state = "building (PipelineRun " + d.run.Name + ")"
		return d, nil
	}
	var dep appsv1.Deployment
	if err := c.Get(ctx, client.ObjectKey{Namespace: DemoNamespace, Name: app}, &dep); err != nil && !apierrors.IsNotFound(err) {
		return d, fmt.Errorf("reading Deployment %s/%s: %w", DemoNamespace, app, err)
	}
	if len(dep.Spec.Template.Spec.Containers) == 0 || dep.Spec.Template.Spec.Containers[0].Image != d.run.Status.Image {
		d.state = "promoted, syncing"
		return d, nil
	}
	a := &slipwayv1.Application{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: DemoNamespace, Name: app}, a); err != nil {
		return d, fmt.Errorf("reading Application %s/%s: %w", DemoNamespace, app, err)
	}
	if !apimeta.IsStatusConditionTrue(a.Status.Conditions, slipwayv1.ConditionReady) || dep.Status.UpdatedReplicas != dep.Status.Replicas || dep.Status.ObservedGeneration < dep.Generation {
		d.state = fmt.Sprintf("rolling out (%s/%s)", orUnknown(a.Status.Sync.Status), orUnknown(a.Status.Health.Status))
		return d, nil
	}
	d.state = "running"
	return d, nil
}

func orUnknown(s string) string {
	if s == "" {
		return "Unknown"
	}
	return s
}
