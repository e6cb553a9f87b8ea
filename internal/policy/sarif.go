package policy

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
)

// SARIF 2.1.0, the subset code-scanning UIs read: rule metadata on the driver,
// results with a file location and the field path as a logical location, and
// waived findings as accepted external suppressions.

const (
	sarifSchema  = "https://json.schemastore.org/sarif-2.1.0.json"
	sarifVersion = "2.1.0"
	toolURI      = "https://slipway.dev/docs/policies"
)

type sarifLog struct {
	Schema  string     `json:"$schema"`
	Version string     `json:"version"`
	Runs    []sarifRun `json:"runs"`
}

type sarifRun struct {
	Tool        sarifTool         `json:"tool"`
	Invocations []sarifInvocation `json:"invocations,omitempty"`
	Results     []sarifResult     `json:"results"`
}

// sarifInvocation carries, as notifications, the kinds no rule checked: they
// are not results (no rule ran), but a reader must see them.
type sarifInvocation struct {
	ExecutionSuccessful        bool                `json:"executionSuccessful"`
	ToolExecutionNotifications []sarifNotification `json:"toolExecutionNotifications,omitempty"`
}

type sarifNotification struct {
	Level   string    `json:"level"`
	Message sarifText `json:"message"`
}

type sarifTool struct {
	Driver sarifDriver `json:"driver"`
}

type sarifDriver struct {
	Name           string      `json:"name"`
	Version        string      `json:"version,omitempty"`
	InformationURI string      `json:"informationUri"`
	Rules          []sarifRule `json:"rules"`
}

type sarifText struct {
	Text     string `json:"text"`
	Markdown string `json:"markdown,omitempty"`
}

type sarifRule struct {
	ID                   string             `json:"id"`
	Name                 string             `json:"name"`
	ShortDescription     sarifText          `json:"shortDescription"`
	FullDescription      sarifText          `json:"fullDescription"`
	Help                 sarifText          `json:"help"`
	HelpURI              string             `json:"helpUri"`
	DefaultConfiguration sarifConfiguration `json:"defaultConfiguration"`
	Properties           sarifRuleProps     `json:"properties"`
}

type sarifConfiguration struct {
	Level string `json:"level"`
}

type sarifRuleProps struct {
	Tags             []string `json:"tags"`
	Precision        string   `json:"precision"`
	SecuritySeverity string   `json:"security-severity"`
	Severity         Severity `json:"severity"`
	Pack             string   `json:"pack"`
}

type sarifResult struct {
	RuleID       string             `json:"ruleId"`
	RuleIndex    int                `json:"ruleIndex"`
	Level        string             `json:"level"`
	Message      sarifText          `json:"message"`
	Locations    []sarifLocation    `json:"locations,omitempty"`
	Suppressions []sarifSuppression `json:"suppressions,omitempty"`
}

type sarifLocation struct {
	PhysicalLocation *sarifPhysical `json:"physicalLocation,omitempty"`
	LogicalLocations []sarifLogical `json:"logicalLocations,omitempty"`
}

type sarifPhysical struct {
	ArtifactLocation sarifArtifact `json:"artifactLocation"`
	Region           *sarifRegion  `json:"region,omitempty"`
}

type sarifArtifact struct {
	URI string `json:"uri"`
}

type sarifRegion struct {
	StartLine int `json:"startLine"`
}

type sarifLogical struct {
	FullyQualifiedName string `json:"fullyQualifiedName"`
	Kind               string `json:"kind"`
}

type sarifSuppression struct {
	Kind          string `json:"kind"`
	Status        string `json:"status"`
	Justification string `json:"justification"`
}

// sarifLevel maps severity to SARIF's three result levels.
func sarifLevel(s Severity) string {
	switch s {
	case SeverityCritical, SeverityHigh:
		return "error"
	case SeverityMedium:
		return "warning"
	default:
		return "note"
	}
}

// securitySeverity is the CVSS-like score code-scanning UIs sort by
// (>= 9 critical, >= 7 high, >= 4 medium).
func securitySeverity(s Severity) string {
	switch s {
	case SeverityCritical:
		return "9.5"
	case SeverityHigh:
		return "8.0"
	case SeverityMedium:
		return "5.5"
	default:
		return "3.0"
	}
}

