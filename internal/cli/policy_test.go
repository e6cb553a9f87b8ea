package cli

import (
	"bytes"
	"encoding/json"
	"encoding/xml"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const corpus = "../policy/testdata/corpus/"

func runPolicy(t *testing.T, stdin string, args ...string) (string, string, int) {
	t.Helper()
	cmd := newPolicyCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(stdin))
	cmd.SetArgs(args)
	cmd.SilenceUsage, cmd.SilenceErrors = true, true
	err := cmd.Execute()
	if err != nil {
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), ExitCode(err)
}

func TestPolicyCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	broken := filepath.Join(dir, "broken.yaml")
	if err := os.WriteFile(broken, []byte("apiVersion: v1\nkind: Pod\n---\nmetadata: {name: x}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name     string
		args     []string
		stdin    string
		code     int
		inOutput string
	}{
		{"hardened passes", []string{"check", corpus + "hardened.yaml"}, "", ExitOK, "Profile fin-kr passed"},
		{"demo fails", []string{"check", corpus + "tea-coffee.yaml"}, "", ExitFailure, "FIN-SEC-001"},
		{"below fail-on passes", []string{"check", "--fail-on", "critical", corpus + "ingress-nginx.yaml"}, "", ExitOK, "FIN-IAM-009"},
		{"unchecked kinds listed", []string{"check", corpus + "ingress-nginx.yaml"}, "", ExitFailure, "IngressClass.networking.k8s.io      1 object  (cluster-scoped)"},
		{"unchecked cluster-scoped refused", []string{"check", "--fail-on", "critical", "--unchecked-cluster-scoped", "refuse", corpus + "ingress-nginx.yaml"}, "", ExitFailure,
			"refuses cluster-scoped objects of kinds no rule checks"},
		{"unchecked kind allowed", []string{"check", "--fail-on", "critical", "--unchecked-cluster-scoped", "refuse", "--unchecked-allowed", "IngressClass.networking.k8s.io", corpus + "ingress-nginx.yaml"}, "", ExitOK,
			"(2 not checked)"},
		{"bad unchecked choice", []string{"check", "--unchecked-cluster-scoped", "ignore", corpus}, "", ExitUsage, "use allow or refuse"},
		{"bad unchecked kind", []string{"check", "--unchecked-allowed", "storageclasses", corpus}, "", ExitUsage, "must be written Kind or Kind.group"},
		{"stdin", []string{"check", "--profile", "pss-baseline", "-"}, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec: {hostNetwork: true, containers: [{name: a}]}\n", ExitFailure, "spec.hostNetwork"},
		{"broken input", []string{"check", broken}, "", ExitUsage, "broken.yaml: document 2: not a Kubernetes object: apiVersion is missing"},
		{"no path", []string{"check"}, "", ExitUsage, "at least one"},
		{"bad severity", []string{"check", "--fail-on", "severe", corpus}, "", ExitUsage, "unknown severity"},
		{"unknown pack", []string{"check", "--profile", "nope", corpus}, "", ExitUsage, "unknown policy pack"},
		{"bad format", []string{"check", "-o", "xml", corpus}, "", ExitUsage, "unknown output format"},
		{"bad size", []string{"check", "--max-document-size", "lots", corpus}, "", ExitUsage, "--max-document-size"},
		{"tiny size", []string{"check", "--max-document-size", "100", corpus + "hardened.yaml"}, "", ExitUsage, "larger than the limit of 100 bytes"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, errOut, code := runPolicy(t, c.stdin, c.args...)
			if code != c.code || !strings.Contains(out+errOut, c.inOutput) {
				t.Errorf("exit %d (want %d); output lacks %q:\n%s%s", code, c.code, c.inOutput, out, errOut)
			}
		})
	}
}

