package policy

import (
	"bytes"
	"fmt"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	admissionv1 "k8s.io/api/admissionregistration/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// violationsVariable holds a rule's expression in an exported policy.
const violationsVariable = "violations"

// ExportMode chooses what the API server does with a violation.
type ExportMode string

// Export modes, matching a profile's enforce and audit modes.
const (
	ExportEnforce ExportMode = "enforce" // Deny
	ExportAudit   ExportMode = "audit"   // Warn + Audit: admitted, but the client sees a warning
)

// ExportOptions configures ExportAdmission.
type ExportOptions struct {
	Mode ExportMode
	// ExemptNamespaces are never checked by the API server: the control plane's
	// own pods (kube-proxy, CNI) need host access no application may have.
	ExemptNamespaces []string
	// Now decides which waivers are still active; waivers become match conditions.
	Now time.Time
}

// DefaultExemptNamespaces are Kubernetes' own namespaces.
var DefaultExemptNamespaces = []string{"kube-system", "kube-public", "kube-node-lease"}

// ExportSkip names a rule that was not exported and why.
type ExportSkip struct {
	Rule   string `json:"rule"`
	Reason string `json:"reason"`
}

// AdmissionExport is a profile as ValidatingAdmissionPolicy objects.
type AdmissionExport struct {
	Policies []admissionv1.ValidatingAdmissionPolicy
	Bindings []admissionv1.ValidatingAdmissionPolicyBinding
	Skipped  []ExportSkip
}

// resourceFor maps Kind.group to the group and plural resource the API server matches on.
var resourceFor = map[string][2]string{
	"Pod":                                   {"", "pods"},
	"ReplicationController":                 {"", "replicationcontrollers"},
	"PodTemplate":                           {"", "podtemplates"},
	"Service":                               {"", "services"},
	"ConfigMap":                             {"", "configmaps"},
	"Secret":                                {"", "secrets"},
	"PersistentVolumeClaim":                 {"", "persistentvolumeclaims"},
	"Deployment.apps":                       {"apps", "deployments"},
	"StatefulSet.apps":                      {"apps", "statefulsets"},
	"DaemonSet.apps":                        {"apps", "daemonsets"},
	"ReplicaSet.apps":                       {"apps", "replicasets"},
	"Job.batch":                             {"batch", "jobs"},
	"CronJob.batch":                         {"batch", "cronjobs"},
	"Ingress.networking.k8s.io":             {"networking.k8s.io", "ingresses"},
	"NetworkPolicy.networking.k8s.io":       {"networking.k8s.io", "networkpolicies"},
	"Role.rbac.authorization.k8s.io":        {"rbac.authorization.k8s.io", "roles"},
	"ClusterRole.rbac.authorization.k8s.io": {"rbac.authorization.k8s.io", "clusterroles"},
	"RoleBinding.rbac.authorization.k8s.io": {"rbac.authorization.k8s.io", "rolebindings"},
	"ClusterRoleBinding.rbac.authorization.k8s.io": {"rbac.authorization.k8s.io", "clusterrolebindings"},
}

// ExportAdmission turns every manifest rule of the policy into a
// ValidatingAdmissionPolicy and its binding, so that a `kubectl apply` that
// bypasses Slipway is refused with the same rule id. One policy per rule keeps
// each rule's kinds exact and lets an operator unbind a single rule.
func (p *Policy) ExportAdmission(opts ExportOptions) (*AdmissionExport, error) {
	var actions []admissionv1.ValidationAction
	switch opts.Mode {
	case ExportEnforce:
		actions = []admissionv1.ValidationAction{admissionv1.Deny}
	case ExportAudit:
		actions = []admissionv1.ValidationAction{admissionv1.Warn, admissionv1.Audit}
	default:
		return nil, fmt.Errorf("exporting policy %s: unknown mode %q: use enforce or audit", p.name, opts.Mode)
	}
	out := &AdmissionExport{}
	for _, r := range p.all {
		if !r.HasTarget(TargetManifest) {
			out.Skipped = append(out.Skipped, ExportSkip{Rule: r.ID, Reason: fmt.Sprintf("targets %v: not a check on a Kubernetes object", r.Targets)})
		}
	}
	for _, r := range p.rules {
		// Cross-object rules are skipped here too: their expression reads
		// namespaceObjects, which an admission policy does not have.
		if reason := r.AdmissionSkipReason(); reason != "" {
			out.Skipped = append(out.Skipped, ExportSkip{Rule: r.ID, Reason: reason})
			continue
		}
		rules, missing := resourceRules(r.MatchedKinds())
		if len(missing) > 0 {
			out.Skipped = append(out.Skipped, ExportSkip{Rule: r.ID, Reason: "no known API resource for kinds " + strings.Join(missing, ", ")})
			continue
		}
		vars, err := p.exportVariables(r)
		if err != nil {
			return nil, fmt.Errorf("exporting rule %s: %w", r.ID, err)
		}
		name := exportName(p.name, r.ID)
		meta := metav1.ObjectMeta{
			Name: name,
			Labels: map[string]string{
				"app.kubernetes.io/managed-by": "slipway",
				"policy.slipway.dev/profile":   exportName(p.name, ""),
			},
			Annotations: map[string]string{
				"policy.slipway.dev/rule":     r.ID,
				"policy.slipway.dev/severity": string(r.Severity),
				"policy.slipway.dev/pack":     r.pack,
			},
		}
		conditions, validUntil := waiverConditions(p.waivers, r.ID, opts.Now)
		if !validUntil.IsZero() {
			// A waiver's expiry cannot be judged inside the API server, so the
			// export says when it must be regenerated.
			meta.Annotations["policy.slipway.dev/waivers-valid-until"] = validUntil.UTC().Format(time.RFC3339)
		}
		fail := admissionv1.Fail
		reason := metav1.StatusReasonForbidden
		msg := fmt.Sprintf("%s (%s): %s", r.ID, r.Severity, r.Message)
		out.Policies = append(out.Policies, admissionv1.ValidatingAdmissionPolicy{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicy"},
			ObjectMeta: meta,
			Spec: admissionv1.ValidatingAdmissionPolicySpec{
				FailurePolicy:    &fail,
				MatchConstraints: &admissionv1.MatchResources{ResourceRules: rules},
				MatchConditions:  conditions,
				Variables:        vars,
				Validations: []admissionv1.Validation{{
					// Elements are paths (a violation) or lists of paths (one per container).
					Expression:        "variables." + violationsVariable + ".all(v, type(v) != string && size(v) == 0)",
					Message:           msg,
					MessageExpression: celQuote(msg+" at ") + " + variables." + violationsVariable + ".map(v, type(v) == string ? dyn(v) : dyn(v).join(', ')).filter(s, s != '').join(', ')",
					Reason:            &reason,
				}},
			},
		})
		out.Bindings = append(out.Bindings, admissionv1.ValidatingAdmissionPolicyBinding{
			TypeMeta:   metav1.TypeMeta{APIVersion: "admissionregistration.k8s.io/v1", Kind: "ValidatingAdmissionPolicyBinding"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Labels: meta.Labels, Annotations: map[string]string{"policy.slipway.dev/rule": r.ID}},
			Spec: admissionv1.ValidatingAdmissionPolicyBindingSpec{
				PolicyName:        name,
				ValidationActions: actions,
				MatchResources: &admissionv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
					MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "kubernetes.io/metadata.name", Operator: metav1.LabelSelectorOpNotIn, Values: exemptNamespacesOrDefault(opts.ExemptNamespaces)}},
				}},
			},
		})
	}
	sort.Slice(out.Skipped, func(i, j int) bool { return out.Skipped[i].Rule < out.Skipped[j].Rule })
	return out, nil
}

