package lab

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"slipway.dev/slipway/internal/monitoring"
	"slipway.dev/slipway/internal/pki"
)

// The lab's monitoring: Debian's Prometheus and Alertmanager, run as the
// lab's own processes with their configuration and data under
// DIR/monitoring, so the data outlives `lab down` and `lab up`.
const (
	compAlertmanager = "alertmanager"
	compPrometheus   = "prometheus"
)

// MonitoringState is what a lab with monitoring records. Once added, the
// monitoring stays with the lab (its data is in the lab directory).
type MonitoringState struct {
	Prometheus   int `json:"prometheus"`
	Alertmanager int `json:"alertmanager"`
	// AlertWebhooks receive every alert Alertmanager sends.
	AlertWebhooks []string `json:"alertWebhooks,omitempty"`
}

// MonitoringInfo locates the lab's Prometheus and Alertmanager.
type MonitoringInfo struct {
	Prometheus   string `json:"prometheus"`
	Alertmanager string `json:"alertmanager"`
}

// scrapeInterval is short: in the lab someone watches the result at once.
const scrapeInterval = "5s"

func (s *State) monitoringComponentNames() []string {
	if s.Monitoring == nil {
		return nil
	}
	return []string{compAlertmanager, compPrometheus}
}

func (s *State) monitoringInfo() *MonitoringInfo {
	if s.Monitoring == nil {
		return nil
	}
	return &MonitoringInfo{
		Prometheus:   "http://127.0.0.1:" + strconv.Itoa(s.Monitoring.Prometheus),
		Alertmanager: "http://127.0.0.1:" + strconv.Itoa(s.Monitoring.Alertmanager),
	}
}

// enableMonitoring adds monitoring to the lab's state when asked for, on
// ports no other component uses, and records the alert webhooks given.
func (l *Lab) enableMonitoring(st *State) error {
	if !l.Monitoring && st.Monitoring == nil {
		return nil
	}
	if st.Monitoring == nil {
		taken := map[int]bool{}
		for _, p := range []int{st.Ports.Etcd, st.Ports.EtcdPeer, st.Ports.APIServer, st.Ports.ControllerManager, st.Ports.Scheduler,
			st.Ports.KWOK, st.Ports.Git, st.Ports.Registry, st.Ports.Server, st.Ports.Edge} {
			taken[p] = true
		}
		m := &MonitoringState{}
		for _, p := range []*int{&m.Prometheus, &m.Alertmanager} {
			port, err := freePort(taken)
			if err != nil {
				return fmt.Errorf("choosing a port for the lab's monitoring: %w", err)
			}
			*p, taken[port] = port, true
		}
		st.Monitoring = m
	}
	if l.AlertWebhooks != nil {
		st.Monitoring.AlertWebhooks = l.AlertWebhooks
	}
	return nil
}

func freePort(taken map[int]bool) (int, error) {
	for {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		port := ln.Addr().(*net.TCPAddr).Port
		ln.Close()
		if !taken[port] {
			return port, nil
		}
	}
}

func (l *Lab) monitoringPath(parts ...string) string {
	return l.path(append([]string{"monitoring"}, parts...)...)
}

