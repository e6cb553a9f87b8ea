package policy

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Cross-object rules judge an object together with the objects of its
// namespace ("is this workload selected by some NetworkPolicy?"). Which
// objects those are is data: Rule.NamespaceObjects names their kinds, and
// the rule reads them as `namespaceObjects`. The namespace of an object is
// its metadata.namespace as written; objects that leave it unset are taken to
// share one namespace, the one they will be deployed to (the sync gate sets
// it before evaluating, so there the namespace is always the real one).

// namespaceIndex holds, by namespace and Kind.group, the objects of the kinds
// some cross-object rule reads. Only those kinds are kept, so a set of any
// size costs the memory of its NetworkPolicies (say), not of its workloads.
type namespaceIndex struct {
	kinds   map[string]bool
	objects map[string]map[string][]any // namespace -> Kind.group -> objects
}

func (p *Policy) newNamespaceIndex() *namespaceIndex {
	return &namespaceIndex{kinds: p.neighbourKinds, objects: map[string]map[string][]any{}}
}

// add keeps obj if a cross-object rule reads objects of its kind.
func (ix *namespaceIndex) add(obj map[string]any) {
	if len(ix.kinds) == 0 {
		return
	}
	apiVersion, _ := obj["apiVersion"].(string)
	kind, _ := obj["kind"].(string)
	kk := kindKey(apiVersion, kind)
	if !ix.kinds[kk] {
		return
	}
	ns := objectNamespace(obj)
	byKind := ix.objects[ns]
	if byKind == nil {
		byKind = map[string][]any{}
		ix.objects[ns] = byKind
	}
	byKind[kk] = append(byKind[kk], obj)
}

// neighbours returns the objects of kinds in namespace ns, in the order added.
// The lists are shared, never modified once evaluation starts.
func (ix *namespaceIndex) neighbours(ns string, kinds []string) []any {
	byKind := ix.objects[ns]
	if len(kinds) == 1 {
		if l := byKind[kinds[0]]; l != nil {
			return l
		}
		return []any{}
	}
	out := []any{}
	for _, k := range kinds {
		out = append(out, byKind[k]...)
	}
	return out
}

// objectNamespace is metadata.namespace, or "" when it is unset or not a string.
func objectNamespace(obj map[string]any) string {
	md, _ := obj["metadata"].(map[string]any)
	ns, _ := md["namespace"].(string)
	return ns
}

// NamespaceObjectKinds lists, as Kind.group, the kinds the profile's
// cross-object rules read from a namespace; it is empty when every rule reads
// the checked object alone. A caller that knows more of a namespace than the
// objects it checks (the live cluster) passes objects of these kinds to
// EvaluateSet or SetEvaluator.AddRelated.
func (p *Policy) NamespaceObjectKinds() []string {
	kinds := make([]string, 0, len(p.neighbourKinds))
	for k := range p.neighbourKinds {
		kinds = append(kinds, k)
	}
	sort.Strings(kinds)
	return kinds
}

// evaluateInSet checks obj with every rule, the cross-object ones seeing idx.
func (p *Policy) evaluateInSet(ctx context.Context, obj map[string]any, where ObjectRef, idx *namespaceIndex, now time.Time) ObjectResult {
	res := p.EvaluateObject(ctx, obj, where, now)
	if plan := p.plans[kindKey(res.Object.APIVersion, res.Object.Kind)]; plan != nil && len(plan.crossRules) > 0 {
		p.addCrossFindings(ctx, &res, plan, obj, idx, now)
	}
	return res
}

// addCrossFindings evaluates the cross-object rules of plan on obj and merges
// their findings, waivers applied, into res (which holds those of the other rules).
func (p *Policy) addCrossFindings(ctx context.Context, res *ObjectResult, plan *kindPlan, obj map[string]any, idx *namespaceIndex, now time.Time) {
	res.Checked = plan.allChecked[:len(plan.allChecked):len(plan.allChecked)] // shared, see EvaluateObject
	cross := p.evaluateRules(ctx, plan.crossRules, obj, idx)
	if len(cross) == 0 {
		return
	}
	p.applyWaivers(cross, unstructured.Unstructured{Object: obj}, now)
	res.Findings = mergeFindings(res.Findings, cross)
}

// SetEvaluator checks a stream of objects as one set, in memory bounded by
// what the cross-object rules need rather than by the size of the stream.
// Each object is checked by the rules that read it alone as it is added (with
// the result cache); cross-object rules can only run once the whole set has
// been seen, so until Results an object they check is kept as the fields they
// read (and its identity, for waivers), and objects of the kinds they read as
// neighbours are kept whole. A SetEvaluator is not safe for concurrent use.
type SetEvaluator struct {
	policy  *Policy
	now     time.Time
	idx     *namespaceIndex
	results []ObjectResult
	pending []pendingObject
}

