// Package policy is Slipway's policy engine: rule packs as data, compiled once to
// the CEL dialect Kubernetes uses for ValidatingAdmissionPolicy, evaluated against
// manifests with waivers, and reported as text, JSON, SARIF or JUnit.
//
// The main entry point is Catalog.Compile, which turns a Profile (packs,
// parameters, waivers) into a Policy; Policy.Evaluate checks a slice of objects
// as one set, and a SetEvaluator checks a stream of them.
package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/google/cel-go/cel"
	"github.com/google/cel-go/common/types"
	"github.com/google/cel-go/common/types/ref"
	"github.com/google/cel-go/common/types/traits"
	"github.com/google/cel-go/interpreter"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// Profile is what a PolicyProfile resource or the CLI flags choose.
type Profile struct {
	// Packs are evaluated together; a rule replaced by any of them is dropped.
	Packs []string
	// Parameters override pack defaults; values are JSON.
	Parameters map[string]json.RawMessage
	// Waivers exempt objects from rules until they expire.
	Waivers []Waiver
	// Unchecked says what happens to objects of kinds no rule checks.
	Unchecked UncheckedPolicy
}

// Name is how reports name the profile.
func (p Profile) Name() string { return strings.Join(p.Packs, "+") }

// Policy is a compiled profile. It is safe for concurrent use.
type Policy struct {
	name      string
	env       *cel.Env
	all       []*Rule // every rule of the profile, whatever its target
	rules     []*compiledRule
	params    []*boundParameter
	variables []*compiledVariable
	byKind    map[string][]*compiledRule
	plans     map[string]*kindPlan // by Kind.group key
	waivers   []Waiver
	unchecked UncheckedPolicy
	cache     resultCache
	// neighbourKinds are the Kind.group keys cross-object rules read from a
	// namespace: what a namespaceIndex keeps.
	neighbourKinds map[string]bool
	keyBufs        sync.Pool // of *[]byte

	adapter       types.Adapter  // turns natively computed variables into CEL values
	variableIndex map[string]int // position in variables by name
	variablesType *types.Type    // the runtime type of `variables`
	activations   sync.Pool      // of *activation
}

// Compile resolves and compiles a profile. Compile once, evaluate many times.
func (c *Catalog) Compile(p Profile) (*Policy, error) {
	res, err := c.resolve(p.Packs)
	if err != nil {
		return nil, fmt.Errorf("compiling policy profile %s: %w", p.Name(), err)
	}
	pol, err := compileProfile(res, p.Parameters)
	if err != nil {
		return nil, fmt.Errorf("compiling policy profile %s: %w", p.Name(), err)
	}
	pol.name = p.Name()
	pol.all = res.rules
	ids := res.ruleIDs()
	for _, w := range p.Waivers {
		if !ids[w.Rule] {
			return nil, fmt.Errorf("compiling policy profile %s: waiver %q names rule %s, which the profile does not contain", p.Name(), w.Name, w.Rule)
		}
	}
	pol.waivers = slices.Clone(p.Waivers)
	if err := p.Unchecked.validate(); err != nil {
		return nil, fmt.Errorf("compiling policy profile %s: %w", p.Name(), err)
	}
	pol.unchecked = UncheckedPolicy{RefuseClusterScoped: p.Unchecked.RefuseClusterScoped, Allowed: slices.Clone(p.Unchecked.Allowed)}
	return pol, nil
}

// Name returns the profile name.
func (p *Policy) Name() string { return p.name }

// Rules returns every rule of the profile in pack order, whatever its target.
func (p *Policy) Rules() []*Rule { return p.all }

// Rule returns a rule of the profile by id.
func (p *Policy) Rule(id string) (*Rule, bool) {
	for _, r := range p.all {
		if r.ID == id {
			return r, true
		}
	}
	return nil, false
}

// RuleParameters returns the parameters a manifest rule reads with the values in force.
func (p *Policy) RuleParameters(id string) map[string]any {
	out := map[string]any{}
	for _, r := range p.rules {
		if r.ID != id {
			continue
		}
		for _, name := range r.parameters {
			for _, bp := range p.params {
				if bp.Name == name {
					out[name] = bp.value
				}
			}
		}
	}
	return out
}

