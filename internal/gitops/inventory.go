package gitops

import (
	"fmt"
	"strings"

	"github.com/fluxcd/cli-utils/pkg/kstatus/polling"
	"github.com/fluxcd/cli-utils/pkg/object"
	"github.com/fluxcd/pkg/ssa"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func resourceManager(c client.Client, mapper apimeta.RESTMapper) *ssa.ResourceManager {
	var poller *polling.StatusPoller
	if mapper != nil {
		poller = polling.NewStatusPoller(c, mapper, polling.Options{})
	}
	m := ssa.NewResourceManager(c, poller, owner)
	m.SetConcurrency(4)
	return m
}

// objectID is the inventory identifier: namespace_name_group_kind.
func objectID(o *unstructured.Unstructured) string {
	return object.UnstructuredToObjMetadata(o).String()
}

func describe(o *unstructured.Unstructured) string {
	if ns := o.GetNamespace(); ns != "" {
		return fmt.Sprintf("%s %s/%s", o.GetKind(), ns, o.GetName())
	}
	return fmt.Sprintf("%s %s", o.GetKind(), o.GetName())
}

// inventoryObjects turns inventory entries back into object stubs (GVK,
// namespace, name) that can be read or deleted.
func inventoryObjects(entries []slipwayv1.InventoryEntry) ([]*unstructured.Unstructured, error) {
	objs := make([]*unstructured.Unstructured, 0, len(entries))
	for _, e := range entries {
		meta, err := object.ParseObjMetadata(e.ID)
		if err != nil {
			return nil, fmt.Errorf("reading inventory entry %q: %w", e.ID, err)
		}
		u := &unstructured.Unstructured{}
		u.SetGroupVersionKind(schema.GroupVersionKind{Group: meta.GroupKind.Group, Version: e.Version, Kind: meta.GroupKind.Kind})
		u.SetNamespace(meta.Namespace)
		u.SetName(meta.Name)
		objs = append(objs, u)
	}
	return objs, nil
}

// stale returns the entries of old that are not in desired: the objects that left git.
func stale(old []slipwayv1.InventoryEntry, desired []*unstructured.Unstructured) []slipwayv1.InventoryEntry {
	keep := map[string]bool{}
	for _, o := range desired {
		keep[objectID(o)] = true
	}
	var out []slipwayv1.InventoryEntry
	for _, e := range old {
		if !keep[e.ID] {
			out = append(out, e)
		}
	}
	return out
}

// summarize lists the changed entries of a change set, e.g.
// "Deployment/tea configured, Service/tea created".
func summarize(cs *ssa.ChangeSet) string {
	var parts []string
	for _, e := range cs.Entries {
		if e.Action == ssa.UnchangedAction || e.Action == ssa.SkippedAction {
			continue
		}
		parts = append(parts, e.String())
	}
	return strings.Join(parts, ", ")
}
