package monitoring

import (
	"bytes"
	"encoding/json"
	"fmt"
)

// The dashboards are written here, as data, and rendered to Grafana's JSON
// model into config/monitoring/dashboards (go generate): one place holds
// each panel's query, so the end-to-end test asks Prometheus exactly what
// Grafana will.

// board is one dashboard.
type board struct {
	file, uid, title, description string
	// perNamespace adds the namespace variable; queries filter with
	// namespace=~"$namespace".
	perNamespace bool
	rows         []row
}

// row is a titled band of panels, laid out left to right.
type row struct {
	title  string
	panels []panel
}

// panel is one Grafana panel with one or more queries.
type panel struct {
	title, description string
	kind               string // stat, timeseries, table
	unit               string
	width              int // of 24 columns; 24/len(panels) when 0
	queries            []query
}

type query struct {
	expr, legend string
	// instant asks for the last value only (tables and stats of state).
	instant bool
}

// Grafana's units.
const (
	unitSeconds = "s"
	unitRatio   = "percentunit"
	unitBytes   = "bytes"
	unitOps     = "ops"
	unitCount   = "short"
)

const ns = `namespace=~"$namespace"`

var boards = []board{
	{
		file: "slipway-overview.json", uid: "slipway-overview", title: "Slipway / Overview", perNamespace: true,
		description: "Is Slipway running, leading and reaching its git hosts and registries; what it syncs and builds.",
		rows: []row{
			{title: "Server", panels: []panel{
				{title: "Servers up", kind: "stat", unit: unitCount, description: "slipway server replicas Prometheus scrapes successfully.",
					queries: []query{{expr: `sum(up{job="slipway"})`, instant: true}}},
				{title: "Leading replicas", kind: "stat", unit: unitCount, description: "Replicas that hold the leader lease and run the controllers: 1 when all is well.",
					queries: []query{{expr: `sum(slipway_server_leader{job="slipway"})`, instant: true}}},
				{title: "Version", kind: "stat", unit: unitCount, description: "The running build (label version).",
					queries: []query{{expr: `count by (version) (slipway_build_info{job="slipway"})`, legend: "{{version}}", instant: true}}},
				{title: "Targets up by job", kind: "stat", unit: unitCount, description: "Targets of each job that answer scrapes: slipway, the API server, kubelets.",
					queries: []query{{expr: `sum by (job) (up)`, legend: "{{job}}", instant: true}}},
			}},
			{title: "Applications", panels: []panel{
				{title: "Applications", kind: "stat", unit: unitCount,
					queries: []query{{expr: `count(slipway_application_ready{` + ns + `})`, instant: true}}},
				{title: "Applications not ready", kind: "stat", unit: unitCount, description: "Applications whose Ready condition is not True (failing, degraded, rolling out or out of sync).",
					queries: []query{{expr: `sum(1 - slipway_application_ready{` + ns + `})`, instant: true}}},
				{title: "Applications by health", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (status) (slipway_application_health_status{` + ns + `})`, legend: "{{status}}"}}},
				{title: "Applications by sync status", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (status) (slipway_application_sync_status{` + ns + `})`, legend: "{{status}}"}}},
			}},
			{title: "Work", panels: []panel{
				{title: "Reconciliations by result", kind: "timeseries", unit: unitOps,
					queries: []query{{expr: `sum by (result) (rate(slipway_application_reconcile_total[$__rate_interval]))`, legend: "{{result}}"}}},
				{title: "Pipeline runs finished (1h)", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (result) (increase(slipway_pipeline_runs_total{` + ns + `}[1h]))`, legend: "{{result}}"}}},
				{title: "Webhook deliveries by result", kind: "timeseries", unit: unitOps, description: "invalid_signature means the git host and the server hold different secrets, or a forged delivery.",
					queries: []query{{expr: `sum by (result) (rate(slipway_webhook_deliveries_total[$__rate_interval]))`, legend: "{{result}}"}}},
				{title: "Controller queue depth", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (name) (workqueue_depth{job="slipway"})`, legend: "{{name}}"}}},
			}},
			{title: "Remotes", panels: []panel{
				{title: "Git operations by remote and result", kind: "timeseries", unit: unitOps, width: 12,
					queries: []query{{expr: `sum by (remote, operation, result) (rate(slipway_git_operations_total[$__rate_interval]))`, legend: "{{remote}} {{operation}} {{result}}"}}},
				{title: "Registry operations by registry and result", kind: "timeseries", unit: unitOps, width: 12,
					queries: []query{{expr: `sum by (registry, operation, result) (rate(slipway_registry_operations_total[$__rate_interval]))`, legend: "{{registry}} {{operation}} {{result}}"}}},
			}},
			{title: "Audit trail", panels: []panel{
				{title: "Audit log verified", kind: "stat", unit: unitCount, description: "1 when the last verification of the audit log passed; 0 means records were changed, removed or reordered.",
					queries: []query{{expr: `min(slipway_audit_verified{job="slipway"})`, instant: true}}},
				{title: "Audit records", kind: "timeseries", unit: unitCount, description: "Records in the log, covered by the newest signed checkpoint, and held by the witness.",
					queries: []query{
						{expr: `max(slipway_audit_records{job="slipway"})`, legend: "records"},
						{expr: `max(slipway_audit_checkpoint_records{job="slipway"})`, legend: "checkpointed"},
						{expr: `max(slipway_audit_witnessed_records{job="slipway"})`, legend: "witnessed"},
					}},
				{title: "Audit record time (p99)", kind: "timeseries", unit: unitSeconds, description: "From asking for a record to its being durable: an action is reported done only after.",
					queries: []query{{expr: `histogram_quantile(0.99, sum by (le) (rate(slipway_audit_record_duration_seconds_bucket{job="slipway"}[$__rate_interval])))`}}},
				{title: "Audit records not written", kind: "timeseries", unit: unitCount, description: "Records that could not be written; their actions were not reported done and are retried.",
					queries: []query{{expr: `sum(increase(slipway_audit_record_failures_total{job="slipway"}[1h]))`}}},
			}},
			{title: "Process", panels: []panel{
				{title: "Resident memory", kind: "timeseries", unit: unitBytes,
					queries: []query{{expr: `process_resident_memory_bytes{job="slipway"}`, legend: "{{instance}}"}}},
				{title: "Goroutines", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `go_goroutines{job="slipway"}`, legend: "{{instance}}"}}},
			}},
		},
	},
	{
		file: "slipway-applications.json", uid: "slipway-applications", title: "Slipway / Applications", perNamespace: true,
		description: "Each Application's readiness, sync status and health, deployments, and the policy gate.",
		rows: []row{
			{title: "State", panels: []panel{
				{title: "Ready (1) and why", kind: "table", width: 8, description: "The Ready condition of each Application and its reason.",
					queries: []query{{expr: `slipway_application_ready{` + ns + `}`, instant: true}}},
				{title: "Health", kind: "table", width: 8,
					queries: []query{{expr: `slipway_application_health_status{` + ns + `} == 1`, instant: true}}},
				{title: "Sync status", kind: "table", width: 8,
					queries: []query{{expr: `slipway_application_sync_status{` + ns + `} == 1`, instant: true}}},
			}},
			{title: "Deployments", panels: []panel{
				{title: "Deployments (24h)", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (namespace, name) (increase(slipway_application_deployments_total{` + ns + `}[1d]))`, legend: "{{namespace}}/{{name}}"}}},
				{title: "Failed deployments (24h)", kind: "timeseries", unit: unitCount, description: "Revisions that could not be applied or whose rollout ended Degraded.",
					queries: []query{{expr: `sum by (namespace, name) (increase(slipway_application_deployment_failures_total{` + ns + `}[1d]))`, legend: "{{namespace}}/{{name}}"}}},
			}},
			{title: "Reconciliation", panels: []panel{
				{title: "Reconcile time (p95)", kind: "timeseries", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.95, sum by (le, result) (rate(slipway_application_reconcile_duration_seconds_bucket[$__rate_interval])))`, legend: "{{result}}"}}},
				{title: "Git operation time (p95)", kind: "timeseries", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.95, sum by (le, operation) (rate(slipway_git_operation_duration_seconds_bucket[$__rate_interval])))`, legend: "{{operation}}"}}},
			}},
			{title: "Policy", panels: []panel{
				{title: "Policy gate checks by mode and outcome", kind: "timeseries", unit: unitOps, description: "failed in enforce mode blocked a sync; in audit mode it was applied and reported.",
					queries: []query{{expr: `sum by (mode, outcome) (rate(slipway_policy_gate_checks_total[$__rate_interval]))`, legend: "{{mode}} {{outcome}}"}}},
				{title: "Findings by rule (1h)", kind: "table", description: "Rule failures the sync gate found, failing or waived.",
					queries: []query{{expr: `sum by (rule, severity, outcome) (increase(slipway_policy_violations_total[1h]))`, instant: true}}},
			}},
		},
	},
	{
		file: "slipway-pipelines.json", uid: "slipway-pipelines", title: "Slipway / Pipelines", perNamespace: true,
		description: "Runs, their steps and durations, registry operations, promotions and reviews.",
		rows: []row{
			{title: "Runs", panels: []panel{
				{title: "Runs finished by pipeline and result (1h)", kind: "timeseries", unit: unitCount, width: 12,
					queries: []query{{expr: `sum by (namespace, pipeline, result) (increase(slipway_pipeline_runs_total{` + ns + `}[1h]))`, legend: "{{namespace}}/{{pipeline}} {{result}}"}}},
				{title: "Run time (p50, p95)", kind: "timeseries", unit: unitSeconds, width: 12,
					queries: []query{
						{expr: `histogram_quantile(0.5, sum by (le) (rate(slipway_pipeline_run_duration_seconds_bucket[1h])))`, legend: "p50"},
						{expr: `histogram_quantile(0.95, sum by (le) (rate(slipway_pipeline_run_duration_seconds_bucket[1h])))`, legend: "p95"},
					}},
			}},
			{title: "Steps", panels: []panel{
				{title: "Step time by step (p95)", kind: "timeseries", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.95, sum by (le, step) (rate(slipway_pipeline_step_duration_seconds_bucket[1h])))`, legend: "{{step}}"}}},
				{title: "Registry operation time (p95)", kind: "timeseries", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.95, sum by (le, operation) (rate(slipway_registry_operation_duration_seconds_bucket[1h])))`, legend: "{{operation}}"}}},
			}},
			{title: "Lead times", panels: []panel{
				{title: "Commit to promoted (median, 24h)", kind: "stat", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.5, sum by (le) (rate(slipway_pipeline_lead_time_promoted_seconds_bucket[1d])))`, instant: true}}},
				{title: "Commit to running (median, 24h)", kind: "stat", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.5, sum by (le) (rate(slipway_pipeline_lead_time_running_seconds_bucket[1d])))`, instant: true}}},
			}},
			{title: "Promotions", panels: []panel{
				{title: "Promotions by result (24h)", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (result) (increase(slipway_promotions_total[1d]))`, legend: "{{result}}"}}},
				{title: "Reviewers' decisions (24h)", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `sum by (decision) (increase(slipway_promotion_decisions_total[1d]))`, legend: "{{decision}}"}}},
				{title: "Time to a decision (median, 24h)", kind: "timeseries", unit: unitSeconds,
					queries: []query{{expr: `histogram_quantile(0.5, sum by (le, decision) (rate(slipway_promotion_decision_wait_seconds_bucket[1d])))`, legend: "{{decision}}"}}},
			}},
		},
	},
	{
		file: "slipway-dora.json", uid: "slipway-dora", title: "Slipway / DORA", perNamespace: true,
		description: "The four DORA figures over the last day, from the recording rules in config/monitoring/rules/dora.yaml.",
		rows: []row{
			{title: "Throughput", panels: []panel{
				{title: "Deployment frequency (per day)", kind: "stat", unit: unitCount,
					queries: []query{{expr: `:slipway_application_deployments:increase1d`, instant: true}}},
				{title: "Deployments per day by namespace", kind: "timeseries", unit: unitCount,
					queries: []query{{expr: `namespace:slipway_application_deployments:increase1d{` + ns + `}`, legend: "{{namespace}}"}}},
				{title: "Lead time for changes (median, p90)", kind: "timeseries", unit: unitSeconds, description: "From the commit to its build running Synced and Healthy.",
					queries: []query{{expr: `:slipway_pipeline_lead_time_running_seconds:histogram_quantile1d`, legend: "p{{quantile}}"}}},
			}},
			{title: "Stability", panels: []panel{
				{title: "Change failure rate", kind: "stat", unit: unitRatio,
					queries: []query{{expr: `:slipway_application_deployment_failures:ratio1d`, instant: true}}},
				{title: "Change failure rate by namespace", kind: "timeseries", unit: unitRatio,
					queries: []query{{expr: `namespace:slipway_application_deployment_failures:ratio1d{` + ns + `}`, legend: "{{namespace}}"}}},
				{title: "Time to restore service (median)", kind: "stat", unit: unitSeconds, description: "From an Application turning Degraded to its being Healthy again.",
					queries: []query{{expr: `:slipway_application_recovery_duration_seconds:histogram_quantile1d`, instant: true}}},
			}},
		},
	},
}

