package lab_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/monitoring"
	"slipway.dev/slipway/internal/testenv"
	"slipway.dev/slipway/internal/webhook"
)

// TestMonitoringAndDoctor is the test the reference environment fails:
// the lab with its Prometheus and Alertmanager runs the demo; every
// dashboard panel's query and every recording rule gives Prometheus data;
// a sync broken on purpose reaches the test's own webhook through
// Alertmanager; the data survives a restart. Then `slipway doctor` passes
// on the healthy lab and names the right check and cause for each fault
// injected one at a time, no step past its deadline.
func TestMonitoringAndDoctor(t *testing.T) {
	if testing.Short() {
		t.Skip("starts the whole lab with Prometheus and Alertmanager")
	}
	exe := buildSlipway(t)
	dir := t.TempDir()
	alerts := newAlertReceiver(t)
	l := &lab.Lab{Dir: dir, BinDir: testenv.BinDir(), Slipway: exe, Progress: t.Logf, Monitoring: true, AlertWebhooks: []string{alerts.URL()}}
	t.Cleanup(func() { _ = l.Down(false) })
	ctx, cancel := context.WithTimeout(context.Background(), 40*time.Minute)
	defer cancel()

	info, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.Monitoring == nil || !info.AllRunning() {
		t.Fatalf("lab up --monitoring: monitoring %+v, components %+v", info.Monitoring, info.Components)
	}
	prom := info.Monitoring.Prometheus
	if out := run(t, exe, "lab", "status", "--dir", dir); !strings.Contains(out, "Prometheus:     "+prom) {
		t.Fatalf("lab status does not print the Prometheus address %s:\n%s", prom, out)
	}
	c, _, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	// The namespace's default profile audits: findings are reported and
	// counted, nothing is blocked.
	profile := &slipwayv1.PolicyProfile{ObjectMeta: metav1.ObjectMeta{Name: slipwayv1.DefaultPolicyProfile},
		Spec: slipwayv1.PolicyProfileSpec{Packs: []string{"fin-kr"}, Mode: slipwayv1.PolicyModeAudit, FailOn: "high"}}
	if err := c.Create(ctx, profile); err != nil {
		t.Fatal(err)
	}
	if err := l.Demo(ctx, info); err != nil {
		t.Fatal(err)
	}

	// A sync broken on purpose: coffee reads the ops repository with a
	// wrong password.
	broken := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: lab.DemoNamespace, Name: "coffee-git",
		Annotations: map[string]string{gitsource.AllowedURLsAnnotation: info.Git.URL + "/"}},
		Data: map[string][]byte{"username": []byte(info.Git.Username), "password": []byte("wrong")}}
	if err := c.Create(ctx, broken); err != nil {
		t.Fatal(err)
	}
	setSecretRef(t, c, "coffee", "coffee-git")
	brokeAt := time.Now()

	// A rollout that cannot finish (no node matches its selector) turns tea
	// Degraded, a failed deployment; reverting restores it, a recovery.
	patchApp(t, c, "tea", func(a *slipwayv1.Application) { a.Spec.RolloutTimeout = &metav1.Duration{Duration: 15 * time.Second} })
	deploy, err := os.ReadFile(filepath.Join("demo", "apps", "tea", "deployment.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	unschedulable := strings.Replace(string(deploy), "slipway.dev/subnet: private\n", "slipway.dev/subnet: nowhere\n", 1)
	if unschedulable == string(deploy) {
		t.Fatal("tea's deployment.yaml selects no subnet to move it out of")
	}
	commitOps(t, ctx, info, "apps/tea/deployment.yaml", unschedulable, "Schedule tea nowhere")
	waitFor(t, 3*time.Minute, "tea Degraded", appHealth(c, "tea", slipwayv1.HealthDegraded))
	commitOps(t, ctx, info, "apps/tea/deployment.yaml", string(deploy), "Schedule tea on the workers again")
	waitFor(t, 3*time.Minute, "tea Healthy again", appHealth(c, "tea", slipwayv1.HealthHealthy))

	// The alert reaches the test's webhook through Alertmanager.
	alert := alerts.wait(t, 6*time.Minute, func(a receivedAlert) bool {
		return a.Status == "firing" && a.Labels["alertname"] == "SlipwayApplicationSyncFailing" &&
			a.Labels["namespace"] == lab.DemoNamespace && a.Labels["name"] == "coffee"
	})
	t.Logf("SlipwayApplicationSyncFailing for cafe/coffee received %s after the sync broke", time.Since(brokeAt).Round(time.Second))
	if alert.Labels["reason"] != "GitOperationFailed" || !strings.Contains(alert.Annotations["summary"], "cafe/coffee") ||
		!strings.Contains(alert.Annotations["runbook"], "slipway doctor") {
		t.Errorf("the alert does not say what and where, with its runbook: %+v", alert)
	}
	setSecretRef(t, c, "coffee", "git")
	waitFor(t, 3*time.Minute, "coffee Ready again", appHealth(c, "coffee", slipwayv1.HealthHealthy))

	// Every recording rule and every panel has data; the DORA figures the
	// break and the recovery made have values.
	waitFor(t, 2*time.Minute, "the DORA rules to record the failed deployment and the recovery", func() (bool, string) {
		restore := promValues(t, prom, ":slipway_application_recovery_duration_seconds:histogram_quantile1d", time.Time{})
		failures := promValues(t, prom, ":slipway_application_deployment_failures:ratio1d", time.Time{})
		ok := len(restore) == 1 && restore[0] > 0 && !math.IsNaN(restore[0]) && len(failures) == 1 && failures[0] > 0
		return ok, fmt.Sprintf("time to restore %v, change failure rate %v", restore, failures)
	})
	checkEveryQuery(t, prom)
	checkBoundedLabels(t, c, prom)

	// The data outlives a restart of the lab, Prometheus included.
	before := time.Now()
	const kept = "count_over_time(slipway_build_info[1h])"
	samples := promValues(t, prom, kept, before)
	if len(samples) != 1 || samples[0] < 2 {
		t.Fatalf("%s before the restart = %v", kept, samples)
	}
	pid := componentPID(t, l, "prometheus")
	if err := l.Down(false); err != nil {
		t.Fatal(err)
	}
	again := &lab.Lab{Dir: dir, BinDir: testenv.BinDir(), Slipway: exe, Progress: t.Logf}
	if info, err = again.Up(ctx); err != nil {
		t.Fatal(err)
	}
	if info.Monitoring == nil || info.Monitoring.Prometheus != prom || componentPID(t, l, "prometheus") == pid {
		t.Fatalf("after lab down and up: monitoring %+v (was %s, pid %d)", info.Monitoring, prom, pid)
	}
	if after := promValues(t, prom, kept, before); !slices.Equal(after, samples) {
		t.Fatalf("%s at %s: %v before the restart, %v after", kept, before.Format(time.RFC3339), samples, after)
	}

	checkDoctor(t, ctx, exe, l, info, c)
}

// checkDoctor runs `slipway lab doctor` on the healthy lab, then with each
// fault, restoring the lab between them.
func checkDoctor(t *testing.T, ctx context.Context, exe string, l *lab.Lab, info *lab.Info, c client.Client) {
	// The restarted server has seen no delivery yet: a git host's test
	// delivery, as its webhook page sends one.
	deliver(t, info, mustReadFile(t, l.WebhookSecretFile()), "ping", []byte(`{"zen": "test delivery"}`))
	results, code := labDoctor(t, exe, l.Dir)
	if code != 0 {
		t.Fatalf("doctor on the healthy lab exited %d:\n%s", code, report(results))
	}
	for _, r := range results {
		if r.Status != "pass" {
			t.Errorf("doctor on the healthy lab: %+v", r)
		}
	}
	for _, want := range []string{"cluster", "crds", "rbac", "git.push", "registry.push", "webhook", "prometheus.targets", "clock", "keys", "audit", "nodes"} {
		if !slices.ContainsFunc(results, func(r doctorResult) bool { return r.Check == want }) {
			t.Errorf("the healthy lab's report has no %s check", want)
		}
	}
	withinDeadlines(t, results)

	gitSecret := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "git"}, gitSecret); err != nil {
		t.Fatal(err)
	}
	registrySecret := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "registry"}, registrySecret); err != nil {
		t.Fatal(err)
	}
	setData := func(s *corev1.Secret, username, password string) func() {
		return func() {
			cp := &corev1.Secret{}
			if err := c.Get(ctx, client.ObjectKeyFromObject(s), cp); err != nil {
				t.Fatal(err)
			}
			cp.Data = map[string][]byte{"username": []byte(username), "password": []byte(password)}
			if err := c.Update(ctx, cp); err != nil {
				t.Fatal(err)
			}
		}
	}
	relabUp := func() {
		if _, err := l.Up(ctx); err != nil {
			t.Fatal(err)
		}
	}
	gitAddr := strings.TrimPrefix(info.Git.URL, "http://")
	var stall net.Listener
	for _, fault := range []struct {
		name           string
		inject, repair func()
		check, cause   string
	}{
		{"git server stopped", func() { stopComponent(t, l, "git-server") }, relabUp,
			"git.tcp", "connection refused"},
		{"git server accepting connections and never answering", func() {
			stopComponent(t, l, "git-server")
			stall = listenAndHold(t, gitAddr)
		}, func() { stall.Close(); relabUp() },
			"git.auth", "sent nothing back"},
		{"wrong git password", setData(gitSecret, info.Git.Username, "wrong"), setData(gitSecret, info.Git.Username, info.Git.Password),
			"git.auth", "refused the credentials of Secret cafe/git (HTTP 401)"},
		{"read-only ops repository credential", setData(gitSecret, info.Git.Reader.Username, info.Git.Reader.Password), setData(gitSecret, info.Git.Username, info.Git.Password),
			"git.write", "may read but not push (HTTP 403)"},
		{"registry stopped", func() { stopComponent(t, l, "registry") }, relabUp,
			"registry.tcp", "connection refused"},
		{"wrong registry password", setData(registrySecret, info.Registry.Username, "wrong"), setData(registrySecret, info.Registry.Username, info.Registry.Password),
			"registry.auth", "refused the credentials of Secret cafe/registry (HTTP 401)"},
		{"webhook secret mismatch", func() {
			deliver(t, info, []byte("the git host's other secret"), "push", []byte(`{"ref": "refs/heads/main", "repository": {"clone_url": "`+info.Git.OpsRepo+`"}}`))
		}, func() { deliver(t, info, mustReadFile(t, l.WebhookSecretFile()), "ping", []byte(`{"zen": "again"}`)) },
			"webhook", "signature does not verify"},
		{"Prometheus stopped", func() { stopComponent(t, l, "prometheus") }, relabUp,
			"prometheus", "connection refused"},
		{"CRDs missing", func() { deleteCRD(t, ctx, c, "deliveries.slipway.dev") }, relabUp,
			"crds", "deliveries.slipway.dev"},
		{"RBAC permission removed", func() { removeRight(t, ctx, c, "events", "create") }, relabUp,
			"rbac", "create events cluster-wide"},
	} {
		t.Run("doctor: "+fault.name, func(t *testing.T) {
			fault.inject()
			defer fault.repair()
			// The authorizer follows a changed role within moments.
			var results []doctorResult
			var code int
			waitFor(t, 30*time.Second, "doctor to see "+fault.name, func() (bool, string) {
				results, code = labDoctor(t, exe, l.Dir)
				return slices.ContainsFunc(results, func(r doctorResult) bool { return r.Check == fault.check && r.Status == "fail" }), report(results)
			})
			if code != 1 {
				t.Errorf("exit code %d, want 1", code)
			}
			for _, r := range results {
				switch {
				case r.Status != "fail":
				case r.Check != fault.check:
					t.Errorf("%s also failed: %+v", r.Check, r)
				case !strings.Contains(r.Message, fault.cause) && !strings.Contains(r.Target, fault.cause):
					t.Errorf("%s does not say %q: %+v", r.Check, fault.cause, r)
				case r.Action == "":
					t.Errorf("%s fails without saying what to do: %+v", r.Check, r)
				}
			}
			withinDeadlines(t, results)
		})
	}
	// Repaired, the lab is healthy again.
	results, code = labDoctor(t, exe, l.Dir)
	if code != 0 {
		t.Errorf("doctor after the faults were repaired exited %d:\n%s", code, report(results))
	}
}