// WriteSARIF writes the report as a SARIF 2.1.0 log; toolVersion is Slipway's version.
func (r *Report) WriteSARIF(w io.Writer, toolVersion string) error {
	driver := sarifDriver{Name: "slipway-policy", Version: toolVersion, InformationURI: toolURI, Rules: []sarifRule{}}
	index := map[string]int{}
	for _, rule := range r.policy.rules {
		index[rule.ID] = len(driver.Rules)
		tags := []string{"security", "kubernetes", rule.pack}
		for _, m := range rule.Mappings {
			tags = append(tags, m.Framework+" "+m.Clause)
		}
		driver.Rules = append(driver.Rules, sarifRule{
			ID:                   rule.ID,
			Name:                 ruleName(rule.Title),
			ShortDescription:     sarifText{Text: rule.Title},
			FullDescription:      sarifText{Text: rule.Message},
			Help:                 sarifText{Text: rule.Remediation, Markdown: ruleHelpMarkdown(rule.Rule)},
			HelpURI:              toolURI + "#" + strings.ToLower(rule.ID),
			DefaultConfiguration: sarifConfiguration{Level: sarifLevel(rule.Severity)},
			Properties: sarifRuleProps{Tags: tags, Precision: "very-high", SecuritySeverity: securitySeverity(rule.Severity),
				Severity: rule.Severity, Pack: rule.pack},
		})
	}
	results := []sarifResult{}
	for _, res := range r.Results {
		for _, f := range res.Findings {
			sr := sarifResult{
				RuleID:    f.Rule,
				RuleIndex: index[f.Rule],
				Level:     sarifLevel(f.Severity),
				Message:   sarifText{Text: fmt.Sprintf("%s: %s at %s", res.Object, f.Message, f.Path)},
			}
			if f.Path == "" {
				sr.Message.Text = fmt.Sprintf("%s: %s", res.Object, f.Message)
			}
			loc := sarifLocation{LogicalLocations: []sarifLogical{{FullyQualifiedName: res.Object.String() + "/" + f.Path, Kind: "object"}}}
			if res.Object.File != "" && !strings.HasPrefix(res.Object.File, "<") {
				loc.PhysicalLocation = &sarifPhysical{ArtifactLocation: sarifArtifact{URI: filepath.ToSlash(res.Object.File)}}
				if res.Object.Line > 0 {
					loc.PhysicalLocation.Region = &sarifRegion{StartLine: res.Object.Line}
				}
			}
			sr.Locations = []sarifLocation{loc}
			if f.Waiver != nil {
				sr.Suppressions = []sarifSuppression{{Kind: "external", Status: "accepted",
					Justification: fmt.Sprintf("waiver %s: %s (approved by %s, expires %s)", f.Waiver.Name, f.Waiver.Reason, f.Waiver.Approver, f.Waiver.Expires.Format("2006-01-02"))}}
			}
			results = append(results, sr)
		}
	}
	run := sarifRun{Tool: sarifTool{Driver: driver}, Results: results}
	if len(r.Unchecked) > 0 {
		inv := sarifInvocation{ExecutionSuccessful: true}
		for _, u := range r.Unchecked {
			level := "note"
			if u.Refused {
				level = "error"
			}
			inv.ToolExecutionNotifications = append(inv.ToolExecutionNotifications, sarifNotification{Level: level, Message: sarifText{Text: r.uncheckedText(u)}})
		}
		run.Invocations = []sarifInvocation{inv}
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(sarifLog{Schema: sarifSchema, Version: sarifVersion, Runs: []sarifRun{run}})
}

// ruleName turns a title into the PascalCase identifier SARIF viewers expect.
func ruleName(title string) string {
	var b strings.Builder
	for _, w := range strings.FieldsFunc(title, func(r rune) bool {
		return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9')
	}) {
		b.WriteString(strings.ToUpper(w[:1]) + w[1:])
	}
	return b.String()
}

func ruleHelpMarkdown(r *Rule) string {
	var b strings.Builder
	fmt.Fprintf(&b, "**%s** (%s)\n\n%s\n\n**Remediation:** %s\n\n**Sources:**\n", r.Title, r.Severity, r.Message, r.Remediation)
	for _, m := range r.Mappings {
		fmt.Fprintf(&b, "- %s\n", mappingString(m))
	}
	return b.String()
}

// mappingString renders a mapping on one line, as list, explain and the docs show it.
func mappingString(m Mapping) string {
	s := fmt.Sprintf("%s %s (%s", m.Framework, m.Clause, m.Relation)
	if m.Effective != "" {
		s += ", effective " + m.Effective
	}
	if m.Source != "" {
		s += "; " + m.Source
	}
	return s + ")"
}
