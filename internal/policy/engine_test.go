package policy

import (
	"context"
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/google/cel-go/cel"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestEvaluateBatchMatchesSequential checks that the parallel batch evaluation
// returns, in input order, exactly what a SetEvaluator fed one object at a
// time returns, and that it holds every rule's findings: those of the rules
// that read the object alone are what EvaluateObject reports.
func TestEvaluateBatchMatchesSequential(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	corpus := append(benchCorpus(500), benchNetworkPolicies(50)...)
	objs := make([]*unstructured.Unstructured, len(corpus))
	for i, o := range corpus {
		objs[i] = &unstructured.Unstructured{Object: o}
	}
	now := time.Now()
	got, err := pol.Evaluate(context.Background(), objs, now)
	if err != nil {
		t.Fatal(err)
	}
	set := pol.NewSetEvaluator(now)
	for _, o := range corpus {
		set.Add(context.Background(), o, ObjectRef{})
	}
	sequential, err := set.Results(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for i, o := range corpus {
		if !reflect.DeepEqual(got[i], sequential[i]) {
			t.Fatalf("object %d: batch result %+v, sequential %+v", i, got[i], sequential[i])
		}
		alone := pol.EvaluateObject(context.Background(), o, ObjectRef{}, now)
		var single []Finding
		for _, f := range got[i].Findings {
			if r, _ := pol.Rule(f.Rule); !r.CrossObject() {
				single = append(single, f)
			}
		}
		if !reflect.DeepEqual(single, alone.Findings) {
			t.Fatalf("object %d: findings of single-object rules in the set %+v, alone %+v", i, single, alone.Findings)
		}
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := pol.Evaluate(ctx, objs, now); err == nil {
		t.Error("a cancelled evaluation returned no error")
	}
}

// TestParametersBoundAsConstants checks that a rule reading a parameter is
// planned with the value in place, so that a regex is compiled once at Compile
// and not on every evaluation, and that an override is what gets bound.
func TestParametersBoundAsConstants(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"},
		Parameters: map[string]json.RawMessage{"credentialNamePattern": json.RawMessage(`"^MY_SECRET$"`)}})
	if err != nil {
		t.Fatal(err)
	}
	pod := func(name string) map[string]any {
		return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "p", "namespace": "app"},
			"spec": map[string]any{"containers": []any{map[string]any{"name": "c", "image": "x", "env": []any{map[string]any{"name": name, "value": "v"}}}}}}
	}
	has := func(obj map[string]any) bool {
		for _, f := range pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now()).Findings {
			if f.Rule == "FIN-SEC-001" {
				return true
			}
		}
		return false
	}
	if !has(pod("MY_SECRET")) || has(pod("DB_PASSWORD")) {
		t.Error("the overridden credentialNamePattern was not the one applied")
	}

	c := &compiler{env: pol.env, bind: cel.NewStaticOptimizer(&parameterBinder{values: map[string]any{"credentialNamePattern": "^x$"}})}
	ast, _, err := checkExpression(pol.env, `object.?metadata.?name.orValue('').matches(variables.credentialNamePattern)`)
	if err != nil {
		t.Fatal(err)
	}
	bound, iss := c.bind.Optimize(pol.env, ast)
	if iss.Err() != nil {
		t.Fatal(iss.Err())
	}
	if src, err := cel.AstToString(bound); err != nil || src != `object.?metadata.?name.orValue("").matches("^x$")` {
		t.Errorf("bound expression is %q (%v)", src, err)
	}
}
