package bench

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/upstream"
	"slipway.dev/slipway/internal/version"
)

// The systems BenchmarkGitOpsPeers compares, in the order they run.
const (
	systemSlipway = "slipway"
	systemFlux    = "flux"
	systemApply   = "apply"
)

// peerWorkers is the parallelism every system gets: slipway server's
// default --concurrency, Flux's --concurrent, and the direct apply's
// goroutines. Client-side rate limits are the server's default for all
// three (500 requests/s, burst 1,000).
const (
	peerWorkers = 16
	peerQPS     = 500
)

// BenchmarkGitOpsPeers: the N Applications of BenchmarkGitOpsScale (10
// objects each, one path of the ops repository apiece) delivered by
// Slipway, by Flux (source-controller and kustomize-controller, one
// GitRepository and N Kustomizations), and by a direct server-side apply
// of the same objects in one pass (what the lab itself allows). Each system
// runs alone on a fresh lab. Measured for each: a commit that changes every
// Application, from the push to all N Ready at the commit with their
// Deployments available; the CPU seconds and peak RSS of the system's
// processes; and the API requests it made (its own client count) and the
// API server served (from everyone: controller-manager, scheduler and KWOK
// included). Slipway's runs also measure one Application changed out of N
// and a quiet minute. Results are merged into docs/benchmarks-peers.json and
// rendered as a table and a plot beside it.
//
// SLIPWAY_BENCH_APPS sets N (default 100,1000), SLIPWAY_BENCH_PEER_RUNS the
// repetitions (default 3), SLIPWAY_BENCH_PEER_SYSTEMS the systems (default
// slipway,flux,apply), SLIPWAY_BENCH_PEER_OUT the directory results go to
// (default ../docs).
func BenchmarkGitOpsPeers(b *testing.B) {
	counts := appCounts(b)
	runs := envCount(b, "SLIPWAY_BENCH_PEER_RUNS", 3)
	systems := peerSystems(b)
	out := os.Getenv("SLIPWAY_BENCH_PEER_OUT")
	if out == "" {
		out = filepath.Join("..", "docs")
	}
	exe := buildSlipway(b)
	if slices.Contains(systems, systemFlux) {
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Minute)
		// Printed as it goes: the first build takes minutes.
		progress := func(format string, args ...any) { fmt.Printf(format+"\n", args...) }
		err := upstream.EnsurePeers(ctx, upstream.PeerBinDir(), progress)
		cancel()
		if err != nil {
			b.Fatalf("building Flux %s: %v", version.Flux, err)
		}
	}
	for _, n := range counts {
		b.Run(fmt.Sprintf("apps=%d", n), func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				started := hostState()
				var results []peerRun
				// Systems take turns within a repetition, so that a change
				// of the machine's load falls on all of them.
				for r := 0; r < runs; r++ {
					for _, s := range systems {
						res := runPeer(b, exe, s, n, r)
						fmt.Printf("%s N=%d run %d: %s\n", s, n, r+1, res)
						results = append(results, res)
					}
				}
				report := peerReport{N: n, Runs: runs, Started: started, Finished: hostState(), Results: results}
				for _, s := range summarize(results) {
					b.ReportMetric(s.Update.Median, "s-"+s.System)
				}
				if err := writePeerReport(out, report); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// peerSystems reads SLIPWAY_BENCH_PEER_SYSTEMS.
func peerSystems(b *testing.B) []string {
	all := []string{systemSlipway, systemFlux, systemApply}
	spec := os.Getenv("SLIPWAY_BENCH_PEER_SYSTEMS")
	if spec == "" {
		return all
	}
	var systems []string
	for _, s := range strings.Split(spec, ",") {
		s = strings.TrimSpace(s)
		if !slices.Contains(all, s) {
			b.Fatalf("SLIPWAY_BENCH_PEER_SYSTEMS=%q: %q is none of %v", spec, s, all)
		}
		systems = append(systems, s)
	}
	return systems
}

// peerRun is one system's run on its own lab.
type peerRun struct {
	System string `json:"system"`
	Run    int    `json:"run"`
	// FirstSync is from creating the N objects (the commit already pushed)
	// to all Ready; Update from pushing the commit that changes all N to
	// all Ready at it, the trigger included.
	FirstSync float64 `json:"firstSyncSeconds"`
	Update    float64 `json:"updateSeconds"`
	// Trigger says how the push reached the system.
	Trigger string `json:"trigger"`
	// CPU is the CPU seconds of the system's processes during Update.
	CPU float64 `json:"cpuSeconds"`
	// PeakRSS is the sum of the processes' peak resident sets over the
	// whole run, in MiB; zero where not measured (the direct apply runs in
	// the benchmark's own process).
	PeakRSS float64 `json:"peakRSSMiB,omitempty"`
	// ClientRequests are the requests the system made during Update (its
	// client's count); ServerRequests are those the API server served.
	ClientRequests float64 `json:"clientRequests"`
	ServerRequests float64 `json:"serverRequests"`
	// Slipway only: one Application of N changed, and a quiet minute.
	OneChange *oneChange `json:"oneChange,omitempty"`
	Steady    *steady    `json:"steady,omitempty"`
}

func (r peerRun) String() string {
	return fmt.Sprintf("first sync %.1fs, commit → all Ready %.1fs, CPU %.1fs, peak RSS %.0f MiB, requests %.0f (API server %.0f)",
		r.FirstSync, r.Update, r.CPU, r.PeakRSS, r.ClientRequests, r.ServerRequests)
}

func runPeer(b *testing.B, exe, system string, n, run int) peerRun {
	ctx, cancel := context.WithTimeout(context.Background(), time.Duration(20+n/20)*time.Minute)
	defer cancel()
	l, info, c := labForApps(b, ctx, exe, n)
	defer func() { _ = l.Down(true) }()
	_, cfg, err := l.Client()
	if err != nil {
		b.Fatal(err)
	}
	res := peerRun{System: system, Run: run + 1}
	switch system {
	case systemSlipway:
		runSlipwayPeer(b, ctx, c, cfg, info, n, run == 0, &res)
	case systemFlux:
		stopServer(b, info)
		runFluxPeer(b, ctx, c, cfg, l, info, n, &res)
	case systemApply:
		stopServer(b, info)
		runApplyPeer(b, ctx, cfg, n, &res)
	}
	return res
}

// stopServer stops the lab's slipway server, which the other systems do
// not need: it would otherwise add its idle watches and lease renewals to
// the API server's load.
func stopServer(b *testing.B, info *lab.Info) {
	pid := serverPID(b, info)
	if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
		b.Fatalf("stopping slipway server (pid %d): %v", pid, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for syscall.Kill(pid, 0) == nil {
		if time.Now().After(deadline) {
			b.Fatalf("slipway server (pid %d) still runs 30 s after SIGTERM", pid)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func runSlipwayPeer(b *testing.B, ctx context.Context, c client.Client, cfg *rest.Config, info *lab.Info, n int, extras bool, res *peerRun) {
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	rev1 := push(b, ctx, info.Git.OpsRepo, auth, n, "v1")
	start := time.Now()
	createApps(b, ctx, c, info, n)
	waitAll(b, ctx, c, n, rev1)
	res.FirstSync = time.Since(start).Seconds()

	pid := serverPID(b, info)
	cpu0, client0, server0 := cpuSeconds(b, pid), sum(apiRequests(b, info)), apiserverRequests(b, cfg)
	start = time.Now()
	rev2 := push(b, ctx, info.Git.OpsRepo, auth, n, "v2")
	waitAll(b, ctx, c, n, rev2)
	res.Update = time.Since(start).Seconds()
	res.Trigger = "the git server's signed push webhook to slipway server"
	res.CPU = cpuSeconds(b, pid) - cpu0
	res.ClientRequests = sum(apiRequests(b, info)) - client0
	res.ServerRequests = apiserverRequests(b, cfg) - server0
	if extras {
		res.OneChange = measureOneChange(b, ctx, c, info, n, envCount(b, "SLIPWAY_BENCH_ONE_CHANGE_TRIES", 5))
		res.Steady = measureSteady(b, ctx, cfg, info)
	}
	res.PeakRSS = peakRSSMiB(b, pid)
}

// oneChange is one commit that changes one Application of N: from the push
// to that Application Synced at the commit, over several tries.
type oneChange struct {
	Tries   int       `json:"tries"`
	Seconds []float64 `json:"seconds"`
	P50     float64   `json:"p50Seconds"`
}

func measureOneChange(b *testing.B, ctx context.Context, c client.Client, info *lab.Info, n, tries int) *oneChange {
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	const name = "app-0000"
	res := &oneChange{Tries: tries}
	for t := 0; t < tries; t++ {
		// Each try starts from a quiet server, so that it measures one
		// change and not the tail of the one before.
		waitIdle(b, ctx, info)
		start := time.Now()
		sha, err := gitserver.CommitFiles(ctx, info.Git.OpsRepo, auth, gitserver.Commit{
			Files:   map[string][]byte{"apps/" + name + "/manifests.yaml": []byte(appManifests(name, fmt.Sprintf("one-%d", t)))},
			Message: "bench: change " + name, Author: gitserver.Signature{Name: "Bench", Email: "bench@slipway.dev"},
		})
		if err != nil {
			b.Fatal(err)
		}
		for {
			var a slipwayv1.Application
			if err := c.Get(ctx, client.ObjectKey{Namespace: benchNamespace, Name: name}, &a); err != nil {
				b.Fatal(err)
			}
			if a.Status.Sync.Status == slipwayv1.SyncStatusSynced && a.Status.Sync.Revision == sha && a.Status.LastAppliedRevision == sha {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("%s not Synced at %s (sync %+v)", name, sha, a.Status.Sync)
			}
			time.Sleep(20 * time.Millisecond)
		}
		res.Seconds = append(res.Seconds, time.Since(start).Seconds())
	}
	res.P50 = median(res.Seconds)
	b.Logf("one Application of %d changed → Synced: p50 %.2fs over %v", n, res.P50, res.Seconds)
	return res
}

// waitIdle waits until slipway server has no reconciliation queued or
// running for three seconds in a row (controller-runtime's workqueue
// metrics), at most five minutes.
func waitIdle(b *testing.B, ctx context.Context, info *lab.Info) {
	deadline := time.Now().Add(5 * time.Minute)
	quiet := 0
	for quiet < 6 {
		busy := false
		for _, line := range strings.Split(serverMetrics(b, info), "\n") {
			if (strings.HasPrefix(line, "workqueue_depth{") || strings.HasPrefix(line, "workqueue_unfinished_work_seconds{")) &&
				!strings.HasSuffix(line, " 0") {
				busy = true
			}
		}
		if busy {
			quiet = 0
		} else {
			quiet++
		}
		if time.Now().After(deadline) || ctx.Err() != nil {
			b.Fatal("slipway server still busy after five minutes")
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// steady is a minute of N Applications with nothing changing.
type steady struct {
	Seconds float64 `json:"seconds"`
	// CPUPerMinute is slipway server's CPU seconds per minute.
	CPUPerMinute float64 `json:"cpuSecondsPerMinute"`
	// ClientRequestsPerMinute are slipway server's requests; the API
	// server's count (ServerRequestsPerMinute) includes every other
	// component of the lab.
	ClientRequestsPerMinute float64 `json:"clientRequestsPerMinute"`
	ServerRequestsPerMinute float64 `json:"serverRequestsPerMinute"`
}

func measureSteady(b *testing.B, ctx context.Context, cfg *rest.Config, info *lab.Info) *steady {
	waitIdle(b, ctx, info)
	pid := serverPID(b, info)
	cpu0, client0, server0 := cpuSeconds(b, pid), sum(apiRequests(b, info)), apiserverRequests(b, cfg)
	const window = time.Minute
	time.Sleep(window)
	perMinute := window.Minutes()
	s := &steady{Seconds: window.Seconds(),
		CPUPerMinute:            (cpuSeconds(b, pid) - cpu0) / perMinute,
		ClientRequestsPerMinute: (sum(apiRequests(b, info)) - client0) / perMinute,
		ServerRequestsPerMinute: (apiserverRequests(b, cfg) - server0) / perMinute,
	}
	b.Logf("steady minute: %.2f CPU s, %.0f requests by slipway server, %.0f served by the API server", s.CPUPerMinute, s.ClientRequestsPerMinute, s.ServerRequestsPerMinute)
	return s
}

// Flux's API groups and the namespace its benchmark objects live in.
var (
	fluxGitRepository = schema.GroupVersionKind{Group: "source.toolkit.fluxcd.io", Version: "v1", Kind: "GitRepository"}
	fluxKustomization = schema.GroupVersionKind{Group: "kustomize.toolkit.fluxcd.io", Version: "v1", Kind: "Kustomization"}
)

const fluxNamespace = "bench-flux"

func runFluxPeer(b *testing.B, ctx context.Context, c client.Client, cfg *rest.Config, l *lab.Lab, info *lab.Info, n int, res *peerRun) {
	binDir := upstream.PeerBinDir()
	// Every kind the controllers watch must be served before they start.
	var crds []string
	for _, o := range applyYAML(b, ctx, c, filepath.Join(binDir, upstream.FluxCRDs)) {
		crds = append(crds, o.GetName())
	}
	waitCRDsEstablished(b, ctx, c, crds...)
	flux := startFlux(b, ctx, binDir, filepath.Join(info.Dir, "flux"), l.Kubeconfig())
	defer flux.stop()

	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	rev1 := push(b, ctx, info.Git.OpsRepo, auth, n, "v1")
	start := time.Now()
	for _, o := range fluxObjects(info, n) {
		if err := c.Create(ctx, o); err != nil {
			b.Fatalf("creating %s %s: %v", o.GetObjectKind().GroupVersionKind().Kind, o.GetName(), err)
		}
	}
	waitFlux(b, ctx, c, n, rev1, flux)
	res.FirstSync = time.Since(start).Seconds()

	cpu0, client0, server0 := flux.cpu(b), flux.requests(b), apiserverRequests(b, cfg)
	start = time.Now()
	rev2 := push(b, ctx, info.Git.OpsRepo, auth, n, "v2")
	// What a Receiver would do on the push, without notification-controller.
	repo := &unstructured.Unstructured{}
	repo.SetGroupVersionKind(fluxGitRepository)
	repo.SetNamespace(fluxNamespace)
	repo.SetName("ops")
	patch := fmt.Sprintf(`{"metadata":{"annotations":{"reconcile.fluxcd.io/requestedAt":%q}}}`, time.Now().Format(time.RFC3339Nano))
	if err := c.Patch(ctx, repo, client.RawPatch(types.MergePatchType, []byte(patch))); err != nil {
		b.Fatalf("annotating GitRepository ops: %v", err)
	}
	waitFlux(b, ctx, c, n, rev2, flux)
	res.Update = time.Since(start).Seconds()
	res.Trigger = "the benchmark annotates the GitRepository with reconcile.fluxcd.io/requestedAt after the push (what a Receiver does)"
	res.CPU = flux.cpu(b) - cpu0
	res.ClientRequests = flux.requests(b) - client0
	res.ServerRequests = apiserverRequests(b, cfg) - server0
	res.PeakRSS = flux.peakRSS(b)
}

// fluxObjects are the Flux side of createApps: the repository's
// credentials, one GitRepository (fetched only when asked: its interval is
// an hour) and a Kustomization per path, which waits for its objects'
// health as Slipway's Healthy does.
func fluxObjects(info *lab.Info, n int) []client.Object {
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: fluxNamespace, Name: "ops-repo"},
		Data:       map[string][]byte{"username": []byte(info.Git.Username), "password": []byte(info.Git.Password)},
	}
	repo := &unstructured.Unstructured{Object: map[string]any{
		"metadata": map[string]any{"namespace": fluxNamespace, "name": "ops"},
		"spec": map[string]any{"url": info.Git.OpsRepo, "ref": map[string]any{"branch": "main"},
			"interval": "1h", "timeout": "60s", "secretRef": map[string]any{"name": "ops-repo"}},
	}}
	repo.SetGroupVersionKind(fluxGitRepository)
	objs := []client.Object{namespace(fluxNamespace), secret, repo}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("app-%04d", i)
		k := &unstructured.Unstructured{Object: map[string]any{
			"metadata": map[string]any{"namespace": fluxNamespace, "name": name},
			"spec": map[string]any{
				"sourceRef": map[string]any{"kind": "GitRepository", "name": "ops"},
				"path":      "./apps/" + name, "targetNamespace": fluxNamespace,
				"prune": true, "wait": true, "timeout": "5m", "interval": "1h", "retryInterval": "10s",
			},
		}}
		k.SetGroupVersionKind(fluxKustomization)
		objs = append(objs, k)
	}
	return objs
}

// waitFlux waits until every Kustomization is Ready with the commit sha as
// its last applied revision ("main@sha1:<sha>").
func waitFlux(b *testing.B, ctx context.Context, c client.Client, n int, sha string, flux *fluxProcesses) {
	for {
		list := &unstructured.UnstructuredList{}
		list.SetGroupVersionKind(fluxKustomization.GroupVersion().WithKind("KustomizationList"))
		if err := c.List(ctx, list, client.InNamespace(fluxNamespace)); err != nil {
			b.Fatal(err)
		}
		ready := 0
		var notReady string
		for _, k := range list.Items {
			applied, _, _ := unstructured.NestedString(k.Object, "status", "lastAppliedRevision")
			if strings.HasSuffix(applied, ":"+sha) && conditionTrue(k, "Ready") {
				ready++
			} else if notReady == "" {
				notReady = fmt.Sprintf("%s (applied %q, conditions %v)", k.GetName(), applied, k.Object["status"])
			}
		}
		if ready == n {
			return
		}
		if ctx.Err() != nil {
			flux.logTail(b)
			b.Fatalf("only %d of %d Kustomizations Ready at %s; first not: %s", ready, n, sha, notReady)
		}
		time.Sleep(pollEvery(n))
	}
}

func conditionTrue(u unstructured.Unstructured, kind string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, _ := c.(map[string]any)
		if m["type"] == kind {
			return m["status"] == "True"
		}
	}
	return false
}

// fluxProcesses are source-controller and kustomize-controller, run out of
// the cluster against the lab's API server.
type fluxProcesses struct {
	cmds    []*exec.Cmd
	metrics []string
	logs    []string
}

func startFlux(b *testing.B, ctx context.Context, binDir, dir, kubeconfig string) *fluxProcesses {
	storage, kustomizeTmp := filepath.Join(dir, "storage"), filepath.Join(dir, "kustomize-tmp")
	for _, d := range []string{storage, kustomizeTmp} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			b.Fatal(err)
		}
	}
	common := func(metrics, health string) []string {
		return []string{"--metrics-addr=" + metrics, "--health-addr=" + health, fmt.Sprintf("--concurrent=%d", peerWorkers),
			fmt.Sprintf("--kube-api-qps=%d", peerQPS), fmt.Sprintf("--kube-api-burst=%d", 2*peerQPS), "--log-encoding=json"}
	}
	storageAddr := freeAddr(b)
	// Their --kubeconfig flag is taken by controller-runtime's own, which
	// reads KUBECONFIG.
	specs := []struct {
		name string
		args []string
		env  []string
	}{
		{"source-controller", []string{"--storage-path=" + storage, "--storage-addr=" + storageAddr, "--storage-adv-addr=" + storageAddr}, nil},
		{"kustomize-controller", nil, []string{"TMPDIR=" + kustomizeTmp}},
	}
	f := &fluxProcesses{}
	var health []string
	for _, s := range specs {
		metrics, healthAddr := freeAddr(b), freeAddr(b)
		log := filepath.Join(dir, s.name+".log")
		out, err := os.Create(log)
		if err != nil {
			b.Fatal(err)
		}
		cmd := exec.Command(filepath.Join(binDir, s.name), append(common(metrics, healthAddr), s.args...)...)
		cmd.Env = append(append(os.Environ(), "KUBECONFIG="+kubeconfig), s.env...)
		cmd.Stdout, cmd.Stderr = out, out
		if err := cmd.Start(); err != nil {
			f.stop()
			b.Fatalf("starting %s: %v", s.name, err)
		}
		_ = out.Close()
		f.cmds, f.logs = append(f.cmds, cmd), append(f.logs, log)
		f.metrics = append(f.metrics, "http://"+metrics+"/metrics")
		health = append(health, "http://"+healthAddr+"/readyz")
	}
	for i, url := range health {
		if err := waitOK(ctx, url, time.Minute); err != nil {
			f.logTail(b)
			f.stop()
			b.Fatalf("%s not ready: %v", specs[i].name, err)
		}
	}
	return f
}

func (f *fluxProcesses) stop() {
	for _, cmd := range f.cmds {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { _ = cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(15 * time.Second):
			_ = cmd.Process.Kill()
			<-done
		}
	}
}

func (f *fluxProcesses) cpu(b *testing.B) float64 {
	var total float64
	for _, cmd := range f.cmds {
		total += cpuSeconds(b, cmd.Process.Pid)
	}
	return total
}

func (f *fluxProcesses) peakRSS(b *testing.B) float64 {
	var total float64
	for _, cmd := range f.cmds {
		total += peakRSSMiB(b, cmd.Process.Pid)
	}
	return total
}

func (f *fluxProcesses) requests(b *testing.B) float64 {
	var total float64
	for _, url := range f.metrics {
		total += sum(clientRequests(b, url))
	}
	return total
}

// logTail prints the end of each controller's log, to explain a failure.
func (f *fluxProcesses) logTail(b *testing.B) {
	for _, log := range f.logs {
		raw, _ := os.ReadFile(log)
		if len(raw) > 3000 {
			raw = raw[len(raw)-3000:]
		}
		b.Logf("%s:\n%s", log, raw)
	}
}

// freeAddr is a loopback address with a port nothing listens on.
func freeAddr(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// waitOK polls url until it answers 200, at most timeout.
func waitOK(ctx context.Context, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var last error
	for ctx.Err() == nil {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		resp, err := http.DefaultClient.Do(req)
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("%s answered %s", url, resp.Status)
		}
		last = err
		time.Sleep(200 * time.Millisecond)
	}
	return fmt.Errorf("waiting for %s: %w (last: %v)", url, ctx.Err(), last)
}

// applyYAML server-side applies every document of a multi-document file
// and returns what it applied.
func applyYAML(b *testing.B, ctx context.Context, c client.Client, path string) []*unstructured.Unstructured {
	raw, err := os.ReadFile(path)
	if err != nil {
		b.Fatal(err)
	}
	objs, err := decodeObjects(raw, "")
	if err != nil {
		b.Fatalf("%s: %v", path, err)
	}
	for _, o := range objs {
		if err := c.Patch(ctx, o, client.Apply, client.FieldOwner("bench"), client.ForceOwnership); err != nil {
			b.Fatalf("applying %s %s from %s: %v", o.GetKind(), o.GetName(), path, err)
		}
	}
	return objs
}

func decodeObjects(raw []byte, ns string) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(raw), 4096)
	var objs []*unstructured.Unstructured
	for {
		var m map[string]any
		if err := dec.Decode(&m); errors.Is(err, io.EOF) {
			return objs, nil
		} else if err != nil {
			return nil, err
		}
		if len(m) == 0 {
			continue
		}
		u := &unstructured.Unstructured{Object: m}
		if ns != "" {
			u.SetNamespace(ns)
		}
		objs = append(objs, u)
	}
}

func waitCRDsEstablished(b *testing.B, ctx context.Context, c client.Client, names ...string) {
	for _, name := range names {
		for {
			crd := &unstructured.Unstructured{}
			crd.SetGroupVersionKind(schema.GroupVersionKind{Group: "apiextensions.k8s.io", Version: "v1", Kind: "CustomResourceDefinition"})
			if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
				b.Fatal(err)
			}
			if conditionTrue(*crd, "Established") {
				break
			}
			if ctx.Err() != nil {
				b.Fatalf("CRD %s not Established", name)
			}
			time.Sleep(200 * time.Millisecond)
		}
	}
}

