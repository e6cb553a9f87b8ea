package policy

import (
	"fmt"
	"io"
	"slices"
	"strings"
)

// Report is the outcome of checking a set of objects against a policy.
type Report struct {
	Profile string  `json:"profile"`
	Summary Summary `json:"summary"`
	// Unchecked lists by kind the objects no rule of the profile checks.
	Unchecked []UncheckedKind `json:"unchecked,omitempty"`
	Results   []ObjectResult  `json:"results"`

	policy *Policy
}

// Summary counts outcomes over all (object, rule) pairs that applied.
type Summary struct {
	Objects int `json:"objects"`
	// NotChecked counts the objects of kinds no rule of the profile checks.
	NotChecked int `json:"notChecked"`
	Checks     int `json:"checks"`
	Passed     int `json:"passed"`
	Failed     int `json:"failed"`
	Waived     int `json:"waived"`
	Errors     int `json:"errors"`
	// FailedBySeverity counts failed and errored checks by severity.
	FailedBySeverity map[Severity]int `json:"failedBySeverity"`
}

// NewReport summarises results produced by p; the scope of the kinds no rule
// checks is what BuiltinScope knows.
func NewReport(p *Policy, results []ObjectResult) *Report {
	return NewReportWithScopes(p, results, BuiltinScope)
}

// NewReportWithScopes summarises results produced by p, with scope telling
// the scope of the kinds no rule checks (see Policy.Unchecked).
func NewReportWithScopes(p *Policy, results []ObjectResult, scope ScopeFunc) *Report {
	r := &Report{Profile: p.name, Results: results, policy: p, Unchecked: p.Unchecked(results, scope)}
	for _, u := range r.Unchecked {
		r.Summary.NotChecked += u.Objects
	}
	r.Summary.FailedBySeverity = map[Severity]int{}
	for i := range results {
		res := &results[i]
		r.Summary.Objects++
		for _, id := range res.Checked {
			r.Summary.Checks++
			switch outcome, sev := res.outcome(id); outcome {
			case OutcomePass:
				r.Summary.Passed++
			case OutcomeWaived:
				r.Summary.Waived++
			case OutcomeError:
				r.Summary.Errors++
				r.Summary.FailedBySeverity[sev]++
			default:
				r.Summary.Failed++
				r.Summary.FailedBySeverity[sev]++
			}
		}
	}
	return r
}

// outcome folds the findings of one rule on an object into one outcome: an
// error outranks a failure, which outranks a waiver.
func (res *ObjectResult) outcome(rule string) (Outcome, Severity) {
	out, sev := OutcomePass, Severity("")
	for _, f := range res.Findings {
		if f.Rule != rule {
			continue
		}
		sev = f.Severity
		switch {
		case f.Outcome == OutcomeError:
			return OutcomeError, sev
		case f.Outcome == OutcomeFail:
			out = OutcomeFail
		case out == OutcomePass:
			out = OutcomeWaived
		}
	}
	return out, sev
}

// Refused reports whether the profile refuses objects no rule checks.
func (r *Report) Refused() bool {
	return slices.ContainsFunc(r.Unchecked, func(u UncheckedKind) bool { return u.Refused })
}

// Failed reports whether any unwaived finding is at or above threshold, or
// the profile refuses objects no rule checks.
func (r *Report) Failed(threshold Severity) bool {
	if r.Refused() {
		return true
	}
	for i := range r.Results {
		if r.Results[i].Failed(threshold) {
			return true
		}
	}
	return false
}

const (
	ansiReset  = "\x1b[0m"
	ansiBold   = "\x1b[1m"
	ansiRed    = "\x1b[31m"
	ansiYellow = "\x1b[33m"
	ansiCyan   = "\x1b[36m"
	ansiGrey   = "\x1b[90m"
	ansiGreen  = "\x1b[32m"
)