func exportName(profile, rule string) string {
	name := "slipway-" + strings.NewReplacer("+", "-", "_", "-").Replace(profile)
	if rule != "" {
		name += "-" + rule
	}
	return strings.ToLower(name)
}

func resourceRules(kinds []string) ([]admissionv1.NamedRuleWithOperations, []string) {
	var rules []admissionv1.NamedRuleWithOperations
	var missing []string
	for _, k := range kinds {
		gr, ok := resourceFor[k]
		if !ok {
			missing = append(missing, k)
			continue
		}
		rules = append(rules, admissionv1.NamedRuleWithOperations{RuleWithOperations: admissionv1.RuleWithOperations{
			Operations: []admissionv1.OperationType{admissionv1.Create, admissionv1.Update},
			Rule:       admissionv1.Rule{APIGroups: []string{gr[0]}, APIVersions: []string{"*"}, Resources: []string{gr[1]}},
		}})
	}
	return rules, missing
}

// exportVariables lists, in definition order, the variables the rule needs
// (parameters as CEL literals, builtins with their dependencies), then the rule
// itself as the violations variable.
func (p *Policy) exportVariables(r *compiledRule) ([]admissionv1.Variable, error) {
	needed := map[string]bool{}
	var need func(names []string)
	need = func(names []string) {
		for _, n := range names {
			if needed[n] {
				continue
			}
			needed[n] = true
			for _, v := range p.variables {
				if v.name == n {
					need(v.refs)
				}
			}
		}
	}
	need(r.variables)
	var vars []admissionv1.Variable
	for _, bp := range p.params {
		if needed[bp.Name] {
			lit, err := celLiteral(bp.value)
			if err != nil {
				return nil, fmt.Errorf("parameter %s: %w", bp.Name, err)
			}
			vars = append(vars, admissionv1.Variable{Name: bp.Name, Expression: lit})
		}
	}
	for _, v := range BuiltinVariables {
		if needed[v.Name] {
			vars = append(vars, admissionv1.Variable{Name: exportedVariableName(v.Name), Expression: renameReservedVariables(v.Expression)})
		}
	}
	return append(vars, admissionv1.Variable{Name: violationsVariable, Expression: renameReservedVariables(strings.TrimSpace(r.Expression))}), nil
}