// pendingObject is an object awaiting its cross-object rules.
type pendingObject struct {
	result int // index in results
	plan   *kindPlan
	// projection is what the cross-object rules read, in the cache's
	// canonical encoding: far smaller than the maps it encodes, and its
	// strings no longer share the text of the document they came from.
	projection []byte
	object     map[string]any // the object itself, when it cannot be encoded
}

// NewSetEvaluator starts a set; waiver expiry is judged at now.
func (p *Policy) NewSetEvaluator(now time.Time) *SetEvaluator {
	return &SetEvaluator{policy: p, now: now, idx: p.newNamespaceIndex()}
}

// Add checks obj as a member of the set; where says where it was read from.
// The evaluator keeps obj, or parts of it, until Results: the caller must not
// modify it.
func (s *SetEvaluator) Add(ctx context.Context, obj map[string]any, where ObjectRef) {
	s.idx.add(obj)
	res := s.policy.EvaluateObject(ctx, obj, where, s.now)
	if plan := s.policy.plans[kindKey(res.Object.APIVersion, res.Object.Kind)]; plan != nil && len(plan.crossRules) > 0 {
		pd := pendingObject{result: len(s.results), plan: plan, object: plan.project(obj)}
		if enc, ok := appendValue(nil, pd.object); ok {
			pd.projection, pd.object = enc, nil
		}
		s.pending = append(s.pending, pd)
	}
	s.results = append(s.results, res)
}

// AddRelated makes obj known to cross-object rules without checking it: an
// object of the namespaces the set is deployed to that is not part of the set.
func (s *SetEvaluator) AddRelated(obj map[string]any) { s.idx.add(obj) }

// Results runs the cross-object rules and returns one result per added object,
// in the order added. It fails only when ctx ends.
func (s *SetEvaluator) Results(ctx context.Context) ([]ObjectResult, error) {
	for _, pd := range s.pending {
		if err := ctx.Err(); err != nil {
			return nil, fmt.Errorf("evaluating policy %s: %w", s.policy.name, err)
		}
		obj := pd.object
		if obj == nil {
			v, rest, ok := decodeValue(pd.projection)
			if obj, _ = v.(map[string]any); !ok || len(rest) > 0 || obj == nil {
				return nil, fmt.Errorf("evaluating policy %s: decoding a kept projection failed", s.policy.name)
			}
		}
		s.policy.addCrossFindings(ctx, &s.results[pd.result], pd.plan, obj, s.idx, s.now)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("evaluating policy %s: %w", s.policy.name, err)
	}
	s.pending = nil
	return s.results, nil
}

// identityFields are kept in every projection: waivers match on kind, name,
// namespace and labels, and the builtin variables depend on the kind.
var identityFields = []fieldPath{{"apiVersion"}, {"kind"}, {"metadata", "name"}, {"metadata", "namespace"}, {"metadata", "labels"}}

// projectionFields returns, by kind class, the fields a projection for the
// cross-object rules keeps; a missing class means the whole object.
func projectionFields(crossFields map[string][]fieldPath) map[string][]fieldPath {
	out := make(map[string][]fieldPath, len(crossFields))
	for class, fields := range crossFields {
		out[class] = minimalPaths(append(slices.Clone(identityFields), fields...))
	}
	return out
}

// project returns the part of obj the cross-object rules read: a new object
// holding the values at the plan's fields and nothing else. Equal values at
// those fields give equal findings (the argument the result cache rests on,
// see cache.go), so the projection is judged exactly as obj would be. Values
// are shared with obj, not copied.
func (kp *kindPlan) project(obj map[string]any) map[string]any {
	kind, isString := obj["kind"].(string)
	if !isString {
		return obj
	}
	fields, ok := kp.projection[kindClass(kind)]
	if !ok {
		return obj
	}
	out := make(map[string]any, 4)
	for _, f := range fields {
		copyField(out, obj, f)
	}
	return out
}

// copyField copies the value at path f of src into dst, creating the maps on
// the way. Where src stops early (a missing field, or a value that is not a
// map where the path continues) dst stops at the same depth with the same
// value, which is what the cache key encodes too.
func copyField(dst, src map[string]any, f fieldPath) {
	for i, name := range f {
		v, present := src[name]
		if !present {
			return
		}
		next, isMap := v.(map[string]any)
		if i == len(f)-1 || !isMap {
			dst[name] = v
			return
		}
		// minimalPaths leaves no path under another, so dst[name] is a map
		// this function created, never one shared with src.
		d, ok := dst[name].(map[string]any)
		if !ok {
			d = map[string]any{}
			dst[name] = d
		}
		src, dst = next, d
	}
}