type doctorResult struct {
	Check, Target, Status, Message, Action string
	DurationSeconds, DeadlineSeconds       float64
}

func labDoctor(t *testing.T, exe, dir string) ([]doctorResult, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, exe, "lab", "doctor", "--dir", dir, "-o", "json")
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var exitErr *exec.ExitError
	switch {
	case errors.As(err, &exitErr):
		code = exitErr.ExitCode()
	case err != nil:
		t.Fatalf("slipway lab doctor: %v\n%s", err, stderr.String())
	}
	var results []doctorResult
	if err := json.Unmarshal(stdout.Bytes(), &results); err != nil {
		t.Fatalf("slipway lab doctor -o json: %v\n%s\n%s", err, stdout.String(), stderr.String())
	}
	return results, code
}

func report(results []doctorResult) string {
	var b strings.Builder
	for _, r := range results {
		fmt.Fprintf(&b, "%s %s %s: %s\n", r.Status, r.Check, r.Target, r.Message)
	}
	return b.String()
}

// withinDeadlines: no check ran past the deadline it reports (a margin for
// a busy machine's scheduler).
func withinDeadlines(t *testing.T, results []doctorResult) {
	t.Helper()
	for _, r := range results {
		if r.DeadlineSeconds <= 0 || r.DurationSeconds > r.DeadlineSeconds+1 {
			t.Errorf("%s %s took %.1fs, past its deadline of %.1fs", r.Check, r.Target, r.DurationSeconds, r.DeadlineSeconds)
		}
	}
}