// celReservedWords may be field names but not identifiers in CEL (cel-go's
// parser.reservedIds). ValidatingAdmissionPolicy variable names must be
// identifiers, so a variable may be read as variables.namespace in the engine
// but must be declared under another name in an exported policy.
var celReservedWords = []string{"as", "break", "const", "continue", "else", "false", "for", "function", "if", "import",
	"in", "let", "loop", "namespace", "null", "package", "return", "true", "var", "void", "while"}

// exportedBuiltinNames are the export names of builtin variables whose names CEL reserves.
var exportedBuiltinNames = map[string]string{"namespace": "objectNamespace"}

func exportedVariableName(name string) string {
	if n, ok := exportedBuiltinNames[name]; ok {
		return n
	}
	return name
}

// reservedVariableRef matches a read of a builtin variable with a reserved name.
var reservedVariableRef = func() *regexp.Regexp {
	names := make([]string, 0, len(exportedBuiltinNames))
	for n := range exportedBuiltinNames {
		names = append(names, regexp.QuoteMeta(n))
	}
	sort.Strings(names)
	return regexp.MustCompile(`\bvariables\.(\??)(` + strings.Join(names, "|") + `)\b`)
}()

// renameReservedVariables rewrites reads of builtin variables with reserved
// names to their export names.
func renameReservedVariables(expr string) string {
	return reservedVariableRef.ReplaceAllStringFunc(expr, func(m string) string {
		sub := reservedVariableRef.FindStringSubmatch(m)
		return "variables." + sub[1] + exportedVariableName(sub[2])
	})
}

// celLiteral writes a parameter value as a CEL literal. Go's quoting escapes are
// a subset of CEL's, so strconv.Quote yields a valid CEL string.
func celLiteral(v any) (string, error) {
	switch x := v.(type) {
	case string:
		return strconv.Quote(x), nil
	case []string:
		q := make([]string, len(x))
		for i, s := range x {
			q[i] = strconv.Quote(s)
		}
		return "[" + strings.Join(q, ", ") + "]", nil
	case []int64:
		q := make([]string, len(x))
		for i, n := range x {
			q[i] = strconv.FormatInt(n, 10)
		}
		return "[" + strings.Join(q, ", ") + "]", nil
	case int64:
		return strconv.FormatInt(x, 10), nil
	case bool:
		return strconv.FormatBool(x), nil
	}
	return "", fmt.Errorf("no CEL literal for %T", v)
}

