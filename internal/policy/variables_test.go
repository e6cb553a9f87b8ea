package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"path/filepath"
	"testing"

	"github.com/google/cel-go/common/types"
	"k8s.io/apimachinery/pkg/runtime"
)

// variableTestObjects gathers the corpus, both sides of every rule fixture,
// generated workloads and objects of unexpected shape.
func variableTestObjects(t *testing.T) []map[string]any {
	t.Helper()
	var objs []map[string]any
	files, err := filepath.Glob("testdata/corpus/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	if err := ReadManifests(context.Background(), files, ReadOptions{}, func(m Manifest) error {
		objs = append(objs, m.Object)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	for _, c := range loadRuleCases(t) {
		objs = append(objs, c.pass, c.fail)
	}
	objs = append(objs, benchCorpus(40)...)
	// Pods of every shape the Pod Security Standards controls look at, Windows
	// pods included, in every kind that carries one.
	rng := rand.New(rand.NewPCG(7, 34))
	for i := range 45 {
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(randomPod(rng, i))
		if err != nil {
			t.Fatal(err)
		}
		meta, _ := content["metadata"].(map[string]any)
		delete(meta, "name")
		objs = append(objs, podCarriers[i%len(podCarriers)].carry(fmt.Sprintf("generated-%d", i), "team-b", meta, content["spec"].(map[string]any)))
	}
	for _, doc := range []string{
		`{apiVersion: v1, kind: 7, metadata: {name: p}, spec: {containers: [{name: a}]}}`,
		`{apiVersion: v1, metadata: {name: p}, spec: {containers: [{name: a}]}}`,
		`{apiVersion: v1, kind: Pod, metadata: "x", spec: "y"}`,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: 3}, spec: null}`,
		`{apiVersion: v1, kind: Pod, metadata: {namespace: null}, spec: {containers: null, volumes: {a: b}}}`,
		`{apiVersion: v1, kind: Pod, spec: {containers: ["a", 1], initContainers: [{name: i, securityContext: null}], securityContext: 4}}`,
		`{apiVersion: apps/v1, kind: Deployment, spec: {template: "t"}}`,
		`{apiVersion: apps/v1, kind: Deployment, spec: {template: {metadata: null, spec: {ephemeralContainers: [{name: e}], volumes: [null, {name: v, hostPath: {path: /}}]}}}}`,
		`{apiVersion: batch/v1, kind: CronJob, spec: {jobTemplate: {spec: {template: {metadata: {annotations: {a: b}}, spec: {containers: [{name: a}]}}}}}}`,
		`{apiVersion: batch/v1, kind: CronJob, spec: {jobTemplate: []}}`,
		`{apiVersion: v1, kind: PodTemplate, metadata: {name: t}, template: {metadata: {labels: {app: t}}, spec: {hostPID: true, containers: [{name: a, securityContext: {privileged: true}}]}}}`,
		`{apiVersion: v1, kind: PodTemplate, template: []}`,
		`{apiVersion: v1, kind: PodTemplate, spec: {template: {spec: {containers: [{name: a}]}}}}`,
		`{apiVersion: v1, kind: ReplicationController, spec: {template: {metadata: {annotations: {a: b}}, spec: {volumes: [{name: h, hostPath: {path: /}}]}}}}`,
		`{apiVersion: v1, kind: Service, metadata: {name: s, namespace: dmz}, spec: {type: NodePort}}`,
	} {
		obj, err := decodeYAML([]byte(doc))
		if err != nil {
			t.Fatalf("%s: %v", doc, err)
		}
		objs = append(objs, obj)
	}
	return objs
}

// TestNativeVariablesMatchCEL checks that every builtin variable computed in
// Go equals the value of its CEL definition, including the errors CEL reports
// on objects of unexpected shape (where the native code must decline).
func TestNativeVariablesMatchCEL(t *testing.T) {
	cat := mustCatalog(t)
	native, err := cat.Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	celOnly, err := cat.Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range celOnly.variables {
		v.native = nil
	}
	ctx := context.Background()
	nativeUsed := 0
	for n, obj := range variableTestObjects(t) {
		a, b := native.newActivation(ctx, obj), celOnly.newActivation(ctx, obj)
		for i, v := range native.variables {
			if v.program == nil {
				continue
			}
			if v.native != nil {
				if _, ok := v.native(&a.pod); ok {
					nativeUsed++
				}
			}
			got, want := a.variables.resolve(i), b.variables.resolve(i)
			if types.IsError(want) || types.IsError(got) {
				if !types.IsError(want) || !types.IsError(got) || got.(*types.Err).String() != want.(*types.Err).String() {
					t.Errorf("object %d (%v), variable %s: native %v, CEL %v", n, obj["kind"], v.name, got, want)
				}
				continue
			}
			if eq := got.Equal(want); eq != types.True {
				t.Errorf("object %d (%v), variable %s:\nnative %v\n   CEL %v", n, obj["kind"], v.name, got.Value(), want.Value())
			}
			if got.Type() != want.Type() {
				t.Errorf("object %d, variable %s: native type %s, CEL type %s", n, v.name, got.Type().TypeName(), want.Type().TypeName())
			}
		}
		native.releaseActivation(a)
		celOnly.releaseActivation(b)
	}
	if nativeUsed == 0 {
		t.Fatal("no variable was computed natively")
	}
}
