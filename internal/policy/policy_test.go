package policy

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func TestDocsUpToDate(t *testing.T) {
	want := GenerateDocs(mustCatalog(t))
	got, err := os.ReadFile("../../docs/policies.md")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatal("docs/policies.md is stale: run go generate ./internal/policy")
	}
}

func readAll(t *testing.T, paths []string, opts ReadOptions) ([]Manifest, error) {
	t.Helper()
	var out []Manifest
	err := ReadManifests(context.Background(), paths, opts, func(m Manifest) error {
		out = append(out, m)
		return nil
	})
	return out, err
}

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestReadManifests(t *testing.T) {
	dir := t.TempDir()
	writeFile(t, dir, "a.yaml", "# header\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: one}\n---\n---\napiVersion: v1\nkind: List\nitems:\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: two}}\n- {apiVersion: v1, kind: ConfigMap, metadata: {name: three}}\n")
	writeFile(t, dir, "b.json", `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"four"}} {"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"five"}}`)
	writeFile(t, dir, "notes.txt", "not a manifest")
	writeFile(t, dir, ".hidden/x.yaml", "garbage: [")
	writeFile(t, dir, "kust/kustomization.yaml", "namespace: shop\nresources: [cm.yaml]\n")
	writeFile(t, dir, "kust/cm.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: six}\n")
	ms, err := readAll(t, []string{dir, "-"}, ReadOptions{Stdin: strings.NewReader("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: seven}\n")})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range ms {
		u := unstructured.Unstructured{Object: m.Object}
		got = append(got, fmt.Sprintf("%s %s %s#%d:%d", u.GetName(), u.GetNamespace(), filepath.Base(m.Ref.File), m.Ref.Document, m.Ref.Line))
	}
	want := []string{"one  a.yaml#1:3", "two  a.yaml#2:8", "three  a.yaml#2:8", "four  b.json#1:0", "five  b.json#2:0", "six shop kust (kustomize)#1:0", "seven  <stdin>#1:1"}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

func TestReadManifestsErrors(t *testing.T) {
	dir := t.TempDir()
	big := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: big}\ndata:\n  x: " + strings.Repeat("a", 2000) + "\n"
	cases := []struct {
		name, content, want string
		limit               int
	}{
		{"broken.yaml", "apiVersion: v1\nkind: ConfigMap\n---\nkind: [\n", "broken.yaml: document 2 (line 4): invalid YAML", 0},
		{"nokind.yaml", "apiVersion: v1\nkind: ConfigMap\n---\napiVersion: v1\nmetadata: {name: x}\n", "nokind.yaml: document 2: not a Kubernetes object: kind is missing", 0},
		{"scalar.yaml", "just a string\n", "scalar.yaml: document 1 (line 1): not a Kubernetes object", 0},
		{"dup.yaml", "apiVersion: v1\nkind: Pod\nkind: Pod\n", "dup.yaml: document 1 (line 1): invalid YAML", 0},
		{"binary.yaml", "apiVersion: v1\x00\x01\x02", "binary.yaml: this is a binary file", 0},
		{"big.yaml", "apiVersion: v1\nkind: ConfigMap\n---\n" + big, "big.yaml: document 2 (line 4): larger than the limit of 1024 bytes", 1024},
		{"big.json", `{"apiVersion":"v1","kind":"ConfigMap","data":{"x":"` + strings.Repeat("a", 2000) + `"}}`, "big.json: document 1: larger than the limit of 1024 bytes", 1024},
		{"badlist.yaml", "apiVersion: v1\nkind: List\nitems: [{apiVersion: v1}]\n", "badlist.yaml: document 1: item 1 of the List: not a Kubernetes object: kind is missing", 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			p := writeFile(t, dir, c.name, c.content)
			_, err := readAll(t, []string{p}, ReadOptions{MaxDocumentSize: c.limit})
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got error %v, want one containing %q", err, c.want)
			}
		})
	}
}

func TestReadManifestsLargeStream(t *testing.T) {
	var b strings.Builder
	for i := range 20000 {
		fmt.Fprintf(&b, "---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: cm-%d}\n", i)
	}
	n := 0
	err := ReadManifests(context.Background(), []string{"-"}, ReadOptions{Stdin: strings.NewReader(b.String()), MaxDocumentSize: 256}, func(Manifest) error { n++; return nil })
	if err != nil || n != 20000 {
		t.Fatalf("read %d objects, err %v", n, err)
	}
}

