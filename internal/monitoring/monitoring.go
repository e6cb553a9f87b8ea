// Package monitoring is what Prometheus, Alertmanager and Grafana need to
// watch Slipway, versioned with the code: the alerting and DORA recording
// rules, the scrape configuration, the Prometheus Operator's objects and
// the dashboards (all in config/monitoring), and the configuration of the
// lab's own Prometheus and Alertmanager.
package monitoring

//go:generate go run ./gen ../..

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"path"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"

	"slipway.dev/slipway/config"
)

// Job is the job label Slipway's scrape configurations give slipway
// server's targets; the rules and dashboards select it.
const Job = "slipway"

// RuleFiles returns the rule files (file name to content) from
// config/monitoring/rules.
func RuleFiles() (map[string][]byte, error) {
	return readDir("monitoring/rules", ".yaml")
}

// DashboardFiles returns the dashboards (file name to Grafana JSON) from
// config/monitoring/dashboards.
func DashboardFiles() (map[string][]byte, error) {
	return readDir("monitoring/dashboards", ".json")
}

func readDir(dir, ext string) (map[string][]byte, error) {
	entries, err := fs.ReadDir(config.Monitoring, dir)
	if err != nil {
		return nil, fmt.Errorf("reading embedded %s: %w", dir, err)
	}
	out := map[string][]byte{}
	for _, e := range entries {
		if e.IsDir() || path.Ext(e.Name()) != ext {
			continue
		}
		b, err := fs.ReadFile(config.Monitoring, path.Join(dir, e.Name()))
		if err != nil {
			return nil, err
		}
		out[e.Name()] = b
	}
	return out, nil
}

// RuleGroup is a group of a rule file.
type RuleGroup struct {
	Name     string `json:"name"`
	Interval string `json:"interval,omitempty"`
	Rules    []Rule `json:"rules"`
}

// Rule is an alerting or recording rule.
type Rule struct {
	Alert       string            `json:"alert,omitempty"`
	Record      string            `json:"record,omitempty"`
	Expr        string            `json:"expr"`
	For         string            `json:"for,omitempty"`
	Labels      map[string]string `json:"labels,omitempty"`
	Annotations map[string]string `json:"annotations,omitempty"`
}

// RuleGroups returns the groups of every rule file, in file name order.
func RuleGroups() ([]RuleGroup, error) {
	files, err := RuleFiles()
	if err != nil {
		return nil, err
	}
	var groups []RuleGroup
	for _, name := range sortedKeys(files) {
		var f struct {
			Groups []RuleGroup `json:"groups"`
		}
		if err := yaml.UnmarshalStrict(files[name], &f); err != nil {
			return nil, fmt.Errorf("parsing config/monitoring/rules/%s: %w", name, err)
		}
		groups = append(groups, f.Groups...)
	}
	return groups, nil
}

// PanelQuery is the query of one panel of a dashboard.
type PanelQuery struct {
	Dashboard, Panel string
	Expr             string
}

// PanelQueries returns every query of every panel of the shipped
// dashboards, as Grafana would send them with every variable at its "All"
// value and a rate interval of rateInterval.
func PanelQueries(rateInterval string) ([]PanelQuery, error) {
	files, err := DashboardFiles()
	if err != nil {
		return nil, err
	}
	var out []PanelQuery
	for _, name := range sortedKeys(files) {
		var d dashboardJSON
		if err := json.Unmarshal(files[name], &d); err != nil {
			return nil, fmt.Errorf("parsing dashboard %s: %w", name, err)
		}
		all := map[string]string{}
		for _, v := range d.Templating.List {
			if v.IncludeAll {
				all[v.Name] = v.AllValue
			}
		}
		for _, p := range d.Panels {
			for _, t := range p.Targets {
				expr := strings.ReplaceAll(t.Expr, "$__rate_interval", rateInterval)
				for name, value := range all {
					expr = strings.ReplaceAll(expr, "$"+name, value)
				}
				out = append(out, PanelQuery{Dashboard: d.Title, Panel: p.Title, Expr: expr})
			}
		}
	}
	return out, nil
}

// VariableQueries returns the queries of the shipped dashboards' query
// variables (label_values(...)).
func VariableQueries() ([]string, error) {
	files, err := DashboardFiles()
	if err != nil {
		return nil, err
	}
	var out []string
	for _, name := range sortedKeys(files) {
		var d dashboardJSON
		if err := json.Unmarshal(files[name], &d); err != nil {
			return nil, fmt.Errorf("parsing dashboard %s: %w", name, err)
		}
		for _, v := range d.Templating.List {
			if v.Type == "query" {
				out = append(out, v.Definition)
			}
		}
	}
	return out, nil
}

// PrometheusRule renders the rule groups as the Prometheus Operator's
// PrometheusRule object (config/monitoring/operator/prometheusrule.yaml).
func PrometheusRule() ([]byte, error) {
	groups, err := RuleGroups()
	if err != nil {
		return nil, err
	}
	obj := map[string]any{
		"apiVersion": "monitoring.coreos.com/v1",
		"kind":       "PrometheusRule",
		"metadata": map[string]any{
			"name": "slipway", "namespace": "slipway-system",
			"labels": map[string]string{"app.kubernetes.io/name": "slipway", "app.kubernetes.io/component": "server"},
		},
		"spec": map[string]any{"groups": groups},
	}
	b, err := yaml.Marshal(obj)
	if err != nil {
		return nil, err
	}
	header := "# Generated from config/monitoring/rules by `go generate ./internal/monitoring` (do not edit).\n" +
		"# For clusters running the Prometheus Operator; its Prometheus object must select it\n" +
		"# (ruleSelector, ruleNamespaceSelector).\n"
	return append([]byte(header), b...), nil
}

// Runbooks renders docs/runbooks.md from the alerting rules' annotations.
func Runbooks() ([]byte, error) {
	groups, err := RuleGroups()
	if err != nil {
		return nil, err
	}
	var b bytes.Buffer
	b.WriteString("# Runbooks of Slipway's alerts\n\n")
	b.WriteString("Generated from `config/monitoring/rules/alerts.yaml` by `go generate ./internal/monitoring` (do not edit).\n")
	b.WriteString("Each alert carries the same text in its `runbook` annotation, so it arrives with the alert.\n")
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			fmt.Fprintf(&b, "\n## %s\n\n", r.Alert)
			fmt.Fprintf(&b, "Severity **%s**", r.Labels["severity"])
			if r.For != "" {
				fmt.Fprintf(&b, ", after %s", r.For)
			}
			fmt.Fprintf(&b, ". %s\n\n", strings.TrimSpace(r.Annotations["description"]))
			fmt.Fprintf(&b, "```promql\n%s\n```\n\n", strings.TrimSpace(r.Expr))
			b.WriteString(strings.TrimSpace(r.Annotations["runbook"]))
			b.WriteString("\n")
		}
	}
	return b.Bytes(), nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// Generated returns every file `go generate` writes, by path from the
// repository's root.
func Generated() (map[string][]byte, error) {
	out := map[string][]byte{}
	dashboards, err := RenderDashboards()
	if err != nil {
		return nil, err
	}
	for name, b := range dashboards {
		out["config/monitoring/dashboards/"+name] = b
	}
	if out["config/monitoring/operator/prometheusrule.yaml"], err = PrometheusRule(); err != nil {
		return nil, err
	}
	if out["docs/runbooks.md"], err = Runbooks(); err != nil {
		return nil, err
	}
	return out, nil
}
