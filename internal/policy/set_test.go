package policy

import (
	"context"
	"encoding/json"
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// benchNetworkPolicies returns n NetworkPolicies for the namespaces of
// benchCorpus (team-0 to team-49): full default denies, ingress-only denies,
// policies selecting the corpus's pods by label, and policies selecting none.
func benchNetworkPolicies(n int) []map[string]any {
	out := make([]map[string]any, n)
	for i := range n {
		spec := map[string]any{}
		switch i % 5 {
		case 0:
			spec = map[string]any{"podSelector": map[string]any{}, "policyTypes": []any{"Ingress", "Egress"}}
		case 1:
			spec = map[string]any{"podSelector": map[string]any{}}
		case 2:
			spec = map[string]any{"podSelector": map[string]any{"matchLabels": map[string]any{"app": "x"}}, "policyTypes": []any{"Ingress"}}
		case 3:
			spec = map[string]any{"podSelector": map[string]any{"matchExpressions": []any{
				map[string]any{"key": "app", "operator": "NotIn", "values": []any{"x"}}}}}
		case 4:
			spec = map[string]any{"podSelector": map[string]any{}, "policyTypes": []any{"Egress"}}
		}
		out[i] = map[string]any{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
			"metadata": map[string]any{"name": fmt.Sprintf("np-%d", i), "namespace": fmt.Sprintf("team-%d", (i*7)%50)}, "spec": spec}
	}
	return out
}

func mustYAML(t *testing.T, doc string) map[string]any {
	t.Helper()
	obj, err := decodeYAML([]byte(doc))
	if err != nil {
		t.Fatalf("%s: %v", doc, err)
	}
	return obj
}

// netpol returns a NetworkPolicy in namespace ns with the given spec (YAML flow).
func netpol(t *testing.T, ns, name, spec string) map[string]any {
	return mustYAML(t, fmt.Sprintf("{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: %s, namespace: %s}, spec: %s}", name, ns, spec))
}

// TestNetworkPolicyRules covers FIN-NET-001 and FIN-NET-002 case by case:
// what counts as a default deny, and podSelector matching with every operator.
func TestNetworkPolicyRules(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	web := `{apiVersion: apps/v1, kind: Deployment, metadata: {name: web, namespace: %s}, spec: {template: {metadata: {labels: {app: web, tier: front}}, spec: {containers: [{name: a}]}}}}`
	deployment := func(ns string) map[string]any { return mustYAML(t, fmt.Sprintf(web, ns)) }
	type tc struct {
		name     string
		object   map[string]any
		set      []map[string]any // checked with object
		related  []map[string]any // known, not checked
		net1     bool             // FIN-NET-001 fails
		net2Path string           // FIN-NET-002 fails at this path ("" passes)
	}
	const labels = "spec.template.metadata.labels"
	cases := []tc{
		{name: "no policy", object: deployment("shop"), net1: true, net2Path: labels},
		{name: "one default deny for both directions", object: deployment("shop"),
			set: []map[string]any{netpol(t, "shop", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")}},
		{name: "default deny split over two policies", object: deployment("shop"),
			set: []map[string]any{
				netpol(t, "shop", "deny-in", "{podSelector: {}}"), // policyTypes defaults to Ingress
				netpol(t, "shop", "deny-out", "{podSelector: {matchLabels: {}, matchExpressions: []}, policyTypes: [Egress]}"),
			}},
		{name: "ingress only", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "deny-in", "{podSelector: {}, policyTypes: [Ingress]}")}},
		{name: "egress rules present without policyTypes", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {}, egress: [{to: [{podSelector: {}}]}]}")}},
		{name: "both types but ingress allowed from anywhere", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {}, policyTypes: [Ingress, Egress], ingress: [{}]}")}},
		{name: "deny both for some pods only", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: web}}, policyTypes: [Ingress, Egress]}")}},
		{name: "deny in another namespace", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "other", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")}},
		{name: "live default deny", object: deployment("shop"),
			related: []map[string]any{netpol(t, "shop", "deny", "{podSelector: {}, policyTypes: [Ingress, Egress]}")}},
		{name: "system namespace", object: deployment("kube-system")},
		{name: "matchLabels match", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: web}}}")}},
		{name: "matchLabels value differs", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: api}}}")}},
		{name: "matchLabels key absent", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: web, team: a}}}")}},
		{name: "In", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: tier, operator: In, values: [back, front]}]}}")}},
		{name: "In, other values", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: tier, operator: In, values: [back]}]}}")}},
		{name: "In, label absent", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: zone, operator: In, values: [a]}]}}")}},
		{name: "NotIn", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [back]}]}}")}},
		{name: "NotIn, value listed", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: tier, operator: NotIn, values: [front]}]}}")}},
		{name: "NotIn, label absent", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: zone, operator: NotIn, values: [a]}]}}")}},
		{name: "Exists", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: app, operator: Exists}]}}")}},
		{name: "Exists, label absent", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: zone, operator: Exists}]}}")}},
		{name: "DoesNotExist", object: deployment("shop"), net1: true,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: zone, operator: DoesNotExist}]}}")}},
		{name: "DoesNotExist, label present", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: app, operator: DoesNotExist}]}}")}},
		{name: "unknown operator selects nothing", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: app, operator: Near, values: [web]}]}}")}},
		{name: "labels and expressions must all hold", object: deployment("shop"), net1: true, net2Path: labels,
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: web}, matchExpressions: [{key: tier, operator: In, values: [back]}]}}")}},
		{name: "one selecting policy among others suffices", object: deployment("shop"), net1: true,
			set: []map[string]any{
				netpol(t, "shop", "api", "{podSelector: {matchLabels: {app: api}}}"),
				netpol(t, "shop", "web", "{podSelector: {matchLabels: {tier: front}}}"),
			}},
		{name: "pod labels", object: mustYAML(t, `{apiVersion: v1, kind: Pod, metadata: {name: p, namespace: shop, labels: {app: api}}, spec: {containers: [{name: a}]}}`),
			net1: true, net2Path: "metadata.labels",
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchLabels: {app: web}}}")}},
		{name: "cronjob without labels", object: mustYAML(t, `{apiVersion: batch/v1, kind: CronJob, metadata: {name: c, namespace: shop}, spec: {jobTemplate: {spec: {template: {spec: {containers: [{name: a}]}}}}}}`),
			net1: true, net2Path: "spec.jobTemplate.spec.template.metadata.labels",
			set: []map[string]any{netpol(t, "shop", "np", "{podSelector: {matchExpressions: [{key: app, operator: Exists}]}}")}},
		{name: "namespace unset on both", object: mustYAML(t, `{apiVersion: apps/v1, kind: Deployment, metadata: {name: web}, spec: {template: {metadata: {labels: {app: web}}, spec: {containers: [{name: a}]}}}}`),
			set: []map[string]any{mustYAML(t, `{apiVersion: networking.k8s.io/v1, kind: NetworkPolicy, metadata: {name: deny}, spec: {podSelector: {}, policyTypes: [Ingress, Egress]}}`)}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			objs := []*unstructured.Unstructured{{Object: c.object}}
			for _, o := range c.set {
				objs = append(objs, &unstructured.Unstructured{Object: o})
			}
			var related []*unstructured.Unstructured
			for _, o := range c.related {
				related = append(related, &unstructured.Unstructured{Object: o})
			}
			results, err := pol.EvaluateSet(context.Background(), objs, related, time.Now())
			if err != nil {
				t.Fatal(err)
			}
			if len(results) != len(objs) {
				t.Fatalf("%d results for %d objects: related objects must not be checked", len(results), len(objs))
			}
			got := map[string]string{}
			for _, f := range results[0].Findings {
				if f.Rule == "FIN-NET-001" || f.Rule == "FIN-NET-002" {
					if f.Outcome != OutcomeFail {
						t.Errorf("%s: outcome %s: %s", f.Rule, f.Outcome, f.Message)
					}
					got[f.Rule] = f.Path
				}
			}
			want := map[string]string{}
			if c.net1 {
				want["FIN-NET-001"] = "metadata.namespace"
			}
			if c.net2Path != "" {
				want["FIN-NET-002"] = c.net2Path
			}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("findings %v, want %v", got, want)
			}
			for _, id := range []string{"FIN-NET-001", "FIN-NET-002"} {
				if !slices.Contains(results[0].Checked, id) {
					t.Errorf("%s is not in Checked %v", id, results[0].Checked)
				}
			}
		})
	}
}