func TestPolicyCheckFormats(t *testing.T) {
	out, _, code := runPolicy(t, "", "check", "-o", "json", corpus)
	var report struct {
		Profile   string `json:"profile"`
		Summary   struct{ Objects, Failed, NotChecked int }
		Unchecked []struct {
			Kind, Scope string
			Objects     int
		}
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil || code != ExitFailure || report.Profile != "fin-kr" || report.Summary.Objects == 0 ||
		report.Summary.NotChecked == 0 || len(report.Unchecked) == 0 {
		t.Errorf("json: exit %d, %+v, %v", code, report, err)
	}
	out, _, _ = runPolicy(t, "", "check", "-o", "sarif", corpus)
	var sarif struct {
		Version string `json:"version"`
		Runs    []struct {
			Results []json.RawMessage `json:"results"`
		} `json:"runs"`
	}
	if err := json.Unmarshal([]byte(out), &sarif); err != nil || sarif.Version != "2.1.0" || len(sarif.Runs[0].Results) == 0 {
		t.Errorf("sarif: %v %s", err, sarif.Version)
	}
	out, _, _ = runPolicy(t, "", "check", "-o", "junit", corpus)
	var junit struct {
		XMLName  xml.Name `xml:"testsuites"`
		Failures int      `xml:"failures,attr"`
	}
	if err := xml.Unmarshal([]byte(out), &junit); err != nil || junit.Failures == 0 {
		t.Errorf("junit: %v %+v", err, junit)
	}
}

func TestPolicyListExplainExport(t *testing.T) {
	out, _, code := runPolicy(t, "", "list")
	if code != ExitOK || !strings.Contains(out, "FIN-WL-001") || !strings.Contains(out, "PSS-B-011") || strings.Contains(out, "PSS-B-003 ") {
		t.Errorf("list: exit %d\n%s", code, out)
	}
	out, _, code = runPolicy(t, "", "explain", "fin-sc-001")
	for _, want := range []string{"FIN-SC-001", "allowedRegistries: [registry.slipway.internal]", "EFSR (전자금융감독규정) 15조①3  relation=inferred effective=2025-02-05", "Check (CEL"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Errorf("explain lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	if _, _, code := runPolicy(t, "", "explain", "FIN-XX-001"); code != ExitUsage {
		t.Errorf("explain of an unknown rule: exit %d", code)
	}
	out, _, code = runPolicy(t, "", "explain", "FIN-NET-002")
	for _, want := range []string{"Reads:        NetworkPolicy.networking.k8s.io of the object's namespace", "Not exported as an admission policy: it reads other objects", "systemNamespaces: [kube-system kube-public kube-node-lease]"} {
		if code != ExitOK || !strings.Contains(out, want) {
			t.Errorf("explain FIN-NET-002 lacks %q (exit %d):\n%s", want, code, out)
		}
	}
	out, errOut, code := runPolicy(t, "", "export", "--mode", "audit")
	if code != ExitOK || !strings.Contains(out, "kind: ValidatingAdmissionPolicyBinding") || !strings.Contains(out, "- Warn") || !strings.Contains(errOut, "not exported: FIN-SEC-004") {
		t.Errorf("export: exit %d\n%.300s\n%s", code, out, errOut)
	}
	for _, id := range []string{"FIN-NET-001", "FIN-NET-002"} {
		if !strings.Contains(errOut, "not exported: "+id+": it reads other objects of the namespace") || !strings.Contains(out, "#   "+id+": ") ||
			strings.Contains(out, "policy.slipway.dev/rule: "+id) {
			t.Errorf("export does not list %s as not exported:\n%s", id, errOut)
		}
	}
}

// TestPolicyCheckOneSet: every input of a check is one set, so the
// NetworkPolicies of one file count for the workloads of another.
func TestPolicyCheckOneSet(t *testing.T) {
	dir := t.TempDir()
	workload := filepath.Join(dir, "deployment.yaml")
	policies := filepath.Join(dir, "networkpolicy.yaml")
	if err := os.WriteFile(workload, []byte(`apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  template:
    metadata: {labels: {app: web}}
    spec:
      serviceAccountName: web
      automountServiceAccountToken: false
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: web
          image: registry.slipway.internal/shop/web:1.0.0
          securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
          resources: {requests: {cpu: 100m, memory: 64Mi}, limits: {cpu: 200m, memory: 128Mi}}
          livenessProbe: {httpGet: {path: /healthz, port: 8080}}
          readinessProbe: {httpGet: {path: /readyz, port: 8080}}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(policies, []byte(`apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: default-deny, namespace: shop}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runPolicy(t, "", "check", workload)
	if code != ExitFailure || !strings.Contains(out, "FIN-NET-001 metadata.namespace") || !strings.Contains(out, "FIN-NET-002 spec.template.metadata.labels") {
		t.Errorf("the workload alone: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runPolicy(t, "", "check", workload, policies)
	if code != ExitOK || strings.Contains(out, "FIN-NET") {
		t.Errorf("the workload with its namespace's default deny: exit %d\n%s%s", code, out, errOut)
	}
	out, errOut, code = runPolicy(t, "", "check", "-o", "json", corpus+"segmentation.yaml")
	var report struct {
		Results []struct {
			Object   struct{ Kind, Name string }
			Findings []struct{ Rule, Path string }
		}
	}
	if err := json.Unmarshal([]byte(out), &report); err != nil || code != ExitFailure {
		t.Fatalf("segmentation: exit %d, %v\n%s", code, err, errOut)
	}
	unselected := 0
	for _, r := range report.Results {
		for _, f := range r.Findings {
			if f.Rule == "FIN-NET-002" {
				unselected++
				if r.Object.Name != "nightly-report" || f.Path != "spec.jobTemplate.spec.template.metadata.labels" {
					t.Errorf("FIN-NET-002 on %s/%s at %s", r.Object.Kind, r.Object.Name, f.Path)
				}
			}
		}
	}
	if unselected != 1 {
		t.Errorf("%d FIN-NET-002 findings in segmentation.yaml, want 1", unselected)
	}
}

// TestCheckProgress: a long check shows how many objects it has checked, at
// most once per progressEvery and not before, and erases the line at the end.
func TestCheckProgress(t *testing.T) {
	var out bytes.Buffer
	start := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	p := &checkProgress{w: &out, start: start}
	clock := start
	now := func() time.Time { return clock }
	for i := range 4096 {
		// 256 objects per 100 ms: 1.6 s in all.
		if i%256 == 0 {
			clock = clock.Add(100 * time.Millisecond)
		}
		p.add(now)
	}
	p.done()
	got := out.String()
	if lines := strings.Count(got, "\rchecked "); lines != 1 {
		t.Errorf("%d progress lines in 1.6 s, want 1: %q", lines, got)
	}
	if !strings.Contains(got, "\rchecked 2560 objects (1 s)") || !strings.HasSuffix(got, "\r\x1b[K") {
		t.Errorf("progress output %q", got)
	}
	var quiet bytes.Buffer
	short := &checkProgress{w: &quiet, start: start}
	for range 1000 {
		short.add(func() time.Time { return start.Add(500 * time.Millisecond) })
	}
	short.done()
	if quiet.Len() != 0 {
		t.Errorf("a check shorter than %s printed %q", progressEvery, quiet.String())
	}
	var none *checkProgress // not a terminal
	none.add(time.Now)
	none.done()
}