// Outcome is the result of one rule on one object, as in a PolicyReport.
type Outcome string

// Outcomes. An error is a failure: an object the engine cannot judge does not pass.
const (
	OutcomePass   Outcome = "pass"
	OutcomeFail   Outcome = "fail"
	OutcomeWaived Outcome = "waived"
	OutcomeError  Outcome = "error"
)

// ObjectRef identifies an object and where it was read from.
type ObjectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
	// File and Document (1-based) say where the object came from, when it came from a file.
	File     string `json:"file,omitempty"`
	Document int    `json:"document,omitempty"`
	Line     int    `json:"line,omitempty"`
}

// String renders Kind/namespace/name, kubectl style.
func (o ObjectRef) String() string {
	if o.Namespace == "" {
		return o.Kind + "/" + o.Name
	}
	return o.Kind + "/" + o.Namespace + "/" + o.Name
}

// Finding is one violation (failed, waived or unevaluable).
type Finding struct {
	Rule     string   `json:"rule"`
	Severity Severity `json:"severity"`
	Outcome  Outcome  `json:"outcome"`
	Path     string   `json:"path,omitempty"`
	Message  string   `json:"message"`
	Waiver   *Waiver  `json:"waiver,omitempty"`
}

// ObjectResult is the verdict on one object.
type ObjectResult struct {
	Object ObjectRef `json:"object"`
	// Checked lists the rules that applied to the object; those without a finding passed.
	Checked  []string  `json:"checked"`
	Findings []Finding `json:"findings,omitempty"`
}

// activation resolves the names expressions may read. One activation serves
// every rule evaluated on an object, so each variable is computed at most once
// per object; activations are pooled because the engine sees millions of objects.
type activation struct {
	object    map[string]any
	variables variableValues
	pod       podView
	// neighbours is the namespaceObjects of the cross-object rule being
	// evaluated; only those rules are compiled with the name declared.
	neighbours []any
	// native holds the builtin variables computed in Go for native programs,
	// by position in Policy.variables; frame is reused by every program.
	native []nativeValue
	frame  nativeFrame
}

// nativeValue is a builtin variable computed natively: state 0 not yet,
// 1 computed, 2 declined (the shape is one only CEL handles).
type nativeValue struct {
	value any
	state uint8
}

// nativeVariable returns the builtin variable i for a native program.
func (a *activation) nativeVariable(i int) (any, bool) {
	nv := &a.native[i]
	if nv.state == 0 {
		nv.state = 2
		if v, ok := a.variables.policy.variables[i].native(&a.pod); ok {
			nv.value, nv.state = v, 1
		}
	}
	return nv.value, nv.state == 1
}

func (a *activation) ResolveName(name string) (any, bool) {
	switch name {
	case "object":
		return a.object, true
	case "variables":
		return &a.variables, true
	case namespaceObjectsVariable:
		return a.neighbours, true
	}
	return nil, false
}

func (a *activation) Parent() interpreter.Activation { return nil }

// variableValues is the `variables` map of one object, with the semantics of
// ValidatingAdmissionPolicy's: a variable is evaluated when first read and
// cached; an evaluation error becomes the variable's value.
type variableValues struct {
	policy *Policy
	ctx    context.Context
	act    *activation
	values []ref.Val // by position in Policy.variables; nil until evaluated
}

var (
	_ ref.Val       = (*variableValues)(nil)
	_ traits.Mapper = (*variableValues)(nil)
)

func (p *Policy) newActivation(ctx context.Context, obj map[string]any) *activation {
	act, _ := p.activations.Get().(*activation)
	if act == nil {
		act = &activation{variables: variableValues{policy: p, values: make([]ref.Val, len(p.variables))}, native: make([]nativeValue, len(p.variables))}
		act.variables.act = act
	}
	act.object, act.variables.ctx = obj, ctx
	act.pod.reset(obj)
	return act
}

func (p *Policy) releaseActivation(act *activation) {
	act.object, act.variables.ctx, act.neighbours = nil, nil, nil
	act.pod = podView{}
	clear(act.variables.values)
	clear(act.native)
	p.activations.Put(act)
}