// TestSystemNamespacesParameter checks that the exemption is the parameter's.
func TestSystemNamespacesParameter(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"},
		Parameters: map[string]json.RawMessage{"systemNamespaces": json.RawMessage(`["platform"]`)}})
	if err != nil {
		t.Fatal(err)
	}
	rules := func(ns string) []string {
		obj := mustYAML(t, fmt.Sprintf(`{apiVersion: apps/v1, kind: Deployment, metadata: {name: d, namespace: %s}, spec: {template: {spec: {containers: [{name: a}]}}}}`, ns))
		res, err := pol.Evaluate(context.Background(), []*unstructured.Unstructured{{Object: obj}}, time.Now())
		if err != nil {
			t.Fatal(err)
		}
		var out []string
		for _, f := range res[0].Findings {
			if strings.HasPrefix(f.Rule, "FIN-NET-00") {
				out = append(out, f.Rule)
			}
		}
		return out
	}
	if got := rules("platform"); len(got) != 0 {
		t.Errorf("platform (a system namespace by parameter): %v", got)
	}
	if got := rules("kube-system"); !slices.Equal(got, []string{"FIN-NET-001", "FIN-NET-002"}) {
		t.Errorf("kube-system (no longer a system namespace): %v", got)
	}
}

// TestEvaluateObjectLeavesOutCrossObjectRules: one object alone cannot be
// judged by rules about its neighbours, so they are neither run nor listed.
func TestEvaluateObjectLeavesOutCrossObjectRules(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	obj := benchCorpus(1)[0]
	res := pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now())
	for _, id := range []string{"FIN-NET-001", "FIN-NET-002"} {
		if slices.Contains(res.Checked, id) || slices.ContainsFunc(res.Findings, func(f Finding) bool { return f.Rule == id }) {
			t.Errorf("EvaluateObject ran %s", id)
		}
	}
	if got := pol.NamespaceObjectKinds(); !slices.Equal(got, []string{"NetworkPolicy.networking.k8s.io"}) {
		t.Errorf("NamespaceObjectKinds = %v", got)
	}
	baseline, err := mustCatalog(t).Compile(Profile{Packs: []string{"pss-baseline"}})
	if err != nil {
		t.Fatal(err)
	}
	if got := baseline.NamespaceObjectKinds(); len(got) != 0 {
		t.Errorf("pss-baseline has no cross-object rule, NamespaceObjectKinds = %v", got)
	}
}

