package gitops

import (
	"fmt"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/manifest"
)

// serviceMonitor is the Prometheus Operator's ServiceMonitor that an
// Application's spec.monitoring asks for: it scrapes, on the named port,
// the Services of the Application's own revision (selected by the owner
// labels every applied object carries), in its destination namespace
// only. It goes through the policy gate, the tenancy checks and the
// Application's identity like every object of the revision.
func serviceMonitor(app *slipwayv1.Application) *unstructured.Unstructured {
	m := app.Spec.Monitoring
	path := m.Path
	if path == "" {
		path = "/metrics"
	}
	interval := 30 * time.Second
	if m.Interval != nil && m.Interval.Duration > 0 {
		interval = m.Interval.Duration
	}
	// Prometheus durations are whole units ("90s"), not Go's "1m30s0ms".
	seconds := max(int64(interval/time.Second), 1)
	selector := map[string]any{}
	for k, v := range resourceManager(nil, nil).GetOwnerLabels(app.Name, app.Namespace) {
		selector[k] = v
	}
	labels := map[string]any{"app.kubernetes.io/managed-by": FieldManager}
	for k, v := range m.Labels {
		labels[k] = v
	}
	sm := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "ServiceMonitor",
		"metadata": map[string]any{
			"name":      app.Name,
			"namespace": app.Spec.Destination.Namespace,
			"labels":    labels,
		},
		"spec": map[string]any{
			"selector":          map[string]any{"matchLabels": selector},
			"namespaceSelector": map[string]any{"matchNames": []any{app.Spec.Destination.Namespace}},
			"endpoints": []any{map[string]any{
				"port": m.Port, "path": path, "interval": fmt.Sprintf("%ds", seconds),
			}},
		},
	}}
	// Errors about it name where it came from, as they name a file for the others.
	sm.SetAnnotations(map[string]string{manifest.SourceAnnotation: "spec.monitoring of Application " + app.Namespace + "/" + app.Name})
	return sm
}
