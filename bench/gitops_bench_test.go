// Package bench holds scale and speed scenarios run by `make bench`. They
// bring up the real lab and measure; they assert nothing about time.
package bench

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/testenv"
)

const benchNamespace = "bench"

// appCounts reads SLIPWAY_BENCH_APPS (e.g. "100,1000", the default).
func appCounts(b *testing.B) []int {
	spec := os.Getenv("SLIPWAY_BENCH_APPS")
	if spec == "" {
		spec = "100,1000"
	}
	var counts []int
	for _, f := range strings.Split(spec, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n <= 0 {
			b.Fatalf("SLIPWAY_BENCH_APPS=%q: %q is not a positive count", spec, f)
		}
		counts = append(counts, n)
	}
	return counts
}

// BenchmarkGitOpsScale: N Applications of 10 objects each (one Deployment
// with a KWOK pod, a Service, a ServiceAccount, seven ConfigMaps) from one
// ops repo. It measures the time from a commit that changes every
// Application to all of them Synced and Healthy at that commit, and the
// server's CPU and peak RSS.
func BenchmarkGitOpsScale(b *testing.B) {
	for _, n := range appCounts(b) {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				runScale(b, n)
			}
		})
	}
}

func runScale(b *testing.B, n int) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	l, info, c := labForApps(b, ctx, buildSlipway(b), n)
	defer func() { _ = l.Down(true) }()
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}

	rev1 := push(b, ctx, info.Git.OpsRepo, auth, n, "v1")
	createApps(b, ctx, c, info, n)
	initial := waitAll(b, ctx, c, n, rev1)

	requestsBefore := apiRequests(b, info)
	start := time.Now()
	rev2 := push(b, ctx, info.Git.OpsRepo, auth, n, "v2")
	pushed := time.Since(start)
	update := waitAll(b, ctx, c, n, rev2) + pushed
	reportRequests(b, requestsBefore, apiRequests(b, info), n)

	server := serverPID(b, info)
	cpuBefore := cpuSeconds(b, server)
	const window = 30 * time.Second
	time.Sleep(window)
	steadyCPU := (cpuSeconds(b, server) - cpuBefore) / window.Seconds() * 100
	peak := peakRSSMiB(b, server)

	reportErrors(b, info)
	auditShare(b, info)
	b.ReportMetric(initial.Seconds(), "s-first-sync")
	b.ReportMetric(update.Seconds(), "s-commit-to-healthy")
	b.ReportMetric(steadyCPU, "%cpu-steady")
	b.ReportMetric(peak, "MiB-peak-rss")
	fmt.Printf("| %d Applications × 10 objects | first sync %.1f s | commit → all Synced+Healthy %.1f s | steady CPU %.1f%% | peak RSS %.0f MiB |\n",
		n, initial.Seconds(), update.Seconds(), steadyCPU, peak)
}

// buildSlipway builds the slipway executable the lab runs.
func buildSlipway(b *testing.B) string {
	exe := filepath.Join(b.TempDir(), "slipway")
	if out, err := exec.Command("go", "build", "-o", exe, "slipway.dev/slipway/cmd/slipway").CombinedOutput(); err != nil {
		b.Fatalf("building slipway: %v\n%s", err, out)
	}
	return exe
}

// labForApps starts a fresh lab (its Down is the caller's) with room for
// n Applications' pods.
func labForApps(b *testing.B, ctx context.Context, exe string, n int) (*lab.Lab, *lab.Info, client.Client) {
	// SLIPWAY_BENCH_AUDIT=postgres keeps the audit trail in PostgreSQL.
	l := &lab.Lab{Dir: b.TempDir(), BinDir: testenv.BinDir(), Slipway: exe, Audit: os.Getenv("SLIPWAY_BENCH_AUDIT")}
	info, err := l.Up(ctx)
	if err != nil {
		_ = l.Down(true)
		b.Fatal(err)
	}
	c, _, err := l.Client()
	if err != nil {
		_ = l.Down(true)
		b.Fatal(err)
	}
	// The two workers hold 110 pods each, as real nodes do: add simulated
	// workers so every Application's pod has room.
	var extra []string
	for i := 0; i < n/100+1; i++ {
		extra = append(extra, fmt.Sprintf("bench-worker-%02d", i))
	}
	if err := l.AddWorkers(ctx, extra...); err != nil {
		_ = l.Down(true)
		b.Fatal(err)
	}
	return l, info, c
}

