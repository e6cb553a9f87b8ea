package policy

import (
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/cel-go/cel"
	admissionv1 "k8s.io/api/admissionregistration/v1"
	apiservercel "k8s.io/apiserver/pkg/cel"
	"sigs.k8s.io/yaml"
)

// TestExportAdmission checks that every manifest rule is exported or listed, and
// that every exported expression compiles in the API server's CEL environment.
func TestExportAdmission(t *testing.T) {
	ws, err := ParseWaivers([]byte(waiverYAML), "waivers.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Waivers: ws})
	if err != nil {
		t.Fatal(err)
	}
	exp, err := pol.ExportAdmission(ExportOptions{Mode: ExportEnforce, Now: time.Date(2026, 3, 1, 0, 0, 0, 0, time.UTC)})
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, s := range exp.Skipped {
		seen[s.Rule] = true
	}
	// Plain Secrets, admission configuration (which admission never checks)
	// and aggregation (which the controller manager writes) are not exported.
	for _, id := range []string{"FIN-SEC-004", "FIN-ADM-001", "FIN-ADM-002", "FIN-IAM-012"} {
		if !seen[id] {
			t.Errorf("%s must be listed as not exported", id)
		}
	}
	for i, p := range exp.Policies {
		rule := p.Annotations["policy.slipway.dev/rule"]
		seen[rule] = true
		if exp.Bindings[i].Spec.PolicyName != p.Name || exp.Bindings[i].Spec.ValidationActions[0] != "Deny" {
			t.Errorf("%s: binding %+v", p.Name, exp.Bindings[i].Spec)
		}
		env, varsType, err := newEnv()
		if err != nil {
			t.Fatal(err)
		}
		env, err = env.Extend(cel.Variable("request", cel.DynType))
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range p.Spec.Variables {
			// The API server requires identifiers; CEL reserves some words that
			// are still valid after `variables.` in the engine.
			if !celIdentifier.MatchString(v.Name) || slices.Contains(celReservedWords, v.Name) {
				t.Errorf("%s: variable name %q is not a CEL identifier", p.Name, v.Name)
			}
			if strings.Contains(v.Expression, "variables.namespace") {
				t.Errorf("%s: variable %s reads the reserved name variables.namespace", p.Name, v.Name)
			}
			if _, _, err := checkExpression(env, v.Expression); err != nil {
				t.Fatalf("%s: variable %s: %v", p.Name, v.Name, err)
			}
			varsType.Fields[v.Name] = apiservercel.NewDeclField(v.Name, apiservercel.DynType, true, nil, nil)
		}
		for _, val := range p.Spec.Validations {
			for _, e := range []string{val.Expression, val.MessageExpression} {
				if _, _, err := checkExpression(env, e); err != nil {
					t.Errorf("%s: %q: %v", p.Name, e, err)
				}
			}
			if !strings.HasPrefix(val.Message, rule+" (") {
				t.Errorf("%s: message %q does not start with the rule id", p.Name, val.Message)
			}
		}
		for _, c := range p.Spec.MatchConditions {
			if _, _, err := checkExpression(env, c.Expression); err != nil {
				t.Errorf("%s: match condition %q: %v", p.Name, c.Expression, err)
			}
		}
	}
	for _, r := range pol.Rules() {
		if !seen[r.ID] {
			t.Errorf("rule %s is neither exported nor listed", r.ID)
		}
	}
	ops := findPolicy(t, exp, "FIN-OPS-001")
	if len(ops.Spec.MatchConditions) != 1 || ops.Annotations["policy.slipway.dev/waivers-valid-until"] != "2030-02-01T00:00:00Z" {
		t.Errorf("the active waiver is not a match condition: %+v %v", ops.Spec.MatchConditions, ops.Annotations)
	}
	wl8 := findPolicy(t, exp, "FIN-WL-008")
	if len(wl8.Spec.MatchConditions) != 0 {
		t.Error("an expired waiver was exported")
	}
	data, err := exp.YAML()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "# Rules not enforced") || strings.Count(string(data), "\n---\n") != 2*len(exp.Policies) {
		t.Errorf("YAML stream shape is wrong:\n%.400s", data)
	}
	var obj map[string]any
	if err := yaml.Unmarshal([]byte(strings.SplitN(string(data), "---\n", 3)[1]), &obj); err != nil || obj["kind"] != "ValidatingAdmissionPolicy" {
		t.Errorf("first document: %v %v", obj["kind"], err)
	}
	if _, err := pol.ExportAdmission(ExportOptions{Mode: "block"}); err == nil {
		t.Error("an unknown mode was accepted")
	}
}

func findPolicy(t *testing.T, exp *AdmissionExport, rule string) *admissionv1.ValidatingAdmissionPolicy {
	t.Helper()
	for i := range exp.Policies {
		if exp.Policies[i].Annotations["policy.slipway.dev/rule"] == rule {
			return &exp.Policies[i]
		}
	}
	t.Fatalf("no exported policy for %s", rule)
	return nil
}

var celIdentifier = regexp.MustCompile(`^[_a-zA-Z][_a-zA-Z0-9]*$`)

func TestRenameReservedVariables(t *testing.T) {
	for in, want := range map[string]string{
		"variables.namespace == 'default'":          "variables.objectNamespace == 'default'",
		"variables.?namespace.orValue('')":          "variables.?objectNamespace.orValue('')",
		"variables.namespaces + variables.podSpec":  "variables.namespaces + variables.podSpec",
		"object.metadata.namespace in variables.ns": "object.metadata.namespace in variables.ns",
	} {
		if got := renameReservedVariables(in); got != want {
			t.Errorf("renameReservedVariables(%q) = %q, want %q", in, got, want)
		}
	}
	for _, v := range BuiltinVariables {
		if slices.Contains(celReservedWords, exportedVariableName(v.Name)) {
			t.Errorf("builtin variable %s is exported under a reserved name", v.Name)
		}
	}
}
