package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	celast "github.com/google/cel-go/common/ast"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// nativeOutcome is what one rule gave on one object.
type nativeOutcome struct {
	decided bool     // native only: false when it declined
	failed  bool     // CEL only: the program reported an error
	paths   []string // sorted
}

// evaluateBothWays evaluates rule r on obj with the CEL program and with the
// native closures, on separate activations.
func evaluateBothWays(t testing.TB, pol *Policy, r *compiledRule, obj map[string]any, neighbours []any) (native, cel nativeOutcome) {
	t.Helper()
	ctx := context.Background()
	a := pol.newActivation(ctx, obj)
	a.neighbours = neighbours
	if v, ok := r.native.run(a); ok {
		if paths, ok := nativeFieldPaths(v); ok {
			native = nativeOutcome{decided: true, paths: slices.Sorted(slices.Values(paths))}
		}
	}
	pol.releaseActivation(a)

	b := pol.newActivation(ctx, obj)
	b.neighbours = neighbours
	val, _, err := r.program.ContextEval(ctx, b)
	if err == nil {
		var paths []string
		if paths, err = fieldPaths(val); err == nil {
			cel.paths = slices.Sorted(slices.Values(paths))
		}
	}
	cel.failed = err != nil
	pol.releaseActivation(b)
	return native, cel
}

// nativeProfiles are the profiles whose rules the differential tests run:
// every embedded pack, with its default parameters and with parameters that
// make the list-valued ones non-empty.
func nativeProfiles(t testing.TB) []*Policy {
	t.Helper()
	cat := mustCatalog(t)
	var out []*Policy
	for _, name := range cat.PackNames() {
		pol, err := cat.Compile(Profile{Packs: []string{name}})
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, pol)
	}
	pol, err := cat.Compile(Profile{Packs: []string{"fin-kr"}, Parameters: map[string]json.RawMessage{
		"hostPathAllowlist":    []byte(`["/var/log", "/etc/ssl/certs"]`),
		"productionNamespaces": []byte(`["production", "team-1", "payments"]`),
		"allowedHostPorts":     []byte(`[443, 9100]`),
	}})
	if err != nil {
		t.Fatal(err)
	}
	return append(out, pol)
}

// checkNativeMatchesCEL compares every native rule of pol that applies to obj
// with its CEL program; it returns how many evaluations native declined.
func checkNativeMatchesCEL(t testing.TB, pol *Policy, obj map[string]any, neighbours []any, what string) (evaluated, declined int) {
	t.Helper()
	u := unstructured.Unstructured{Object: obj}
	plan := pol.plans[kindKey(u.GetAPIVersion(), u.GetKind())]
	if plan == nil {
		return 0, 0
	}
	for _, r := range plan.rules {
		if r.native == nil {
			continue
		}
		native, cel := evaluateBothWays(t, pol, r, obj, neighbours)
		evaluated++
		if !native.decided {
			declined++
			continue
		}
		if cel.failed || !slices.Equal(native.paths, cel.paths) {
			t.Errorf("%s, rule %s (profile %s):\nnative %q\n   CEL %q (error: %v)", what, r.ID, pol.Name(), native.paths, cel.paths, cel.failed)
		}
	}
	return evaluated, declined
}

// testNeighbours are the NetworkPolicies of the test objects, handed to
// cross-object rules as their namespaceObjects.
func testNeighbours(objs []map[string]any) []any {
	var out []any
	for _, o := range objs {
		if o["kind"] == "NetworkPolicy" {
			out = append(out, o)
		}
	}
	return out
}

// TestNativeRulesMatchCEL checks that wherever the native closures decide, they
// give the CEL program's result: on the corpus, the rule fixtures and odd
// objects, and on thousands of mutations of them (fields replaced by values
// of other types, removed, or set to the values rules look for).
func TestNativeRulesMatchCEL(t *testing.T) {
	objs := variableTestObjects(t)
	for _, c := range loadRuleCases(t) {
		objs = append(objs, c.passWith...)
		objs = append(objs, c.failWith...)
	}
	neighbours := testNeighbours(objs)
	rng := rand.New(rand.NewPCG(1, 2))
	for _, pol := range nativeProfiles(t) {
		evaluated, declined := 0, 0
		for i, obj := range objs {
			e, d := checkNativeMatchesCEL(t, pol, obj, neighbours, "object "+objectLabel(i, obj))
			evaluated, declined = evaluated+e, declined+d
			for m := range 12 {
				mutated := mutateObject(obj, rng)
				checkNativeMatchesCEL(t, pol, mutated, neighbours, fmt.Sprintf("mutation %d of object %s", m, objectLabel(i, mutated)))
			}
		}
		if evaluated == 0 {
			t.Fatalf("profile %s: no native evaluation", pol.Name())
		}
		t.Logf("profile %s: native declined %d of %d evaluations on unmutated objects", pol.Name(), declined, evaluated)
	}
}

