package gitops

import (
	"context"
	"fmt"

	"github.com/fluxcd/pkg/ssa"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// Change is what a sync would do to one object.
type Change struct {
	// Subject is e.g. "Deployment/shop/tea".
	Subject string
	// Action is created, configured or deleted.
	Action string
	// Live and Merged are the object now and after the sync (server-side
	// dry-run). Live is nil for creations, Merged nil for deletions.
	Live, Merged *unstructured.Unstructured
}

// Plan compares the desired objects with the cluster by server-side dry-run
// and lists the changes a sync would make, including prunes when enabled.
// Nothing in the cluster changes. Secret values are masked.
func Plan(ctx context.Context, c client.Client, app *slipwayv1.Application, desired *Desired) ([]Change, error) {
	rm := resourceManager(c, nil)
	var changes []Change
	for _, o := range desired.Objects {
		entry, live, merged, err := rm.Diff(ctx, o.DeepCopy(), ssa.DefaultDiffOptions())
		if err != nil {
			return nil, fmt.Errorf("comparing %s with the cluster: %w", describe(o), err)
		}
		switch entry.Action {
		case ssa.CreatedAction:
			changes = append(changes, Change{Subject: entry.Subject, Action: string(entry.Action), Merged: o})
		case ssa.ConfiguredAction:
			changes = append(changes, Change{Subject: entry.Subject, Action: string(entry.Action), Live: live, Merged: merged})
		}
	}
	leftovers := stale(app.Status.Inventory, desired.Objects)
	if !app.Spec.SyncPolicy.Prune || len(leftovers) == 0 {
		return changes, nil
	}
	stubs, err := inventoryObjects(leftovers)
	if err != nil {
		return nil, err
	}
	for _, stub := range stubs {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(stub.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(stub), live); err != nil {
			continue // already gone
		}
		changes = append(changes, Change{Subject: fmtSubject(stub), Action: string(ssa.DeletedAction), Live: live})
	}
	return changes, nil
}

func fmtSubject(o *unstructured.Unstructured) string {
	if o.GetNamespace() != "" {
		return fmt.Sprintf("%s/%s/%s", o.GetKind(), o.GetNamespace(), o.GetName())
	}
	return fmt.Sprintf("%s/%s", o.GetKind(), o.GetName())
}
