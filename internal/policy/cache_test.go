package policy

import (
	"context"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/runtime"
)

func TestReadSet(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	cases := map[string][]string{
		`object.?spec.?replicas.orValue(1) > 1 ? [] : ['x']`:                              {"object:spec.replicas"},
		`has(object.metadata.labels) ? [] : ['x']`:                                        {"object:metadata.labels"},
		`object.spec['a'].b == 1 ? [] : ['x']`:                                            {"object:spec.a.b"},
		`object.?spec[?'a'].orValue(1) == 1 ? [] : ['x']`:                                 {"object:spec.a"},
		`object.spec.rules.map(r, r.host)`:                                                {"object:spec.rules"},
		`object.metadata[object.kind] == 'x' ? [] : ['x']`:                                {"object:kind", "object:metadata"},
		`[object].map(o, o.kind)`:                                                         {"object:"},
		`variables.podSpec[?'hostNetwork'].orValue(false) ? [variables.podSpecPath] : []`: {"podSpec:hostNetwork", "podSpecPath:"},
		`variables.containers.map(c, c.path)`:                                             {"containers:"},
	}
	for expr, want := range cases {
		ast, _, err := checkExpression(pol.env, expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		var got []string
		for _, r := range readSet(ast) {
			root := r.variable
			if root == "" {
				root = "object"
			}
			got = append(got, root+":"+strings.Join(r.path, "."))
		}
		slices.Sort(got)
		if !slices.Equal(got, want) {
			t.Errorf("%s: reads %q, want %q", expr, got, want)
		}
	}
}

// TestCacheKeyFields pins what fin-kr's rules read, and so what a cache key
// holds: never the name or the labels of a workload.
func TestCacheKeyFields(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	render := func(kk, class string) string {
		var out []string
		for _, f := range pol.plans[kk].keyFields[class] {
			out = append(out, strings.Join(f, "."))
		}
		return strings.Join(out, " ")
	}
	want := map[[2]string]string{
		{"Deployment.apps", ""}:                       "data kind metadata.namespace spec.replicas spec.storage.emptyDir spec.storage.ephemeral spec.storage.volumeClaimTemplate spec.template.metadata.annotations spec.template.spec spec.volumeClaimTemplates",
		{"CronJob.batch", "CronJob"}:                  "data kind metadata.namespace spec.jobTemplate.spec.template.metadata.annotations spec.jobTemplate.spec.template.spec spec.storage.emptyDir spec.storage.ephemeral spec.storage.volumeClaimTemplate spec.volumeClaimTemplates",
		{"Pod", "Pod"}:                                "data kind metadata.annotations metadata.namespace spec",
		{"Service", ""}:                               "kind metadata.namespace spec.externalIPs spec.type",
		{"Role.rbac.authorization.k8s.io", ""}:        "kind metadata.name rules",
		{"ClusterRole.rbac.authorization.k8s.io", ""}: "aggregationRule kind metadata.labels metadata.name rules",
		{"PodTemplate", "PodTemplate"}:                "data kind metadata.namespace spec.storage.emptyDir spec.storage.ephemeral spec.storage.volumeClaimTemplate spec.volumeClaimTemplates template.metadata.annotations template.spec",
		{"ReplicationController", ""}:                 "data kind metadata.namespace spec.storage.emptyDir spec.storage.ephemeral spec.storage.volumeClaimTemplate spec.template.metadata.annotations spec.template.spec spec.volumeClaimTemplates",
		// The Prometheus Operator's stores: where they keep their data.
		{"Prometheus.monitoring.coreos.com", ""}: "kind spec.storage.emptyDir spec.storage.ephemeral spec.storage.volumeClaimTemplate spec.template.spec spec.volumeClaimTemplates",
	}
	for k, fields := range want {
		if got := render(k[0], k[1]); got != fields {
			t.Errorf("%s: key fields %q, want %q", k[0], got, fields)
		}
	}
}

// variants returns obj and copies differing in one field each: some read by
// rules (and so in the key), some not.
func variants(obj map[string]any) []map[string]any {
	out := []map[string]any{obj}
	edit := func(f func(m map[string]any)) {
		c := runtime.DeepCopyJSON(obj)
		f(c)
		out = append(out, c)
	}
	meta := func(m map[string]any) map[string]any {
		md, ok := m["metadata"].(map[string]any)
		if !ok {
			md = map[string]any{}
			m["metadata"] = md
		}
		return md
	}
	edit(func(m map[string]any) { meta(m)["name"] = "other-name" })
	edit(func(m map[string]any) { meta(m)["labels"] = map[string]any{"team": "x"} })
	edit(func(m map[string]any) { meta(m)["namespace"] = "production" })
	edit(func(m map[string]any) { meta(m)["namespace"] = "dmz" })
	edit(func(m map[string]any) { meta(m)["namespace"] = "default" })
	edit(func(m map[string]any) {
		meta(m)["annotations"] = map[string]any{"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}
	})
	edit(func(m map[string]any) { m["data"] = map[string]any{"password": "hunter2"} })
	edit(func(m map[string]any) {
		spec, ok := m["spec"].(map[string]any)
		if !ok {
			return
		}
		spec["replicas"] = int64(1)
		if tmpl, ok := spec["template"].(map[string]any); ok {
			tmpl["metadata"] = map[string]any{"annotations": map[string]any{"container.apparmor.security.beta.kubernetes.io/a": "unconfined"}}
			if ps, ok := tmpl["spec"].(map[string]any); ok {
				if cs, ok := ps["containers"].([]any); ok && len(cs) > 0 {
					if c, ok := cs[0].(map[string]any); ok {
						c["image"] = "nginx:latest"
					}
				}
			}
		}
	})
	edit(func(m map[string]any) {
		if m["kind"] == "Deployment" {
			m["kind"] = "StatefulSet"
		}
	})
	return out
}

// TestCacheMatchesUncached evaluates objects and many near copies of them with
// one policy whose cache fills up, and compares every result with a cold
// evaluation. A waiver scoped by name checks that waivers are judged per object.
func TestCacheMatchesUncached(t *testing.T) {
	ws, err := ParseWaivers([]byte(`apiVersion: slipway.dev/v1alpha1
kind: PolicyWaiver
metadata: {name: one-object}
spec:
  rule: FIN-WL-008
  scope: {name: other-name}
  reason: test
  approver: someone
  expires: "2099-01-01"
`), "w.yaml")
	if err != nil {
		t.Fatal(err)
	}
	cat := mustCatalog(t)
	warm, err := cat.Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	cold, err := cat.Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Now()
	evaluated, waived := 0, 0
	for pass := range 2 {
		for n, base := range variableTestObjects(t) {
			for v, obj := range variants(base) {
				got := warm.EvaluateObject(ctx, obj, ObjectRef{}, now)
				cold.cache = resultCache{}
				want := cold.EvaluateObject(ctx, obj, ObjectRef{}, now)
				if !reflect.DeepEqual(got, want) {
					t.Fatalf("pass %d, object %d variant %d (%v): cached result\n%+v\nuncached\n%+v", pass, n, v, obj["kind"], got, want)
				}
				evaluated++
				for _, f := range got.Findings {
					if f.Outcome == OutcomeWaived {
						waived++
					}
				}
			}
		}
	}
	if entries := len(warm.cache.entries); entries == 0 || entries >= evaluated/2 {
		t.Errorf("%d cache entries after %d evaluations: the cache is not used", entries, evaluated)
	}
	if waived == 0 {
		t.Error("no finding was waived: the waiver case did not run")
	}
}

// TestCacheSkipsInterruptedEvaluation checks that an evaluation cut short by
// its context leaves nothing behind for the next object.
func TestCacheSkipsInterruptedEvaluation(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	obj := benchCorpus(1)[0]
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	pol.EvaluateObject(ctx, obj, ObjectRef{}, time.Now())
	if n := len(pol.cache.entries); n != 0 {
		t.Fatalf("an interrupted evaluation was cached (%d entries)", n)
	}
	got := pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now())
	if slices.ContainsFunc(got.Findings, func(f Finding) bool { return f.Outcome == OutcomeError }) {
		t.Fatalf("errors after an interrupted evaluation: %+v", got.Findings)
	}
}

func TestCacheBounded(t *testing.T) {
	var c resultCache
	key := make([]byte, 1<<20)
	for i := range 40 {
		key[0], key[1] = byte(i), byte(i>>8)
		c.put(key, nil)
	}
	if c.bytes > maxCacheBytes || len(c.entries) != maxCacheBytes/len(key) {
		t.Fatalf("%d entries holding %d bytes, budget %d", len(c.entries), c.bytes, maxCacheBytes)
	}
}

// TestDecodeValueRoundTrip: what appendValue writes, decodeValue reads back
// equal, for every test object and every mutation value.
func TestDecodeValueRoundTrip(t *testing.T) {
	values := []any{int(7), float64(-0.5)}
	for _, obj := range variableTestObjects(t) {
		values = append(values, obj)
	}
	values = append(values, mutationValues...)
	for i, v := range values {
		enc, ok := appendValue(nil, v)
		if !ok {
			t.Fatalf("value %d: not encodable", i)
		}
		got, rest, ok := decodeValue(enc)
		if !ok || len(rest) != 0 || !reflect.DeepEqual(got, v) {
			t.Errorf("value %d: decoded %#v (ok %v, %d bytes left), want %#v", i, got, ok, len(rest), v)
		}
		for cut := range enc {
			if _, _, ok := decodeValue(enc[:cut]); ok {
				t.Errorf("value %d: its %d-byte prefix (of %d) decodes", i, cut, len(enc))
			}
		}
	}
}

// FuzzDecodeValue: malformed encodings are refused, never a panic.
func FuzzDecodeValue(f *testing.F) {
	enc, _ := appendValue(nil, map[string]any{"a": []any{int64(1), "x", nil, true, 1.5}})
	f.Add(enc)
	f.Fuzz(func(t *testing.T, data []byte) {
		v, _, ok := decodeValue(data)
		if !ok {
			return
		}
		if _, ok := appendValue(nil, v); !ok {
			t.Errorf("decoded %#v from %x, which does not encode", v, data)
		}
	})
}

// TestCacheSparseOnUniqueObjects: a stream of objects that never repeat
// turns key building down to one object in sparseEvery, and a stream that
// repeats turns it back up, per kind.
func TestCacheSparseOnUniqueObjects(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	deployment := func(image string) map[string]any {
		return map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "d", "namespace": "team"},
			"spec": map[string]any{"template": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"name": "app", "image": image}}}}}}
	}
	usage := func() cacheUsage {
		pol.cache.mu.Lock()
		defer pol.cache.mu.Unlock()
		return *pol.cache.usage["Deployment.apps"]
	}
	for i := range 3 * cacheWindow {
		pol.EvaluateObject(ctx, deployment(fmt.Sprintf("registry.slipway.internal/app:%d", i)), ObjectRef{}, time.Now())
	}
	if u := usage(); !u.sparse {
		t.Fatalf("after %d distinct objects the cache is not sparse: %+v", 3*cacheWindow, u)
	}
	// Sparse: only one object in sparseEvery reaches the cache.
	before := len(pol.cache.entries)
	for i := range sparseEvery * 10 {
		pol.EvaluateObject(ctx, deployment(fmt.Sprintf("registry.slipway.internal/other:%d", i)), ObjectRef{}, time.Now())
	}
	if added := len(pol.cache.entries) - before; added < 9 || added > 11 {
		t.Errorf("sparse cache stored %d of %d objects, want about %d", added, sparseEvery*10, 10)
	}
	for range 3 * cacheWindow {
		pol.EvaluateObject(ctx, deployment("registry.slipway.internal/app:same"), ObjectRef{}, time.Now())
	}
	if u := usage(); u.sparse {
		t.Fatalf("after %d equal objects the cache is still sparse: %+v", 3*cacheWindow, u)
	}
}
