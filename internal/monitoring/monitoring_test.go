package monitoring_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"slipway.dev/slipway/internal/monitoring"
	"slipway.dev/slipway/internal/pki"
)

// tool finds a program of Debian's prometheus packages; `make deps`
// installs them.
func tool(t *testing.T, names ...string) string {
	t.Helper()
	for _, n := range names {
		if p, err := exec.LookPath(n); err == nil {
			return p
		}
	}
	t.Fatalf("%s not found: `make deps` installs Debian's prometheus and prometheus-alertmanager packages", strings.Join(names, " or "))
	return ""
}

func runTool(t *testing.T, dir, exe string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", filepath.Base(exe), strings.Join(args, " "), err, out)
	}
	return string(out)
}

// TestRuleUnitTests runs promtool on the shipped rules: they parse, and
// their unit tests (config/monitoring/rules/tests) pass.
func TestRuleUnitTests(t *testing.T) {
	promtool := tool(t, "promtool")
	rules, _ := filepath.Glob("../../config/monitoring/rules/*.yaml")
	tests, _ := filepath.Glob("../../config/monitoring/rules/tests/*.yaml")
	if len(rules) == 0 || len(tests) == 0 {
		t.Fatalf("rule files %v, tests %v", rules, tests)
	}
	runTool(t, ".", promtool, append([]string{"check", "rules"}, rules...)...)
	out := runTool(t, ".", promtool, append([]string{"test", "rules"}, tests...)...)
	if strings.Count(out, "SUCCESS") != len(tests) {
		t.Fatalf("promtool test rules:\n%s", out)
	}
	// Every alert has a unit test.
	groups, err := monitoring.RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	var all []byte
	for _, p := range tests {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		all = append(all, b...)
	}
	for _, g := range groups {
		for _, r := range g.Rules {
			name := r.Alert + r.Record
			if !bytes.Contains(all, []byte(name)) {
				t.Errorf("rule %s has no unit test in config/monitoring/rules/tests", name)
			}
			if r.Alert != "" && (r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" || r.Annotations["runbook"] == "") {
				t.Errorf("alert %s lacks a severity, a summary, a description or a runbook", r.Alert)
			}
		}
	}
}

// TestGeneratedFilesAreCurrent fails when the dashboards, the
// PrometheusRule or docs/runbooks.md differ from what `go generate
// ./internal/monitoring` writes.
func TestGeneratedFilesAreCurrent(t *testing.T) {
	files, err := monitoring.Generated()
	if err != nil {
		t.Fatal(err)
	}
	for rel, want := range files {
		got, err := os.ReadFile(filepath.Join("../..", rel))
		if err != nil {
			t.Errorf("%s: %v (run `go generate ./internal/monitoring`)", rel, err)
			continue
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run `go generate ./internal/monitoring`", rel)
		}
	}
	on, _ := filepath.Glob("../../config/monitoring/dashboards/*.json")
	if len(on) != len(files)-2 {
		t.Errorf("config/monitoring/dashboards holds %d dashboards, the generator writes %d", len(on), len(files)-2)
	}
}