// WriteText writes the human report: objects with findings, grouped by object,
// then a summary. color adds ANSI colours; callers set it only for a terminal.
func (r *Report) WriteText(w io.Writer, color bool) error {
	paint := func(code, s string) string {
		if !color {
			return s
		}
		return code + s + ansiReset
	}
	var b strings.Builder
	for _, res := range r.Results {
		if len(res.Findings) == 0 {
			continue
		}
		fmt.Fprintf(&b, "%s", paint(ansiBold, res.Object.String()))
		if res.Object.File != "" {
			fmt.Fprintf(&b, "  %s", paint(ansiGrey, sourceString(res.Object)))
		}
		b.WriteString("\n")
		for _, f := range res.Findings {
			label, code := string(f.Severity), severityColor(f.Severity)
			switch f.Outcome {
			case OutcomeWaived:
				label, code = "waived", ansiGrey
			case OutcomeError:
				label = "error/" + label
			}
			fmt.Fprintf(&b, "  %s %-11s %s\n", paint(code, fmt.Sprintf("%-15s", label)), f.Rule, f.Path)
			fmt.Fprintf(&b, "  %-15s %-11s %s\n", "", "", f.Message)
			if f.Waiver != nil {
				fmt.Fprintf(&b, "  %-15s %-11s %s\n", "", "", paint(ansiGrey, fmt.Sprintf("waiver %s: %s (approved by %s, expires %s)",
					f.Waiver.Name, f.Waiver.Reason, f.Waiver.Approver, f.Waiver.Expires.Format("2006-01-02"))))
			}
		}
		b.WriteString("\n")
	}
	if len(r.Unchecked) > 0 {
		b.WriteString(paint(ansiBold, "Not checked") + " (no rule of the profile applies to these kinds):\n")
		width := 0
		for _, u := range r.Unchecked {
			width = max(width, len(u.Kind))
		}
		for _, u := range r.Unchecked {
			var notes []string
			switch u.Scope {
			case ScopeCluster:
				notes = append(notes, "cluster-scoped")
			case ScopeUnknown:
				notes = append(notes, "scope unknown")
			}
			if u.Refused {
				notes = append(notes, paint(ansiRed, "refused by the profile"))
			}
			fmt.Fprintf(&b, "  %-*s %6d %s", width, u.Kind, u.Objects, plural(u.Objects, "object", "objects"))
			if len(notes) > 0 {
				fmt.Fprintf(&b, "  (%s)", strings.Join(notes, ", "))
			}
			b.WriteString("\n")
		}
		b.WriteString("\n")
	}
	s := r.Summary
	verdict := paint(ansiGreen, "passed")
	if s.Failed+s.Errors > 0 || r.Refused() {
		verdict = paint(ansiRed, "failed")
	}
	var sev []string
	for _, level := range []Severity{SeverityCritical, SeverityHigh, SeverityMedium, SeverityLow} {
		if n := s.FailedBySeverity[level]; n > 0 {
			sev = append(sev, fmt.Sprintf("%d %s", n, level))
		}
	}
	detail := ""
	if len(sev) > 0 {
		detail = " (" + strings.Join(sev, ", ") + ")"
	}
	fmt.Fprintf(&b, "Profile %s %s: %d objects (%d not checked), %d checks: %d passed, %d failed%s, %d waived, %d errors\n",
		r.Profile, verdict, s.Objects, s.NotChecked, s.Checks, s.Passed, s.Failed, detail, s.Waived, s.Errors)
	_, err := io.WriteString(w, b.String())
	return err
}

// uncheckedText says in a sentence what an UncheckedKind means.
func (r *Report) uncheckedText(u UncheckedKind) string {
	scope := ""
	switch u.Scope {
	case ScopeCluster:
		scope = "cluster-scoped "
	case ScopeNamespaced:
		scope = "namespaced "
	}
	s := fmt.Sprintf("%d %s%s of kind %s %s not checked: no rule of profile %s applies to the kind",
		u.Objects, scope, plural(u.Objects, "object", "objects"), u.Kind, plural(u.Objects, "was", "were"), r.Profile)
	if u.Refused {
		s += "; the profile refuses them"
	}
	return s
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

func sourceString(o ObjectRef) string {
	if o.Line > 0 {
		return fmt.Sprintf("%s:%d (document %d)", o.File, o.Line, o.Document)
	}
	return fmt.Sprintf("%s (document %d)", o.File, o.Document)
}

func severityColor(s Severity) string {
	switch s {
	case SeverityCritical, SeverityHigh:
		return ansiRed
	case SeverityMedium:
		return ansiYellow
	default:
		return ansiCyan
	}
}
