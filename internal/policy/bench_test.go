package policy

import (
	"bytes"
	"context"
	"fmt"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// benchCorpus generates n workloads of the kinds and shapes an ops repo holds:
// a mix of hardened and careless Deployments, StatefulSets, CronJobs and Pods.
func benchCorpus(n int) []map[string]any {
	objs := make([]map[string]any, n)
	for i := range n {
		container := map[string]any{
			"name":  "app",
			"image": fmt.Sprintf("registry.slipway.internal/team-%d/app:1.%d.0", i%50, i%7),
			"ports": []any{map[string]any{"containerPort": int64(8080)}},
			"resources": map[string]any{
				"requests": map[string]any{"cpu": "100m", "memory": "128Mi"},
				"limits":   map[string]any{"cpu": "500m", "memory": "256Mi"},
			},
			"livenessProbe":  map[string]any{"httpGet": map[string]any{"path": "/healthz", "port": int64(8080)}},
			"readinessProbe": map[string]any{"httpGet": map[string]any{"path": "/readyz", "port": int64(8080)}},
			"env":            []any{map[string]any{"name": "MODE", "value": "production"}},
		}
		if i%3 != 0 {
			container["securityContext"] = map[string]any{
				"allowPrivilegeEscalation": false, "readOnlyRootFilesystem": true, "runAsNonRoot": true,
				"capabilities": map[string]any{"drop": []any{"ALL"}},
			}
		}
		if i%10 == 0 {
			container["securityContext"] = map[string]any{"privileged": true}
			container["image"] = "nginx:latest"
		}
		podSpec := map[string]any{
			"serviceAccountName":           "app",
			"automountServiceAccountToken": false,
			"securityContext":              map[string]any{"seccompProfile": map[string]any{"type": "RuntimeDefault"}},
			"containers":                   []any{container, map[string]any{"name": "sidecar", "image": "registry.slipway.internal/proxy:2.1"}},
			"volumes":                      []any{map[string]any{"name": "tmp", "emptyDir": map[string]any{}}},
		}
		meta := map[string]any{"name": fmt.Sprintf("app-%d", i), "namespace": fmt.Sprintf("team-%d", i%50)}
		template := map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "x"}}, "spec": podSpec}
		switch i % 4 {
		case 0, 1:
			objs[i] = map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": meta, "spec": map[string]any{"replicas": int64(2), "template": template}}
		case 2:
			objs[i] = map[string]any{"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": meta, "spec": map[string]any{"replicas": int64(3), "template": template}}
		default:
			objs[i] = map[string]any{"apiVersion": "batch/v1", "kind": "CronJob", "metadata": meta,
				"spec": map[string]any{"schedule": "0 * * * *", "jobTemplate": map[string]any{"spec": map[string]any{"template": template}}}}
		}
	}
	return objs
}

// BenchmarkEvaluateFinKR measures fin-kr throughput on one goroutine; the
// objects/s metric is the figure make bench reports.
func BenchmarkEvaluateFinKR(b *testing.B) {
	pol, err := mustCatalog(b).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		b.Fatal(err)
	}
	corpus := benchCorpus(10000)
	ctx := context.Background()
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		pol.EvaluateObject(ctx, corpus[i%len(corpus)], ObjectRef{}, now)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}

// BenchmarkEvaluateFinKRBatch measures the batch API, which spreads objects over
// GOMAXPROCS goroutines; divide objects/s by -cpu for the per-core figure.
func BenchmarkEvaluateFinKRBatch(b *testing.B) {
	pol, err := mustCatalog(b).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		b.Fatal(err)
	}
	corpus := benchCorpus(10000)
	objs := make([]*unstructured.Unstructured, len(corpus))
	for i, o := range corpus {
		objs[i] = &unstructured.Unstructured{Object: o}
	}
	ctx := context.Background()
	now := time.Now()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := pol.Evaluate(ctx, objs, now); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(objs))/b.Elapsed().Seconds(), "objects/s")
}

// benchManifestStream renders n objects as one YAML stream in the style of an
// ops repo and of the bench/ corpus: block mappings with flow mappings and
// sequences inside, plain, quoted and numeric scalars.
func benchManifestStream(n int) []byte {
	var b bytes.Buffer
	for i := range n {
		name, ns := fmt.Sprintf("svc-%d", i), fmt.Sprintf("team-%d", i%40)
		if i%5 == 1 {
			fmt.Fprintf(&b, "---\napiVersion: v1\nkind: Service\nmetadata:\n  name: %s\n  namespace: %s\n  labels: {app: %s}\nspec:\n  type: ClusterIP\n  selector: {app: %s}\n  ports:\n  - {name: http, port: 80, targetPort: 8080}\n", name, ns, name, name)
			continue
		}
		securityContext := "        securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, runAsNonRoot: true, capabilities: {drop: [ALL]}}\n"
		if i%3 == 0 {
			securityContext = "        securityContext:\n          privileged: true\n"
		}
		fmt.Fprintf(&b, `---
# %[1]s serves team %[2]s
apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  namespace: %[2]s
  labels: {app: %[1]s}
  annotations:
    slipway.dev/owner: "team-%[3]d"
spec:
  replicas: %[4]d
  selector:
    matchLabels: {app: %[1]s}
  template:
    metadata:
      labels: {app: %[1]s}
    spec:
      serviceAccountName: app
      automountServiceAccountToken: false
      securityContext: {seccompProfile: {type: RuntimeDefault}}
      containers:
      - name: app
        image: registry.slipway.internal/team-%[3]d/app:1.%[4]d.%[5]d
        ports: [{containerPort: 8080}]
        env:
        - {name: MODE, value: production}
        - name: DB_HOST
          value: 'db.%[2]s.svc'
%[6]s        resources: {requests: {cpu: 100m, memory: 128Mi}, limits: {cpu: 500m, memory: 256Mi}}
        livenessProbe: {httpGet: {path: /healthz, port: 8080}}
      - name: proxy
        image: registry.slipway.internal/platform/proxy:2.1
        args: ["--listen=:9000", --verbose]
      volumes:
      - {name: tmp, emptyDir: {}}
`, name, ns, i%40, 2+i%3, i, securityContext)
	}
	return b.Bytes()
}

// BenchmarkReadManifests measures reading a YAML stream (splitting, decoding,
// checking) without evaluation.
func BenchmarkReadManifests(b *testing.B) {
	const n = 2000
	stream := benchManifestStream(n)
	ctx := context.Background()
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		count := 0
		err := ReadManifests(ctx, []string{StdinPath}, ReadOptions{Stdin: bytes.NewReader(stream)}, func(Manifest) error {
			count++
			return nil
		})
		if err != nil {
			b.Fatal(err)
		}
		if count != n {
			b.Fatalf("read %d objects, want %d", count, n)
		}
	}
	b.ReportMetric(float64(b.N*n)/b.Elapsed().Seconds(), "objects/s")
}

// BenchmarkEvaluateRules measures the rules alone on one goroutine: no result
// cache, no waivers, every object evaluated (the engine's cost on objects
// that do not repeat).
func BenchmarkEvaluateRules(b *testing.B) {
	pol, err := mustCatalog(b).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		b.Fatal(err)
	}
	corpus := benchCorpus(2000)
	plans := make([]*kindPlan, len(corpus))
	for i, o := range corpus {
		u := unstructured.Unstructured{Object: o}
		plans[i] = pol.plans[kindKey(u.GetAPIVersion(), u.GetKind())]
	}
	ctx := context.Background()
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		j := i % len(corpus)
		pol.evaluateRules(ctx, plans[j].rules, corpus[j], nil)
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "objects/s")
}
