package gitops

import (
	"context"
	"fmt"
	"sort"
	"strings"

	"github.com/fluxcd/cli-utils/pkg/kstatus/status"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// assessHealth reads every inventoried object and computes its kstatus.
// The aggregate is the worst of them: Degraded > Progressing > Healthy.
func assessHealth(ctx context.Context, c client.Reader, inventory []slipwayv1.InventoryEntry) ([]slipwayv1.ResourceStatus, slipwayv1.HealthStatus, error) {
	stubs, err := inventoryObjects(inventory)
	if err != nil {
		return nil, slipwayv1.HealthStatus{Status: slipwayv1.HealthUnknown}, err
	}
	resources := make([]slipwayv1.ResourceStatus, 0, len(stubs))
	var degraded, progressing []string
	for _, stub := range stubs {
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