// Grafana's JSON model, as much of it as the dashboards use.
type dashboardJSON struct {
	UID           string         `json:"uid"`
	Title         string         `json:"title"`
	Description   string         `json:"description"`
	Tags          []string       `json:"tags"`
	Editable      bool           `json:"editable"`
	SchemaVersion int            `json:"schemaVersion"`
	Version       int            `json:"version"`
	Refresh       string         `json:"refresh"`
	Time          timeRange      `json:"time"`
	Templating    templatingJSON `json:"templating"`
	Panels        []panelJSON    `json:"panels"`
}

type timeRange struct {
	From string `json:"from"`
	To   string `json:"to"`
}

type templatingJSON struct {
	List []variableJSON `json:"list"`
}

type variableJSON struct {
	Name       string          `json:"name"`
	Label      string          `json:"label"`
	Type       string          `json:"type"`
	Query      any             `json:"query"`
	Definition string          `json:"definition,omitempty"`
	Datasource *datasourceJSON `json:"datasource,omitempty"`
	IncludeAll bool            `json:"includeAll,omitempty"`
	Multi      bool            `json:"multi,omitempty"`
	AllValue   string          `json:"allValue,omitempty"`
	Refresh    int             `json:"refresh,omitempty"`
	Current    map[string]any  `json:"current"`
}