// prepareMonitoring installs Prometheus and Alertmanager when missing and
// writes their configuration and the rules Slipway ships.
func (l *Lab) prepareMonitoring(ctx context.Context, st *State) (prometheus, alertmanager string, err error) {
	if prometheus, alertmanager, err = l.monitoringTools(ctx); err != nil {
		return "", "", err
	}
	for _, d := range []string{l.monitoringPath("rules"), l.monitoringPath("prometheus"), l.monitoringPath("alertmanager")} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return "", "", fmt.Errorf("creating %s: %w", d, err)
		}
	}
	rules, err := monitoring.RuleFiles()
	if err != nil {
		return "", "", err
	}
	// The rules of this build replace whatever an earlier one wrote.
	old, _ := filepath.Glob(l.monitoringPath("rules", "*.yaml"))
	for _, p := range old {
		if _, keep := rules[filepath.Base(p)]; !keep {
			_ = os.Remove(p)
		}
	}
	files := map[string][]byte{}
	for name, b := range rules {
		files[l.monitoringPath("rules", name)] = b
	}
	pkiDir := l.path("pki")
	files[l.monitoringPath("prometheus.yml")], err = monitoring.LabPrometheusConfig(monitoring.LabConfig{
		RulesDir:     l.monitoringPath("rules"),
		Server:       "127.0.0.1:" + strconv.Itoa(st.Ports.Server),
		APIServer:    net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.APIServer)),
		Prometheus:   "127.0.0.1:" + strconv.Itoa(st.Monitoring.Prometheus),
		Alertmanager: "127.0.0.1:" + strconv.Itoa(st.Monitoring.Alertmanager),
		CAFile:       pki.CertPath(pkiDir, pki.CA), CertFile: pki.CertPath(pkiDir, pki.Monitoring), KeyFile: pki.KeyPath(pkiDir, pki.Monitoring),
		KubeletTargetsFile: l.kubeletTargetsFile(), ScrapeInterval: scrapeInterval,
	})
	if err != nil {
		return "", "", err
	}
	if files[l.monitoringPath("alertmanager.yml")], err = monitoring.LabAlertmanagerConfig(st.Monitoring.AlertWebhooks); err != nil {
		return "", "", err
	}
	if !fileExists(l.kubeletTargetsFile()) {
		files[l.kubeletTargetsFile()] = []byte("[]\n")
	}
	for p, b := range files {
		if err := os.WriteFile(p, b, 0o600); err != nil {
			return "", "", fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return prometheus, alertmanager, nil
}

func (l *Lab) kubeletTargetsFile() string { return l.monitoringPath("kubelets.json") }

// monitoringPackages are Debian's packages of Prometheus and Alertmanager.
var monitoringPackages = []string{"prometheus", "prometheus-alertmanager"}

// monitoringTools finds Prometheus and Alertmanager, installing Debian's
// packages when they are missing. The packages' own services are stopped
// and disabled where systemd runs them: the lab runs its own processes.
func (l *Lab) monitoringTools(ctx context.Context) (prometheus, alertmanager string, err error) {
	find := func() error {
		var errs []error
		if prometheus, err = exec.LookPath("prometheus"); err != nil {
			errs = append(errs, err)
		}
		// Debian names the binary prometheus-alertmanager.
		if alertmanager, err = exec.LookPath("prometheus-alertmanager"); err != nil {
			if alertmanager, err = exec.LookPath("alertmanager"); err != nil {
				errs = append(errs, err)
			}
		}
		return errors.Join(errs...)
	}
	if find() == nil {
		return prometheus, alertmanager, nil
	}
	if os.Geteuid() != 0 {
		return "", "", fmt.Errorf("the lab's monitoring needs Prometheus and Alertmanager: run `sudo apt-get install %s`, or run the lab as root",
			strings.Join(monitoringPackages, " "))
	}
	l.progress("installing %s with apt-get", strings.Join(monitoringPackages, " "))
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	install := append([]string{"install", "-y", "-q", "--no-install-recommends"}, monitoringPackages...)
	if err := aptGet(ctx, install...); err != nil {
		// A fresh machine's package lists may be empty or stale.
		if err := aptGet(ctx, "update", "-q"); err != nil {
			return "", "", err
		}
		if err := aptGet(ctx, install...); err != nil {
			return "", "", err
		}
	}
	if fileExists("/run/systemd/system") {
		cmd := exec.CommandContext(ctx, "systemctl", "disable", "--now", "prometheus.service", "prometheus-alertmanager.service")
		if out, err := cmd.CombinedOutput(); err != nil {
			return "", "", fmt.Errorf("disabling the services of Debian's %s: %w\n%s", strings.Join(monitoringPackages, " "), err, out)
		}
	}
	if err := find(); err != nil {
		return "", "", fmt.Errorf("after installing %s: %w", strings.Join(monitoringPackages, " "), err)
	}
	return prometheus, alertmanager, nil
}

func aptGet(ctx context.Context, args ...string) error {
	cmd := exec.CommandContext(ctx, "apt-get", args...)
	cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
	out, err := cmd.CombinedOutput()
	if err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("apt-get %s did not finish in time: %w", strings.Join(args, " "), ctx.Err())
		}
		return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, tail(out, 2000))
	}
	return nil
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (l *Lab) monitoringComponents(st *State, prometheus, alertmanager string) []component {
	if st.Monitoring == nil {
		return nil
	}
	amAddr := "127.0.0.1:" + strconv.Itoa(st.Monitoring.Alertmanager)
	promAddr := "127.0.0.1:" + strconv.Itoa(st.Monitoring.Prometheus)
	return []component{
		{
			name: compAlertmanager, exe: alertmanager, timeout: 30 * time.Second, ownEnv: true,
			args: []string{
				"--config.file=" + l.monitoringPath("alertmanager.yml"),
				"--storage.path=" + l.monitoringPath("alertmanager"),
				"--web.listen-address=" + amAddr,
				// One Alertmanager: no cluster to gossip with.
				"--cluster.listen-address=",
			},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, http.DefaultClient, "http://"+amAddr+"/-/ready", nil)
			},
		},
		{
			name: compPrometheus, exe: prometheus, timeout: 60 * time.Second, ownEnv: true,
			args: []string{
				"--config.file=" + l.monitoringPath("prometheus.yml"),
				"--storage.tsdb.path=" + l.monitoringPath("prometheus"),
				"--storage.tsdb.retention.time=30d",
				"--web.listen-address=" + promAddr,
				// Lets lab up reload the configuration it rewrites.
				"--web.enable-lifecycle",
			},
			// Ready once it serves and has scraped slipway server: then
			// what lab up prints is being collected.
			ready: func(ctx context.Context) error {
				if err := httpOK(ctx, http.DefaultClient, "http://"+promAddr+"/-/ready", nil); err != nil {
					return err
				}
				return hasTarget(ctx, promAddr, monitoring.Job)
			},
			after: func(ctx context.Context) error { return l.afterPrometheus(ctx, promAddr) },
		},
	}
}

