package gitops

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	"github.com/fluxcd/cli-utils/pkg/object"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// assessHealth reads every inventoried object and computes its kstatus.
// The aggregate is the worst of them: Degraded > Progressing > Healthy.
// Objects in known (healthy ones, during a rollout poll) keep that status
// without being read again.
func assessHealth(ctx context.Context, c client.Reader, inventory []slipwayv1.InventoryEntry, known map[string]slipwayv1.ResourceStatus) ([]slipwayv1.ResourceStatus, slipwayv1.HealthStatus, error) {
	stubs, err := inventoryObjects(inventory)
	if err != nil {
		return nil, slipwayv1.HealthStatus{Status: slipwayv1.HealthUnknown}, err
	}
	resources := make([]slipwayv1.ResourceStatus, 0, len(stubs))
	var degraded, progressing []string
	for _, stub := range stubs {
		if rs, ok := known[objectID(stub)]; ok {
			resources = append(resources, rs)
			continue
		}
		rs := slipwayv1.ResourceStatus{
			Group: stub.GroupVersionKind().Group, Version: stub.GroupVersionKind().Version, Kind: stub.GetKind(),
			Namespace: stub.GetNamespace(), Name: stub.GetName(),
		}
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(stub.GroupVersionKind())
		err := c.Get(ctx, client.ObjectKeyFromObject(stub), live)
		switch {
		case apierrors.IsNotFound(err):
			rs.Health, rs.Message = slipwayv1.HealthDegraded, "object is missing from the cluster"
		case err != nil:
			return nil, slipwayv1.HealthStatus{Status: slipwayv1.HealthUnknown}, fmt.Errorf("reading %s: %w", describe(stub), err)
		default:
			res, err := status.Compute(live)
			if err != nil {
				rs.Health, rs.Message = slipwayv1.HealthUnknown, err.Error()
				break
			}
			rs.Message = res.Message
			switch res.Status {
			case status.CurrentStatus:
				rs.Health = slipwayv1.HealthHealthy
			case status.InProgressStatus, status.TerminatingStatus:
				rs.Health = slipwayv1.HealthProgressing
			case status.FailedStatus, status.NotFoundStatus:
				rs.Health = slipwayv1.HealthDegraded
			default:
				rs.Health = slipwayv1.HealthUnknown
			}
		}
		switch rs.Health {
		case slipwayv1.HealthDegraded:
			degraded = append(degraded, fmt.Sprintf("%s/%s: %s", rs.Kind, rs.Name, rs.Message))
		case slipwayv1.HealthProgressing:
			progressing = append(progressing, fmt.Sprintf("%s/%s: %s", rs.Kind, rs.Name, rs.Message))
		}
		resources = append(resources, rs)
	}
	sort.Slice(resources, func(i, j int) bool {
		a, b := resources[i], resources[j]
		return a.Kind+"/"+a.Namespace+"/"+a.Name < b.Kind+"/"+b.Namespace+"/"+b.Name
	})
	switch {
	case len(degraded) > 0:
		return resources, slipwayv1.HealthStatus{Status: slipwayv1.HealthDegraded, Message: strings.Join(degraded, "; ")}, nil
	case len(progressing) > 0:
		return resources, slipwayv1.HealthStatus{Status: slipwayv1.HealthProgressing, Message: strings.Join(progressing, "; ")}, nil
	}
	return resources, slipwayv1.HealthStatus{Status: slipwayv1.HealthHealthy, Message: fmt.Sprintf("%d objects healthy", len(resources))}, nil
}

// healthyResources indexes the objects last seen Healthy by inventory ID.
func healthyResources(resources []slipwayv1.ResourceStatus) map[string]slipwayv1.ResourceStatus {
	out := map[string]slipwayv1.ResourceStatus{}
	for _, r := range resources {
		if r.Health == slipwayv1.HealthHealthy {
			id := object.ObjMetadata{Namespace: r.Namespace, Name: r.Name, GroupKind: schema.GroupKind{Group: r.Group, Kind: r.Kind}}.String()
			out[id] = r
		}
	}
	return out
}