func (v *variableValues) resolve(i int) ref.Val {
	if val := v.values[i]; val != nil {
		return val
	}
	cv := v.policy.variables[i]
	val := cv.value
	if cv.native != nil {
		if native, ok := cv.native(&v.act.pod); ok {
			val = v.policy.adapter.NativeToValue(celShape(native))
			v.values[i] = val
			return val
		}
	}
	if cv.program != nil {
		var err error
		val, _, err = cv.program.ContextEval(v.ctx, v.act)
		if err != nil {
			val = types.NewErr("variable %s: %v", cv.name, err)
		}
	}
	v.values[i] = val
	return val
}

func (v *variableValues) Find(key ref.Val) (ref.Val, bool) {
	name, ok := key.(types.String)
	if !ok {
		return types.MaybeNoSuchOverloadErr(key), true
	}
	i, ok := v.policy.variableIndex[string(name)]
	if !ok {
		return nil, false
	}
	return v.resolve(i), true
}

func (v *variableValues) Get(key ref.Val) ref.Val {
	if val, found := v.Find(key); found {
		return val
	}
	return types.ValOrErr(key, "no such key: %v", key)
}

func (v *variableValues) Contains(key ref.Val) ref.Val {
	val, found := v.Find(key)
	if val != nil && types.IsUnknownOrError(val) {
		return val
	}
	return types.Bool(found)
}

func (v *variableValues) Size() ref.Val { return types.Int(len(v.values)) }

func (v *variableValues) Iterator() traits.Iterator {
	names := make([]ref.Val, len(v.policy.variables))
	for i, cv := range v.policy.variables {
		names[i] = types.String(cv.name)
	}
	return types.NewDynamicList(types.DefaultTypeAdapter, names).Iterator()
}

func (v *variableValues) ConvertToNative(typeDesc reflect.Type) (any, error) {
	return nil, fmt.Errorf("disallowed conversion from %q to %q", v.policy.variablesType.TypeName(), typeDesc.Name())
}

func (v *variableValues) ConvertToType(typeVal ref.Type) ref.Val {
	switch typeVal {
	case v.policy.variablesType:
		return v
	case types.TypeType:
		return v.policy.variablesType
	}
	return types.NewErr("disallowed conversion from %q to %q", v.policy.variablesType.TypeName(), typeVal.TypeName())
}

func (v *variableValues) Equal(other ref.Val) ref.Val {
	o, ok := other.(*variableValues)
	if !ok {
		return types.MaybeNoSuchOverloadErr(other)
	}
	return types.Bool(o == v)
}

func (v *variableValues) Type() ref.Type { return v.policy.variablesType }

func (v *variableValues) Value() any { return types.NoSuchOverloadErr() }

// kindKey returns the Kind.group key rules match on.
func kindKey(apiVersion, kind string) string {
	group, _, found := strings.Cut(apiVersion, "/")
	if !found || group == "" {
		return kind
	}
	return kind + "." + group
}

// Evaluate checks objects as one set (see EvaluateSet) at time now (waiver
// expiry is judged against it). It returns one result per object, in input
// order; it fails only when ctx ends.
func (p *Policy) Evaluate(ctx context.Context, objs []*unstructured.Unstructured, now time.Time) ([]ObjectResult, error) {
	return p.EvaluateSet(ctx, objs, nil, now)
}

// EvaluateSet checks objs as one set, spreading them over GOMAXPROCS
// goroutines: every rule applies, and a cross-object rule sees the objects of
// its Rule.NamespaceObjects kinds in the checked object's namespace, from objs
// and from related. Related objects are context only (the live objects of the
// namespaces the set is deployed to, say): they are not checked, and leaving
// out the ones an object of objs replaces is up to the caller. It returns one
// result per object of objs, in input order; it fails only when ctx ends.
func (p *Policy) EvaluateSet(ctx context.Context, objs, related []*unstructured.Unstructured, now time.Time) ([]ObjectResult, error) {
	idx := p.newNamespaceIndex()
	for _, set := range [][]*unstructured.Unstructured{objs, related} {
		for _, o := range set {
			idx.add(o.Object)
		}
	}
	out := make([]ObjectResult, len(objs))
	var next atomic.Int64
	var wg sync.WaitGroup
	for range min(runtime.GOMAXPROCS(0), len(objs)) {
		wg.Go(func() {
			for ctx.Err() == nil {
				i := int(next.Add(1)) - 1
				if i >= len(objs) {
					return
				}
				out[i] = p.evaluateInSet(ctx, objs[i].Object, ObjectRef{}, idx, now)
			}
		})
	}
	wg.Wait()
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("evaluating policy %s: %w", p.name, err)
	}
	return out, nil
}

