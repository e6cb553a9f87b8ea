package policy

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"testing"
	"time"
)

// TestEscalationsRefused: fin-kr refuses each way a tenant's manifests could
// take over the cluster through RBAC or admission configuration, naming the
// rule entry that grants the right; and nothing refuses the narrow grants a
// team needs.
func TestEscalationsRefused(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	rbac := func(kind, namespace, body string) string {
		ns := ""
		if namespace != "" {
			ns = ", namespace: " + namespace
		}
		return "{apiVersion: rbac.authorization.k8s.io/v1, kind: " + kind + ", metadata: {name: x" + ns + "}, " + body + "}"
	}
	role := func(kind, rules string) string {
		ns := ""
		if kind == "Role" {
			ns = "team-a"
		}
		return rbac(kind, ns, "rules: ["+rules+"]")
	}
	binding := func(kind, roleRef, subjects string) string {
		ns := ""
		if kind == "RoleBinding" {
			ns = "team-a"
		}
		return rbac(kind, ns, "roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "+roleRef+"}, subjects: ["+subjects+"]")
	}
	sa := "{kind: ServiceAccount, name: deployer, namespace: team-a}"
	admission := func(kind string) string {
		return "{apiVersion: admissionregistration.k8s.io/v1, kind: " + kind + ", metadata: {name: x}}"
	}
	cases := []struct {
		name, obj string
		want      []string
	}{
		{"cluster-admin cluster-wide", binding("ClusterRoleBinding", "cluster-admin", sa), []string{"FIN-IAM-001 subjects[0]"}},
		{"cluster-admin in a namespace", binding("RoleBinding", "cluster-admin", sa), []string{"FIN-IAM-001 subjects[0]"}},
		{"admin cluster-wide", binding("ClusterRoleBinding", "admin", sa), []string{"FIN-IAM-001 subjects[0]"}},
		{"edit cluster-wide", binding("ClusterRoleBinding", "edit", "{kind: Group, name: developers}, "+sa), []string{"FIN-IAM-001 subjects[0]", "FIN-IAM-001 subjects[1]"}},
		{"admin in a namespace", binding("RoleBinding", "admin", sa), []string{"FIN-IAM-008 subjects[0]"}},
		{"edit in a namespace", binding("RoleBinding", "edit", sa), []string{"FIN-IAM-008 subjects[0]"}},
		{"view in a namespace", binding("RoleBinding", "view", sa), nil},
		{"system:masters", binding("RoleBinding", "view", "{kind: Group, name: 'system:masters'}"), []string{"FIN-IAM-001 subjects[0]"}},

		{"wildcard verbs", role("Role", "{apiGroups: [apps], resources: [deployments], verbs: ['*']}"), []string{"FIN-IAM-002 rules[0].verbs[0]"}},
		{"wildcard resources", role("Role", "{apiGroups: [apps], resources: [deployments, '*'], verbs: [get]}"), []string{"FIN-IAM-002 rules[0].resources[1]"}},
		{"wildcard API groups", role("ClusterRole", "{apiGroups: ['*'], resources: [deployments], verbs: [get]}"), []string{"FIN-IAM-002 rules[0].apiGroups[0]"}},
		{"escalate", role("ClusterRole", "{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [escalate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"bind", role("Role", "{apiGroups: [rbac.authorization.k8s.io], resources: [roles], verbs: [get, bind]}"), []string{"FIN-IAM-010 rules[0].verbs[1]"}},
		{"impersonate users", role("ClusterRole", "{apiGroups: [''], resources: [users], verbs: [impersonate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"impersonate groups", role("ClusterRole", "{apiGroups: [''], resources: [groups], verbs: [impersonate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"impersonate service accounts", role("Role", "{apiGroups: [''], resources: [serviceaccounts], resourceNames: [admin], verbs: [impersonate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"impersonate uids", role("ClusterRole", "{apiGroups: [authentication.k8s.io], resources: [uids], verbs: [impersonate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"impersonate user extras", role("ClusterRole", "{apiGroups: [authentication.k8s.io], resources: [userextras/scopes], verbs: [impersonate]}"), []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"nodes/proxy", role("ClusterRole", "{apiGroups: [''], resources: [nodes/proxy], verbs: [get]}"), []string{"FIN-IAM-011 rules[0].resources[0]"}},
		{"secrets read cluster-wide", role("ClusterRole", "{apiGroups: [''], resources: [secrets], verbs: [get]}"), []string{"FIN-IAM-009 rules[0].resources[0]"}},
		{"secrets listed in a namespace", role("Role", "{apiGroups: [''], resources: [secrets], verbs: [list]}"), []string{"FIN-IAM-009 rules[0].resources[0]"}},
		{"one named secret in a namespace", role("Role", "{apiGroups: [''], resources: [secrets], resourceNames: [db], verbs: [get]}"), nil},
		{"everything", role("ClusterRole", "{apiGroups: ['*'], resources: ['*'], verbs: ['*']}"), []string{
			"FIN-IAM-002 rules[0].apiGroups[0]", "FIN-IAM-002 rules[0].resources[0]", "FIN-IAM-002 rules[0].verbs[0]",
			"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[0].verbs[0]", "FIN-IAM-011 rules[0].resources[0]"}},
		{"aggregated ClusterRole", rbac("ClusterRole", "", "aggregationRule: {clusterRoleSelectors: [{matchLabels: {kubernetes.io/bootstrapping: rbac-defaults}}]}"),
			[]string{"FIN-IAM-012 aggregationRule"}},
		{"rules aggregated into view", "{apiVersion: rbac.authorization.k8s.io/v1, kind: ClusterRole, metadata: {name: x, labels: {rbac.authorization.k8s.io/aggregate-to-view: 'true'}}, " +
			"rules: [{apiGroups: [''], resources: [configmaps], verbs: [get]}]}",
			[]string{"FIN-IAM-012 metadata.labels['rbac.authorization.k8s.io/aggregate-to-view']"}},
		{"a team's deployer", role("Role", "{apiGroups: [apps], resources: [deployments], verbs: [get, list, watch, create, update, patch]}, {apiGroups: [''], resources: [configmaps, services], verbs: [get, create, update]}"), nil},

		{"MutatingWebhookConfiguration", admission("MutatingWebhookConfiguration"), []string{"FIN-ADM-001 kind"}},
		{"ValidatingWebhookConfiguration", admission("ValidatingWebhookConfiguration"), []string{"FIN-ADM-001 kind"}},
		{"MutatingAdmissionPolicy", strings.Replace(admission("MutatingAdmissionPolicy"), "/v1", "/v1beta1", 1), []string{"FIN-ADM-001 kind"}},
		{"MutatingAdmissionPolicyBinding", strings.Replace(admission("MutatingAdmissionPolicyBinding"), "/v1", "/v1beta1", 1), []string{"FIN-ADM-001 kind"}},
		{"ValidatingAdmissionPolicy", admission("ValidatingAdmissionPolicy"), []string{"FIN-ADM-002 kind"}},
		{"ValidatingAdmissionPolicyBinding", admission("ValidatingAdmissionPolicyBinding"), []string{"FIN-ADM-002 kind"}},
	}
	for _, c := range cases {
		obj, err := decodeYAML([]byte(c.obj))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		res := pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now())
		var got []string
		for _, f := range res.Findings {
			if !strings.HasPrefix(f.Rule, "FIN-IAM-") && !strings.HasPrefix(f.Rule, "FIN-ADM-") {
				continue
			}
			if f.Outcome != OutcomeFail {
				t.Errorf("%s: %s %s: outcome %s", c.name, f.Rule, f.Path, f.Outcome)
			}
			got = append(got, f.Rule+" "+f.Path)
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: findings\n got %q\nwant %q", c.name, got, c.want)
		}
	}
}

// TestPlatformControllersDeclared: an organisation can declare its
// platform's own controllers (controllerRoles) and admission policies
// (platformAdmissionPolicies); only those, by name and kind, get the rights
// such a controller needs, nothing more, and nothing is declared by default.
func TestPlatformControllersDeclared(t *testing.T) {
	declared, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}, Parameters: map[string]json.RawMessage{
		"controllerRoles":           json.RawMessage(`["slipway-server"]`),
		"platformAdmissionPolicies": json.RawMessage(`["slipway-promotion-approvals"]`),
	}})
	if err != nil {
		t.Fatal(err)
	}
	byDefault, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	obj := func(kind, name, rest string) string {
		group := "rbac.authorization.k8s.io/v1"
		if strings.HasPrefix(kind, "Validating") {
			group = "admissionregistration.k8s.io/v1"
		}
		ns := ""
		if kind == "Role" {
			ns = ", namespace: slipway-system"
		}
		return "{apiVersion: " + group + ", kind: " + kind + ", metadata: {name: " + name + ns + "}" + rest + "}"
	}
	controller := ", rules: [{apiGroups: [''], resources: [secrets], verbs: [get]}, {apiGroups: [''], resources: [serviceaccounts], verbs: [impersonate]}]"
	cases := []struct {
		name, obj        string
		declared, byDflt []string
	}{
		{"the declared controller", obj("ClusterRole", "slipway-server", controller),
			nil, []string{"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[1].verbs[0]"}},
		{"another ClusterRole", obj("ClusterRole", "ci-bot", controller),
			[]string{"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[1].verbs[0]"}, []string{"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[1].verbs[0]"}},
		{"a Role of the declared name", obj("Role", "slipway-server", controller),
			[]string{"FIN-IAM-010 rules[1].verbs[0]"}, []string{"FIN-IAM-010 rules[1].verbs[0]"}},
		{"the declared controller listing Secrets and impersonating users", obj("ClusterRole", "slipway-server",
			", rules: [{apiGroups: [''], resources: [secrets], verbs: [list]}, {apiGroups: [''], resources: [users, serviceaccounts], verbs: [impersonate]}]"),
			[]string{"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[1].verbs[0]"}, []string{"FIN-IAM-009 rules[0].resources[0]", "FIN-IAM-010 rules[1].verbs[0]"}},
		{"the declared controller binding roles", obj("ClusterRole", "slipway-server", ", rules: [{apiGroups: [rbac.authorization.k8s.io], resources: [clusterroles], verbs: [bind]}]"),
			[]string{"FIN-IAM-010 rules[0].verbs[0]"}, []string{"FIN-IAM-010 rules[0].verbs[0]"}},
		{"the declared admission policy", obj("ValidatingAdmissionPolicy", "slipway-promotion-approvals", ""), nil, []string{"FIN-ADM-002 kind"}},
		{"the declared admission policy's binding", obj("ValidatingAdmissionPolicyBinding", "slipway-promotion-approvals", ""), nil, []string{"FIN-ADM-002 kind"}},
		{"another admission policy", obj("ValidatingAdmissionPolicy", "deny-all", ""), []string{"FIN-ADM-002 kind"}, []string{"FIN-ADM-002 kind"}},
	}
	findings := func(pol *Policy, o string) []string {
		decoded, err := decodeYAML([]byte(o))
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range pol.EvaluateObject(context.Background(), decoded, ObjectRef{}, time.Now()).Findings {
			if strings.HasPrefix(f.Rule, "FIN-IAM-") || strings.HasPrefix(f.Rule, "FIN-ADM-") {
				got = append(got, f.Rule+" "+f.Path)
			}
		}
		slices.Sort(got)
		return got
	}
	for _, c := range cases {
		if got := findings(declared, c.obj); !slices.Equal(got, c.declared) {
			t.Errorf("%s, declared: findings\n got %q\nwant %q", c.name, got, c.declared)
		}
		if got := findings(byDefault, c.obj); !slices.Equal(got, c.byDflt) {
			t.Errorf("%s, by default: findings\n got %q\nwant %q", c.name, got, c.byDflt)
		}
	}
}