// TestNativeRulesDecideOnWorkloads: on well-formed workloads every rule the
// closures compile decides without falling back to CEL, so the fast path is
// the one the engine takes.
func TestNativeRulesDecideOnWorkloads(t *testing.T) {
	objs := benchCorpus(40)
	neighbours := testNeighbours(variableTestObjects(t))
	for _, pol := range nativeProfiles(t) {
		for i, obj := range objs {
			u := unstructured.Unstructured{Object: obj}
			for _, r := range pol.plans[kindKey(u.GetAPIVersion(), u.GetKind())].rules {
				if r.native == nil {
					continue
				}
				if native, _ := evaluateBothWays(t, pol, r, obj, neighbours); !native.decided {
					t.Errorf("profile %s, rule %s declined on workload %d (%s)", pol.Name(), r.ID, i, u.GetKind())
				}
			}
		}
	}
}

// TestNativeCoverage pins which rules run in CEL alone, so that a rule change
// that loses the fast path is a visible decision.
func TestNativeCoverage(t *testing.T) {
	want := map[string]string{"FIN-NET-003": "function isCIDR"}
	for _, pol := range nativeProfiles(t) {
		for _, r := range pol.rules {
			reason, expected := want[r.ID]
			switch {
			case r.native == nil && !expected:
				t.Errorf("rule %s runs in CEL only: %v", r.ID, r.nativeErr)
			case r.native != nil && expected:
				t.Errorf("rule %s now compiles natively; remove it from the list", r.ID)
			case r.native == nil && !strings.Contains(r.nativeErr.Error(), reason):
				t.Errorf("rule %s runs in CEL only because %v, want %q", r.ID, r.nativeErr, reason)
			}
		}
	}
}

// FuzzNativeRulesMatchCEL mutates the test objects as directed by the input.
func FuzzNativeRulesMatchCEL(f *testing.F) {
	f.Add(uint64(1), uint64(2))
	f.Add(uint64(7), uint64(99))
	var (
		objs       []map[string]any
		neighbours []any
		profiles   []*Policy
	)
	f.Fuzz(func(t *testing.T, seed1, seed2 uint64) {
		if objs == nil {
			objs = variableTestObjects(t)
			neighbours = testNeighbours(objs)
			profiles = nativeProfiles(t)
		}
		rng := rand.New(rand.NewPCG(seed1, seed2))
		obj := objs[rng.IntN(len(objs))]
		for range 1 + rng.IntN(4) {
			obj = mutateObject(obj, rng)
		}
		for _, pol := range profiles {
			checkNativeMatchesCEL(t, pol, obj, neighbours, "mutated object")
		}
	})
}

func objectLabel(i int, obj map[string]any) string {
	u := unstructured.Unstructured{Object: obj}
	return fmt.Sprintf("#%d %s %s", i, u.GetKind(), u.GetName())
}

// mutationValues are what a mutation puts in place of a field: values of
// every JSON type, and the ones rules compare against.
var mutationValues = []any{
	nil, true, false, int64(0), int64(1), int64(-1), int64(65536), 1.5, "", "x", "true", "ALL", "NET_RAW",
	"/var/run/docker.sock", "/var/log", "nginx:latest", "registry.slipway.internal/a@sha256:" + strings.Repeat("a", 64),
	"Unconfined", "RuntimeDefault", "0.0.0.0/0", "production", "LoadBalancer", "NodePort",
	[]any{}, []any{"x"}, []any{int64(1)}, []any{map[string]any{}}, map[string]any{}, map[string]any{"a": "b"},
}

// mutateObject returns a deep copy of obj with one field, chosen at random
// anywhere in the tree, replaced, removed, or given a new sibling.
func mutateObject(obj map[string]any, rng *rand.Rand) map[string]any {
	out := deepCopyJSON(obj).(map[string]any)
	var containers []any // every map and list in the copy
	var walk func(v any)
	walk = func(v any) {
		switch x := v.(type) {
		case map[string]any:
			containers = append(containers, x)
			for _, k := range slices.Sorted(maps.Keys(x)) {
				walk(x[k])
			}
		case []any:
			containers = append(containers, x)
			for _, e := range x {
				walk(e)
			}
		}
	}
	walk(out)
	value := deepCopyJSON(mutationValues[rng.IntN(len(mutationValues))])
	switch c := containers[rng.IntN(len(containers))].(type) {
	case map[string]any:
		keys := slices.Sorted(maps.Keys(c))
		switch op := rng.IntN(4); {
		case len(keys) == 0 || op == 0:
			names := []string{"securityContext", "privileged", "hostPath", "image", "ports", "hostPort", "namespace", "labels", "readOnly", "x"}
			c[names[rng.IntN(len(names))]] = value
		case op == 1:
			delete(c, keys[rng.IntN(len(keys))])
		default:
			c[keys[rng.IntN(len(keys))]] = value
		}
	case []any:
		if len(c) > 0 {
			c[rng.IntN(len(c))] = value
		}
	}
	return out
}

