package policy

import (
	"encoding/xml"
	"fmt"
	"io"
	"strings"
)

// JUnit XML as CI servers (Jenkins, GitLab) read it: one test suite per object,
// one test case per rule that applied; failed and errored rules are failures,
// waived ones are skipped with the waiver as the reason.

type junitSuites struct {
	XMLName  xml.Name     `xml:"testsuites"`
	Name     string       `xml:"name,attr"`
	Tests    int          `xml:"tests,attr"`
	Failures int          `xml:"failures,attr"`
	Errors   int          `xml:"errors,attr"`
	Skipped  int          `xml:"skipped,attr"`
	Suites   []junitSuite `xml:"testsuite"`
}

type junitSuite struct {
	Name     string      `xml:"name,attr"`
	File     string      `xml:"file,attr,omitempty"`
	Tests    int         `xml:"tests,attr"`
	Failures int         `xml:"failures,attr"`
	Errors   int         `xml:"errors,attr"`
	Skipped  int         `xml:"skipped,attr"`
	Cases    []junitCase `xml:"testcase"`
}

type junitCase struct {
	Name      string        `xml:"name,attr"`
	ClassName string        `xml:"classname,attr"`
	Failure   *junitMessage `xml:"failure,omitempty"`
	Error     *junitMessage `xml:"error,omitempty"`
	Skipped   *junitMessage `xml:"skipped,omitempty"`
}

type junitMessage struct {
	Message string `xml:"message,attr"`
	Type    string `xml:"type,attr,omitempty"`
	Text    string `xml:",chardata"`
}

// WriteJUnit writes the report as JUnit XML.
func (r *Report) WriteJUnit(w io.Writer) error {
	titles := map[string]string{}
	for _, rule := range r.policy.rules {
		titles[rule.ID] = rule.Title
	}
	doc := junitSuites{Name: "slipway policy " + r.Profile}
	for _, res := range r.Results {
		if len(res.Checked) == 0 {
			continue
		}
		suite := junitSuite{Name: res.Object.String(), File: res.Object.File}
		for _, id := range res.Checked {
			tc := junitCase{Name: id + " " + titles[id], ClassName: res.Object.String()}
			var lines []string
			var waiver *Waiver
			for _, f := range res.Findings {
				if f.Rule == id {
					lines = append(lines, strings.TrimSpace(f.Path+": "+f.Message))
					if f.Waiver != nil {
						waiver = f.Waiver
					}
				}
			}
			outcome, sev := res.outcome(id)
			text := strings.Join(lines, "\n")
			switch outcome {
			case OutcomeFail:
				tc.Failure = &junitMessage{Message: fmt.Sprintf("%s (%s): %d violation(s)", id, sev, len(lines)), Type: string(sev), Text: text}
				suite.Failures++
			case OutcomeError:
				tc.Error = &junitMessage{Message: id + ": rule could not be evaluated", Type: string(sev), Text: text}
				suite.Errors++
			case OutcomeWaived:
				tc.Skipped = &junitMessage{Message: fmt.Sprintf("waived by %s: %s (approved by %s, expires %s)",
					waiver.Name, waiver.Reason, waiver.Approver, waiver.Expires.Format("2006-01-02")), Text: text}
				suite.Skipped++
			}
			suite.Tests++
			suite.Cases = append(suite.Cases, tc)
		}
		doc.Tests += suite.Tests
		doc.Failures += suite.Failures
		doc.Errors += suite.Errors
		doc.Skipped += suite.Skipped
		doc.Suites = append(doc.Suites, suite)
	}
	if len(r.Unchecked) > 0 {
		// One case per kind no rule checked: skipped, or failed when the
		// profile refuses its objects.
		suite := junitSuite{Name: "not checked by profile " + r.Profile}
		for _, u := range r.Unchecked {
			tc := junitCase{Name: u.Kind, ClassName: suite.Name}
			if u.Refused {
				tc.Failure = &junitMessage{Message: r.uncheckedText(u), Type: "unchecked"}
				suite.Failures++
			} else {
				tc.Skipped = &junitMessage{Message: r.uncheckedText(u)}
				suite.Skipped++
			}
			suite.Tests++
			suite.Cases = append(suite.Cases, tc)
		}
		doc.Tests += suite.Tests
		doc.Failures += suite.Failures
		doc.Skipped += suite.Skipped
		doc.Suites = append(doc.Suites, suite)
	}
	if _, err := io.WriteString(w, xml.Header); err != nil {
		return err
	}
	enc := xml.NewEncoder(w)
	enc.Indent("", "  ")
	if err := enc.Encode(doc); err != nil {
		return err
	}
	_, err := io.WriteString(w, "\n")
	return err
}