// EvaluateObject checks one object on its own, given as its unstructured
// content; where carries where it was read from, and identity fields are
// filled from the object. Cross-object rules (Rule.NamespaceObjects) need the
// object's neighbours, so they are not evaluated here and not in Checked:
// Evaluate, EvaluateSet and SetEvaluator apply them.
func (p *Policy) EvaluateObject(ctx context.Context, obj map[string]any, where ObjectRef, now time.Time) ObjectResult {
	u := unstructured.Unstructured{Object: obj}
	// Cloned: a result outlives the object, whose strings may share the text
	// of the whole document they were read from.
	where.APIVersion, where.Kind = strings.Clone(u.GetAPIVersion()), strings.Clone(u.GetKind())
	where.Namespace, where.Name = strings.Clone(u.GetNamespace()), strings.Clone(u.GetName())
	res := ObjectResult{Object: where}
	kk := kindKey(where.APIVersion, where.Kind)
	plan := p.plans[kk]
	if plan == nil {
		return res
	}
	// Shared by every result of the kind (and never modified): a copy per
	// object is most of what a large check keeps in memory. The capacity is
	// cut so that an append by a caller copies.
	res.Checked = plan.checked[:len(plan.checked):len(plan.checked)]

	var key []byte
	kind, kindIsString := obj["kind"].(string)
	if class := kindClass(kind); kindIsString && plan.cacheable[class] && p.cache.use(kk) {
		bufp, _ := p.keyBufs.Get().(*[]byte)
		if bufp == nil {
			bufp = new([]byte)
		}
		defer p.keyBufs.Put(bufp)
		var ok bool
		*bufp, ok = appendKey((*bufp)[:0], kk, kind, plan.keyFields[class], obj)
		if ok {
			key = *bufp
			if cached, hit := p.cache.get(kk, key); hit {
				res.Findings = slices.Clone(cached)
				p.applyWaivers(res.Findings, u, now)
				return res
			}
		}
	}

	res.Findings = p.evaluateRules(ctx, plan.rules, obj, nil)
	// A finding of outcome error may come from the context ending mid-evaluation,
	// and an interrupted variable may even turn into a wrong pass, so nothing is
	// remembered from such an evaluation (ctx.Err stays set once the context ends).
	if key != nil && ctx.Err() == nil && !slices.ContainsFunc(res.Findings, func(f Finding) bool { return f.Outcome == OutcomeError }) {
		p.cache.put(key, slices.Clone(res.Findings))
	}
	p.applyWaivers(res.Findings, u, now)
	return res
}

// evaluateRules runs rules on obj and returns their findings, before waivers,
// ordered worst first, then by rule and path. idx holds the neighbours of
// cross-object rules; it may be nil when rules has none.
func (p *Policy) evaluateRules(ctx context.Context, rules []*compiledRule, obj map[string]any, idx *namespaceIndex) []Finding {
	act := p.newActivation(ctx, obj)
	defer p.releaseActivation(act)
	var findings []Finding
	for _, r := range rules {
		if r.neighbourKinds != nil {
			act.neighbours = idx.neighbours(objectNamespace(obj), r.neighbourKinds)
		}
		if r.native != nil {
			if v, ok := r.native.run(act); ok {
				if paths, ok := nativeFieldPaths(v); ok {
					for _, path := range paths {
						findings = append(findings, Finding{Rule: r.ID, Severity: r.Severity, Outcome: OutcomeFail, Path: path, Message: r.Message})
					}
					continue
				}
			}
		}
		val, _, err := r.program.ContextEval(ctx, act)
		if err == nil {
			var paths []string
			paths, err = fieldPaths(val)
			for _, path := range paths {
				findings = append(findings, Finding{Rule: r.ID, Severity: r.Severity, Outcome: OutcomeFail, Path: path, Message: r.Message})
			}
		}
		if err != nil {
			findings = append(findings, Finding{Rule: r.ID, Severity: r.Severity, Outcome: OutcomeError,
				Message: fmt.Sprintf("rule could not be evaluated on this object: %v", err)})
		}
	}
	sortFindings(findings)
	return findings
}

