package gitops

import (
	"context"

	"github.com/fluxcd/pkg/ssa"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// ApplyTracked runs one sync's apply of objs over the previous inventory
// and returns the new inventory and what happened to each object.
func ApplyTracked(ctx context.Context, c client.Client, mapper apimeta.RESTMapper, previous []slipwayv1.InventoryEntry, objs []*unstructured.Unstructured) ([]slipwayv1.InventoryEntry, map[string]ssa.Action, error) {
	done, err := applyTracked(ctx, c, mapper, previous, objs)
	if done == nil {
		return nil, nil, err
	}
	actions := map[string]ssa.Action{}
	for _, e := range done.changes.Entries {
		actions[e.Subject] = e.Action
	}
	return done.inventory, actions, err
}

// SourceFreshAfter is the moment from which a reconciliation needs its source.
var SourceFreshAfter = sourceFreshAfter
