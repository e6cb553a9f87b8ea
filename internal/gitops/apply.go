package gitops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"sort"

	"github.com/fluxcd/cli-utils/pkg/object"
	"github.com/fluxcd/pkg/ssa"
	ssaerrors "github.com/fluxcd/pkg/ssa/errors"
	"github.com/fluxcd/pkg/ssa/utils"
	"golang.org/x/sync/errgroup"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// applyConcurrency is how many reads and dry-runs of one Application's
// objects run at once.
const applyConcurrency = 4

// Outcomes of one object in a sync, as counted by slipway_application_sync_objects_total.
const (
	// objectSkipped: its desired digest and its live digest were both what
	// the last sync left, so it was read and neither dry-run nor applied.
	objectSkipped = "skipped"
)

// applied is the outcome of a sync's apply.
type applied struct {
	changes *ssa.ChangeSet
	// inventory lists the desired objects with their digests.
	inventory []slipwayv1.InventoryEntry
	// live holds, by inventory ID, the objects as the API server returned
	// them in this sync (read or applied), for the health check that follows.
	live map[string]*unstructured.Unstructured
}

// applyTracked applies objs as c, doing only the work that can change
// something. An object whose desired digest and live digest match what the
// last sync recorded (previous) is read once and left alone; the others are
// dry-run, all of them before anything is applied, so an object the API
// server refuses leaves the cluster as it was, and then applied in
// dependency order. Cluster definitions (CRDs, Namespaces,
// ClusterRoles) and classes go first through the full staged apply, which
// waits for them before what may depend on them, and carry no digests.
func applyTracked(ctx context.Context, c client.Client, mapper apimeta.RESTMapper, previous []slipwayv1.InventoryEntry, objs []*unstructured.Unstructured) (*applied, error) {
	prev := make(map[string]slipwayv1.InventoryEntry, len(previous))
	for _, e := range previous {
		prev[e.ID] = e
	}
	out := &applied{changes: ssa.NewChangeSet(), live: map[string]*unstructured.Unstructured{}}
	var staged, rest []*unstructured.Unstructured
	for _, o := range objs {
		if utils.IsClusterDefinition(o) || utils.IsClassDefinition(o) {
			staged = append(staged, o)
		} else {
			rest = append(rest, o)
		}
	}
	if len(staged) > 0 {
		cs, err := resourceManager(c, mapper).ApplyAllStaged(ctx, staged, ssa.DefaultApplyOptions())
		if err != nil {
			return nil, err
		}
		out.changes.Append(cs.Entries)
		for _, o := range staged {
			out.inventory = append(out.inventory, slipwayv1.InventoryEntry{ID: objectID(o), Version: o.GroupVersionKind().Version})
		}
		countObjects(cs.Entries)
	}

	sort.Sort(ssa.SortableUnstructureds(rest))
	digests := make([]string, len(rest))
	for i, o := range rest {
		d, err := desiredDigest(o)
		if err != nil {
			return nil, err
		}
		digests[i] = d
	}
	// Read what may be unchanged: a live object whose Slipway fields are as
	// the last sync left them needs nothing.
	unchanged := make([]*unstructured.Unstructured, len(rest))
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(applyConcurrency)
	for i, o := range rest {
		e, ok := prev[objectID(o)]
		if !ok || e.Live == "" || e.Applied != digests[i] {
			continue
		}
		g.Go(func() error {
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(o.GroupVersionKind())
			err := c.Get(gctx, client.ObjectKeyFromObject(o), live)
			switch {
			case apierrors.IsNotFound(err):
				return nil // deleted behind Slipway's back: applied again below
			case err != nil:
				return fmt.Errorf("reading %s: %w", describe(o), err)
			}
			if liveDigest(live) == e.Live {
				unchanged[i] = live
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	dryRuns := make([]*unstructured.Unstructured, len(rest))
	g, gctx = errgroup.WithContext(ctx)
	g.SetLimit(applyConcurrency)
	for i, o := range rest {
		if unchanged[i] != nil {
			continue
		}
		g.Go(func() error {
			d := o.DeepCopy()
			if err := c.Patch(gctx, d, client.Apply, client.DryRunAll, client.ForceOwnership, client.FieldOwner(FieldManager)); err != nil {
				return ssaerrors.NewDryRunErr(err, d)
			}
			dryRuns[i] = d
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}

	// Applied kind by kind in dependency order (ServiceAccounts and
	// ConfigMaps before the Deployments that name them), the objects of one
	// kind at once.
	applied := make([]*unstructured.Unstructured, len(rest))
	for start := 0; start < len(rest); {
		end := start + 1
		for end < len(rest) && rest[end].GroupVersionKind().GroupKind() == rest[start].GroupVersionKind().GroupKind() {
			end++
		}
		g, gctx = errgroup.WithContext(ctx)
		g.SetLimit(applyConcurrency)
		for i := start; i < end; i++ {
			if unchanged[i] != nil {
				continue
			}
			g.Go(func() error {
				live := rest[i].DeepCopy()
				if err := c.Patch(gctx, live, client.Apply, client.ForceOwnership, client.FieldOwner(FieldManager)); err != nil {
					return fmt.Errorf("%s apply failed: %w", utils.FmtUnstructured(rest[i]), err)
				}
				applied[i] = live
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		start = end
	}

	entries := make([]ssa.ChangeSetEntry, 0, len(rest))
	for i, o := range rest {
		entry := slipwayv1.InventoryEntry{ID: objectID(o), Version: o.GroupVersionKind().Version, Applied: digests[i]}
		action, live := ssa.UnchangedAction, unchanged[i]
		if live != nil {
			entry.Live = prev[entry.ID].Live
			objectsTotal.WithLabelValues(objectSkipped).Inc()
		} else {
			live = applied[i]
			// The API server does not write an apply that changes
			// nothing, so an unchanged resourceVersion means no change.
			switch before := dryRuns[i].GetResourceVersion(); {
			case before == "":
				action = ssa.CreatedAction
			case before != live.GetResourceVersion():
				action = ssa.ConfiguredAction
			}
			entry.Live = liveDigest(live)
			objectsTotal.WithLabelValues(string(action)).Inc()
		}
		out.live[entry.ID] = live
		out.inventory = append(out.inventory, entry)
		entries = append(entries, changeEntry(o, action))
	}
	out.changes.Append(entries)
	sort.Slice(out.inventory, func(i, j int) bool { return out.inventory[i].ID < out.inventory[j].ID })
	return out, nil
}

func changeEntry(o *unstructured.Unstructured, action ssa.Action) ssa.ChangeSetEntry {
	return ssa.ChangeSetEntry{
		ObjMetadata:  object.UnstructuredToObjMetadata(o),
		GroupVersion: o.GroupVersionKind().Version,
		Subject:      utils.FmtUnstructured(o),
		Action:       action,
	}
}

func countObjects(entries []ssa.ChangeSetEntry) {
	for _, e := range entries {
		objectsTotal.WithLabelValues(string(e.Action)).Inc()
	}
}

// desiredDigest identifies an object as Slipway applies it (JSON encodes
// map keys in order, so equal objects give equal digests).
func desiredDigest(o *unstructured.Unstructured) (string, error) {
	b, err := json.Marshal(o.Object)
	if err != nil {
		return "", fmt.Errorf("encoding %s: %w", describe(o), err)
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16]), nil
}

// liveDigest identifies what a live object holds of Slipway's: its uid
// and the fields Slipway's field manager owns. Whoever changes, removes
// or takes over one of those fields (kubectl edit, another controller's
// update or apply) changes Slipway's managed-fields entry, and whoever
// deletes and recreates the object changes its uid. A writer may also
// send managed fields of its own making with a change, so the API
// server's own count of changes is in the digest too: the generation of
// objects whose spec it versions (a Deployment's status updates do not
// move it), else the resourceVersion (a ConfigMap's moves only when
// someone writes it).
func liveDigest(live *unstructured.Unstructured) string {
	h := sha256.New()
	h.Write([]byte(live.GetUID()))
	if g := live.GetGeneration(); g > 0 {
		fmt.Fprintf(h, "\x00generation %d", g)
	} else {
		fmt.Fprintf(h, "\x00resourceVersion %s", live.GetResourceVersion())
	}
	for _, f := range live.GetManagedFields() {
		if f.Manager != FieldManager {
			continue
		}
		b, _ := json.Marshal(f) // a ManagedFieldsEntry always encodes
		h.Write([]byte{0})
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

// heldReader answers reads of the objects a sync already holds from
// memory and sends the others to the API server.
type heldReader struct {
	client.Reader
	held map[string]*unstructured.Unstructured
}

func (r heldReader) Get(ctx context.Context, key client.ObjectKey, obj client.Object, opts ...client.GetOption) error {
	if u, ok := obj.(*unstructured.Unstructured); ok {
		stub := &unstructured.Unstructured{}
		stub.SetGroupVersionKind(u.GroupVersionKind())
		stub.SetNamespace(key.Namespace)
		stub.SetName(key.Name)
		if live, ok := r.held[objectID(stub)]; ok {
			live.DeepCopyInto(u)
			return nil
		}
	}
	return r.Reader.Get(ctx, key, obj, opts...)
}
