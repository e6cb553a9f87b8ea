package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"testing"
	"time"

	"slipway.dev/slipway/internal/policy"
)

// kubeScoreModule is the peer, built from the Go module proxy.
const kubeScoreModule = "github.com/zegl/kube-score/cmd/kube-score@v1.20.0"

// BenchmarkPolicyPeer: `slipway policy check --profile fin-kr -o json` on a
// corpus of 100,000 workload objects on one core (GOMAXPROCS=1), and the same
// file through `kube-score score -o json`, also on one core.
//
// Two corpora: "fleet" is 5,000 distinct objects rolled out to 20 clusters
// (same namespaces and pod templates, object names unique), which the engine's
// result cache exploits; "unique" gives every object its own shape, so no two
// pod templates are alike and the cache never hits (the engine's worst case).
func BenchmarkPolicyPeer(b *testing.B) {
	size := envCount(b, "SLIPWAY_BENCH_POLICY_OBJECTS", 100_000) // the corpus
	peerTimeout := 10 * time.Minute
	if spec := os.Getenv("SLIPWAY_BENCH_PEER_TIMEOUT"); spec != "" {
		d, err := time.ParseDuration(spec)
		if err != nil || d <= 0 {
			b.Fatalf("SLIPWAY_BENCH_PEER_TIMEOUT=%q is not a positive duration", spec)
		}
		peerTimeout = d
	}
	dir := b.TempDir()
	kubeScore, installErr := installKubeScore(b, dir)
	if installErr != nil {
		b.Logf("kube-score could not be installed, the peer is skipped: %v", installErr)
	}
	for _, scenario := range []struct {
		name   string
		unique bool
	}{{"fleet", false}, {"unique", true}} {
		b.Run(scenario.name, func(b *testing.B) {
			file := filepath.Join(dir, scenario.name+".yaml")
			if err := writePolicyCorpus(file, size, scenario.unique); err != nil {
				b.Fatal(err)
			}
			for i := 0; i < b.N; i++ {
				n, ours, evaluating, err := runSlipwayCheck(b.Context(), file)
				if err != nil {
					b.Fatal(err)
				}
				if n != size {
					b.Fatalf("slipway checked %d objects, want %d", n, size)
				}
				oursRate := float64(n) / ours.Seconds()
				b.ReportMetric(oursRate, "objects/s")
				// Reading (YAML decoding) dominates the end-to-end figure; this is the engine alone.
				b.ReportMetric(float64(n)/evaluating.Seconds(), "evaluated-objects/s")
				peer := "not run"
				ratio := "-"
				if installErr == nil {
					d, err := runKubeScore(b.Context(), kubeScore, file, peerTimeout)
					switch {
					case errors.Is(err, context.DeadlineExceeded):
						// kube-score's cross-object checks grow faster than the corpus; a run
						// cut at the deadline still bounds its rate from above.
						bound := float64(size) / peerTimeout.Seconds()
						b.ReportMetric(bound, "peer-objects/s-at-most")
						peer = fmt.Sprintf("< %.0f (unfinished after %s)", bound, peerTimeout)
						ratio = fmt.Sprintf("> %.1fx", oursRate/bound)
					case err != nil:
						b.Logf("kube-score failed, the peer is skipped: %v", err)
					default:
						peerRate := float64(size) / d.Seconds()
						b.ReportMetric(peerRate, "peer-objects/s")
						b.ReportMetric(oursRate/peerRate, "ratio")
						peer = fmt.Sprintf("%.0f", peerRate)
						ratio = fmt.Sprintf("%.1fx", oursRate/peerRate)
					}
				}
				fmt.Printf("| policy check fin-kr, %d objects (%s), 1 core | %.0f objects/s (evaluation alone %.0f) | kube-score v1.20.0: %s objects/s | %s |\n",
					size, scenario.name, oursRate, float64(n)/evaluating.Seconds(), peer, ratio)
			}
		})
	}
}

