package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/server"
	"slipway.dev/slipway/internal/testenv"
	"slipway.dev/slipway/internal/webhook"
)

var (
	env     *testenv.Env
	baseURL string
	secret  = []byte("webhook-test-secret")
	logs    lockedBuffer
)

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

// serverUser is who the server under test is: the ServiceAccount `slipway
// install` creates, with the RBAC generated from the markers, as in a
// cluster. A right the controllers need and the markers lack fails the
// tests with Forbidden.
var serverUser = "system:serviceaccount:" + install.Namespace + ":" + install.ServerName

// auditPolicy records every request the server makes, and nothing else;
// TestServerRBACMatchesItsCalls reads the log.
var auditPolicy = `apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
- level: Metadata
  users: ["` + serverUser + `"]
- level: None
`

func run(m *testing.M) int {
	var err error
	if env, err = testenv.StartWith(testenv.Options{AuditPolicy: auditPolicy}); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	ctrl.SetLogger(funcr.New(func(prefix, args string) { fmt.Fprintln(&logs, prefix, args) }, funcr.Options{}))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cacheDir, _ := os.MkdirTemp("", "slipway-server-test-")
	defer os.RemoveAll(cacheDir)
	// As in the cluster: the secret in a file the server reads per delivery.
	secretFile := filepath.Join(cacheDir, "webhook-secret")
	if err := os.WriteFile(secretFile, secret, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	cfg, err := env.ServiceAccountConfig(ctx, install.Namespace, install.ServerName, 2*time.Hour)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	started := make(chan string, 1)
	done := make(chan error, 1)
	go func() {
		done <- server.Run(ctx, server.Options{
			Config: cfg, Addr: "127.0.0.1:0", WebhookSecretFile: secretFile,
			LeaderElection: true, LeaderElectionNamespace: install.Namespace,
			GitCacheDir: filepath.Join(cacheDir, "git"), RunDir: filepath.Join(cacheDir, "runs"), Concurrency: 2,
			Executor: "kubernetes", RunNamespace: install.RunNamespace, TestImage: "registry.example/ci/go:1",
			Started: func(addr string) { started <- addr },
		})
	}()
	select {
	case addr := <-started:
		baseURL = "http://" + addr
	case err := <-done:
		fmt.Fprintln(os.Stderr, "server exited:", err)
		return 1
	case <-time.After(60 * time.Second):
		fmt.Fprintln(os.Stderr, "server did not start listening within 60s")
		return 1
	}
	code := m.Run()
	if code == 0 {
		if err := checkSuiteCalls(); err != nil {
			fmt.Fprintln(os.Stderr, "FAIL: server RBAC:", err)
			return 1
		}
	}
	return code
}

func get(t *testing.T, path string) (int, string) {
	t.Helper()
	resp, err := http.Get(baseURL + path)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func waitStatus(t *testing.T, path string, want int) string {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		code, body := get(t, path)
		if code == want {
			return body
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET %s = %d %q, want %d", path, code, body, want)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestHealthReadyAndMetrics(t *testing.T) {
	waitStatus(t, "/healthz", http.StatusOK)
	waitStatus(t, "/readyz", http.StatusOK)
	// An Application makes the controller reconcile, which fills the metrics.
	ns := env.Namespace(t)
	createApp(t, ns, "metrics-app", "http://127.0.0.1:1/unreachable.git")
	deadline := time.Now().Add(30 * time.Second)
	for {
		_, body := get(t, "/metrics")
		if strings.Contains(body, "slipway_application_reconcile_total") &&
			strings.Contains(body, "slipway_application_reconcile_duration_seconds_bucket") &&
			strings.Contains(body, `slipway_git_operation_duration_seconds_bucket{operation="fetch",result="error"`) &&
			strings.Contains(body, `slipway_git_operations_total{operation="fetch",remote="127.0.0.1:1",result="error"} `) &&
			strings.Contains(body, `slipway_application_sync_status{name="metrics-app",namespace="`+ns) &&
			// The server leads (no leader election here), says what it is,
			// and has a webhook secret.
			strings.Contains(body, "\nslipway_server_leader 1\n") &&
			strings.Contains(body, `slipway_build_info{goversion="`) &&
			strings.Contains(body, "\nslipway_webhook_secret_configured 1\n") {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("metrics missing Slipway series:\n%s", grep(body, "slipway_"))
		}
		time.Sleep(300 * time.Millisecond)
	}
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func createApp(t *testing.T, ns, name, url string) *slipwayv1.Application {
	t.Helper()
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: url, Timeout: &metav1.Duration{Duration: time.Second}},
			Destination: slipwayv1.ApplicationDestination{Namespace: ns},
			Interval:    &metav1.Duration{Duration: time.Hour},
		},
	}
	if err := env.Client.Create(context.Background(), app); err != nil {
		t.Fatal(err)
	}
	return app
}

func post(t *testing.T, body []byte, headers map[string]string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, baseURL+"/hooks/git", bytes.NewReader(body))
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestWebhookTriggersMatchingApplications(t *testing.T) {
	ns := env.Namespace(t)
	follows := createApp(t, ns, "follows", "https://git.example.com/org/ops.git")
	other := createApp(t, ns, "other", "https://git.example.com/org/other.git")
	body := []byte(`{"ref":"refs/heads/main","after":"0123456789abcdef0123456789abcdef01234567","repository":{"clone_url":"https://git.example.com/org/ops"}}`)
	code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": webhook.Sign(secret, body)})
	if code != http.StatusAccepted {
		t.Fatalf("signed push: %d %s", code, resp)
	}
	var got struct{ Applications []string }
	if err := json.Unmarshal([]byte(resp), &got); err != nil || len(got.Applications) != 1 || got.Applications[0] != ns+"/follows" {
		t.Fatalf("response %s: want exactly %s/follows", resp, ns)
	}
	// The annotation wakes the controller, which echoes it in status.
	waitHandled(t, follows, true)
	waitHandled(t, other, false)
}

func waitHandled(t *testing.T, app *slipwayv1.Application, want bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for {
		got := &slipwayv1.Application{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(app), got); err != nil {
			t.Fatal(err)
		}
		token := got.Annotations[slipwayv1.ReconcileRequestAnnotation]
		if !want {
			if token != "" {
				t.Fatalf("%s was triggered by a push to another repository", app.Name)
			}
			return
		}
		if token != "" && got.Status.LastHandledReconcileAt == token {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: reconcile request %q not handled (status has %q)", app.Name, token, got.Status.LastHandledReconcileAt)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func TestForgedWebhookIsRefused(t *testing.T) {
	ns := env.Namespace(t)
	app := createApp(t, ns, "target", "https://git.example.com/org/forged.git")
	const marker = "payload-marker-7d3a"
	body := []byte(`{"ref":"refs/heads/main","after":"` + marker + `","repository":{"clone_url":"https://git.example.com/org/forged.git"}}`)
	cases := map[string]map[string]string{
		"wrong secret":  {"X-GitHub-Event": "push", "X-Hub-Signature-256": webhook.Sign([]byte("guess"), body)},
		"no signature":  {"X-GitHub-Event": "push"},
		"tampered body": {"X-GitHub-Event": "push", "X-Hub-Signature-256": webhook.Sign(secret, append([]byte(" "), body...))},
	}
	for name, headers := range cases {
		t.Run(name, func(t *testing.T) {
			if code, resp := post(t, body, headers); code != http.StatusUnauthorized {
				t.Fatalf("got %d %s, want 401", code, resp)
			}
		})
	}
	waitHandled(t, app, false)
	l := logs.String()
	if !strings.Contains(l, "refused webhook: bad signature") {
		t.Fatal("refusals are not logged")
	}
	if strings.Contains(l, marker) {
		t.Fatal("the payload of a refused webhook reached the logs")
	}
}

func TestOversizedWebhookIsRefused(t *testing.T) {
	body := bytes.Repeat([]byte("x"), webhook.MaxPayloadBytes+1)
	code, _ := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": webhook.Sign(secret, body)})
	if code != http.StatusRequestEntityTooLarge {
		t.Fatalf("got %d, want 413", code)
	}
}

func TestPushStartsOnePipelineRunPerCommit(t *testing.T) {
	ns := env.Namespace(t)
	pipe := &slipwayv1.Pipeline{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "tea"},
		Spec: slipwayv1.PipelineSpec{
			Source:  slipwayv1.PipelineSource{URL: "http://127.0.0.1:1/src/tea.git", Branches: []string{"main"}, IgnorePaths: []string{"*.md", "docs/**"}},
			Image:   slipwayv1.ImageTarget{Repository: "127.0.0.1:1/shop/tea"},
			Signing: slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "missing-key"}},
		},
	}
	if err := env.Client.Create(context.Background(), pipe); err != nil {
		t.Fatal(err)
	}
	const sha = "0123456789abcdef0123456789abcdef01234567"
	push := func(ref, delivery, after string, changed ...string) []string {
		commits := ""
		if len(changed) > 0 {
			files, _ := json.Marshal(changed)
			commits = `,"commits":[{"modified":` + string(files) + `}]`
		}
		body := []byte(`{"ref":"` + ref + `","before":"` + strings.Repeat("9", 40) + `","after":"` + after + `","head_commit":{"author":{"name":"Dev"}},"repository":{"clone_url":"http://127.0.0.1:1/src/tea.git"}` + commits + `}`)
		code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": webhook.Sign(secret, body)})
		if code != http.StatusAccepted {
			t.Fatalf("push: %d %s", code, resp)
		}
		var got struct{ PipelineRuns []string }
		if err := json.Unmarshal([]byte(resp), &got); err != nil {
			t.Fatal(err)
		}
		return got.PipelineRuns
	}
	// The server reads Pipelines from its cache, which sees the new one a
	// moment after it is created: a push before that matches no Pipeline.
	try := 0
	startsRun(t, func() []string {
		try++
		return push("refs/heads/main", fmt.Sprintf("delivery-1-%d", try), sha, "README.md", "main.go")
	}, ns+"/tea-")
	if docs := push("refs/heads/main", "delivery-0", strings.Repeat("8", 40), "README.md", "docs/guide.md"); len(docs) != 0 {
		t.Fatalf("a push changing only ignored files started %v", docs)
	}
	if again := push("refs/heads/main", "delivery-1-1", sha); len(again) != 0 {
		t.Fatalf("a replayed delivery started %v", again)
	}
	if again := push("refs/heads/main", "delivery-1-replayed-with-a-new-id", sha); len(again) != 0 {
		t.Fatalf("a replayed delivery with a new id started %v", again)
	}
	if other := push("refs/heads/feature", "delivery-2", sha); len(other) != 0 {
		t.Fatalf("a push to an unwatched branch started %v", other)
	}
	var runs slipwayv1.PipelineRunList
	if err := env.Client.List(context.Background(), &runs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	if len(runs.Items) != 1 || runs.Items[0].Spec.Commit != sha || runs.Items[0].Spec.Author != "Dev" {
		t.Fatalf("runs = %+v", runs.Items)
	}
	// The run's Pipeline names a signing key that does not exist: the run
	// fails, and says why.
	deadline := time.Now().Add(30 * time.Second)
	for {
		run := &slipwayv1.PipelineRun{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(&runs.Items[0]), run); err != nil {
			t.Fatal(err)
		}
		if run.Status.Phase == slipwayv1.RunFailed {
			if c := run.Status.Conditions; len(c) == 0 || !strings.Contains(c[0].Message, "missing-key") {
				t.Fatalf("failure does not name the missing Secret: %+v", c)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run phase %q, want Failed", run.Status.Phase)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

func createPipeline(t *testing.T, ns, name, url string, mutate func(*slipwayv1.Pipeline)) *slipwayv1.Pipeline {
	t.Helper()
	pipe := &slipwayv1.Pipeline{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name},
		Spec: slipwayv1.PipelineSpec{
			Source:  slipwayv1.PipelineSource{URL: url, Branches: []string{"main"}},
			Image:   slipwayv1.ImageTarget{Repository: "127.0.0.1:1/shop/" + name},
			Signing: slipwayv1.SigningKey{SecretRef: slipwayv1.LocalObjectReference{Name: "missing-key"}},
		},
	}
	if mutate != nil {
		mutate(pipe)
	}
	if err := env.Client.Create(context.Background(), pipe); err != nil {
		t.Fatal(err)
	}
	return pipe
}

func pushBody(url, sha string) []byte {
	return []byte(`{"ref":"refs/heads/main","after":"` + sha + `","repository":{"clone_url":"` + url + `"}}`)
}

func runsOf(t *testing.T, ns string) []slipwayv1.PipelineRun {
	t.Helper()
	var runs slipwayv1.PipelineRunList
	if err := env.Client.List(context.Background(), &runs, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	return runs.Items
}

// TestReplayedPushStartsNothing replays a captured, correctly signed push
// with a new delivery id, as anyone who saw it on the wire can.
func TestReplayedPushStartsNothing(t *testing.T) {
	ns := env.Namespace(t)
	const url = "http://127.0.0.1:1/src/replayed.git"
	createPipeline(t, ns, "replayed", url, nil)
	body := pushBody(url, "1111111111111111111111111111111111111111")
	deliver := func(delivery string) {
		t.Helper()
		if code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-GitHub-Delivery": delivery, "X-Hub-Signature-256": webhook.Sign(secret, body)}); code != http.StatusAccepted {
			t.Fatalf("push: %d %s", code, resp)
		}
	}
	// Until the server's cache holds the new Pipeline, a push starts nothing.
	deadline := time.Now().Add(30 * time.Second)
	for i := 0; len(runsOf(t, ns)) == 0; i++ {
		if time.Now().After(deadline) {
			t.Fatal("the push started no run")
		}
		deliver(fmt.Sprintf("first-delivery-%d", i))
		time.Sleep(100 * time.Millisecond)
	}
	for _, delivery := range []string{"second-delivery", "third-delivery"} {
		deliver(delivery)
	}
	if runs := runsOf(t, ns); len(runs) != 1 {
		t.Fatalf("one push delivered again with new delivery ids started %d runs, want 1", len(runs))
	}
}

// TestRunForUnwatchedBranchIsRefused creates a run by hand for a branch the
// Pipeline does not build.
func TestRunForUnwatchedBranchIsRefused(t *testing.T) {
	ns := env.Namespace(t)
	createPipeline(t, ns, "guarded", "http://127.0.0.1:1/src/guarded.git", nil)
	run := &slipwayv1.PipelineRun{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "guarded-feature"},
		Spec: slipwayv1.PipelineRunSpec{PipelineRef: slipwayv1.LocalObjectReference{Name: "guarded"},
			Commit: "2222222222222222222222222222222222222222", Branch: "feature"},
	}
	if err := env.Client.Create(context.Background(), run); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		got := &slipwayv1.PipelineRun{}
		if err := env.Client.Get(context.Background(), client.ObjectKeyFromObject(run), got); err != nil {
			t.Fatal(err)
		}
		if got.Status.Phase == slipwayv1.RunFailed {
			c := got.Status.Conditions
			if len(c) == 0 || c[0].Reason != "BranchNotWatched" || !strings.Contains(c[0].Message, "feature") {
				t.Fatalf("the run failed, but not for its branch: %+v", c)
			}
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("run phase %q, want Failed", got.Status.Phase)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// TestPipelineWebhookSecrets gives one repository's Pipeline a webhook
// secret of its own: the server's secret no longer starts its runs, and
// its secret starts no other repository's.
func TestPipelineWebhookSecrets(t *testing.T) {
	ns := env.Namespace(t)
	const own, shared = "http://127.0.0.1:1/src/own.git", "http://127.0.0.1:1/src/shared.git"
	repoSecret := []byte("secret-of-the-own-repository")
	if err := env.Client.Create(context.Background(), &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "own-hook"},
		Data: map[string][]byte{webhook.SecretKey: repoSecret}}); err != nil {
		t.Fatal(err)
	}
	createPipeline(t, ns, "own", own, func(p *slipwayv1.Pipeline) {
		p.Spec.Source.WebhookSecretRef = &slipwayv1.LocalObjectReference{Name: "own-hook"}
	})
	createPipeline(t, ns, "shared", shared, nil)
	deliver := func(url, sha string, key []byte) (int, []string) {
		t.Helper()
		body := pushBody(url, sha)
		code, resp := post(t, body, map[string]string{"X-GitHub-Event": "push", "X-Hub-Signature-256": webhook.Sign(key, body)})
		var got struct{ PipelineRuns []string }
		_ = json.Unmarshal([]byte(resp), &got)
		return code, got.PipelineRuns
	}
	// The first runs, which the right secrets start, also prove the
	// server's cache holds both Pipelines.
	startsRun(t, func() []string { _, runs := deliver(own, strings.Repeat("b", 40), repoSecret); return runs }, ns+"/own-")
	startsRun(t, func() []string { _, runs := deliver(shared, strings.Repeat("d", 40), secret); return runs }, ns+"/shared-")
	if code, runs := deliver(own, strings.Repeat("a", 40), secret); code != http.StatusAccepted || len(runs) != 0 {
		t.Fatalf("the server's secret, for a Pipeline with its own: %d, started %v", code, runs)
	}
	if code, runs := deliver(shared, strings.Repeat("c", 40), repoSecret); code != http.StatusUnauthorized || len(runs) != 0 {
		t.Fatalf("one repository's secret, for another repository: %d, started %v", code, runs)
	}
	ping := []byte(`{"zen":"hello","repository":{"clone_url":"` + own + `"}}`)
	if code, resp := post(t, ping, map[string]string{"X-GitHub-Event": "ping", "X-Hub-Signature-256": webhook.Sign(repoSecret, ping)}); code != http.StatusOK {
		t.Fatalf("a ping signed with the repository's secret: %d %s", code, resp)
	}
	if strings.Contains(logs.String(), string(repoSecret)) {
		t.Fatal("a webhook secret reached the logs")
	}
}

// TestGiteaPushListingFewCommitsStartsARun sends a Gitea push whose list
// shows only documentation changes but holds 5 of its 7 commits.
func TestGiteaPushListingFewCommitsStartsARun(t *testing.T) {
	ns := env.Namespace(t)
	const url = "http://127.0.0.1:1/src/gitea.git"
	createPipeline(t, ns, "gitea", url, func(p *slipwayv1.Pipeline) { p.Spec.Source.IgnorePaths = []string{"*.md"} })
	commits := strings.TrimSuffix(strings.Repeat(`{"added":[],"removed":[],"modified":["README.md"]},`, 5), ",")
	body := []byte(`{"ref":"refs/heads/main","before":"` + strings.Repeat("1", 40) + `","after":"` + strings.Repeat("e", 40) +
		`","total_commits":7,"commits":[` + commits + `],"repository":{"clone_url":"` + url + `"}}`)
	sig := strings.TrimPrefix(webhook.Sign(secret, body), "sha256=")
	startsRun(t, func() []string {
		code, resp := post(t, body, map[string]string{"X-Gitea-Event": "push", "X-Gitea-Signature": sig})
		var got struct{ PipelineRuns []string }
		if code != http.StatusAccepted || json.Unmarshal([]byte(resp), &got) != nil {
			t.Fatalf("a Gitea push: %d %s", code, resp)
		}
		return got.PipelineRuns
	}, ns+"/gitea-")
}

// startsRun delivers until the delivery starts a run named with prefix: a
// Pipeline just created is not in the server's cache at once, and runs
// are one per Pipeline and commit, so repeating is harmless.
func startsRun(t *testing.T, deliver func() []string, prefix string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		runs := deliver()
		if len(runs) == 1 && strings.HasPrefix(runs[0], prefix) {
			return
		}
		if len(runs) > 0 || time.Now().After(deadline) {
			t.Fatalf("the delivery started %v, want one run %s...", runs, prefix)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