// TestCrossObjectRulesNotCached evaluates the same Deployment in sets that
// differ only in its neighbours, with one policy whose cache is warm: the
// verdict must follow the neighbours.
func TestCrossObjectRulesNotCached(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	obj := benchCorpus(1)[0]
	deny := map[string]any{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
		"metadata": map[string]any{"name": "deny", "namespace": "team-0"},
		"spec":     map[string]any{"podSelector": map[string]any{}, "policyTypes": []any{"Ingress", "Egress"}}}
	hasNet := func(withPolicy bool) bool {
		set := pol.NewSetEvaluator(time.Now())
		set.Add(context.Background(), obj, ObjectRef{})
		if withPolicy {
			set.AddRelated(deny)
		}
		res, err := set.Results(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		return slices.ContainsFunc(res[0].Findings, func(f Finding) bool { return f.Rule == "FIN-NET-001" })
	}
	for range 2 {
		if !hasNet(false) || hasNet(true) || !hasNet(false) {
			t.Fatal("FIN-NET-001 did not follow the namespace's policies")
		}
	}
	if len(pol.cache.entries) == 0 {
		t.Fatal("the single-object rules were not cached")
	}
}

// TestSetEvaluatorKeepsLittle checks what a SetEvaluator holds of a workload
// until Results: its identity and the fields cross-object rules read, never
// its containers, and that what it holds is judged exactly as the whole
// object (the same cache key, over the corpus and generated workloads).
func TestSetEvaluatorKeepsLittle(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	plan := pol.plans["Deployment.apps"]
	obj := benchCorpus(1)[0]
	got := plan.project(obj)
	want := map[string]any{
		"apiVersion": "apps/v1", "kind": "Deployment",
		"metadata": map[string]any{"name": "app-0", "namespace": "team-0"},
		"spec":     map[string]any{"template": map[string]any{"metadata": map[string]any{"labels": map[string]any{"app": "x"}}}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("projection %v, want %v", got, want)
	}

	objs := variableTestObjects(t)
	for _, o := range objs {
		kind, _ := o["kind"].(string)
		apiVersion, _ := o["apiVersion"].(string)
		plan := pol.plans[kindKey(apiVersion, kind)]
		if plan == nil || len(plan.crossRules) == 0 {
			continue
		}
		fields, ok := plan.projection[kindClass(kind)]
		if !ok {
			continue
		}
		a, okA := appendKey(nil, "", kind, fields, o)
		b, okB := appendKey(nil, "", kind, fields, plan.project(o))
		if okA != okB || string(a) != string(b) {
			t.Errorf("%v %v: the projection reads differently from the object", kind, o["metadata"])
		}
	}
}

// TestSetEvaluatorMatchesEvaluateSet runs the corpus (one set) through the
// streaming evaluator, which keeps projections, and through EvaluateSet,
// which keeps whole objects, with waivers in force: the results must agree.
func TestSetEvaluatorMatchesEvaluateSet(t *testing.T) {
	ws, err := ParseWaivers([]byte(waiverYAML+`---
apiVersion: slipway.dev/v1alpha1
kind: PolicyWaiver
metadata: {name: monitoring-netpol}
spec:
  rule: FIN-NET-002
  scope: {namespace: monitoring, selector: {matchLabels: {app.kubernetes.io/name: grafana}}}
  reason: grafana's policy is managed by the platform team
  approver: security-officer@example.com
  expires: "2099-01-01"
`), "waivers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("testdata/corpus/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	set := pol.NewSetEvaluator(now)
	var objs []*unstructured.Unstructured
	var refs []ObjectRef
	if err := ReadManifests(ctx, files, ReadOptions{}, func(m Manifest) error {
		set.Add(ctx, m.Object, m.Ref)
		objs = append(objs, &unstructured.Unstructured{Object: m.Object})
		refs = append(refs, m.Ref)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	streamed, err := set.Results(ctx)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := pol.EvaluateSet(ctx, objs, nil, now)
	if err != nil {
		t.Fatal(err)
	}
	waived := 0
	for i := range batch {
		// The batch API is not told where objects came from.
		streamed[i].Object.File, streamed[i].Object.Document, streamed[i].Object.Line = refs[i].File, 0, 0
		batch[i].Object.File = refs[i].File
		if !reflect.DeepEqual(streamed[i], batch[i]) {
			t.Errorf("object %d: streamed %+v\nbatch %+v", i, streamed[i], batch[i])
		}
		for _, f := range batch[i].Findings {
			if f.Rule == "FIN-NET-002" && f.Outcome == OutcomeWaived {
				waived++
			}
		}
	}
	if waived != 1 {
		t.Errorf("%d FIN-NET-002 findings waived, want 1 (grafana)", waived)
	}

	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	set = pol.NewSetEvaluator(now)
	set.Add(ctx, objs[0].Object, ObjectRef{})
	if _, err := set.Results(cancelled); err == nil {
		t.Error("Results after the context ended returned no error")
	}
}

// TestNamespaceObjectsOnlyForCrossObjectRules: a rule that reads
// namespaceObjects without declaring which kinds would pass compilation only
// to fail in the API server once exported, so it must not compile.
func TestNamespaceObjectsOnlyForCrossObjectRules(t *testing.T) {
	pack := `apiVersion: slipway.dev/v1alpha1
kind: PolicyPack
name: acme-net
title: ACME
version: "1"
rules:
  - id: ACME-NET-001
    title: A Service has a NetworkPolicy beside it
    severity: low
    targets: [manifest]
    match: {kinds: [Service]}
    %s
    expression: "size(namespaceObjects) > 0 ? [] : ['metadata.namespace']"
    message: no NetworkPolicy
    remediation: Add one.
    mappings: [{framework: ACME standard, clause: "1", relation: direct}]
`
	cat := mustCatalog(t)
	p, err := ParsePack([]byte(fmt.Sprintf(pack, "")), "undeclared.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Add(p); err != nil {
		t.Fatal(err)
	}
	if _, err := cat.Compile(Profile{Packs: []string{"acme-net"}}); err == nil || !strings.Contains(err.Error(), "must list their kinds in namespaceObjects") {
		t.Errorf("a rule reading namespaceObjects undeclared: got %v", err)
	}
	if _, err := ParsePack([]byte(fmt.Sprintf(pack, "namespaceObjects: [networkpolicy]")), "bad.yaml"); err == nil || !strings.Contains(err.Error(), "namespaceObjects kind") {
		t.Errorf("a malformed namespaceObjects kind: got %v", err)
	}
	declared := strings.Replace(fmt.Sprintf(pack, "namespaceObjects: [NetworkPolicy.networking.k8s.io]"), "name: acme-net", "name: acme-net2", 1)
	p, err = ParsePack([]byte(declared), "declared.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Add(p); err != nil {
		t.Fatal(err)
	}
	pol, err := cat.Compile(Profile{Packs: []string{"acme-net2"}})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := pol.ExportAdmission(ExportOptions{Mode: ExportEnforce, Now: time.Now()})
	if err != nil {
		t.Fatal(err)
	}
	if len(exp.Policies) != 0 || len(exp.Skipped) != 1 || !strings.Contains(exp.Skipped[0].Reason, "one object at a time") {
		t.Errorf("export of a cross-object rule: %d policies, skipped %+v", len(exp.Policies), exp.Skipped)
	}
}