// runSlipwayCheck does what `slipway policy check --profile fin-kr -o json FILE`
// does (compile, stream, evaluate, JSON report) on one core. It returns the
// objects checked, the total time and the time spent evaluating.
func runSlipwayCheck(ctx context.Context, file string) (int, time.Duration, time.Duration, error) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))
	runtime.GC()
	start := time.Now()
	cat, err := policy.NewCatalog()
	if err != nil {
		return 0, 0, 0, err
	}
	pol, err := cat.Compile(policy.Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		return 0, 0, 0, err
	}
	// As `policy check` does: every object is one set, so the cross-object
	// rules (FIN-NET-001/002) run once the stream has been read.
	set := pol.NewSetEvaluator(time.Now())
	var evaluating time.Duration
	err = policy.ReadManifests(ctx, []string{file}, policy.ReadOptions{}, func(m policy.Manifest) error {
		t := time.Now()
		set.Add(ctx, m.Object, m.Ref)
		evaluating += time.Since(t)
		return nil
	})
	if err != nil {
		return 0, 0, 0, err
	}
	t := time.Now()
	results, err := set.Results(ctx)
	evaluating += time.Since(t)
	if err != nil {
		return 0, 0, 0, err
	}
	if err := policy.NewReport(pol, results).WriteJSON(io.Discard); err != nil {
		return 0, 0, 0, err
	}
	return len(results), time.Since(start), evaluating, nil
}

// installKubeScore builds the peer into dir with a deadline.
func installKubeScore(b *testing.B, dir string) (string, error) {
	ctx, cancel := context.WithTimeout(b.Context(), 10*time.Minute)
	defer cancel()
	gobin := filepath.Join(dir, "bin")
	cmd := exec.CommandContext(ctx, "go", "install", kubeScoreModule)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %w: %s", kubeScoreModule, err, out)
	}
	return filepath.Join(gobin, "kube-score"), nil
}

// runKubeScore scores file on one core. kube-score exits 1 when it finds a
// critical issue, which the corpus has on purpose; only output counts. The
// error wraps context.DeadlineExceeded when the run did not finish in time.
func runKubeScore(ctx context.Context, bin, file string, timeout time.Duration) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "score", "--output-format", "json", file)
	cmd.Env = append(os.Environ(), "GOMAXPROCS=1")
	cmd.Stdout = io.Discard
	stderr := &limitedBuffer{max: 4096}
	cmd.Stderr = stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	var exit *exec.ExitError
	if errors.As(err, &exit) && exit.ExitCode() == 1 && ctx.Err() == nil {
		err = nil
	}
	if ctx.Err() != nil {
		return 0, fmt.Errorf("kube-score score %s: %w", file, ctx.Err())
	}
	if err != nil {
		return 0, fmt.Errorf("kube-score score %s: %w: %s", file, err, stderr.buf)
	}
	return d, nil
}

type limitedBuffer struct {
	buf []byte
	max int
}