func celQuote(s string) string { return strconv.Quote(s) }

// waiverConditions turns the rule's active waivers into match conditions that
// skip the waived objects, and returns the earliest expiry among them.
func waiverConditions(waivers []Waiver, rule string, now time.Time) ([]admissionv1.MatchCondition, time.Time) {
	var conds []admissionv1.MatchCondition
	var earliest time.Time
	for _, w := range waivers {
		if w.Rule != rule || !w.Active(now) {
			continue
		}
		var terms []string
		if w.Scope.Namespace != "" {
			terms = append(terms, "request.namespace == "+celQuote(w.Scope.Namespace))
		}
		if w.Scope.Kind != "" {
			terms = append(terms, "object.kind == "+celQuote(w.Scope.Kind))
		}
		if w.Scope.Name != "" {
			terms = append(terms, "request.name == "+celQuote(w.Scope.Name))
		}
		if sel := w.Scope.Selector; sel != nil {
			keys := make([]string, 0, len(sel.MatchLabels))
			for k := range sel.MatchLabels {
				keys = append(keys, k)
			}
			sort.Strings(keys)
			for _, k := range keys {
				terms = append(terms, fmt.Sprintf("object.metadata.?labels[?%s].orValue('') == %s", celQuote(k), celQuote(sel.MatchLabels[k])))
			}
			for _, e := range sel.MatchExpressions {
				has := fmt.Sprintf("object.metadata.?labels[?%s].hasValue()", celQuote(e.Key))
				in := fmt.Sprintf("object.metadata.labels[%s] in [%s]", celQuote(e.Key), quoteAll(e.Values))
				switch e.Operator {
				case metav1.LabelSelectorOpIn:
					terms = append(terms, "("+has+" && "+in+")")
				case metav1.LabelSelectorOpNotIn:
					terms = append(terms, "!("+has+" && "+in+")")
				case metav1.LabelSelectorOpExists:
					terms = append(terms, has)
				case metav1.LabelSelectorOpDoesNotExist:
					terms = append(terms, "!"+has)
				}
			}
		}
		conds = append(conds, admissionv1.MatchCondition{
			Name:       exportConditionName(w.Name),
			Expression: "!(" + strings.Join(terms, " && ") + ")",
		})
		if earliest.IsZero() || w.Expires.Before(earliest) {
			earliest = w.Expires
		}
	}
	return conds, earliest
}

func quoteAll(values []string) string {
	q := make([]string, len(values))
	for i, v := range values {
		q[i] = celQuote(v)
	}
	return strings.Join(q, ", ")
}

// exportConditionName makes a waiver name a valid match condition name
// (a qualified name of at most 63 characters).
func exportConditionName(waiver string) string {
	name := "waiver-" + strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == '-' || r == '.' {
			return r
		}
		return '-'
	}, strings.ToLower(waiver))
	if len(name) > 63 {
		name = strings.TrimRight(name[:63], "-.")
	}
	return name
}

// YAML renders the export as a multi-document stream, skipped rules first as
// comments so that a reader of the file sees what the API server will not check.
func (e *AdmissionExport) YAML() ([]byte, error) {
	var b bytes.Buffer
	if len(e.Skipped) > 0 {
		b.WriteString("# Rules not enforced by these admission policies:\n")
		for _, s := range e.Skipped {
			fmt.Fprintf(&b, "#   %s: %s\n", s.Rule, strings.Join(strings.Fields(s.Reason), " "))
		}
	}
	objs := make([]any, 0, 2*len(e.Policies))
	for i := range e.Policies {
		objs = append(objs, &e.Policies[i], &e.Bindings[i])
	}
	for _, o := range objs {
		data, err := yaml.Marshal(o)
		if err != nil {
			return nil, fmt.Errorf("rendering admission policy: %w", err)
		}
		b.WriteString("---\n")
		b.Write(data)
	}
	return b.Bytes(), nil
}

// exemptNamespacesOrDefault returns ns, or the Kubernetes namespaces when ns is empty.
func exemptNamespacesOrDefault(ns []string) []string {
	if len(ns) == 0 {
		return slices.Clone(DefaultExemptNamespaces)
	}
	return ns
}
