package policy

import (
	"context"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestMonitoringStoresOfThePrometheusOperator: FIN-OPS-004 checks the
// Prometheus Operator's stores as it checks a Prometheus Deployment: only
// a volumeClaimTemplate under spec.storage passes. A ServiceMonitor, which
// stores nothing, is not its concern.
func TestMonitoringStoresOfThePrometheusOperator(t *testing.T) {
	cat := mustCatalog(t)
	pol, err := cat.Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	store := func(kind string, storage map[string]any) *unstructured.Unstructured {
		o := &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "monitoring.coreos.com/v1", "kind": kind,
			"metadata": map[string]any{"name": "main", "namespace": "monitoring"},
			"spec":     map[string]any{"replicas": int64(2)},
		}}
		if storage != nil {
			o.Object["spec"].(map[string]any)["storage"] = storage
		}
		return o
	}
	claim := map[string]any{"volumeClaimTemplate": map[string]any{"spec": map[string]any{"resources": map[string]any{"requests": map[string]any{"storage": "50Gi"}}}}}
	for _, tc := range []struct {
		name string
		obj  *unstructured.Unstructured
		want []string // FIN-OPS-004's paths; nil when it passes
	}{
		{"Prometheus without storage", store("Prometheus", nil), []string{"spec.storage"}},
		{"Prometheus on emptyDir", store("Prometheus", map[string]any{"emptyDir": map[string]any{"medium": "Memory"}}), []string{"spec.storage.emptyDir"}},
		{"Alertmanager on an ephemeral volume", store("Alertmanager", map[string]any{"ephemeral": map[string]any{}}), []string{"spec.storage.ephemeral"}},
		{"ThanosRuler without storage", store("ThanosRuler", nil), []string{"spec.storage"}},
		{"Prometheus on a claim", store("Prometheus", claim), nil},
		{"Alertmanager on a claim", store("Alertmanager", claim), nil},
		{"ServiceMonitor", &unstructured.Unstructured{Object: map[string]any{
			"apiVersion": "monitoring.coreos.com/v1", "kind": "ServiceMonitor", "metadata": map[string]any{"name": "web", "namespace": "shop"},
			"spec": map[string]any{"endpoints": []any{map[string]any{"port": "metrics"}}},
		}}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			results, err := pol.EvaluateSet(context.Background(), []*unstructured.Unstructured{tc.obj}, nil, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, r := range results {
				for _, f := range r.Findings {
					if f.Rule == "FIN-OPS-004" && f.Outcome == OutcomeFail {
						got = append(got, f.Path)
					}
				}
			}
			slices.Sort(got)
			if !slices.Equal(got, tc.want) {
				t.Errorf("FIN-OPS-004 fails at %v, want %v", got, tc.want)
			}
		})
	}
}
