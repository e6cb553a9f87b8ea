package doctor

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
	"slipway.dev/slipway/internal/webhook"
)

// The suite's real parts: an API server with Slipway installed, a git
// server, a registry, and a slipway server's webhook endpoint and metrics.
var (
	env       *testenv.Env
	git       *gitserver.Server
	gitRoot   string
	reg       *registry.Server
	hooks     *httptest.Server
	secret    = []byte("the-webhook-secret-never-printed")
	gitUser   = gitserver.BasicAuth{Username: "slipway", Password: "git-Pa55word-never-printed"}
	reader    = gitserver.BasicAuth{Username: "reader", Password: "reader-Pa55word-never-printed"}
	regUser   = gitserver.BasicAuth{Username: "pusher", Password: "registry-Pa55word-never-printed"}
	testCtx   = context.Background()
	passwords = []string{gitUser.Password, reader.Password, regUser.Password, string(secret)}
)

func TestMain(m *testing.M) { os.Exit(runSuite(m)) }

func runSuite(m *testing.M) int {
	var err error
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	gitRoot, _ = os.MkdirTemp("", "doctor-git-")
	defer os.RemoveAll(gitRoot)
	if git, err = gitserver.New(gitRoot, gitUser.Username, gitUser.Password); err == nil {
		err = git.AddReader(reader.Username, reader.Password)
	}
	for _, repo := range []string{"ops.git", "src.git"} {
		if err == nil {
			err = git.CreateRepo(testCtx, repo)
		}
	}
	if err == nil {
		_, err = git.Start(testCtx, "")
	}
	if err == nil {
		_, err = gitserver.CommitFiles(testCtx, git.RepoURL("ops.git"), gitUser, gitserver.Commit{Files: map[string][]byte{"apps/a.yaml": []byte("a: 1\n")}, Message: "seed", Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"}})
	}
	if err == nil {
		_, err = gitserver.CommitFiles(testCtx, git.RepoURL("src.git"), gitUser, gitserver.Commit{Files: map[string][]byte{"main.go": []byte("package main\n")}, Message: "seed", Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"}})
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer git.Close()
	regDir, _ := os.MkdirTemp("", "doctor-registry-")
	defer os.RemoveAll(regDir)
	if reg, err = registry.New(registry.Config{Dir: regDir, Username: regUser.Username, Password: regUser.Password}); err == nil {
		err = reg.Start(testCtx)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer reg.Close()
	// What slipway server serves: its webhook and its metrics.
	mux := http.NewServeMux()
	h := &webhook.Handler{Secret: secret, Client: env.Client, Log: logr.Discard()}
	h.ExportSecretConfigured()
	mux.Handle("/hooks/git", h)
	mux.Handle("/metrics", promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
	hooks = httptest.NewServer(mux)
	defer hooks.Close()
	return m.Run()
}

func newRun(opts Options) *run {
	if opts.Config == nil {
		opts.Config = env.Config
	}
	if opts.StepTimeout == 0 {
		opts.StepTimeout = 2 * time.Second
	}
	if opts.ServerIdentity == "" {
		opts.ServerIdentity = DefaultServerIdentity
	}
	return &run{Options: opts}
}

// gitSecret stores credentials in a Secret scoped to the git server.
func gitSecret(t *testing.T, ns, name string, auth gitserver.BasicAuth) *client.ObjectKey {
	t.Helper()
	s := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: map[string]string{
			gitsource.AllowedURLsAnnotation: strings.TrimSuffix(git.RepoURL("x"), "x") + ", " + reg.Host() + "/",
		}},
		Data: map[string][]byte{"username": []byte(auth.Username), "password": []byte(auth.Password)},
	}
	if err := env.Client.Create(testCtx, s); err != nil {
		t.Fatal(err)
	}
	return &client.ObjectKey{Namespace: ns, Name: name}
}

// byCheck indexes results by check; the last of a check wins.
func byCheck(results []Result) map[string]Result {
	out := map[string]Result{}
	for _, r := range results {
		out[r.Check] = r
	}
	return out
}

func checks(results []Result) []string {
	var out []string
	for _, r := range results {
		out = append(out, r.Check+"="+string(r.Status))
	}
	return out
}

// withinDeadlines fails the test for a result that took longer than its
// deadline (with a margin for the scheduler of a busy machine).
func withinDeadlines(t *testing.T, results []Result) {
	t.Helper()
	for _, r := range results {
		if r.Deadline == 0 || r.Duration > r.Deadline+1 {
			t.Errorf("%s %s took %.1fs, past its deadline of %.1fs", r.Check, r.Target, r.Duration, r.Deadline)
		}
	}
}

func noSecrets(t *testing.T, results []Result) {
	t.Helper()
	b, _ := json.Marshal(results)
	for _, p := range passwords {
		if strings.Contains(string(b), p) {
			t.Fatalf("a secret appears in the report: %s", b)
		}
	}
}

// staller accepts connections and never answers, like a git server or a
// proxy that hangs.
func staller(t *testing.T) string {
	t.Helper()
	s, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s.URL()
}

// closedPort is an address nothing listens on.
func closedPort(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	return addr
}

// TestGitRemoteSteps: each fault is reported by the step it happens in,
// with its cause, and no step outlives its deadline; a remote that hangs
// is reported as hanging.
func TestGitRemoteSteps(t *testing.T) {
	ns := env.Namespace(t)
	good := gitSecret(t, ns, "git", gitUser)
	wrong := gitSecret(t, ns, "wrong", gitserver.BasicAuth{Username: gitUser.Username, Password: "wrong"})
	readOnly := gitSecret(t, ns, "reader", reader)
	ops := git.RepoURL("ops.git")
	main := map[string]bool{"refs/heads/main": true}
	for _, tc := range []struct {
		name   string
		remote *gitRemote
		want   []string // check=status, in order
		cause  string   // in the last result's message
	}{
		{"an ops repository with write credentials", &gitRemote{url: ops, secret: good, refs: main, write: true, users: []string{"Pipeline x/y"}},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=pass", "git.read=pass", "git.write=pass", "git.push=pass"}, "nothing changed"},
		{"a wrong password", &gitRemote{url: ops, secret: wrong, refs: main, write: true},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=fail"}, "refused the credentials of Secret " + wrong.String() + " (HTTP 401)"},
		{"a read-only credential on an ops repository", &gitRemote{url: ops, secret: readOnly, refs: main, write: true},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=pass", "git.read=pass", "git.write=fail"}, "may read but not push (HTTP 403)"},
		{"a read-only credential where only reads happen", &gitRemote{url: git.RepoURL("src.git"), secret: readOnly, refs: main},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=pass", "git.read=pass"}, "main at"},
		{"a branch that does not exist", &gitRemote{url: ops, secret: good, refs: map[string]bool{"refs/heads/release": true}},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=pass", "git.read=fail"}, "has no refs/heads/release"},
		{"a server that is not running", &gitRemote{url: "http://" + closedPort(t) + "/ops.git", secret: good, refs: main},
			[]string{"git.dns=pass", "git.tcp=fail"}, "connection refused"},
		{"a server that accepts connections and never answers", &gitRemote{url: staller(t) + "/ops.git", secret: good, refs: main, write: true},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=fail"}, "sent nothing back, which is how a git fetch hangs"},
		{"a name that does not resolve", &gitRemote{url: "https://no-such-host.invalid/ops.git", secret: good, refs: main},
			[]string{"git.dns=fail"}, "does not resolve"},
		{"a missing Secret", &gitRemote{url: ops, secret: &client.ObjectKey{Namespace: ns, Name: "missing"}, refs: main},
			[]string{"git.dns=pass", "git.tcp=pass", "git.auth=fail"}, "reading Secret " + ns + "/missing"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The credentials of the staller's and the closed port's
			// remotes are allowed for the git server only: give them a
			// scope of their own.
			if tc.remote.secret == good && !strings.HasPrefix(tc.remote.url, strings.TrimSuffix(git.RepoURL("x"), "x")) {
				scoped := gitSecret(t, ns, fmt.Sprintf("scoped-%d", time.Now().UnixNano()), gitUser)
				s := &corev1.Secret{}
				_ = env.Client.Get(testCtx, *scoped, s)
				s.Annotations[gitsource.AllowedURLsAnnotation] = tc.remote.url
				if err := env.Client.Update(testCtx, s); err != nil {
					t.Fatal(err)
				}
				tc.remote.secret = scoped
			}
			results := newRun(Options{}).checkGitRemote(testCtx, tc.remote)
			if got := checks(results); !slices.Equal(got, tc.want) {
				t.Fatalf("steps %v, want %v\n%+v", got, tc.want, results)
			}
			last := results[len(results)-1]
			if !strings.Contains(last.Message, tc.cause) {
				t.Errorf("%s: %q does not say %q", last.Check, last.Message, tc.cause)
			}
			if last.Status == Fail && last.Action == "" {
				t.Errorf("%s fails without saying what to do", last.Check)
			}
			withinDeadlines(t, results)
			noSecrets(t, results)
		})
	}
}

// TestRegistrySteps: reachable, credentials accepted, allowed to push; a
// wrong password and a stopped registry are told apart.
func TestRegistrySteps(t *testing.T) {
	ns := env.Namespace(t)
	good := gitSecret(t, ns, "registry", regUser)
	wrong := gitSecret(t, ns, "wrong", gitserver.BasicAuth{Username: regUser.Username, Password: "wrong"})
	for _, tc := range []struct {
		name   string
		target *imageTarget
		want   []string
		cause  string
	}{
		{"push allowed", &imageTarget{repository: reg.Host() + "/team/app", secret: good},
			[]string{"registry.dns=pass", "registry.tcp=pass", "registry.auth=pass", "registry.push=pass"}, "started and cancelled"},
		{"a wrong password", &imageTarget{repository: reg.Host() + "/team/app", secret: wrong},
			[]string{"registry.dns=pass", "registry.tcp=pass", "registry.auth=fail"}, "refused the credentials of Secret " + wrong.String() + " (HTTP 401)"},
		{"a registry that is not running", &imageTarget{repository: closedPort(t) + "/team/app", secret: nil},
			[]string{"registry.dns=pass", "registry.tcp=fail"}, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results := newRun(Options{}).checkRegistry(testCtx, tc.target)
			if got := checks(results); !slices.Equal(got, tc.want) {
				t.Fatalf("steps %v, want %v\n%+v", got, tc.want, results)
			}
			if last := results[len(results)-1]; !strings.Contains(last.Message, tc.cause) {
				t.Errorf("%s: %q does not say %q", last.Check, last.Message, tc.cause)
			}
			withinDeadlines(t, results)
			noSecrets(t, results)
		})
	}
}

// TestRBACCheck asks about every right of the generated roles as the
// server's ServiceAccount (which testenv installed) and finds one removed.
func TestRBACCheck(t *testing.T) {
	r := newRun(Options{})
	res := checkRBAC(testCtx, r)[0]
	if res.Status != Pass || !strings.Contains(res.Message, "every one of the") {
		t.Fatalf("the installed server's rights: %+v", res)
	}
	other := newRun(Options{ServerIdentity: "system:serviceaccount:default:nobody"})
	if res := checkRBAC(testCtx, other)[0]; res.Status != Fail || !strings.Contains(res.Message, "has none of the") {
		t.Fatalf("an identity without roles: %+v", res)
	}

	role := &rbacv1.ClusterRole{}
	if err := env.Client.Get(testCtx, client.ObjectKey{Name: install.ServerName}, role); err != nil {
		t.Fatal(err)
	}
	before := role.DeepCopy()
	t.Cleanup(func() {
		if _, err := install.Apply(testCtx, env.Client, install.ApplyOptions{Timeout: time.Minute}); err != nil {
			t.Error(err)
		}
	})
	removed := ""
	for i, rule := range role.Rules {
		if slices.Contains(rule.Resources, "events") {
			role.Rules[i].Verbs = slices.DeleteFunc(slices.Clone(rule.Verbs), func(v string) bool { return v == "create" })
			removed = "create events cluster-wide"
		}
	}
	if removed == "" {
		t.Fatalf("the server's ClusterRole has no events rule: %+v", before.Rules)
	}
	if err := env.Client.Update(testCtx, role); err != nil {
		t.Fatal(err)
	}
	// The authorizer's cache follows the role within moments.
	deadline := time.Now().Add(30 * time.Second)
	for {
		res = checkRBAC(testCtx, r)[0]
		if res.Status == Fail || time.Now().After(deadline) {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if res.Status != Fail || !strings.Contains(res.Message, "lacks 1 of") || !strings.Contains(res.Message, removed) {
		t.Fatalf("a removed right: %+v", res)
	}
	withinDeadlines(t, []Result{res})
}

// TestCRDCheck: a missing CRD, and one whose schema differs, are named.
func TestCRDCheck(t *testing.T) {
	r := newRun(Options{})
	if res := checkCRDs(testCtx, r); len(res) != 1 || res[0].Status != Pass {
		t.Fatalf("installed CRDs: %+v", res)
	}
	t.Cleanup(func() {
		if _, err := install.Apply(testCtx, env.Client, install.ApplyOptions{Timeout: time.Minute}); err != nil {
			t.Error(err)
		}
	})
	crd := &apiextensionsv1.CustomResourceDefinition{}
	if err := env.Client.Get(testCtx, client.ObjectKey{Name: "tenants.slipway.dev"}, crd); err != nil {
		t.Fatal(err)
	}
	// An older Tenant: without spec.destinations.
	props := crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"]
	delete(props.Properties, "destinations")
	crd.Spec.Versions[0].Schema.OpenAPIV3Schema.Properties["spec"] = props
	if err := env.Client.Update(testCtx, crd); err != nil {
		t.Fatal(err)
	}
	gone := &apiextensionsv1.CustomResourceDefinition{ObjectMeta: metav1.ObjectMeta{Name: "deliveries.slipway.dev"}}
	if err := env.Client.Delete(testCtx, gone); err != nil {
		t.Fatal(err)
	}
	if err := wait.PollUntilContextTimeout(testCtx, 100*time.Millisecond, 30*time.Second, true, func(ctx context.Context) (bool, error) {
		return apierrors.IsNotFound(env.Client.Get(ctx, client.ObjectKeyFromObject(gone), gone)), nil
	}); err != nil {
		t.Fatalf("the Delivery CRD was not deleted: %v", err)
	}
	res := checkCRDs(testCtx, r)
	found := map[string]string{}
	for _, x := range res {
		if x.Status != Fail {
			t.Errorf("with a CRD missing and one changed: %+v", x)
		}
		found[x.Target] = x.Message
	}
	if !strings.Contains(found["deliveries.slipway.dev"], "not installed") || !strings.Contains(found["tenants.slipway.dev"], "differs from this build's") || len(found) != 2 {
		t.Fatalf("the CRD check found %v", found)
	}
}

// TestClockSkew reads whole-second Date headers against the time a
// request took.
func TestClockSkew(t *testing.T) {
	base := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	for _, tc := range []struct {
		name       string
		date       time.Time
		sent, came time.Duration // after base
		want       time.Duration
	}{
		{"the same second", base, 300 * time.Millisecond, 400 * time.Millisecond, 0},
		{"the second the request straddled", base, -200 * time.Millisecond, 100 * time.Millisecond, 0},
		{"ahead by ten seconds", base.Add(10 * time.Second), 100 * time.Millisecond, 200 * time.Millisecond, 9800 * time.Millisecond},
		{"behind by a minute", base.Add(-time.Minute), 100 * time.Millisecond, 200 * time.Millisecond, -59100 * time.Millisecond},
	} {
		c := clockReading{date: tc.date, sent: base.Add(tc.sent), came: base.Add(tc.came)}
		if got := c.skew(); got != tc.want {
			t.Errorf("%s: skew %s, want %s", tc.name, got, tc.want)
		}
	}
	r := newRun(Options{})
	r.readClock("fast", base.Add(45*time.Second).Format(http.TimeFormat), base, base.Add(time.Millisecond))
	r.readClock("right", base.Format(http.TimeFormat), base, base.Add(time.Millisecond))
	res := checkClocks(testCtx, r)[0]
	if res.Status != Fail || !strings.Contains(res.Message, "fast is 45s ahead") || !strings.Contains(res.Message, "right agrees") {
		t.Errorf("clock check: %+v", res)
	}
}

// TestWebhookCheck reads the last delivery's result from the server's
// metrics: a delivery signed with another secret is reported as a secret
// mismatch, and the next good one clears it.
func TestWebhookCheck(t *testing.T) {
	r := newRun(Options{ServerURL: hooks.URL})
	deliver := func(key []byte) {
		body := []byte(`{"zen": "ping"}`)
		req, err := http.NewRequest(http.MethodPost, hooks.URL+"/hooks/git", strings.NewReader(string(body)))
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("X-GitHub-Event", "ping")
		req.Header.Set("X-Hub-Signature-256", webhook.Sign(key, body))
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
	}
	deliver(secret)
	if res := checkWebhook(testCtx, r)[0]; res.Status != Pass || !strings.Contains(res.Message, "was accepted") {
		t.Fatalf("after a good delivery: %+v", res)
	}
	// Two in the same second: the bad one must come last.
	time.Sleep(10 * time.Millisecond)
	deliver([]byte("another-secret"))
	res := checkWebhook(testCtx, r)[0]
	if res.Status != Fail || !strings.Contains(res.Message, "signature does not verify") || !strings.Contains(res.Action, "same secret") {
		t.Fatalf("after a delivery signed with another secret: %+v", res)
	}
	noSecrets(t, []Result{res})
	stopped := newRun(Options{ServerURL: "http://" + closedPort(t)})
	if res := checkWebhook(testCtx, stopped)[0]; res.Status != Fail || !strings.Contains(res.Message, "connection refused") {
		t.Fatalf("a server that is not running: %+v", res)
	}
}

// TestRunIsBoundedAndReportsEverything runs every check against the
// suite's cluster: a remote that never answers cannot keep the run past
// --timeout, and what did not finish is reported as such.
func TestRunIsBoundedAndReportsEverything(t *testing.T) {
	ns := env.Namespace(t)
	good := gitSecret(t, ns, "git", gitUser)
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	pem, err := signing.EncodePrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	if err := env.Client.Create(testCtx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing"}, Data: map[string][]byte{"cosign.key": pem}}); err != nil {
		t.Fatal(err)
	}
	ref := &slipwayv1.LocalObjectReference{Name: good.Name}
	objs := []client.Object{
		&slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}, Spec: slipwayv1.ApplicationSpec{
			Source: slipwayv1.ApplicationSource{URL: git.RepoURL("ops.git"), Path: "apps", SecretRef: ref}, Destination: slipwayv1.ApplicationDestination{Namespace: ns}}},
		&slipwayv1.Pipeline{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "app"}, Spec: slipwayv1.PipelineSpec{
			Source:    slipwayv1.PipelineSource{URL: git.RepoURL("src.git"), SecretRef: ref},
			Image:     slipwayv1.ImageTarget{Repository: reg.Host() + "/team/app", SecretRef: ref},
			Signing:   slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "signing"}},
			Promotion: &slipwayv1.PromotionTarget{URL: git.RepoURL("ops.git"), Path: "apps/a.yaml", ImageName: "app", SecretRef: ref}}},
	}
	for _, o := range objs {
		if err := env.Client.Create(testCtx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = env.Client.Delete(testCtx, o) })
	}
	// The registry Secret holds the git credentials: give it the registry's.
	s := &corev1.Secret{}
	_ = env.Client.Get(testCtx, *good, s)
	s.Data = map[string][]byte{"username": []byte(regUser.Username), "password": []byte(regUser.Password)}
	regSecret := s.DeepCopy()
	regSecret.ObjectMeta = metav1.ObjectMeta{Namespace: ns, Name: "registry", Annotations: s.Annotations}
	if err := env.Client.Create(testCtx, regSecret); err != nil {
		t.Fatal(err)
	}
	pipe := &slipwayv1.Pipeline{}
	_ = env.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: "app"}, pipe)
	pipe.Spec.Image.SecretRef = &slipwayv1.LocalObjectReference{Name: "registry"}
	if err := env.Client.Update(testCtx, pipe); err != nil {
		t.Fatal(err)
	}

	results := Run(testCtx, Options{Config: env.Config, ServerURL: hooks.URL, StepTimeout: 2 * time.Second, Timeout: time.Minute})
	// The suite's cluster has no nodes and no Prometheus (warnings), and
	// TestWebhookCheck's last delivery was signed with another secret.
	var failed []string
	for _, r := range results {
		if r.Status == Fail && r.Check != "webhook" {
			failed = append(failed, r.Check+" "+r.Target+": "+r.Message)
		}
	}
	if len(failed) > 0 {
		t.Errorf("failed: %v", failed)
	}
	for _, c := range []string{"cluster", "crds", "rbac", "git.push", "registry.push", "keys", "clock", "nodes", "prometheus"} {
		if !slices.ContainsFunc(results, func(r Result) bool { return r.Check == c }) {
			t.Errorf("no %s in the report: %v", c, checks(results))
		}
	}
	withinDeadlines(t, results)
	noSecrets(t, results)

	// A remote that hangs, and a run bounded well below its step deadline.
	hang := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hangs"}, Spec: slipwayv1.ApplicationSpec{
		Source: slipwayv1.ApplicationSource{URL: staller(t) + "/ops.git"}, Destination: slipwayv1.ApplicationDestination{Namespace: ns}}}
	if err := env.Client.Create(testCtx, hang); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(testCtx, hang) })
	start := time.Now()
	bounded := Run(testCtx, Options{Config: env.Config, ServerURL: hooks.URL, StepTimeout: time.Minute, Timeout: 3 * time.Second})
	if took := time.Since(start); took > 10*time.Second {
		t.Errorf("a run bounded at 3s took %s", took)
	}
	git := byCheck(bounded)["git"]
	if git.Status != Fail || !strings.Contains(git.Message, "not finished within the run's bound (3s)") {
		t.Errorf("the git check that hangs: %+v\n%v", git, checks(bounded))
	}
}