func deepCopyJSON(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = deepCopyJSON(e)
		}
		return m
	case []any:
		l := make([]any, len(x))
		for i, e := range x {
			l[i] = deepCopyJSON(e)
		}
		return l
	}
	return v
}

// TestNativeInterrupted: a native loop over a large object stops when the
// evaluation's context ends, and the rule reports an error, as in CEL, rather
// than a pass.
func TestNativeInterrupted(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	containers := make([]any, 3*interruptCheckFrequency)
	for i := range containers {
		containers[i] = map[string]any{"name": fmt.Sprintf("c%d", i), "image": "registry.slipway.internal/app:1"}
	}
	pod := map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "p", "namespace": "app"},
		"spec": map[string]any{"containers": containers}}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	res := pol.EvaluateObject(ctx, pod, ObjectRef{}, time.Now())
	if !slices.ContainsFunc(res.Findings, func(f Finding) bool { return f.Rule == "FIN-WL-001" && f.Outcome == OutcomeError }) {
		t.Fatalf("FIN-WL-001 on %d containers with an ended context: findings %+v, want an error", len(containers), res.Findings)
	}
}

// TestListBuildingNested: a map or filter whose elements or filter hold
// another comprehension (with an accumulator of the same name) is still
// built in place; one that reads its own accumulator is not.
func TestListBuildingNested(t *testing.T) {
	env, _, err := newEnv()
	if err != nil {
		t.Fatal(err)
	}
	for expr, want := range map[string]bool{
		`[1, 2].map(x, [3].map(y, y + x))`:                   true,
		`['a', 'b'].filter(c, !['a'].exists(r, r == c))`:     true,
		`[1, 2].map(x, x * 2)`:                               true,
		`[1, 2].all(x, x > 0) ? [] : [1]`:                    false, // no list-building comprehension at the top
		`[1, 2].transformList(i, x, x > 1, string(i) + 'a')`: true,
	} {
		ast, iss := env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", expr, iss.Err())
		}
		root := ast.NativeRep().Expr()
		got := root.Kind() == celast.ComprehensionKind
		if got {
			_, got = listBuilding(root.AsComprehension())
		}
		if got != want {
			t.Errorf("%s: built in place %v, want %v", expr, got, want)
		}
	}
}

// TestNativeCallForms: functions callable as members or globally (size) are
// compiled in both forms, with the same results as CEL.
func TestNativeCallForms(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	evalEnv, err := newEvalEnv(pol.env)
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{"kind": "Pod", "metadata": map[string]any{"name": "a/b/c", "labels": map[string]any{"x": "1"}, "port": int64(443)}}
	for _, expr := range []string{
		`object.metadata.name.split('/').size() == 3 ? ['member'] : []`,
		`size(object.metadata.name.split('/')) == 3 ? ['global'] : []`,
		`object.metadata.labels.size() == 1 && size(object.metadata.name) == 5 ? ['sizes'] : []`,
		`object.metadata.name.matches('^a/') && matches(object.metadata.name, 'c$') ? ['matches'] : []`,
		`object.metadata.port in [80, 443] && !(object.metadata.port in []) && !(object.metadata.name in []) ? ['constant sets'] : []`,
	} {
		ast, iss := pol.env.Compile(expr)
		if iss.Err() != nil {
			t.Fatalf("%s: %v", expr, iss.Err())
		}
		native, err := compileNative(ast.NativeRep().Expr(), nil)
		if err != nil {
			t.Fatalf("%s: not compiled natively: %v", expr, err)
		}
		prg, err := evalEnv.Program(ast)
		if err != nil {
			t.Fatal(err)
		}
		act := pol.newActivation(context.Background(), obj)
		got, ok := native.run(act)
		want, _, err := prg.Eval(act)
		pol.releaseActivation(act)
		if err != nil {
			t.Fatalf("%s: CEL: %v", expr, err)
		}
		gotPaths, _ := nativeFieldPaths(got)
		wantPaths, _ := fieldPaths(want)
		if !ok || len(gotPaths) != 1 || !slices.Equal(gotPaths, wantPaths) {
			t.Errorf("%s: native %q (decided %v), CEL %q", expr, gotPaths, ok, wantPaths)
		}
	}
}
