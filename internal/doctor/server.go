package doctor

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net/http"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/client-go/kubernetes"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/monitoring"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/webhook"
)

// serverMetrics reads slipway server's /metrics: at ServerURL, or through
// the API server's proxy to the Service `slipway install` creates.
func (r *run) serverMetrics(ctx context.Context) (map[string]*dto.MetricFamily, string, error) {
	var body io.ReadCloser
	where := r.ServerURL
	if where != "" {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(where, "/")+"/metrics", nil)
		if err != nil {
			return nil, where, err
		}
		resp, err := httpClient.Do(req)
		if err != nil {
			return nil, where, err
		}
		if resp.StatusCode != http.StatusOK {
			resp.Body.Close()
			return nil, where, fmt.Errorf("GET /metrics answered %s", resp.Status)
		}
		body = resp.Body
	} else {
		where = "Service " + install.Namespace + "/" + install.ServerName + " (through the API server's proxy)"
		cs, err := kubernetes.NewForConfig(r.Config)
		if err != nil {
			return nil, where, err
		}
		b, err := cs.CoreV1().Services(install.Namespace).ProxyGet("http", install.ServerName, "http", "/metrics", nil).DoRaw(ctx)
		if err != nil {
			return nil, where, err
		}
		body = io.NopCloser(strings.NewReader(string(b)))
	}
	defer body.Close()
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(io.LimitReader(body, 32<<20))
	if err != nil {
		return nil, where, fmt.Errorf("reading the server's metrics: %w", err)
	}
	return families, where, nil
}

// serverMetricsFor reads the server's metrics for a check, or fails res
// with what went wrong.
func (r *run) serverMetricsFor(ctx context.Context, res *Result) (map[string]*dto.MetricFamily, bool) {
	families, where, err := r.serverMetrics(ctx)
	res.Target = where
	if err != nil {
		res.Status = Fail
		res.Message = cause(ctx, err, "reading slipway server's metrics", r.StepTimeout)
		res.Action = "check that slipway server runs and answers at " + where + " (give its address with --server)"
		return nil, false
	}
	return families, true
}

func gaugeValue(families map[string]*dto.MetricFamily, name string) (float64, bool) {
	f := families[name]
	if f == nil || len(f.GetMetric()) == 0 {
		return 0, false
	}
	return f.GetMetric()[0].GetGauge().GetValue(), true
}

// checkWebhook says whether slipway server can verify push webhooks and
// how the last delivery went.
func checkWebhook(ctx context.Context, r *run) []Result {
	return []Result{step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "webhook", Status: Fail}
		families, ok := r.serverMetricsFor(ctx, &res)
		if !ok {
			return res
		}
		own := 0
		if c, err := r.client(); err == nil {
			var pipes slipwayv1.PipelineList
			if err := c.List(ctx, &pipes); err == nil {
				for _, p := range pipes.Items {
					if p.Spec.Source.WebhookSecretRef != nil && pipelineSecretUsable(ctx, c, &p) {
						own++
					}
				}
			}
		}
		configured, _ := gaugeValue(families, "slipway_webhook_secret_configured")
		var last struct {
			at     float64
			result string
		}
		if f := families["slipway_webhook_last_delivery_timestamp_seconds"]; f != nil {
			for _, m := range f.GetMetric() {
				for _, l := range m.GetLabel() {
					if l.GetName() == "result" && m.GetGauge().GetValue() > last.at {
						last.at, last.result = m.GetGauge().GetValue(), l.GetValue()
					}
				}
			}
		}
		secrets := "the server has a webhook secret"
		if configured != 1 {
			secrets = "the server has no webhook secret of its own"
		}
		if own > 0 {
			secrets += fmt.Sprintf(" and %s one", plural(own, "Pipeline has", "Pipelines have"))
		}
		if configured != 1 && own == 0 {
			res.Message = secrets + ": every push delivery is refused, so pushes reach the cluster only at each Application's interval"
			res.Action = "give slipway server --webhook-secret-file (the Secret " + install.WebhookSecretName + " when installed) and the same secret to the git host's webhook"
			return res
		}
		if last.at == 0 {
			res.Status, res.Message = Warn, secrets+"; no delivery has arrived since the server started"
			res.Action = "check the git host's webhook (URL .../hooks/git, content type application/json, push events) and send a test delivery"
			return res
		}
		at := time.Unix(int64(last.at), int64(math.Mod(last.at, 1)*1e9)).UTC()
		when := fmt.Sprintf("the last delivery (%s, %s ago)", at.Format(time.RFC3339), time.Since(at).Round(time.Second))
		switch last.result {
		case webhook.ResultAccepted, webhook.ResultIgnored:
			res.Status, res.Message = Pass, secrets+"; "+when+" was "+last.result
		case webhook.ResultInvalidSignature:
			res.Message = secrets + "; " + when + " was refused: its signature does not verify with any secret the server has. The git host and slipway server hold different webhook secrets (or someone sent a forged delivery)"
			res.Action = "set the same secret on the git host's webhook and in slipway server's --webhook-secret-file (or the Pipeline's spec.source.webhookSecretRef), then redeliver from the git host"
		default:
			res.Message = secrets + "; " + when + " failed: " + last.result
			res.Action = "the server's log says why (search for \"webhook\")"
		}
		return res
	})}
}

