package monitoring

import (
	"encoding/json"
	"fmt"
	"net"
	"path/filepath"
	"strconv"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

// LabConfig is what the lab's Prometheus scrapes and where it finds its
// files. Debian's Prometheus has no Kubernetes service discovery, so the
// lab lists its targets itself: static ones, and the real nodes' kubelets
// in a file (KubeletTargetsFile) that Prometheus watches.
type LabConfig struct {
	// RulesDir holds the rule files (RuleFiles).
	RulesDir string
	// Server, APIServer, Prometheus and Alertmanager are host:port.
	Server, APIServer, Prometheus, Alertmanager string
	// CAFile verifies the API server; CertFile and KeyFile are the client
	// certificate Prometheus presents to it and to the kubelets.
	CAFile, CertFile, KeyFile string
	// KubeletTargetsFile lists the kubelets (WriteKubeletTargets).
	KubeletTargetsFile string
	// ScrapeInterval is how often every target is scraped and the rules
	// are evaluated, e.g. "5s".
	ScrapeInterval string
}

// LabPrometheusConfig renders prometheus.yml for the lab.
func LabPrometheusConfig(c LabConfig) ([]byte, error) {
	apiTLS := map[string]any{"ca_file": c.CAFile, "cert_file": c.CertFile, "key_file": c.KeyFile}
	// Kubelets serve certificates they sign themselves; the client
	// certificate still authenticates Prometheus to them, and their
	// authorizer asks the API server whether it may read nodes/metrics.
	kubeletTLS := map[string]any{"cert_file": c.CertFile, "key_file": c.KeyFile, "insecure_skip_verify": true}
	static := func(job, target string) map[string]any {
		return map[string]any{"job_name": job, "static_configs": []any{map[string]any{"targets": []string{target}}}}
	}
	apiserver := static("apiserver", c.APIServer)
	apiserver["scheme"] = "https"
	apiserver["tls_config"] = apiTLS
	// The API server's metrics run to megabytes: on a busy 2-core machine
	// a scrape can outlast the lab's 5 s interval, which also bounds its
	// timeout, and the target would flap down.
	apiserver["scrape_interval"], apiserver["scrape_timeout"] = "15s", "10s"
	cfg := map[string]any{
		"global": map[string]any{
			"scrape_interval": c.ScrapeInterval, "evaluation_interval": c.ScrapeInterval,
			"external_labels": map[string]string{"lab": "slipway"},
		},
		"rule_files": []string{filepath.Join(c.RulesDir, "*.yaml")},
		"alerting": map[string]any{"alertmanagers": []any{map[string]any{
			"static_configs": []any{map[string]any{"targets": []string{c.Alertmanager}}},
		}}},
		"scrape_configs": []any{
			static(Job, c.Server),
			apiserver,
			map[string]any{
				"job_name": "kubelet", "scheme": "https", "tls_config": kubeletTLS,
				"file_sd_configs": []any{map[string]any{"files": []string{c.KubeletTargetsFile}}},
			},
			static("prometheus", c.Prometheus),
			static("alertmanager", c.Alertmanager),
		},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("rendering the lab's Prometheus configuration: %w", err)
	}
	return append([]byte("# Written by `slipway lab up --monitoring`; rewritten at every lab up.\n"), b...), nil
}

// KubeletTarget is one kubelet the lab's Prometheus scrapes.
type KubeletTarget struct {
	Node, Address string // Address is host:port
}

// KubeletTargets renders a file_sd file listing the kubelets ([] when the
// lab has no real nodes).
func KubeletTargets(targets []KubeletTarget) ([]byte, error) {
	type group struct {
		Targets []string          `json:"targets"`
		Labels  map[string]string `json:"labels"`
	}
	groups := []group{}
	for _, t := range targets {
		groups = append(groups, group{Targets: []string{t.Address}, Labels: map[string]string{"node": t.Node}})
	}
	return json.MarshalIndent(groups, "", "  ")
}

// LabAlertmanagerConfig renders alertmanager.yml for the lab: every alert
// goes to the webhooks given (none: Alertmanager only shows them).
func LabAlertmanagerConfig(webhooks []string) ([]byte, error) {
	receiver := map[string]any{"name": "lab"}
	var configs []any
	for _, url := range webhooks {
		configs = append(configs, map[string]any{"url": url, "send_resolved": true})
	}
	if len(configs) > 0 {
		receiver["webhook_configs"] = configs
	}
	cfg := map[string]any{
		"route": map[string]any{
			"receiver": "lab", "group_by": []string{"alertname", "namespace", "name"},
			// Short waits: in the lab, a person (or a test) is watching.
			"group_wait": "5s", "group_interval": "30s", "repeat_interval": "4h",
		},
		"receivers": []any{receiver},
	}
	b, err := yaml.Marshal(cfg)
	if err != nil {
		return nil, fmt.Errorf("rendering the lab's Alertmanager configuration: %w", err)
	}
	return append([]byte("# Written by `slipway lab up --monitoring`; rewritten at every lab up.\n"), b...), nil
}

// kwokNodeAnnotation marks the nodes KWOK simulates: they have no kubelet.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// KubeletTargetsOf lists the kubelets of the nodes that have one (not
// KWOK's), at their InternalIP and the port they report.
func KubeletTargetsOf(nodes []corev1.Node) []KubeletTarget {
	var out []KubeletTarget
	for _, n := range nodes {
		if _, simulated := n.Annotations[kwokNodeAnnotation]; simulated {
			continue
		}
		port := n.Status.DaemonEndpoints.KubeletEndpoint.Port
		if port == 0 {
			port = 10250
		}
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				out = append(out, KubeletTarget{Node: n.Name, Address: net.JoinHostPort(a.Address, strconv.Itoa(int(port)))})
				break
			}
		}
	}
	return out
}