const waiverYAML = `apiVersion: slipway.dev/v1alpha1
kind: PolicyWaiver
metadata: {name: ingress-limits}
spec:
  rule: FIN-OPS-001
  scope: {namespace: ingress-nginx, selector: {matchLabels: {app.kubernetes.io/component: controller}}}
  reason: the chart sets no limits; tracked in OPS-1234
  approver: security-officer@example.com
  expires: "2030-01-31"
---
apiVersion: slipway.dev/v1alpha1
kind: PolicyWaiver
metadata: {name: expired}
spec:
  rule: FIN-WL-008
  scope: {namespace: ingress-nginx, kind: Deployment, name: ingress-nginx-controller}
  reason: nginx writes to /tmp
  approver: security-officer@example.com
  expires: "2020-01-01T00:00:00Z"
`

func TestWaivers(t *testing.T) {
	ws, err := ParseWaivers([]byte(waiverYAML), "waivers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	var objs []*unstructured.Unstructured
	if err := ReadManifests(context.Background(), []string{"testdata/corpus/ingress-nginx.yaml"}, ReadOptions{}, func(m Manifest) error {
		objs = append(objs, &unstructured.Unstructured{Object: m.Object})
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	check := func(now time.Time) map[string]Outcome {
		results, err := pol.Evaluate(context.Background(), objs, now)
		if err != nil {
			t.Fatal(err)
		}
		got := map[string]Outcome{}
		for _, r := range results {
			for _, f := range r.Findings {
				got[f.Rule+" "+f.Path] = f.Outcome
			}
		}
		return got
	}
	limits := "FIN-OPS-001 spec.template.spec.containers[0].resources.limits.cpu"
	rofs := "FIN-WL-008 spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem"
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	if got := check(now); got[limits] != OutcomeWaived || got[rofs] != OutcomeFail {
		t.Errorf("before expiry: %s is %s, %s is %s; want waived and fail (expired waiver)", limits, got[limits], rofs, got[rofs])
	}
	// A date-only expiry holds through that day.
	if got := check(time.Date(2030, 1, 31, 23, 0, 0, 0, time.UTC)); got[limits] != OutcomeWaived {
		t.Errorf("on the expiry day: %s is %s, want waived", limits, got[limits])
	}
	if got := check(time.Date(2030, 2, 1, 0, 0, 0, 0, time.UTC)); got[limits] != OutcomeFail {
		t.Errorf("after expiry: %s is %s, want fail", limits, got[limits])
	}

	results, _ := pol.Evaluate(context.Background(), objs, now)
	report := NewReport(pol, results)
	if report.Failed(SeverityCritical) || !report.Failed(SeverityHigh) {
		t.Errorf("fail-on thresholds: critical=%v high=%v", report.Failed(SeverityCritical), report.Failed(SeverityHigh))
	}
	if report.Summary.Waived != 1 {
		t.Errorf("summary %+v: want one waived check", report.Summary)
	}
}

func TestWaiverErrors(t *testing.T) {
	cases := map[string]string{
		"no scope":     "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, reason: r, approver: a, expires: '2030-01-01'}\n",
		"no expiry":    "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {namespace: x}, reason: r, approver: a}\n",
		"bad date":     "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {namespace: x}, reason: r, approver: a, expires: soon}\n",
		"no approver":  "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {namespace: x}, reason: r, expires: '2030-01-01'}\n",
		"unknown key":  "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {namespace: x}, reason: r, approver: a, expires: '2030-01-01', forever: true}\n",
		"bad selector": "apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {selector: {matchExpressions: [{key: a, operator: Near}]}}, reason: r, approver: a, expires: '2030-01-01'}\n",
	}
	for name, doc := range cases {
		if _, err := ParseWaivers([]byte("---\n"+doc), "w.yaml"); err == nil || !strings.Contains(err.Error(), "w.yaml: document 1") {
			t.Errorf("%s: got %v, want an error naming w.yaml document 1", name, err)
		}
	}
	ws, err := ParseWaivers([]byte(strings.ReplaceAll(cases["no approver"], "reason: r,", "reason: r, approver: a,")), "w.yaml")
	if err != nil {
		t.Fatal(err)
	}
	ws[0].Rule = "FIN-XX-999"
	if _, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws}); err == nil || !strings.Contains(err.Error(), "FIN-XX-999") {
		t.Errorf("waiver for an unknown rule: got %v", err)
	}
}

func TestProfiles(t *testing.T) {
	cat := mustCatalog(t)
	pol, err := cat.Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]bool{}
	for _, r := range pol.Rules() {
		ids[r.ID] = true
	}
	for _, replaced := range []string{"PSS-B-003", "PSS-R-001", "PSS-R-005", "PSS-B-010"} {
		if ids[replaced] {
			t.Errorf("fin-kr still holds %s, which a FIN rule replaces", replaced)
		}
	}
	for _, kept := range []string{"PSS-B-001", "PSS-B-011", "FIN-WL-001", "FIN-OPS-004"} {
		if !ids[kept] {
			t.Errorf("fin-kr lacks %s", kept)
		}
	}

	org := `apiVersion: slipway.dev/v1alpha1
kind: PolicyPack
name: acme
title: ACME additions
version: "1"
extends: [fin-kr]
parameters:
  - {name: allowedRegistries, type: stringList, description: ACME registries, default: ["harbor.acme.example"]}
rules:
  - id: ACME-LBL-001
    title: Workloads carry an owner label
    severity: low
    targets: [manifest]
    match: {kinds: [Deployment.apps]}
    expression: "has(object.metadata.labels) && 'owner' in object.metadata.labels ? [] : ['metadata.labels']"
    message: no owner label
    remediation: Add metadata.labels.owner.
    mappings: [{framework: ACME standard, clause: "4.2", relation: direct}]
`
	p, err := ParsePack([]byte(org), "acme.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if err := cat.Add(p); err != nil {
		t.Fatal(err)
	}
	if err := cat.Add(p); err == nil {
		t.Error("adding a pack name twice succeeded")
	}
	params, err := ParseParameters([]byte("apiVersion: slipway.dev/v1alpha1\nkind: PolicyParameters\nparameters:\n  productionNamespaces: [prod]\n"), "params.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err = cat.Compile(Profile{Packs: []string{"acme"}, Parameters: params})
	if err != nil {
		t.Fatal(err)
	}
	obj := map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "metadata": map[string]any{"name": "d", "namespace": "prod"},
		"spec": map[string]any{"template": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"name": "a", "image": "harbor.acme.example/x:1"}}}}}}
	got := map[string]bool{}
	for _, f := range pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now()).Findings {
		got[f.Rule+" "+f.Path] = true
	}
	if !got["ACME-LBL-001 metadata.labels"] || got["FIN-SC-001 spec.template.spec.containers[0].image"] || !got["FIN-SC-002 spec.template.spec.containers[0].image"] {
		t.Errorf("org pack with overridden parameters: got %v", got)
	}

	bad := map[string]Profile{
		"unknown pack":      {Packs: []string{"nope"}},
		"unknown parameter": {Packs: []string{"fin-kr"}, Parameters: map[string]json.RawMessage{"nope": json.RawMessage(`1`)}},
		"mistyped value":    {Packs: []string{"fin-kr"}, Parameters: map[string]json.RawMessage{"edgeNamespaces": json.RawMessage(`"dmz"`)}},
		"port as a string":  {Packs: []string{"pss-baseline"}, Parameters: map[string]json.RawMessage{"allowedHostPorts": json.RawMessage(`["9100"]`)}},
	}
	for name, prof := range bad {
		if _, err := cat.Compile(prof); err == nil {
			t.Errorf("%s: compiled", name)
		}
	}
	// A parameter is an admission policy variable, which must be a CEL identifier.
	if _, err := ParsePack([]byte(strings.Replace(org, "{name: allowedRegistries,", "{name: package,", 1)), "reserved.yaml"); err == nil || !strings.Contains(err.Error(), "reserved word") {
		t.Errorf("a parameter named with a CEL reserved word: got %v", err)
	}
	broken := strings.Replace(org, "? [] :", "? [] ::", 1)
	broken = strings.Replace(broken, "name: acme", "name: broken", 1)
	p, err = ParsePack([]byte(broken), "broken.yaml")
	if err != nil {
		t.Fatal(err)
	}
	_ = cat.Add(p)
	if _, err := cat.Compile(Profile{Packs: []string{"broken"}}); err == nil || !strings.Contains(err.Error(), "ACME-LBL-001") {
		t.Errorf("a CEL syntax error: got %v", err)
	}
}

