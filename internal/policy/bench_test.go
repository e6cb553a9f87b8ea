package policy

import (
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