// sortFindings orders findings worst first, then by rule and path, which keeps
// the findings of one rule together (applyWaivers relies on it).
func sortFindings(findings []Finding) {
	slices.SortStableFunc(findings, compareFindings)
}

// compareFindings orders findings by severity (highest first), rule and path.
func compareFindings(a, b Finding) int {
	if c := b.Severity.Rank() - a.Severity.Rank(); c != 0 {
		return c
	}
	if c := strings.Compare(a.Rule, b.Rule); c != 0 {
		return c
	}
	return comparePaths(a.Path, b.Path)
}

// mergeFindings merges two sorted lists into what sorting their concatenation
// would give.
func mergeFindings(a, b []Finding) []Finding {
	out := make([]Finding, 0, len(a)+len(b))
	for len(a) > 0 && len(b) > 0 {
		if compareFindings(b[0], a[0]) < 0 {
			out, b = append(out, b[0]), b[1:]
		} else {
			out, a = append(out, a[0]), a[1:]
		}
	}
	return append(append(out, a...), b...)
}

// applyWaivers marks the findings of every rule an active waiver covers for this object.
func (p *Policy) applyWaivers(findings []Finding, u unstructured.Unstructured, now time.Time) {
	if len(p.waivers) == 0 {
		return
	}
	for i := 0; i < len(findings); {
		rule := findings[i].Rule
		j := i + 1
		for j < len(findings) && findings[j].Rule == rule {
			j++
		}
		if w := p.waiverFor(rule, u, now); w != nil {
			for k := i; k < j; k++ {
				findings[k].Outcome = OutcomeWaived
				findings[k].Waiver = w
			}
		}
		i = j
	}
}

// fieldPaths turns an expression result into paths, flattening one level of nesting.
func fieldPaths(val ref.Val) ([]string, error) {
	list, ok := val.(traits.Lister)
	if !ok {
		return nil, fmt.Errorf("expression returned %s, not a list of field paths", val.Type().TypeName())
	}
	var paths []string
	for it := list.Iterator(); it.HasNext() == types.True; {
		switch e := it.Next().(type) {
		case types.String:
			paths = append(paths, string(e))
		case traits.Lister:
			for inner := e.Iterator(); inner.HasNext() == types.True; {
				s, ok := inner.Next().(types.String)
				if !ok {
					return nil, fmt.Errorf("expression returned a nested list holding a non-string")
				}
				paths = append(paths, string(s))
			}
		default:
			return nil, fmt.Errorf("expression returned a list holding %s, not field paths", e.Type().TypeName())
		}
	}
	return paths, nil
}

// comparePaths orders field paths so that containers[2] sorts before containers[10].
func comparePaths(a, b string) int {
	for a != "" && b != "" {
		da, db := leadingDigits(a), leadingDigits(b)
		if da > 0 && db > 0 {
			na, nb := strings.TrimLeft(a[:da], "0"), strings.TrimLeft(b[:db], "0")
			if c := len(na) - len(nb); c != 0 {
				return c
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			a, b = a[da:], b[db:]
			continue
		}
		if a[0] != b[0] {
			return int(a[0]) - int(b[0])
		}
		a, b = a[1:], b[1:]
	}
	return len(a) - len(b)
}

func leadingDigits(s string) int {
	n := 0
	for n < len(s) && s[n] >= '0' && s[n] <= '9' {
		n++
	}
	return n
}

// Failed reports whether any finding at or above threshold failed (was not waived).
func (r *ObjectResult) Failed(threshold Severity) bool {
	for _, f := range r.Findings {
		if f.Outcome != OutcomeWaived && f.Severity.Rank() >= threshold.Rank() {
			return true
		}
	}
	return false
}