// push commits n application directories; version changes every one of them.
func push(b *testing.B, ctx context.Context, repo string, auth gitserver.BasicAuth, n int, version string) string {
	files := map[string][]byte{}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("app-%04d", i)
		files["apps/"+name+"/manifests.yaml"] = []byte(appManifests(name, version))
	}
	sha, err := gitserver.CommitFiles(ctx, repo, auth, gitserver.Commit{
		Files: files, Message: "bench " + version, Author: gitserver.Signature{Name: "Bench", Email: "bench@slipway.dev"},
	})
	if err != nil {
		b.Fatal(err)
	}
	return sha
}

func appManifests(name, version string) string {
	var sb strings.Builder
	fmt.Fprintf(&sb, `apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
spec:
  replicas: 1
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
      annotations: {bench/version: %[2]s}
    spec:
      containers:
      - name: app
        image: registry.lab.local/bench/app:1.0.0
---
apiVersion: v1
kind: Service
metadata:
  name: %[1]s
spec:
  selector: {app: %[1]s}
  ports: [{port: 80}]
---
apiVersion: v1
kind: ServiceAccount
metadata:
  name: %[1]s
`, name, version)
	for i := 0; i < 7; i++ {
		fmt.Fprintf(&sb, "---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: %s-config-%d\ndata:\n  version: %s\n", name, i, version)
	}
	return sb.String()
}

// pollEvery is how often the benchmarks list n objects to see whether all
// are ready: listing thousands is itself load on the API server and on
// this process, so large runs poll gently and small ones closely enough
// that the poll does not dominate what it measures.
func pollEvery(n int) time.Duration {
	if n <= 200 {
		return 500 * time.Millisecond
	}
	return 2 * time.Second
}

func createApps(b *testing.B, ctx context.Context, c client.Client, info *lab.Info, n int) {
	if err := c.Create(ctx, namespace(benchNamespace)); err != nil {
		b.Fatal(err)
	}
	if err := c.Create(ctx, credentials(info)); err != nil {
		b.Fatal(err)
	}
	if err := tenancy(ctx, c); err != nil {
		b.Fatal(err)
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("app-%04d", i)
		app := &slipwayv1.Application{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: name},
			Spec: slipwayv1.ApplicationSpec{
				Source: slipwayv1.ApplicationSource{URL: info.Git.OpsRepo, Path: "apps/" + name,
					SecretRef: &slipwayv1.LocalObjectReference{Name: "ops-repo"}},
				Destination: slipwayv1.ApplicationDestination{Namespace: benchNamespace},
				SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
				Interval:    &metav1.Duration{Duration: 5 * time.Minute},
			},
		}
		if err := c.Create(ctx, app); err != nil {
			b.Fatal(err)
		}
	}
}

// waitAll waits until every Application is Ready at revision and returns how long it took.
func waitAll(b *testing.B, ctx context.Context, c client.Client, n int, revision string) time.Duration {
	start := time.Now()
	allApplied := false
	for {
		var list slipwayv1.ApplicationList
		if err := c.List(ctx, &list, client.InNamespace(benchNamespace)); err != nil {
			b.Fatal(err)
		}
		ready, applied := 0, 0
		for i := range list.Items {
			a := &list.Items[i]
			if a.Status.LastAppliedRevision == revision {
				applied++
			}
			if a.Status.LastAppliedRevision == revision && a.Status.Health.Status == slipwayv1.HealthHealthy &&
				apimeta.IsStatusConditionTrue(a.Status.Conditions, slipwayv1.ConditionReady) {
				ready++
			}
		}
		if applied == n && !allApplied {
			allApplied = true
			b.Logf("all %d Applications applied %s after %.1fs", n, revision[:12], time.Since(start).Seconds())
		}
		if ready == n {
			return time.Since(start)
		}
		if ctx.Err() != nil {
			b.Fatalf("only %d of %d Applications Ready at %s", ready, n, revision)
		}
		time.Sleep(pollEvery(n))
	}
}
