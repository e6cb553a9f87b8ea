package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"sigs.k8s.io/yaml"
)

// PackAPIVersion and PackKind identify a policy pack file.
const (
	PackAPIVersion = "slipway.dev/v1alpha1"
	PackKind       = "PolicyPack"
)

// Severity ranks how bad a violation is; --fail-on and SARIF levels derive from it.
type Severity string

// Severities from worst to mildest.
const (
	SeverityCritical Severity = "critical"
	SeverityHigh     Severity = "high"
	SeverityMedium   Severity = "medium"
	SeverityLow      Severity = "low"
)

var severityRank = map[Severity]int{SeverityCritical: 4, SeverityHigh: 3, SeverityMedium: 2, SeverityLow: 1}

// Rank orders severities: a higher rank is worse; an unknown severity ranks 0.
func (s Severity) Rank() int { return severityRank[s] }

// ParseSeverity accepts a severity name in any letter case.
func ParseSeverity(s string) (Severity, error) {
	sev := Severity(strings.ToLower(s))
	if sev.Rank() == 0 {
		return "", fmt.Errorf("unknown severity %q: use critical, high, medium or low", s)
	}
	return sev, nil
}

// Target says what a rule looks at. Only manifest rules are evaluated by Policy.Evaluate;
// the others are carried so that one catalogue describes the live-cluster, pipeline and
// network-topology checks with the same ids and mappings.
type Target string

// Targets of CONTROLS.md.
const (
	TargetManifest Target = "manifest"
	TargetLive     Target = "live"
	TargetPipeline Target = "pipeline"
	TargetTopology Target = "topology"
)

// Relation says how closely a rule implements a clause of a source.
type Relation string

// Relations of CONTROLS.md: the security officer must be able to tell a direct
// implementation from a partial one or an inference that still needs confirming.
const (
	RelationDirect   Relation = "direct"
	RelationPartial  Relation = "partial"
	RelationInferred Relation = "inferred"
)

// Mapping ties a rule to a clause of a framework, regulation or benchmark.
type Mapping struct {
	Framework string   `json:"framework"`
	Clause    string   `json:"clause"`
	Effective string   `json:"effective,omitempty"` // YYYY-MM-DD: the date the clause's wording took effect
	Relation  Relation `json:"relation"`
	Source    string   `json:"source,omitempty"` // who states the mapping, e.g. "kubescape C-0057"
}

// ParameterType is the type of a pack parameter, and so of its CEL variable.
type ParameterType string

// Parameter types.
const (
	ParamStringList  ParameterType = "stringList"
	ParamIntegerList ParameterType = "integerList"
	ParamString      ParameterType = "string"
	ParamInteger     ParameterType = "integer"
	ParamBoolean     ParameterType = "boolean"
)

// Parameter is a value an organisation may override without editing the pack.
// Rules read it as variables.<name>, which is also how it appears in an exported
// ValidatingAdmissionPolicy.
type Parameter struct {
	Name        string          `json:"name"`
	Type        ParameterType   `json:"type"`
	Description string          `json:"description"`
	Default     json.RawMessage `json:"default"`
}

// Match selects the objects a rule applies to.
type Match struct {
	// PodTemplates selects every kind that carries a pod template, the kinds Pod
	// Security Admission checks: Pod, ReplicationController, PodTemplate,
	// Deployment, StatefulSet, DaemonSet, ReplicaSet, Job and CronJob.
	PodTemplates bool `json:"podTemplates,omitempty"`
	// Kinds are written Kind.group like kubectl's resource.group ("Deployment.apps");
	// core kinds have no group ("Service").
	Kinds []string `json:"kinds,omitempty"`
}

// Rule is one check: data, compiled to CEL by Compile.
type Rule struct {
	ID       string   `json:"id"`
	Title    string   `json:"title"`
	Severity Severity `json:"severity"`
	Targets  []Target `json:"targets"`
	Match    Match    `json:"match"`
	// Expression evaluates to a list of offending field paths; an empty list passes.
	// An element may itself be a list of paths: Kubernetes 1.33 CEL has no flatten(),
	// so per-container sub-lists are flattened by the engine (and by the exported policy).
	Expression  string    `json:"expression"`
	Message     string    `json:"message"`
	Remediation string    `json:"remediation"`
	Mappings    []Mapping `json:"mappings"`
	// Replaces names inherited rules this one supersedes, so that extending a pack
	// never reports the same defect twice.
	Replaces []string `json:"replaces,omitempty"`
	// AdmissionSkip, when set, explains why the rule must not become an admission
	// policy (export lists it instead of emitting it).
	AdmissionSkip string `json:"admissionSkip,omitempty"`
	// NamespaceObjects makes the rule a cross-object rule: the objects of these
	// kinds (written like Match.Kinds) in the evaluated object's namespace, among
	// the objects checked together, are the expression's `namespaceObjects`
	// list. Some controls are about a namespace, not an object ("every workload
	// is selected by a NetworkPolicy"), and a manifest checker sees the
	// namespace only through the objects deployed into it.
	NamespaceObjects []string `json:"namespaceObjects,omitempty"`

	pack string
}