const applyNamespace = "bench-apply"

// runApplyPeer applies the same objects with a server-side-apply client in
// one pass, peerWorkers at a time, and waits for the Deployments.
func runApplyPeer(b *testing.B, ctx context.Context, labCfg *rest.Config, n int, res *peerRun) {
	cfg := rest.CopyConfig(labCfg)
	cfg.QPS, cfg.Burst = peerQPS, 2*peerQPS
	var requests atomic.Int64
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper {
		return roundTripFunc(func(r *http.Request) (*http.Response, error) {
			requests.Add(1)
			return rt.RoundTrip(r)
		})
	})
	c, err := client.New(cfg, client.Options{})
	if err != nil {
		b.Fatal(err)
	}
	if err := c.Create(ctx, namespace(applyNamespace)); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	applyAll(b, ctx, c, n, "v1")
	waitDeployments(b, ctx, c, n, "v1")
	res.FirstSync = time.Since(start).Seconds()

	cpu0, client0, server0 := cpuSeconds(b, os.Getpid()), requests.Load(), apiserverRequests(b, labCfg)
	start = time.Now()
	applyAll(b, ctx, c, n, "v2")
	waitDeployments(b, ctx, c, n, "v2")
	res.Update = time.Since(start).Seconds()
	res.Trigger = "none: the benchmark applies the rendered objects itself (no git)"
	res.CPU = cpuSeconds(b, os.Getpid()) - cpu0
	res.ClientRequests = float64(requests.Load() - client0)
	res.ServerRequests = apiserverRequests(b, labCfg) - server0
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// applyAll server-side applies every Application's objects at version.
func applyAll(b *testing.B, ctx context.Context, c client.Client, n int, version string) {
	jobs := make(chan *unstructured.Unstructured)
	errs := make(chan error, peerWorkers)
	var wg sync.WaitGroup
	for w := 0; w < peerWorkers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for o := range jobs {
				if err := c.Patch(ctx, o, client.Apply, client.FieldOwner("bench-apply"), client.ForceOwnership); err != nil {
					select {
					case errs <- fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err):
					default:
					}
				}
			}
		}()
	}
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("app-%04d", i)
		objs, err := decodeObjects([]byte(appManifests(name, version)), applyNamespace)
		if err != nil {
			b.Fatal(err)
		}
		for _, o := range objs {
			jobs <- o
		}
	}
	close(jobs)
	wg.Wait()
	select {
	case err := <-errs:
		b.Fatal(err)
	default:
	}
}

// waitDeployments waits until all n Deployments have rolled out version:
// observed, updated, and available, with no old pod left (kstatus's
// Current, which Slipway's Healthy and Flux's wait use).
func waitDeployments(b *testing.B, ctx context.Context, c client.Client, n int, version string) {
	for {
		var list appsv1.DeploymentList
		if err := c.List(ctx, &list, client.InNamespace(applyNamespace)); err != nil {
			b.Fatal(err)
		}
		ready := 0
		for _, d := range list.Items {
			want := int32(1)
			if d.Spec.Replicas != nil {
				want = *d.Spec.Replicas
			}
			s := d.Status
			if d.Spec.Template.Annotations["bench/version"] == version && s.ObservedGeneration >= d.Generation &&
				s.UpdatedReplicas == want && s.Replicas == want && s.AvailableReplicas == want {
				ready++
			}
		}
		if ready == n {
			return
		}
		if ctx.Err() != nil {
			b.Fatalf("only %d of %d Deployments rolled out %s", ready, n, version)
		}
		time.Sleep(pollEvery(n))
	}
}