// TestAuditCheck reads the audit trail's state from the server's metrics:
// a server without a trail is warned about, an open trail passes, and one
// whose records were changed after they were written fails.
func TestAuditCheck(t *testing.T) {
	r := newRun(Options{ServerURL: hooks.URL})
	if res := checkAudit(testCtx, r)[0]; res.Status != Warn || !strings.Contains(res.Message, "keeps no audit trail") {
		t.Fatalf("before a trail is opened: %+v", res)
	}
	dir := t.TempDir()
	store, err := audit.OpenFileStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	l, _, err := audit.Open(testCtx, store, audit.Options{Key: key, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close(testCtx)
	for i := range 3 {
		if err := l.Record(testCtx, audit.Event{Kind: audit.KindSyncApplied, Actor: "system:slipway", Subject: fmt.Sprintf("Application cafe/app-%d", i), Outcome: audit.OutcomeSucceeded}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Checkpoint(testCtx); err != nil {
		t.Fatal(err)
	}
	if res := checkAudit(testCtx, r)[0]; res.Status != Pass || !strings.Contains(res.Message, "4 records, verified") || !strings.Contains(res.Message, "checkpoint covers 4") {
		t.Fatalf("an open trail: %+v", res)
	}
	// Change one byte of a record's subject, as someone with the files could.
	segs, _ := filepath.Glob(filepath.Join(dir, "segments", "*.jsonl"))
	if len(segs) == 0 {
		t.Fatal("the file store wrote no segment")
	}
	b, err := os.ReadFile(segs[0])
	if err != nil {
		t.Fatal(err)
	}
	at := bytes.Index(b, []byte(`"subject":"Application cafe/app-1`)) + len(`"subject":"Application cafe/app-`)
	b[at] = '7'
	if err := os.WriteFile(segs[0], b, 0o600); err != nil {
		t.Fatal(err)
	}
	if res, err := l.VerifyAll(testCtx); err != nil || res.OK() {
		t.Fatalf("verifying the changed log: %v %+v", err, res)
	}
	res := checkAudit(testCtx, r)[0]
	if res.Status != Fail || !strings.Contains(res.Message, "fails verification") || !strings.Contains(res.Action, "slipway audit verify") {
		t.Fatalf("a changed trail: %+v", res)
	}
}