type datasourceJSON struct {
	Type string `json:"type"`
	UID  string `json:"uid"`
}

type panelJSON struct {
	ID          int             `json:"id"`
	Type        string          `json:"type"`
	Title       string          `json:"title"`
	Description string          `json:"description,omitempty"`
	GridPos     gridPos         `json:"gridPos"`
	Datasource  *datasourceJSON `json:"datasource,omitempty"`
	Targets     []targetJSON    `json:"targets,omitempty"`
	FieldConfig *fieldConfig    `json:"fieldConfig,omitempty"`
	Collapsed   *bool           `json:"collapsed,omitempty"`
	Panels      []panelJSON     `json:"panels,omitempty"`
}

type gridPos struct {
	H int `json:"h"`
	W int `json:"w"`
	X int `json:"x"`
	Y int `json:"y"`
}

type targetJSON struct {
	RefID        string          `json:"refId"`
	Datasource   *datasourceJSON `json:"datasource"`
	Expr         string          `json:"expr"`
	LegendFormat string          `json:"legendFormat,omitempty"`
	Instant      bool            `json:"instant"`
	Range        bool            `json:"range"`
	Format       string          `json:"format,omitempty"`
}

type fieldConfig struct {
	Defaults  map[string]any `json:"defaults"`
	Overrides []any          `json:"overrides"`
}

