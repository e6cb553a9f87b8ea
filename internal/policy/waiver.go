package policy

import (
	"bytes"
	"errors"
	"fmt"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/yaml"
)

// WaiverKind is the kind of a waiver document (and of the PolicyWaiver resource).
const WaiverKind = "PolicyWaiver"

// WaiverScope says which objects a waiver covers. Every field set must match;
// at least one must be set, so that no waiver switches a rule off everywhere.
type WaiverScope struct {
	Namespace string                `json:"namespace,omitempty"`
	Kind      string                `json:"kind,omitempty"`
	Name      string                `json:"name,omitempty"`
	Selector  *metav1.LabelSelector `json:"selector,omitempty"`
}

// Waiver exempts the objects in Scope from Rule until Expires. It is evidence:
// reports show every waived finding with its reason and approver.
type Waiver struct {
	Name     string      `json:"name"`
	Rule     string      `json:"rule"`
	Scope    WaiverScope `json:"scope"`
	Reason   string      `json:"reason"`
	Approver string      `json:"approver"`
	Expires  time.Time   `json:"expires"`

	selector labels.Selector
}

// waiverDocument is the on-disk and in-cluster shape of a waiver.
type waiverDocument struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace,omitempty"`
	} `json:"metadata"`
	Spec struct {
		Rule     string      `json:"rule"`
		Scope    WaiverScope `json:"scope"`
		Reason   string      `json:"reason"`
		Approver string      `json:"approver"`
		Expires  string      `json:"expires"`
	} `json:"spec"`
}

// ParseWaivers reads a stream of PolicyWaiver documents. source names it in errors.
func ParseWaivers(data []byte, source string) ([]Waiver, error) {
	var out []Waiver
	err := splitDocuments(bytes.NewReader(data), source, 1<<20, func(doc rawDocument) error {
		var d waiverDocument
		if err := yaml.UnmarshalStrict(doc.data, &d); err != nil {
			return fmt.Errorf("%s: document %d: reading waiver: %w", source, doc.index, err)
		}
		w, err := d.waiver()
		if err != nil {
			return fmt.Errorf("%s: document %d: waiver %q: %w", source, doc.index, d.Metadata.Name, err)
		}
		out = append(out, w)
		return nil
	})
	return out, err
}

func (d *waiverDocument) waiver() (Waiver, error) {
	var errs []error
	if d.APIVersion != PackAPIVersion || d.Kind != WaiverKind {
		errs = append(errs, fmt.Errorf("apiVersion/kind is %q/%q, want %s/%s", d.APIVersion, d.Kind, PackAPIVersion, WaiverKind))
	}
	exp, err := parseExpiry(d.Spec.Expires)
	if err != nil {
		errs = append(errs, err)
	}
	w, err := NewWaiver(d.Metadata.Name, d.Spec.Rule, d.Spec.Scope, d.Spec.Reason, d.Spec.Approver, exp)
	if err != nil {
		errs = append(errs, err)
	}
	return w, errors.Join(errs...)
}

// NewWaiver validates a waiver, from a file or a PolicyWaiver resource.
func NewWaiver(name, rule string, scope WaiverScope, reason, approver string, expires time.Time) (Waiver, error) {
	w := Waiver{Name: name, Rule: rule, Scope: scope, Reason: reason, Approver: approver, Expires: expires}
	var errs []error
	if w.Name == "" {
		errs = append(errs, errors.New("metadata.name is required"))
	}
	if !ruleIDPattern.MatchString(w.Rule) {
		errs = append(errs, fmt.Errorf("spec.rule %q is not a rule id", w.Rule))
	}
	if w.Reason == "" || w.Approver == "" {
		errs = append(errs, errors.New("spec.reason and spec.approver are required: a waiver is evidence"))
	}
	s := w.Scope
	if s.Namespace == "" && s.Kind == "" && s.Name == "" && s.Selector == nil {
		errs = append(errs, errors.New("spec.scope must name a namespace, kind, name or selector"))
	}
	if s.Selector != nil {
		sel, err := metav1.LabelSelectorAsSelector(s.Selector)
		if err != nil {
			errs = append(errs, fmt.Errorf("spec.scope.selector: %w", err))
		}
		w.selector = sel
	}
	if expires.IsZero() {
		errs = append(errs, errors.New("spec.expires is required: every waiver ends"))
	}
	return w, errors.Join(errs...)
}

// parseExpiry accepts RFC 3339 or a date; a date means the waiver holds through
// that day (UTC), which is what a human writing "expires 2026-06-30" means.
func parseExpiry(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil // NewWaiver reports the missing expiry
	}
	if t, err := time.Parse(time.RFC3339, s); err == nil {
		return t, nil
	}
	if t, err := time.Parse(time.DateOnly, s); err == nil {
		return t.AddDate(0, 0, 1), nil
	}
	return time.Time{}, fmt.Errorf("spec.expires %q is neither RFC 3339 nor YYYY-MM-DD", s)
}

// Active reports whether the waiver still applies at now.
func (w *Waiver) Active(now time.Time) bool { return now.Before(w.Expires) }

// covers reports whether the waiver's scope includes the object.
func (w *Waiver) covers(u unstructured.Unstructured) bool {
	s := w.Scope
	if s.Namespace != "" && s.Namespace != u.GetNamespace() {
		return false
	}
	if s.Kind != "" && s.Kind != u.GetKind() {
		return false
	}
	if s.Name != "" && s.Name != u.GetName() {
		return false
	}
	if s.Selector != nil {
		sel := w.selector
		if sel == nil {
			// Waivers built in Go rather than parsed have no cached selector.
			var err error
			if sel, err = metav1.LabelSelectorAsSelector(s.Selector); err != nil {
				return false
			}
		}
		if !sel.Matches(labels.Set(u.GetLabels())) {
			return false
		}
	}
	return true
}

// waiverFor returns the first active waiver of rule that covers the object.
func (p *Policy) waiverFor(rule string, u unstructured.Unstructured, now time.Time) *Waiver {
	for i := range p.waivers {
		w := &p.waivers[i]
		if w.Rule == rule && w.Active(now) && w.covers(u) {
			return w
		}
	}
	return nil
}