func (l *limitedBuffer) Write(p []byte) (int, error) {
	if room := l.max - len(l.buf); room > 0 {
		l.buf = append(l.buf, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

// writePolicyCorpus writes n objects in the proportions of an ops repo: per 20
// objects, 7 Deployments, 2 StatefulSets, a DaemonSet, a Job, a CronJob, 2
// Pods, 4 Services and 2 Ingresses. Names and labels are unique; the rest
// (kind, team, namespace, image, hardening, resources) follows the object's
// shape: one of fleetShapes, or its own when unique is set.
func writePolicyCorpus(path string, n int, unique bool) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	for i := range n {
		writeCorpusObject(w, i, unique)
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

var corpusKinds = [20]string{
	"Deployment", "Service", "Deployment", "Ingress", "Deployment", "Service", "StatefulSet", "Deployment", "Pod", "Service",
	"Deployment", "DaemonSet", "Job", "Deployment", "Service", "CronJob", "Ingress", "Deployment", "StatefulSet", "Pod",
}

// fleetShapes is the number of distinct objects of the fleet corpus.
const fleetShapes = 5000

func writeCorpusObject(w io.Writer, index int, unique bool) {
	// i decides everything but the name.
	i := index % fleetShapes
	if unique {
		i = index
	}
	team := i % 40
	ns := fmt.Sprintf("team-%d", team)
	switch i % 50 {
	case 7:
		ns = "production"
	case 13:
		ns = "dmz"
	case 29:
		ns = "default"
	}
	name := fmt.Sprintf("svc-%d", index)
	kind := corpusKinds[i%len(corpusKinds)]
	fmt.Fprintf(w, "---\n")
	switch kind {
	case "Service":
		typ := "ClusterIP"
		if i%9 == 0 {
			typ = "LoadBalancer"
		}
		fmt.Fprintf(w, "apiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n  type: %s\n  selector: {app: %s}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n", name, ns, name, typ, name)
		return
	case "Ingress":
		tls := fmt.Sprintf("  tls:\n  - hosts: [%s.example.com]\n    secretName: %s-tls\n", name, name)
		if i%7 == 0 {
			tls = ""
		}
		fmt.Fprintf(w, "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata:\n  name: %s\n  namespace: %s\nspec:\n  ingressClassName: nginx\n%s  rules:\n  - host: %s.example.com\n    http:\n      paths:\n      - path: /\n        pathType: Prefix\n        backend: {service: {name: %s, port: {number: 80}}}\n", name, ns, tls, name, name)
		return
	}

	image := fmt.Sprintf("registry.slipway.internal/team-%d/app-%d:1.%d.%d", team, i%25, i%9, i)
	if i%17 == 0 {
		image = "nginx:latest"
	}
	securityContext := ""
	if i%3 != 0 {
		securityContext = "  securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: {drop: [ALL]}}\n"
	}
	if i%23 == 0 {
		securityContext = "  securityContext: {privileged: true}\n"
	}
	resources := "  resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: 500m, memory: 256Mi}}\n"
	if i%5 == 0 {
		resources = "  resources: {requests: {cpu: 100m, memory: 128Mi}}\n"
	}
	probes := "  livenessProbe: {httpGet: {path: /healthz, port: 8080}}\n  readinessProbe: {httpGet: {path: /readyz, port: 8080}}\n"
	restart := ""
	if kind == "Job" || kind == "CronJob" {
		probes, restart = "", "restartPolicy: OnFailure\n"
	}
	podSpec := restart + "serviceAccountName: app\nautomountServiceAccountToken: false\nsecurityContext: {seccompProfile: {type: RuntimeDefault}}\ncontainers:\n" +
		"- name: app\n  image: " + image + "\n  ports: [{containerPort: 8080}]\n  env:\n  - {name: MODE, value: production}\n  - {name: DB_HOST, value: db." + ns + ".svc}\n" +
		securityContext + resources + probes +
		"- name: proxy\n  image: registry.slipway.internal/platform/proxy:2.1\n" +
		"  securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: {drop: [ALL]}}\n" +
		"  resources: {requests: {cpu: 50m, memory: 64Mi}, limits: {cpu: 200m, memory: 128Mi}}\n" +
		"volumes:\n- {name: tmp, emptyDir: {}}\n"

	switch kind {
	case "Pod":
		fmt.Fprintf(w, "apiVersion: v1\nkind: Pod\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n%s", name, ns, name, indentLines(podSpec, "  "))
	case "CronJob":
		fmt.Fprintf(w, "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n  schedule: \"0 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n        metadata:\n          labels: {app: %s}\n        spec:\n%s", name, ns, name, name, indentLines(podSpec, "          "))
	default:
		apiVersion, extra := "apps/v1", fmt.Sprintf("  replicas: %d\n  selector:\n    matchLabels: {app: %s}\n", 2+i%2, name)
		switch kind {
		case "Job":
			apiVersion, extra = "batch/v1", "  backoffLimit: 2\n"
		case "DaemonSet":
			extra = fmt.Sprintf("  selector:\n    matchLabels: {app: %s}\n", name)
		case "StatefulSet":
			extra += fmt.Sprintf("  serviceName: %s\n", name)
		}
		fmt.Fprintf(w, "apiVersion: %s\nkind: %s\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n%s  template:\n    metadata:\n      labels: {app: %s}\n    spec:\n%s", apiVersion, kind, name, ns, name, extra, name, indentLines(podSpec, "      "))
	}
}

// indentLines prefixes every line of s.
func indentLines(s, prefix string) string {
	out := make([]byte, 0, len(s)+len(s)/8)
	start := true
	for i := 0; i < len(s); i++ {
		if start {
			out = append(out, prefix...)
		}
		out = append(out, s[i])
		start = s[i] == '\n'
	}
	return string(out)
}