// receivedAlert is one alert of Alertmanager's webhook payload.
type receivedAlert struct {
	Status      string            `json:"status"`
	Labels      map[string]string `json:"labels"`
	Annotations map[string]string `json:"annotations"`
}

// alertReceiver is the test's own webhook receiver for Alertmanager.
type alertReceiver struct {
	srv    *httptest.Server
	mu     sync.Mutex
	alerts []receivedAlert
}

func newAlertReceiver(t *testing.T) *alertReceiver {
	r := &alertReceiver{}
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		var msg struct {
			Alerts []receivedAlert `json:"alerts"`
		}
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<20)).Decode(&msg); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.mu.Lock()
		r.alerts = append(r.alerts, msg.Alerts...)
		r.mu.Unlock()
	}))
	t.Cleanup(r.srv.Close)
	return r
}

func (r *alertReceiver) URL() string { return r.srv.URL + "/alerts" }

func (r *alertReceiver) wait(t *testing.T, timeout time.Duration, match func(receivedAlert) bool) receivedAlert {
	t.Helper()
	var found receivedAlert
	waitFor(t, timeout, "the alert at the test's webhook", func() (bool, string) {
		r.mu.Lock()
		defer r.mu.Unlock()
		for _, a := range r.alerts {
			if match(a) {
				found = a
				return true, ""
			}
		}
		return false, fmt.Sprintf("%d alerts received: %+v", len(r.alerts), r.alerts)
	})
	return found
}