func corpusReport(t *testing.T) *Report {
	t.Helper()
	ws, err := ParseWaivers([]byte(waiverYAML), "waivers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	now := time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)
	set := pol.NewSetEvaluator(now)
	if err := ReadManifests(context.Background(), []string{"testdata/corpus"}, ReadOptions{}, func(m Manifest) error {
		set.Add(context.Background(), m.Object, m.Ref)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	results, err := set.Results(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return NewReport(pol, results)
}

func TestReportFormats(t *testing.T) {
	r := corpusReport(t)

	var sarif bytes.Buffer
	if err := r.WriteSARIF(&sarif, "test"); err != nil {
		t.Fatal(err)
	}
	var log struct {
		Version string `json:"version"`
		Runs    []struct {
			Tool struct {
				Driver struct {
					Rules []struct {
						ID         string `json:"id"`
						Properties struct {
							SecuritySeverity string `json:"security-severity"`
						} `json:"properties"`
					} `json:"rules"`
				} `json:"driver"`
			} `json:"tool"`
			Results []struct {
				RuleID       string `json:"ruleId"`
				RuleIndex    int    `json:"ruleIndex"`
				Suppressions []any  `json:"suppressions"`
				Locations    []struct {
					PhysicalLocation struct {
						ArtifactLocation struct{ URI string }    `json:"artifactLocation"`
						Region           struct{ StartLine int } `json:"region"`
					} `json:"physicalLocation"`
				} `json:"locations"`
			} `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(sarif.Bytes(), &log); err != nil {
		t.Fatal(err)
	}
	run := log.Runs[0]
	suppressed := 0
	for _, res := range run.Results {
		if run.Tool.Driver.Rules[res.RuleIndex].ID != res.RuleID {
			t.Fatalf("result %s points at rule %d", res.RuleID, res.RuleIndex)
		}
		if loc := res.Locations[0].PhysicalLocation; loc.ArtifactLocation.URI == "" || loc.Region.StartLine == 0 {
			t.Errorf("result %s has no file location", res.RuleID)
		}
		suppressed += len(res.Suppressions)
	}
	if log.Version != "2.1.0" || len(run.Results) == 0 || suppressed != 2 || run.Tool.Driver.Rules[0].Properties.SecuritySeverity == "" {
		t.Errorf("SARIF: version %s, %d results, %d suppressed", log.Version, len(run.Results), suppressed)
	}
	// The kinds no rule checked are notifications of the run.
	var notes struct {
		Runs []struct {
			Invocations []struct {
				ExecutionSuccessful bool `json:"executionSuccessful"`
				Notifications       []struct {
					Level   string    `json:"level"`
					Message sarifText `json:"message"`
				} `json:"toolExecutionNotifications"`
			} `json:"invocations"`
		} `json:"runs"`
	}
	if err := json.Unmarshal(sarif.Bytes(), &notes); err != nil {
		t.Fatal(err)
	}
	if len(r.Unchecked) == 0 || len(notes.Runs[0].Invocations) != 1 || len(notes.Runs[0].Invocations[0].Notifications) != len(r.Unchecked) {
		t.Fatalf("SARIF: %d kinds not checked, invocations %+v", len(r.Unchecked), notes.Runs[0].Invocations)
	}
	for i, n := range notes.Runs[0].Invocations[0].Notifications {
		if u := r.Unchecked[i]; n.Level != "note" || !strings.HasPrefix(n.Message.Text, fmt.Sprintf("%d ", u.Objects)) || !strings.Contains(n.Message.Text, " of kind "+u.Kind+" w") {
			t.Errorf("SARIF notification %+v for %+v", n, r.Unchecked[i])
		}
	}

	var junit bytes.Buffer
	if err := r.WriteJUnit(&junit); err != nil {
		t.Fatal(err)
	}
	var suites junitSuites
	if err := xml.Unmarshal(junit.Bytes(), &suites); err != nil {
		t.Fatal(err)
	}
	// One case per rule checked on an object, and one skipped per kind not checked.
	if suites.Tests != r.Summary.Checks+len(r.Unchecked) || suites.Failures != r.Summary.Failed || suites.Skipped != r.Summary.Waived+len(r.Unchecked) {
		t.Errorf("JUnit totals %d/%d/%d, summary %+v, %d kinds not checked", suites.Tests, suites.Failures, suites.Skipped, r.Summary, len(r.Unchecked))
	}

	var text bytes.Buffer
	if err := r.WriteText(&text, false); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{"Deployment/monitoring/grafana  testdata/corpus/monitoring.yaml:", "waiver ingress-limits: the chart sets no limits", "Profile fin-kr failed:",
		"Not checked (no rule of the profile applies to these kinds):", "  IngressClass.networking.k8s.io      1 object  (cluster-scoped)\n", "  ServiceAccount                      2 objects\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("text report lacks %q", want)
		}
	}
	if strings.Contains(out, "\x1b[") || strings.Contains(out, "Deployment/production/ledger") {
		t.Error("text report has colour, or lists an object without findings")
	}
}