// afterPrometheus gives Prometheus's certificate the rights to read the
// API server's and the kubelets' metrics, lists the kubelets of the real
// nodes, and has Prometheus read its configuration again (lab up may have
// rewritten it while Prometheus ran).
func (l *Lab) afterPrometheus(ctx context.Context, promAddr string) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	name := "slipway-lab:prometheus"
	role := &rbacv1.ClusterRole{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := upsert(ctx, c, role, func() error {
		role.Rules = []rbacv1.PolicyRule{
			{NonResourceURLs: []string{"/metrics"}, Verbs: []string{"get"}},
			{APIGroups: []string{""}, Resources: []string{"nodes/metrics"}, Verbs: []string{"get"}},
		}
		return nil
	}); err != nil {
		return fmt.Errorf("granting Prometheus the right to read metrics: %w", err)
	}
	binding := &rbacv1.ClusterRoleBinding{ObjectMeta: metav1.ObjectMeta{Name: name}}
	if _, err := upsert(ctx, c, binding, func() error {
		binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: name}
		binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.UserKind, APIGroup: rbacv1.GroupName, Name: pki.MonitoringUser}}
		return nil
	}); err != nil {
		return fmt.Errorf("granting Prometheus the right to read metrics: %w", err)
	}
	var nodes corev1.NodeList
	if err := c.List(ctx, &nodes); err != nil {
		return fmt.Errorf("listing the nodes whose kubelets Prometheus scrapes: %w", err)
	}
	targets, err := monitoring.KubeletTargets(monitoring.KubeletTargetsOf(nodes.Items))
	if err != nil {
		return err
	}
	// Prometheus watches the file: written whole, by rename.
	tmp := l.kubeletTargetsFile() + ".tmp"
	if err := os.WriteFile(tmp, targets, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, l.kubeletTargetsFile()); err != nil {
		return err
	}
	reqCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(reqCtx, http.MethodPost, "http://"+promAddr+"/-/reload", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("asking Prometheus at %s to reload its configuration: %w", promAddr, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("the lab's Prometheus at %s refused to reload its configuration (%s): see its log", promAddr, resp.Status)
	}
	l.progress("Prometheus %s scrapes slipway server, the API server and %d kubelets", "http://"+promAddr, len(monitoring.KubeletTargetsOf(nodes.Items)))
	return nil
}

// hasTarget asks Prometheus whether it has scraped a target of job.
func hasTarget(ctx context.Context, promAddr, job string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+promAddr+"/api/v1/targets?state=active", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	var targets struct {
		Data struct {
			ActiveTargets []struct {
				Labels    map[string]string `json:"labels"`
				Health    string            `json:"health"`
				LastError string            `json:"lastError"`
			} `json:"activeTargets"`
		} `json:"data"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 8<<20)).Decode(&targets); err != nil {
		return fmt.Errorf("reading Prometheus's targets: %w", err)
	}
	for _, t := range targets.Data.ActiveTargets {
		if t.Labels["job"] == job {
			if t.Health == "up" {
				return nil
			}
			return fmt.Errorf("the target of job %s is %s %s", job, t.Health, t.LastError)
		}
	}
	return fmt.Errorf("no target of job %s yet", job)
}