// TestLabConfigurations checks the lab's Prometheus and Alertmanager
// configurations with the tools' own checkers, with real certificate
// files and the shipped rules.
func TestLabConfigurations(t *testing.T) {
	promtool := tool(t, "promtool")
	amtool := tool(t, "amtool")
	dir := t.TempDir()
	pkiDir := filepath.Join(dir, "pki")
	if err := pki.EnsureAll(pkiDir, pki.Options{}); err != nil {
		t.Fatal(err)
	}
	rulesDir := filepath.Join(dir, "rules")
	if err := os.MkdirAll(rulesDir, 0o700); err != nil {
		t.Fatal(err)
	}
	rules, err := monitoring.RuleFiles()
	if err != nil {
		t.Fatal(err)
	}
	for name, b := range rules {
		if err := os.WriteFile(filepath.Join(rulesDir, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	targets, err := monitoring.KubeletTargets([]monitoring.KubeletTarget{{Node: "worker-01", Address: "10.210.0.11:10250"}})
	if err != nil {
		t.Fatal(err)
	}
	targetsFile := filepath.Join(dir, "kubelets.json")
	if err := os.WriteFile(targetsFile, targets, 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := monitoring.LabPrometheusConfig(monitoring.LabConfig{
		RulesDir: rulesDir, Server: "127.0.0.1:8080", APIServer: "127.0.0.1:6443", Prometheus: "127.0.0.1:9090", Alertmanager: "127.0.0.1:9093",
		CAFile: pki.CertPath(pkiDir, pki.CA), CertFile: pki.CertPath(pkiDir, pki.Monitoring), KeyFile: pki.KeyPath(pkiDir, pki.Monitoring),
		KubeletTargetsFile: targetsFile, ScrapeInterval: "5s",
	})
	if err != nil {
		t.Fatal(err)
	}
	cfgFile := filepath.Join(dir, "prometheus.yml")
	if err := os.WriteFile(cfgFile, cfg, 0o600); err != nil {
		t.Fatal(err)
	}
	out := runTool(t, dir, promtool, "check", "config", cfgFile)
	if !strings.Contains(out, "SUCCESS: 2 rule files found") {
		t.Errorf("promtool check config found other rule files than the two shipped:\n%s", out)
	}
	for _, webhooks := range [][]string{nil, {"http://127.0.0.1:9999/alerts"}} {
		am, err := monitoring.LabAlertmanagerConfig(webhooks)
		if err != nil {
			t.Fatal(err)
		}
		amFile := filepath.Join(dir, "alertmanager.yml")
		if err := os.WriteFile(amFile, am, 0o600); err != nil {
			t.Fatal(err)
		}
		out := runTool(t, dir, amtool, "check-config", amFile)
		if want := "- 1 receivers"; !strings.Contains(out, want) {
			t.Errorf("amtool check-config with webhooks %v:\n%s", webhooks, out)
		}
		if len(webhooks) > 0 && !bytes.Contains(am, []byte(webhooks[0])) {
			t.Errorf("Alertmanager configuration lacks the webhook %s:\n%s", webhooks[0], am)
		}
	}
}

// TestShippedScrapeConfigs checks what Debian's promtool cannot (it is
// built without Kubernetes service discovery): the shipped job is named
// slipway, as the rules and dashboards expect, and keeps exactly the
// endpoints of the Service `slipway install` creates; the ServiceMonitor
// selects the same Service and gives its targets the same job.
func TestShippedScrapeConfigs(t *testing.T) {
	b, err := os.ReadFile("../../config/monitoring/prometheus/scrape-configs.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var jobs []struct {
		JobName        string `json:"job_name"`
		MetricsPath    string `json:"metrics_path"`
		RelabelConfigs []struct {
			SourceLabels []string `json:"source_labels"`
			Regex        string   `json:"regex"`
			Action       string   `json:"action"`
		} `json:"relabel_configs"`
	}
	if err := yaml.Unmarshal(b, &jobs); err != nil {
		t.Fatal(err)
	}
	if len(jobs) != 1 || jobs[0].JobName != monitoring.Job || jobs[0].MetricsPath != "/metrics" {
		t.Fatalf("scrape configs = %+v, want one job %q on /metrics", jobs, monitoring.Job)
	}
	kept := false
	for _, rc := range jobs[0].RelabelConfigs {
		if rc.Action != "keep" {
			continue
		}
		kept = true
		// The Service's labels and port name, joined as Prometheus does.
		service := map[string]string{
			"__meta_kubernetes_service_label_app_kubernetes_io_name":      "slipway",
			"__meta_kubernetes_service_label_app_kubernetes_io_component": "server",
			"__meta_kubernetes_endpoint_port_name":                        "http",
		}
		var values []string
		for _, l := range rc.SourceLabels {
			values = append(values, service[l])
		}
		if !regexp.MustCompile("^(?:" + rc.Regex + ")$").MatchString(strings.Join(values, ";")) {
			t.Errorf("the keep rule %+v drops slipway server's endpoints", rc)
		}
	}
	if !kept {
		t.Error("the slipway job keeps every endpoint of the namespace")
	}

	sm, err := os.ReadFile("../../config/monitoring/operator/servicemonitor.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var monitor struct {
		Spec struct {
			JobLabel string `json:"jobLabel"`
			Selector struct {
				MatchLabels map[string]string `json:"matchLabels"`
			} `json:"selector"`
			Endpoints []struct {
				Port, Path string
			} `json:"endpoints"`
		} `json:"spec"`
	}
	if err := yaml.Unmarshal(sm, &monitor); err != nil {
		t.Fatal(err)
	}
	s := monitor.Spec
	if s.JobLabel != "app.kubernetes.io/name" || s.Selector.MatchLabels["app.kubernetes.io/name"] != monitoring.Job ||
		s.Selector.MatchLabels["app.kubernetes.io/component"] != "server" || len(s.Endpoints) != 1 || s.Endpoints[0].Port != "http" || s.Endpoints[0].Path != "/metrics" {
		t.Errorf("ServiceMonitor spec = %+v", s)
	}
}

// Real nodes' kubelets are scraped; KWOK's simulated nodes have none.
func TestKubeletTargetsOf(t *testing.T) {
	node := func(name string, annotations map[string]string, port int32, addrs ...corev1.NodeAddress) corev1.Node {
		n := corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: name, Annotations: annotations}}
		n.Status.Addresses = addrs
		n.Status.DaemonEndpoints.KubeletEndpoint.Port = port
		return n
	}
	internal := func(ip string) corev1.NodeAddress {
		return corev1.NodeAddress{Type: corev1.NodeInternalIP, Address: ip}
	}
	got := monitoring.KubeletTargetsOf([]corev1.Node{
		node("master", map[string]string{"kwok.x-k8s.io/node": "fake"}, 10250, internal("10.255.0.1")),
		node("worker-01", nil, 10250, corev1.NodeAddress{Type: corev1.NodeHostName, Address: "worker-01"}, internal("10.210.0.11")),
		node("worker-02", nil, 0, internal("10.210.0.12")),
		node("no-address", nil, 10250),
	})
	want := []monitoring.KubeletTarget{{Node: "worker-01", Address: "10.210.0.11:10250"}, {Node: "worker-02", Address: "10.210.0.12:10250"}}
	if !slices.Equal(got, want) {
		t.Errorf("KubeletTargetsOf = %+v, want %+v", got, want)
	}
}