func patchApp(t *testing.T, c client.Client, name string, mutate func(*slipwayv1.Application)) {
	t.Helper()
	app := &slipwayv1.Application{}
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: lab.DemoNamespace, Name: name}, app); err != nil {
		t.Fatal(err)
	}
	patch := client.MergeFrom(app.DeepCopy())
	mutate(app)
	if err := c.Patch(context.Background(), app, patch); err != nil {
		t.Fatal(err)
	}
}

func setSecretRef(t *testing.T, c client.Client, app, secret string) {
	t.Helper()
	patchApp(t, c, app, func(a *slipwayv1.Application) {
		a.Spec.Source.SecretRef = &slipwayv1.LocalObjectReference{Name: secret}
	})
}

// appHealth is Ready with health, or Degraded.
func appHealth(c client.Client, name, health string) func() (bool, string) {
	return func() (bool, string) {
		app := &slipwayv1.Application{}
		if err := c.Get(context.Background(), client.ObjectKey{Namespace: lab.DemoNamespace, Name: name}, app); err != nil {
			return false, err.Error()
		}
		state := fmt.Sprintf("sync %s, health %s: %v", app.Status.Sync.Status, app.Status.Health.Status, app.Status.Conditions)
		if app.Status.Health.Status != health {
			return false, state
		}
		if health == slipwayv1.HealthHealthy {
			for _, cond := range app.Status.Conditions {
				if cond.Type == slipwayv1.ConditionReady {
					return cond.Status == metav1.ConditionTrue, state
				}
			}
			return false, state
		}
		return true, state
	}
}

// promValues asks Prometheus for expr (at at, unless zero) and returns the
// values of the vector it answers.
func promValues(t *testing.T, prom, expr string, at time.Time) []float64 {
	t.Helper()
	var out []float64
	for _, s := range promQuery(t, prom, expr, at) {
		v, err := strconv.ParseFloat(s.Value[1].(string), 64)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, v)
	}
	return out
}