var promDatasource = &datasourceJSON{Type: "prometheus", UID: "${datasource}"}

// render returns the dashboard as Grafana JSON.
func (b board) render() ([]byte, error) {
	d := dashboardJSON{
		UID: b.uid, Title: b.title, Description: b.description, Tags: []string{"slipway"},
		Editable: true, SchemaVersion: 39, Version: 1, Refresh: "30s",
		Time: timeRange{From: "now-6h", To: "now"},
		Templating: templatingJSON{List: []variableJSON{{
			Name: "datasource", Label: "Data source", Type: "datasource", Query: "prometheus",
			Current: map[string]any{},
		}}},
	}
	if b.perNamespace {
		q := "label_values(slipway_application_ready, namespace)"
		d.Templating.List = append(d.Templating.List, variableJSON{
			Name: "namespace", Label: "Namespace", Type: "query", Datasource: promDatasource,
			Query: map[string]any{"query": q, "refId": "namespace"}, Definition: q,
			IncludeAll: true, Multi: true, AllValue: ".+", Refresh: 2,
			Current: map[string]any{"text": []string{"All"}, "value": []string{"$__all"}},
		})
	}
	id, y := 1, 0
	for _, r := range b.rows {
		d.Panels = append(d.Panels, panelJSON{ID: id, Type: "row", Title: r.title, GridPos: gridPos{H: 1, W: 24, X: 0, Y: y}, Collapsed: new(bool)})
		id++
		y++
		x, height := 0, 8
		for _, p := range r.panels {
			w := p.width
			if w == 0 {
				w = 24 / len(r.panels)
			}
			if p.kind == "stat" {
				height = 5
			}
			pj := panelJSON{
				ID: id, Type: p.kind, Title: p.title, Description: p.description,
				GridPos: gridPos{H: height, W: w, X: x, Y: y}, Datasource: promDatasource,
				FieldConfig: &fieldConfig{Defaults: map[string]any{}, Overrides: []any{}},
			}
			if p.unit != "" {
				pj.FieldConfig.Defaults["unit"] = p.unit
			}
			for i, q := range p.queries {
				t := targetJSON{RefID: string(rune('A' + i)), Datasource: promDatasource, Expr: q.expr, LegendFormat: q.legend,
					Instant: q.instant, Range: !q.instant}
				if p.kind == "table" {
					t.Format = "table"
				}
				pj.Targets = append(pj.Targets, t)
			}
			if x+w > 24 {
				return nil, fmt.Errorf("dashboard %s: row %q is wider than 24 columns", b.uid, r.title)
			}
			d.Panels = append(d.Panels, pj)
			id++
			x += w
		}
		y += height
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	enc.SetIndent("", "  ")
	if err := enc.Encode(d); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// RenderDashboards returns every dashboard's JSON by file name, as
// config/monitoring/dashboards holds them.
func RenderDashboards() (map[string][]byte, error) {
	out := map[string][]byte{}
	for _, b := range boards {
		j, err := b.render()
		if err != nil {
			return nil, err
		}
		out[b.file] = j
	}
	return out, nil
}