func pipelineSecretUsable(ctx context.Context, c client.Client, p *slipwayv1.Pipeline) bool {
	s := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Spec.Source.WebhookSecretRef.Name}, s); err != nil {
		return false
	}
	return len(strings.TrimSpace(string(s.Data[webhook.SecretKey]))) > 0
}

// checkPrometheus asks the Prometheus that should scrape Slipway whether
// it runs, whether it has slipway server's targets and scrapes them, and
// whether it holds Slipway's rules.
func checkPrometheus(ctx context.Context, r *run) []Result {
	if r.PrometheusURL == "" {
		return []Result{step(ctx, r.StepTimeout, func(context.Context) Result {
			return Result{Check: "prometheus", Status: Warn, Message: "no Prometheus given: whether Slipway is scraped is not checked",
				Action: "give the Prometheus that should scrape Slipway with --prometheus URL"}
		})}
	}
	base := strings.TrimSuffix(r.PrometheusURL, "/")
	ready := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "prometheus", Target: base, Status: Fail}
		if _, err := getJSON(ctx, base+"/-/ready", nil); err != nil {
			res.Message = cause(ctx, err, "Prometheus", r.StepTimeout)
			res.Action = "start Prometheus (in the lab: `slipway lab up --monitoring`), or give its address with --prometheus"
			return res
		}
		res.Status, res.Message = Pass, "ready"
		return res
	})
	if ready.Status != Pass {
		return []Result{ready}
	}
	out := []Result{ready}
	out = append(out, step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "prometheus.targets", Target: base, Status: Fail}
		var targets struct {
			Data struct {
				ActiveTargets []struct {
					Labels     map[string]string `json:"labels"`
					ScrapeURL  string            `json:"scrapeUrl"`
					Health     string            `json:"health"`
					LastError  string            `json:"lastError"`
					LastScrape time.Time         `json:"lastScrape"`
				} `json:"activeTargets"`
			} `json:"data"`
		}
		if _, err := getJSON(ctx, base+"/api/v1/targets?state=active", &targets); err != nil {
			res.Message = cause(ctx, err, "listing Prometheus's targets", r.StepTimeout)
			return res
		}
		var up, down, pending []string
		for _, t := range targets.Data.ActiveTargets {
			if t.Labels["job"] != monitoring.Job {
				continue
			}
			switch t.Health {
			case "up":
				up = append(up, t.ScrapeURL)
			case "unknown":
				// Found, and not scraped yet.
				pending = append(pending, t.ScrapeURL)
			default:
				down = append(down, fmt.Sprintf("%s is %s: %s", t.ScrapeURL, t.Health, t.LastError))
			}
		}
		sort.Strings(down)
		switch {
		case len(up)+len(down)+len(pending) == 0:
			res.Message = "Prometheus has no target of job " + monitoring.Job + ": its scrape configuration does not include slipway server, so it collects nothing of Slipway"
			res.Action = "add config/monitoring/prometheus/scrape-configs.yaml to its configuration, or apply config/monitoring/operator/servicemonitor.yaml where the Prometheus Operator runs"
		case len(down) > 0:
			res.Message = "slipway server's target is not scraped: " + joinLimited(down, 3)
			res.Action = "see the error: the server down, a NetworkPolicy or a wrong port between Prometheus and the server"
		case len(pending) > 0:
			res.Status = Warn
			res.Message = "Prometheus has found " + joinLimited(pending, 3) + " and not scraped it yet"
			res.Action = "run doctor again after a scrape interval"
		default:
			res.Status, res.Message = Pass, "scrapes slipway server: "+joinLimited(up, 3)
		}
		return res
	}))
	out = append(out, step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "prometheus.rules", Target: base, Status: Warn}
		var rules struct {
			Data struct {
				Groups []struct {
					Name  string `json:"name"`
					Rules []struct {
						Health string `json:"health"`
						Name   string `json:"name"`
						Error  string `json:"lastError"`
					} `json:"rules"`
				} `json:"groups"`
			} `json:"data"`
		}
		if _, err := getJSON(ctx, base+"/api/v1/rules", &rules); err != nil {
			res.Message = cause(ctx, err, "listing Prometheus's rules", r.StepTimeout)
			return res
		}
		shipped, err := monitoring.RuleGroups()
		if err != nil {
			res.Message = err.Error()
			return res
		}
		loaded := map[string]bool{}
		var broken []string
		for _, g := range rules.Data.Groups {
			loaded[g.Name] = true
			for _, rule := range g.Rules {
				if rule.Health == "err" {
					broken = append(broken, rule.Name+": "+rule.Error)
				}
			}
		}
		var missing []string
		for _, g := range shipped {
			if !loaded[g.Name] {
				missing = append(missing, g.Name)
			}
		}
		switch {
		case len(missing) > 0:
			res.Message = "Prometheus lacks Slipway's rule groups " + strings.Join(missing, ", ") + ": its alerts cannot fire"
			res.Action = "add config/monitoring/rules/*.yaml to rule_files, or apply config/monitoring/operator/prometheusrule.yaml"
		case len(broken) > 0:
			res.Message = "rules fail to evaluate: " + joinLimited(broken, 3)
			res.Action = "see Prometheus's rules page"
		default:
			res.Status, res.Message = Pass, fmt.Sprintf("holds Slipway's %s", plural(len(shipped), "rule group", "rule groups"))
		}
		return res
	}))
	return out
}