// Pack returns the name of the pack that defines the rule.
func (r *Rule) Pack() string { return r.pack }

// Pack is a named, versioned set of rules and parameters.
type Pack struct {
	APIVersion  string      `json:"apiVersion"`
	Kind        string      `json:"kind"`
	Name        string      `json:"name"`
	Title       string      `json:"title"`
	Description string      `json:"description,omitempty"`
	Version     string      `json:"version"`
	Extends     []string    `json:"extends,omitempty"`
	Parameters  []Parameter `json:"parameters,omitempty"`
	Rules       []Rule      `json:"rules"`

	source string
}

var (
	ruleIDPattern   = regexp.MustCompile(`^[A-Z][A-Z0-9]*(-[A-Z0-9]+)+$`)
	namePattern     = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?$`)
	paramPattern    = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)
	kindPattern     = regexp.MustCompile(`^[A-Z][A-Za-z0-9]*(\.[a-z0-9.-]+)?$`)
	validTargets    = []Target{TargetManifest, TargetLive, TargetPipeline, TargetTopology}
	validRelations  = []Relation{RelationDirect, RelationPartial, RelationInferred}
	validParamTypes = []ParameterType{ParamStringList, ParamIntegerList, ParamString, ParamInteger, ParamBoolean}
)

// ParsePack reads a pack file. source names it in errors.
func ParsePack(data []byte, source string) (*Pack, error) {
	var p Pack
	if err := yaml.UnmarshalStrict(data, &p); err != nil {
		return nil, fmt.Errorf("reading policy pack %s: %w", source, err)
	}
	p.source = source
	for i := range p.Rules {
		p.Rules[i].pack = p.Name
	}
	if err := p.validate(); err != nil {
		return nil, fmt.Errorf("policy pack %s: %w", source, err)
	}
	return &p, nil
}

// validate checks what can be checked without the rest of the catalogue;
// CEL is checked when the pack is compiled.
func (p *Pack) validate() error {
	var errs []error
	if p.APIVersion != PackAPIVersion || p.Kind != PackKind {
		errs = append(errs, fmt.Errorf("apiVersion/kind is %q/%q, want %s/%s", p.APIVersion, p.Kind, PackAPIVersion, PackKind))
	}
	if !namePattern.MatchString(p.Name) {
		errs = append(errs, fmt.Errorf("name %q must be lower-case letters, digits and dashes", p.Name))
	}
	if p.Title == "" || p.Version == "" {
		errs = append(errs, errors.New("title and version are required"))
	}
	params := map[string]bool{}
	for _, prm := range p.Parameters {
		if err := prm.validate(); err != nil {
			errs = append(errs, err)
		}
		if params[prm.Name] {
			errs = append(errs, fmt.Errorf("parameter %q is declared twice", prm.Name))
		}
		params[prm.Name] = true
	}
	ids := map[string]bool{}
	for i := range p.Rules {
		r := &p.Rules[i]
		if err := r.validate(); err != nil {
			errs = append(errs, fmt.Errorf("rule %d (%s): %w", i+1, r.ID, err))
		}
		if ids[r.ID] {
			errs = append(errs, fmt.Errorf("rule %s is defined twice", r.ID))
		}
		ids[r.ID] = true
	}
	return errors.Join(errs...)
}

func (prm *Parameter) validate() error {
	if !paramPattern.MatchString(prm.Name) {
		return fmt.Errorf("parameter name %q must be lowerCamelCase", prm.Name)
	}
	if slices.Contains(celReservedWords, prm.Name) {
		return fmt.Errorf("parameter name %q is a reserved word in CEL, so it cannot name an admission policy variable", prm.Name)
	}
	if !slices.Contains(validParamTypes, prm.Type) {
		return fmt.Errorf("parameter %s: type %q is not one of %v", prm.Name, prm.Type, validParamTypes)
	}
	if prm.Description == "" {
		return fmt.Errorf("parameter %s: description is required", prm.Name)
	}
	if _, err := prm.decode(prm.Default); err != nil {
		return fmt.Errorf("parameter %s: default: %w", prm.Name, err)
	}
	return nil
}

// decode turns a JSON value into the Go value CEL receives for the parameter's type.
func (prm *Parameter) decode(raw json.RawMessage) (any, error) {
	if len(raw) == 0 {
		return nil, errors.New("a value is required")
	}
	var (
		v   any
		err error
	)
	switch prm.Type {
	case ParamStringList:
		var l []string
		err = json.Unmarshal(raw, &l)
		if l == nil {
			l = []string{}
		}
		v = l
	case ParamIntegerList:
		var l []int64
		err = json.Unmarshal(raw, &l)
		if l == nil {
			l = []int64{}
		}
		v = l
	case ParamString:
		var s string
		err = json.Unmarshal(raw, &s)
		v = s
	case ParamInteger:
		var n int64
		err = json.Unmarshal(raw, &n)
		v = n
	case ParamBoolean:
		var b bool
		err = json.Unmarshal(raw, &b)
		v = b
	}
	if err != nil {
		return nil, fmt.Errorf("%s is not a %s: %w", raw, prm.Type, err)
	}
	return v, nil
}

func (r *Rule) validate() error {
	var errs []error
	if !ruleIDPattern.MatchString(r.ID) {
		errs = append(errs, fmt.Errorf("id %q must look like FIN-WL-001", r.ID))
	}
	if r.Title == "" || r.Message == "" || r.Remediation == "" || strings.TrimSpace(r.Expression) == "" {
		errs = append(errs, errors.New("title, message, remediation and expression are required"))
	}
	if r.Severity.Rank() == 0 {
		errs = append(errs, fmt.Errorf("severity %q is not one of critical, high, medium, low", r.Severity))
	}
	if len(r.Targets) == 0 {
		errs = append(errs, errors.New("at least one target is required"))
	}
	for _, t := range r.Targets {
		if !slices.Contains(validTargets, t) {
			errs = append(errs, fmt.Errorf("target %q is not one of %v", t, validTargets))
		}
	}
	if !r.Match.PodTemplates && len(r.Match.Kinds) == 0 {
		errs = append(errs, errors.New("match selects no kind: set podTemplates or kinds"))
	}
	for _, k := range r.Match.Kinds {
		if !kindPattern.MatchString(k) {
			errs = append(errs, fmt.Errorf("match kind %q must be written Kind or Kind.group", k))
		}
	}
	for _, k := range r.NamespaceObjects {
		if !kindPattern.MatchString(k) {
			errs = append(errs, fmt.Errorf("namespaceObjects kind %q must be written Kind or Kind.group", k))
		}
	}
	if len(r.Mappings) == 0 {
		errs = append(errs, errors.New("at least one mapping to a source is required"))
	}
	for i, m := range r.Mappings {
		if m.Framework == "" || m.Clause == "" {
			errs = append(errs, fmt.Errorf("mapping %d: framework and clause are required", i+1))
		}
		if !slices.Contains(validRelations, m.Relation) {
			errs = append(errs, fmt.Errorf("mapping %d: relation %q is not one of direct, partial, inferred", i+1, m.Relation))
		}
		if m.Effective != "" {
			if _, err := time.Parse(time.DateOnly, m.Effective); err != nil {
				errs = append(errs, fmt.Errorf("mapping %d: effective date %q is not YYYY-MM-DD", i+1, m.Effective))
			}
		}
	}
	return errors.Join(errs...)
}

// HasTarget reports whether the rule checks t.
func (r *Rule) HasTarget(t Target) bool { return slices.Contains(r.Targets, t) }

// CrossObject reports whether the rule reads objects besides the one it checks.
func (r *Rule) CrossObject() bool { return len(r.NamespaceObjects) > 0 }

// AdmissionSkipReason says why export leaves the rule out, or "" when it
// exports it. A cross-object rule is always left out: an admission policy sees
// the one object being admitted, never its neighbours.
func (r *Rule) AdmissionSkipReason() string {
	if r.AdmissionSkip != "" {
		return strings.Join(strings.Fields(r.AdmissionSkip), " ")
	}
	if r.CrossObject() {
		return fmt.Sprintf("it reads other objects of the namespace (%s), and an admission policy sees one object at a time; "+
			"Slipway's sync gate and `slipway policy check` evaluate it over the whole set", strings.Join(r.NamespaceObjects, ", "))
	}
	return ""
}

// podTemplateKinds are the kinds Match.PodTemplates selects, keyed Kind.group:
// every built-in kind whose objects hold a pod spec, as Pod Security Admission
// lists them. Leaving one out lets a pod through the policy unchecked.
var podTemplateKinds = []string{"Pod", "ReplicationController", "PodTemplate", "Deployment.apps", "StatefulSet.apps",
	"DaemonSet.apps", "ReplicaSet.apps", "Job.batch", "CronJob.batch"}

// MatchedKinds returns the Kind.group keys the rule applies to, pod-template kinds first.
func (r *Rule) MatchedKinds() []string {
	var kinds []string
	if r.Match.PodTemplates {
		kinds = append(kinds, podTemplateKinds...)
	}
	for _, k := range r.Match.Kinds {
		if !slices.Contains(kinds, k) {
			kinds = append(kinds, k)
		}
	}
	return kinds
}