type promSample struct {
	Metric map[string]string `json:"metric"`
	Value  []any             `json:"value"`
}

func promQuery(t *testing.T, prom, expr string, at time.Time) []promSample {
	t.Helper()
	q := url.Values{"query": {expr}}
	if !at.IsZero() {
		q.Set("time", strconv.FormatFloat(float64(at.UnixNano())/1e9, 'f', 3, 64))
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, prom+"/api/v1/query?"+q.Encode(), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("asking Prometheus for %s: %v", expr, err)
	}
	defer resp.Body.Close()
	var answer struct {
		Status string `json:"status"`
		Error  string `json:"error"`
		Data   struct {
			ResultType string       `json:"resultType"`
			Result     []promSample `json:"result"`
		} `json:"data"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&answer); err != nil {
		t.Fatalf("Prometheus's answer to %s: %v", expr, err)
	}
	if answer.Status != "success" || answer.Data.ResultType != "vector" {
		t.Fatalf("Prometheus on %s: %s %s (%s)", expr, answer.Status, answer.Error, answer.Data.ResultType)
	}
	return answer.Data.Result
}

// checkEveryQuery asks Prometheus for every panel's query, as Grafana
// would send it, and every recording rule: each must have data.
func checkEveryQuery(t *testing.T, prom string) {
	t.Helper()
	queries, err := monitoring.PanelQueries("1m")
	if err != nil {
		t.Fatal(err)
	}
	for _, q := range queries {
		if len(promQuery(t, prom, q.Expr, time.Time{})) == 0 {
			t.Errorf("%s, panel %q: no data for %s", q.Dashboard, q.Panel, q.Expr)
		}
	}
	groups, err := monitoring.RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Record == "" {
				continue
			}
			n++
			if len(promQuery(t, prom, r.Record, time.Time{})) == 0 {
				t.Errorf("recording rule %s has no data", r.Record)
			}
		}
	}
	for _, expr := range []string{":slipway_application_deployments:increase1d", ":slipway_pipeline_lead_time_running_seconds:histogram_quantile1d"} {
		for _, v := range promValues(t, prom, expr, time.Time{}) {
			if !(v > 0) {
				t.Errorf("%s = %v after the demo, want a positive number", expr, v)
			}
		}
	}
	t.Logf("%d panel queries and %d recording rules have data", len(queries), n)
}

var commitSHA = regexp.MustCompile(`^[0-9a-f]{40}$`)

// checkBoundedLabels looks at every series Slipway exports through
// Prometheus: no label carries a commit or a run's name.
func checkBoundedLabels(t *testing.T, c client.Client, prom string) {
	t.Helper()
	var runs slipwayv1.PipelineRunList
	if err := c.List(context.Background(), &runs, client.InNamespace(lab.DemoNamespace)); err != nil {
		t.Fatal(err)
	}
	runNames := map[string]bool{}
	for _, r := range runs.Items {
		runNames[r.Name] = true
	}
	series := promQuery(t, prom, `{job="slipway", __name__=~"slipway_.+"}`, time.Time{})
	if len(series) < 50 || len(runNames) == 0 {
		t.Fatalf("%d slipway_ series and %d runs after the demo", len(series), len(runNames))
	}
	for _, s := range series {
		for k, v := range s.Metric {
			if commitSHA.MatchString(v) || runNames[v] {
				t.Errorf("%s{%s=%q}: a label per commit or run grows without end", s.Metric["__name__"], k, v)
			}
		}
	}
	names := map[string]int{}
	for _, s := range series {
		names[s.Metric["__name__"]]++
	}
	var largest []string
	for n, count := range names {
		largest = append(largest, fmt.Sprintf("%s=%d", n, count))
	}
	sort.Strings(largest)
	t.Logf("%d slipway_ series in %d metrics: %s", len(series), len(names), strings.Join(largest, " "))
}

func componentPID(t *testing.T, l *lab.Lab, name string) int {
	t.Helper()
	info, err := l.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range info.Components {
		if c.Name == name && c.Running {
			return c.PID
		}
	}
	return 0
}

// stopComponent ends one of the lab's processes, as a crash would.
func stopComponent(t *testing.T, l *lab.Lab, name string) {
	t.Helper()
	pid := componentPID(t, l, name)
	if pid == 0 {
		t.Fatalf("%s does not run", name)
	}
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, name+" to stop", func() (bool, string) { return componentPID(t, l, name) == 0, "" })
}

// listenAndHold accepts connections on addr and never answers them.
func listenAndHold(t *testing.T, addr string) net.Listener {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	go func() {
		var held []net.Conn
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			held = append(held, conn)
		}
	}()
	return ln
}

func mustReadFile(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.TrimSpace(b)
}

// deliver posts a webhook delivery to slipway server signed with secret.
func deliver(t *testing.T, info *lab.Info, secret []byte, event string, body []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, info.Server.Webhook, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", event)
	req.Header.Set("X-Hub-Signature-256", webhook.Sign(secret, body))
	resp, err := (&http.Client{Timeout: 10 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
}

func deleteCRD(t *testing.T, ctx context.Context, c client.Client, name string) {
	t.Helper()
	crd := &unstructured.Unstructured{}
	crd.SetAPIVersion("apiextensions.k8s.io/v1")
	crd.SetKind("CustomResourceDefinition")
	crd.SetName(name)
	if err := c.Delete(ctx, crd); err != nil {
		t.Fatal(err)
	}
	waitFor(t, time.Minute, name+" deleted", func() (bool, string) {
		return apierrors.IsNotFound(c.Get(ctx, client.ObjectKeyFromObject(crd), crd)), ""
	})
}

// removeRight takes verb on resource out of the server's generated
// ClusterRole.
func removeRight(t *testing.T, ctx context.Context, c client.Client, resource, verb string) {
	t.Helper()
	role := &rbacv1.ClusterRole{}
	if err := c.Get(ctx, client.ObjectKey{Name: "slipway-server"}, role); err != nil {
		t.Fatal(err)
	}
	for i, r := range role.Rules {
		if slices.Contains(r.Resources, resource) {
			role.Rules[i].Verbs = slices.DeleteFunc(slices.Clone(r.Verbs), func(v string) bool { return v == verb })
		}
	}
	if err := c.Update(ctx, role); err != nil {
		t.Fatal(err)
	}
}

// TestMonitoringRealNodes: with real nodes, the lab's Prometheus scrapes
// every kubelet (as a user allowed to read nodes/metrics), and doctor
// reports the nodes and their CNI ready.
func TestMonitoringRealNodes(t *testing.T) {
	ctx := requireRealNodes(t, "starts the lab with real nodes", 15*time.Minute)
	exe := buildSlipway(t)
	dir := t.TempDir()
	l := &lab.Lab{Dir: dir, BinDir: testenv.BinDir(), Slipway: exe, RealNodes: true, Monitoring: true, Progress: t.Logf}
	t.Cleanup(func() {
		if err := l.Down(false); err != nil {
			t.Errorf("lab down: %v", err)
		}
	})
	info, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if len(info.Nodes) == 0 || info.Monitoring == nil {
		t.Fatalf("nodes %+v, monitoring %+v", info.Nodes, info.Monitoring)
	}
	prom := info.Monitoring.Prometheus
	for _, n := range info.Nodes {
		waitFor(t, 2*time.Minute, "Prometheus scraping the kubelet of "+n.Name, func() (bool, string) {
			up := promValues(t, prom, `up{job="kubelet", node="`+n.Name+`"}`, time.Time{})
			pods := promValues(t, prom, `kubelet_running_pods{job="kubelet", node="`+n.Name+`"}`, time.Time{})
			return len(up) == 1 && up[0] == 1 && len(pods) == 1, fmt.Sprintf("up %v, kubelet_running_pods %v", up, pods)
		})
	}
	waitFor(t, 2*time.Minute, "Prometheus scraping the API server at the bridge address", func() (bool, string) {
		up := promValues(t, prom, `up{job="apiserver"}`, time.Time{})
		return len(up) == 1 && up[0] == 1, fmt.Sprintf("up = %v", up)
	})
	results, _ := labDoctor(t, exe, dir)
	nodes := slices.IndexFunc(results, func(r doctorResult) bool { return r.Check == "nodes" })
	if nodes < 0 || results[nodes].Status != "pass" || !strings.Contains(results[nodes].Message, "the CNI of") {
		t.Errorf("doctor's nodes check on real nodes:\n%s", report(results))
	}
}