// getJSON GETs url and decodes a JSON answer into v (nil: only the status
// matters).
func getJSON(ctx context.Context, url string, v any) (http.Header, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return nil, err
	}
	resp, err := httpClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.Header, fmt.Errorf("GET %s answered %s", url, resp.Status)
	}
	if v == nil {
		return resp.Header, nil
	}
	return resp.Header, json.NewDecoder(io.LimitReader(resp.Body, 32<<20)).Decode(v)
}

// checkKeys checks that every Pipeline's signing key is present and
// readable.
func checkKeys(ctx context.Context, r *run) []Result {
	var problems []Result
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "keys", Status: Fail}
		c, err := r.client()
		if err != nil {
			res.Message = err.Error()
			return res
		}
		var pipes slipwayv1.PipelineList
		if err := c.List(ctx, &pipes); err != nil {
			res.Message = cause(ctx, err, "listing Pipelines", r.StepTimeout)
			return res
		}
		keys := map[client.ObjectKey][]string{}
		for _, p := range pipes.Items {
			k := client.ObjectKey{Namespace: p.Namespace, Name: p.Spec.Signing.SecretRef.Name}
			keys[k] = append(keys[k], p.Name)
		}
		for k, users := range keys {
			s := &corev1.Secret{}
			var problem string
			if err := c.Get(ctx, k, s); err != nil {
				problem = cause(ctx, err, "reading Secret "+k.String(), r.StepTimeout)
			} else if _, err := signing.DecodePrivateKey(s.Data["cosign.key"]); err != nil {
				problem = "Secret " + k.String() + " holds no usable signing key under cosign.key: " + err.Error()
			}
			if problem != "" {
				problems = append(problems, Result{Check: "keys", Target: "Secret " + k.String(), Status: Fail,
					Message: problem + "; the runs of Pipelines " + joinLimited(users, 3) + " fail at their sign step",
					Action:  "store the organisation's signing key (a PEM EC private key) in the Secret under cosign.key"})
			}
		}
		if len(problems) > 0 {
			res.Message, res.Action = fmt.Sprintf("%d of %s missing or unusable", len(problems), plural(len(keys), "signing key is", "signing keys are")), "see the lines below"
			return res
		}
		res.Status = Pass
		if len(keys) == 0 {
			res.Message = "no Pipeline signs images yet"
		} else {
			res.Message = fmt.Sprintf("%s present and readable", plural(len(keys), "signing key", "signing keys"))
		}
		return res
	})
	for i := range problems {
		problems[i].Duration, problems[i].Deadline = res.Duration, res.Deadline
	}
	return append([]Result{res}, problems...)
}

// checkAudit reads the audit trail's state from slipway server's metrics:
// whether it keeps one, whether the last verification passed, and how
// far its checkpoints and their witness reach.
func checkAudit(ctx context.Context, r *run) []Result {
	return []Result{step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "audit", Status: Fail}
		families, ok := r.serverMetricsFor(ctx, &res)
		if !ok {
			return res
		}
		records, _ := gaugeValue(families, "slipway_audit_records")
		verified, _ := gaugeValue(families, "slipway_audit_verified")
		checkpoint, _ := gaugeValue(families, "slipway_audit_checkpoint_records")
		witnessed, _ := gaugeValue(families, "slipway_audit_witnessed_records")
		switch {
		case records == 0:
			res.Status = Warn
			res.Message = "slipway server keeps no audit trail: syncs, promotions and runs are not recorded (FIN-LOG-001)"
			res.Action = "start slipway server with --audit-store (a directory, or a postgres:// connection) and --audit-key-file"
		case verified != 1:
			res.Message = fmt.Sprintf("the audit log (%.0f records) fails verification: records were changed, removed or reordered after they were written", records)
			res.Action = "`slipway audit verify` names the first record that fails and how; keep the store as it is (it is evidence) and report a security incident"
		default:
			res.Status = Pass
			res.Message = fmt.Sprintf("%.0f records, verified; the newest signed checkpoint covers %.0f, the witness holds %.0f", records, checkpoint, witnessed)
		}
		return res
	})}
}
