// Package lab runs Slipway's embedded default on one machine: a real
// Kubernetes control plane from pinned upstream binaries (etcd,
// kube-apiserver, kube-controller-manager, kube-scheduler), KWOK nodes named
// after the reference architecture, a smart-HTTP git server holding the ops
// repository, and `slipway server` itself. Every process is started detached
// and recorded by pid, so `lab down` stops exactly what `lab up` started.
package lab

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/pki"
	"slipway.dev/slipway/internal/server"
	"slipway.dev/slipway/internal/upstream"
	"slipway.dev/slipway/internal/version"
)

// OpsRepo is the ops (manifest) repository the lab's git server hosts.
const OpsRepo = "ops.git"

// Lab is one lab directory.
type Lab struct {
	// Dir holds certificates, kubeconfigs, etcd data, git repositories, logs and lab.json.
	Dir string
	// BinDir holds the upstream binaries; empty means the build cache.
	BinDir string
	// Slipway is the slipway executable to run as the git server and the server.
	Slipway string
	// Progress receives one line per step.
	Progress func(format string, args ...any)
	// RealNodes makes a new lab with real nodes (kubelet, containerd and
	// kube-proxy in a network namespace each) instead of KWOK's. A lab
	// keeps the kind it was made with.
	RealNodes bool
	// Clusters names further clusters the lab runs beside its own, e.g.
	// "prod": each a control plane of its own (etcd, API server,
	// controller-manager, scheduler, KWOK nodes, its own CA), so that
	// production is a separate API server, as in a bank. A lab keeps the
	// clusters it was made with and adds those named later.
	Clusters []string
	// controlPlaneOnly makes the lab one of those clusters: no git server,
	// registry or Slipway server of its own.
	controlPlaneOnly bool
	// Monitoring adds Prometheus and Alertmanager to the lab (a lab keeps
	// them once added), and AlertWebhooks, when not nil, are the URLs
	// Alertmanager sends every alert to.
	Monitoring    bool
	AlertWebhooks []string
	// Audit is the audit store: AuditFile (the default) or AuditPostgres;
	// empty keeps what the lab ran with before.
	Audit string
}

// ClusterDir is where the lab keeps the further cluster name.
func (l *Lab) ClusterDir(name string) string { return l.path("clusters", name) }

// Cluster is the lab of the further cluster name.
func (l *Lab) Cluster(name string) *Lab {
	return &Lab{Dir: l.ClusterDir(name), BinDir: l.BinDir, Slipway: l.Slipway, controlPlaneOnly: true,
		Progress: func(format string, args ...any) { l.progress(name+": "+format, args...) }}
}

// DefaultDir is ${XDG_STATE_HOME:-$HOME/.local/state}/slipway/lab.
func DefaultDir() string { return stateDir("lab") }

// DefaultRealNodesDir is the default directory of the real-node lab, beside
// the KWOK lab's so that both kinds can be kept.
func DefaultRealNodesDir() string { return stateDir("lab-real") }

func stateDir(name string) string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "slipway", name)
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return filepath.Join(os.TempDir(), "slipway-"+name)
	}
	return filepath.Join(home, ".local", "state", "slipway", name)
}

func (l *Lab) path(parts ...string) string {
	return filepath.Join(append([]string{l.Dir}, parts...)...)
}

// People are the lab's users besides its administrator, each with a client
// certificate and a context of their own in the lab's kubeconfig
// (`--context reviewer@slipway-lab`), so that separation of duties can be
// tried by hand: a developer requests promotions, a reviewer and the
// security officer approve them.
var People = []pki.Person{
	{Name: "dev", Groups: []string{"developers"}},
	{Name: "reviewer", Groups: []string{"release-approvers"}},
	{Name: "security-officer", Groups: []string{"security-officers", "release-approvers"}},
}

// Kubeconfig is the admin kubeconfig the lab writes.
func (l *Lab) Kubeconfig() string { return l.path("kubeconfig") }

// WebhookSecretFile holds the HMAC secret shared by the git server and `slipway server`.
func (l *Lab) WebhookSecretFile() string { return l.path("webhook-secret") }

func (l *Lab) progress(format string, args ...any) {
	if l.Progress != nil {
		l.Progress(format, args...)
	}
}

func (l *Lab) binDir() string {
	if l.BinDir != "" {
		return l.BinDir
	}
	return upstream.DefaultBinDir()
}

// Up brings every component up, starting only what is not running already.
func (l *Lab) Up(ctx context.Context) (*Info, error) {
	if err := os.MkdirAll(l.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("creating lab directory %s: %w", l.Dir, err)
	}
	st, err := loadState(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		st, err = newState()
		if err == nil && l.RealNodes {
			st.Network = defaultNetwork()
		}
		if err == nil {
			st.ControlPlaneOnly = l.controlPlaneOnly
		}
	}
	if err != nil {
		return nil, err
	}
	for _, name := range l.Clusters {
		if !validClusterName(name) {
			return nil, fmt.Errorf("cluster name %q: use lower-case letters, digits and dashes", name)
		}
		if !slices.Contains(st.Clusters, name) {
			st.Clusters = append(st.Clusters, name)
		}
	}
	if l.RealNodes && !st.RealNodes() {
		return nil, fmt.Errorf("the lab in %s runs KWOK nodes; real nodes need a lab of their own (`slipway lab up --real-nodes` uses %s, or `lab down --purge` this one first)",
			l.Dir, DefaultRealNodesDir())
	}

	if l.BinDir != "" {
		if err := upstream.Require(l.BinDir, upstream.All...); err != nil {
			return nil, err
		}
	} else if err := upstream.Ensure(ctx, l.binDir(), l.Progress); err != nil {
		return nil, fmt.Errorf("preparing upstream binaries: %w", err)
	}
	if st.RealNodes() {
		if err := l.prepareRealNodes(ctx); err != nil {
			return nil, err
		}
	} else if err := l.ensureKWOKStages(ctx); err != nil {
		return nil, err
	}
	if upgraded, err := st.upgrade(); err != nil {
		return nil, err
	} else if upgraded {
		l.progress("completed the lab's state from an earlier version (the registry, the git reader)")
	}
	if err := l.enableMonitoring(st); err != nil {
		return nil, err
	}
	if err := st.save(l.Dir); err != nil {
		return nil, err
	}
	if err := l.writeCredentials(st); err != nil {
		return nil, err
	}
	if !st.ControlPlaneOnly {
		if err := l.ensureAudit(ctx, st); err != nil {
			return nil, fmt.Errorf("preparing the audit store: %w", err)
		}
		if err := st.save(l.Dir); err != nil {
			return nil, err
		}
	}
	if st.RealNodes() {
		if err := l.ensureHostNetwork(st); err != nil {
			return nil, err
		}
	}
	components := l.components(st)
	if st.Monitoring != nil {
		prometheus, alertmanager, err := l.prepareMonitoring(ctx, st)
		if err != nil {
			return nil, err
		}
		components = append(components, l.monitoringComponents(st, prometheus, alertmanager)...)
	}

	for _, c := range components {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		if err := l.ensureComponent(ctx, st, c); err != nil {
			return nil, err
		}
		if c.after != nil {
			if err := c.after(ctx); err != nil {
				return nil, err
			}
		}
	}
	for _, name := range st.Clusters {
		if _, err := l.Cluster(name).Up(ctx); err != nil {
			return nil, fmt.Errorf("cluster %s: %w", name, err)
		}
	}
	return l.info(st), nil
}

func validClusterName(name string) bool {
	return name != "" && len(name) <= 20 && strings.Trim(name, "abcdefghijklmnopqrstuvwxyz0123456789-") == "" && name[0] != '-'
}

func (l *Lab) ensureComponent(ctx context.Context, st *State, c component) error {
	if p := st.Components[c.name]; p.Running() {
		if err := l.waitReady(ctx, c, p); err == nil {
			l.progress("%s already running (pid %d)", c.name, p.PID)
			return nil
		}
		// Running but not answering: replace it.
		_ = p.stop(10 * time.Second)
	}
	if c.before != nil {
		if err := c.before(ctx); err != nil {
			return fmt.Errorf("preparing %s: %w", c.name, err)
		}
	}
	start := time.Now()
	base := os.Environ()
	if c.ownEnv {
		base = serverEnvironment(base)
	}
	env := append(base, c.env...)
	p, err := startProcess(c.name, c.exe, c.args, env, l.path("logs"), c.where)
	if err != nil {
		return err
	}
	st.Components[c.name] = p
	if err := st.save(l.Dir); err != nil {
		return err
	}
	if err := l.waitReady(ctx, c, p); err != nil {
		return fmt.Errorf("%s did not become ready: %w (see its log: %s)", c.name, err, p.Log)
	}
	l.progress("%s ready in %.1fs (pid %d)", c.name, time.Since(start).Seconds(), p.PID)
	return nil
}

// kwokStages is KWOK's stage configuration: the cached one next to built
// binaries, else a copy in the lab directory (release binaries lack it).
func (l *Lab) kwokStages() string {
	if p := filepath.Join(l.binDir(), upstream.KWOKStages); fileExists(p) {
		return p
	}
	return l.path(upstream.KWOKStages)
}

func (l *Lab) ensureKWOKStages(ctx context.Context) error {
	if p := l.kwokStages(); fileExists(p) {
		return nil
	}
	l.progress("writing KWOK stage configs from sigs.k8s.io/kwok@%s", version.KWOK)
	return upstream.WriteKWOKStages(ctx, l.path(upstream.KWOKStages))
}

func fileExists(p string) bool {
	_, err := os.Stat(p)
	return err == nil
}

func startProcess(name, exe string, args, env []string, logDir string, where placement) (*Process, error) {
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, err
	}
	return start(name, exe, args, env, logDir, where)
}

// waitReady polls the component's check until it passes, the process dies,
// or the component's deadline passes.
func (l *Lab) waitReady(ctx context.Context, c component, p *Process) error {
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()
	var last error
	for {
		if !p.Running() {
			return fmt.Errorf("the process exited")
		}
		if last = c.ready(ctx); last == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("not ready after %s: %w", c.timeout, last)
		case <-time.After(150 * time.Millisecond):
		}
	}
}

// Down stops every recorded process, last started first. With purge it
// also deletes the lab directory.
func (l *Lab) Down(purge bool) error {
	st, err := loadState(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		if purge {
			return os.RemoveAll(l.Dir)
		}
		return nil
	}
	if err != nil {
		return err
	}
	var errs []error
	// Further clusters first: they serve the lab's Applications.
	for _, name := range st.Clusters {
		if err := l.Cluster(name).Down(purge); err != nil {
			errs = append(errs, fmt.Errorf("cluster %s: %w", name, err))
		}
	}
	order := st.componentOrder()
	for i := len(order) - 1; i >= 0; i-- {
		if order[i] == compServer && st.RealNodes() {
			// The nodes' agents are stopped: end their pods too, before the
			// API server, which would otherwise wait for their requests.
			if err := l.undoHost(st, ChangeCgroup); err != nil {
				errs = append(errs, err)
			}
		}
		p := st.Components[order[i]]
		if p == nil {
			continue
		}
		if p.Running() {
			l.progress("stopping %s (pid %d)", p.Name, p.PID)
		}
		if err := p.stop(15 * time.Second); err != nil {
			errs = append(errs, err)
			continue
		}
		delete(st.Components, order[i])
	}
	if err := st.save(l.Dir); err != nil {
		errs = append(errs, err)
	}
	// Host changes are undone even when a process would not stop: what
	// can be undone should be.
	if err := l.undoHost(st, ""); err != nil {
		errs = append(errs, err)
	}
	if purge && len(errs) == 0 {
		if err := purgeAudit(st); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(l.Dir); err != nil {
			errs = append(errs, fmt.Errorf("removing %s: %w", l.Dir, err))
		}
	}
	return errors.Join(errs...)
}

// Info is what scripts need to use the lab (`lab status -o json`).
type Info struct {
	Dir        string       `json:"dir"`
	Kubeconfig string       `json:"kubeconfig"`
	APIServer  string       `json:"apiServer"`
	Git        GitInfo      `json:"git"`
	Registry   RegistryInfo `json:"registry"`
	Server     ServerInfo   `json:"server"`
	Audit      AuditInfo    `json:"audit"`
	// Monitoring is absent from a lab without monitoring.
	Monitoring *MonitoringInfo `json:"monitoring,omitempty"`
	Components []ComponentInfo `json:"components"`
	// Nodes and Edge describe the real-node lab; both are absent with KWOK.
	Nodes []NodeInfo `json:"nodes,omitempty"`
	Edge  *EdgeInfo  `json:"edge,omitempty"`
	// Clusters are the further clusters the lab runs (e.g. prod).
	Clusters []ClusterInfo `json:"clusters,omitempty"`
	// expected is how many components the lab has.
	expected int
}

// ClusterInfo is one further cluster of the lab.
type ClusterInfo struct {
	Name       string          `json:"name"`
	Kubeconfig string          `json:"kubeconfig"`
	APIServer  string          `json:"apiServer"`
	Components []ComponentInfo `json:"components"`
}

// Cluster returns the further cluster name, or nil.
func (i *Info) Cluster(name string) *ClusterInfo {
	for k := range i.Clusters {
		if i.Clusters[k].Name == name {
			return &i.Clusters[k]
		}
	}
	return nil
}

// NodeInfo is one real node.
type NodeInfo struct {
	Name    string `json:"name"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
	// Netns is the node's network namespace (`ip netns exec NETNS ...`).
	Netns string `json:"netns"`
}

// EdgeInfo locates the edge load balancer and the addresses MetalLB gives.
type EdgeInfo struct {
	// URL is the one address clients use, standing in for a cloud load
	// balancer's; it forwards to the ingress NodePort on every worker.
	URL string `json:"url"`
	// Status reports the edge's backends and their health (JSON).
	Status string `json:"status"`
	// LoadBalancerPool is the range LoadBalancer Services get addresses from.
	LoadBalancerPool string `json:"loadBalancerPool"`
}

// GitInfo locates the git server.
type GitInfo struct {
	URL      string `json:"url"`
	Username string `json:"username"`
	Password string `json:"password"`
	OpsRepo  string `json:"opsRepo"`
	// SourceRepos are the demo services' source repositories, by service.
	SourceRepos map[string]string `json:"sourceRepos"`
	// Reader may fetch every repository and push to none.
	Reader GitCredentials `json:"reader"`
}

// RegistryInfo locates the lab's OCI registry.
type RegistryInfo struct {
	// Host is host:port, as used in image references.
	Host     string `json:"host"`
	Username string `json:"username"`
	Password string `json:"password"`
}

// ServerInfo locates `slipway server`.
type ServerInfo struct {
	URL               string `json:"url"`
	Metrics           string `json:"metrics"`
	Webhook           string `json:"webhook"`
	WebhookSecretFile string `json:"webhookSecretFile"`
}

// ComponentInfo is one process of the lab.
type ComponentInfo struct {
	Name    string `json:"name"`
	PID     int    `json:"pid"`
	Running bool   `json:"running"`
	Log     string `json:"log"`
}

// AllRunning reports whether every component of the lab runs.
func (i *Info) AllRunning() bool {
	all := i.Components
	for _, c := range i.Clusters {
		all = append(all[:len(all):len(all)], c.Components...)
	}
	if len(all) != i.expected {
		return false
	}
	for _, c := range all {
		if !c.Running {
			return false
		}
	}
	return true
}

// Status reads the lab's state without changing anything.
func (l *Lab) Status() (*Info, error) {
	st, err := loadState(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, ErrNotUp
	}
	if err != nil {
		return nil, err
	}
	return l.info(st), nil
}

func (l *Lab) info(st *State) *Info {
	gitURL := "http://" + net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Git))
	srvURL := "http://127.0.0.1:" + strconv.Itoa(st.Ports.Server)
	info := &Info{
		Dir:        l.Dir,
		Kubeconfig: l.Kubeconfig(),
		APIServer:  st.apiURL(),
		Git:        GitInfo{URL: gitURL, Username: st.Git.Username, Password: st.Git.Password, OpsRepo: gitURL + "/" + OpsRepo, SourceRepos: map[string]string{}, Reader: st.GitReader},
		Registry:   RegistryInfo{Host: net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Registry)), Username: st.Registry.Username, Password: st.Registry.Password},
		Server:     ServerInfo{URL: srvURL, Metrics: srvURL + "/metrics", Webhook: srvURL + "/hooks/git", WebhookSecretFile: l.WebhookSecretFile()},
		Monitoring: st.monitoringInfo(),
		Audit:      l.auditInfo(st),
		expected:   len(st.componentOrder()),
	}
	if n := st.Network; n != nil {
		for _, node := range n.Nodes {
			info.Nodes = append(info.Nodes, NodeInfo{Name: node.Name, IP: node.IP, PodCIDR: node.PodCIDR, Netns: netnsName(node.Name)})
		}
		info.Edge = &EdgeInfo{URL: "http://" + n.EdgeIP, Status: "http://" + edgeStatusAddr(st) + "/status",
			LoadBalancerPool: n.LoadBalancerPool}
	}
	for _, app := range DemoApps {
		info.Git.SourceRepos[app] = gitURL + "/" + SourceRepo(app)
	}
	for _, name := range st.Clusters {
		if ci, err := l.Cluster(name).Status(); err == nil {
			info.Clusters = append(info.Clusters, ClusterInfo{Name: name, Kubeconfig: ci.Kubeconfig, APIServer: ci.APIServer, Components: ci.Components})
			info.expected += ci.expected
		}
	}
	for _, name := range st.componentOrder() {
		if p := st.Components[name]; p != nil {
			info.Components = append(info.Components, ComponentInfo{Name: name, PID: p.PID, Running: p.Running(), Log: p.Log})
		}
	}
	return info
}

// Client returns a client for the lab's API server.
func (l *Lab) Client() (client.Client, *rest.Config, error) {
	cfg, err := clientcmd.BuildConfigFromFlags("", l.Kubeconfig())
	if err != nil {
		return nil, nil, fmt.Errorf("loading %s: %w", l.Kubeconfig(), err)
	}
	cfg.Timeout = 15 * time.Second
	cfg.QPS, cfg.Burst = 50, 100
	c, err := client.New(cfg, client.Options{Scheme: server.Scheme()})
	return c, cfg, err
}

// writeCredentials generates the PKI, the kubeconfigs and the webhook secret.
func (l *Lab) writeCredentials(st *State) error {
	dir := l.path("pki")
	opts := pki.Options{People: People}
	if n := st.Network; n != nil {
		// Nodes and pods reach the API server at the host's bridge address.
		opts.ExtraSANs = []string{n.HostIP}
		for _, node := range n.Nodes {
			opts.Nodes = append(opts.Nodes, node.Name)
		}
	}
	if err := pki.EnsureAll(dir, opts); err != nil {
		return fmt.Errorf("generating certificates in %s: %w", dir, err)
	}
	ca, err := os.ReadFile(pki.CertPath(dir, pki.CA))
	if err != nil {
		return err
	}
	apiURL := st.apiURL()
	for name, user := range map[string]string{
		pki.Admin: "admin", pki.ControllerManager: "kube-controller-manager", pki.Scheduler: "kube-scheduler", pki.KWOK: "kwok",
	} {
		cert, err := os.ReadFile(pki.CertPath(dir, name))
		if err != nil {
			return err
		}
		key, err := os.ReadFile(pki.KeyPath(dir, name))
		if err != nil {
			return err
		}
		path := l.path("kubeconfigs", name+".kubeconfig")
		if name == pki.Admin {
			path = l.Kubeconfig()
		}
		if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
			return err
		}
		if err := pki.WriteKubeconfig(path, apiURL, ca, cert, key, user); err != nil {
			return fmt.Errorf("writing kubeconfig %s: %w", path, err)
		}
	}
	for _, p := range People {
		cert, err := os.ReadFile(pki.CertPath(dir, pki.PersonCert(p.Name)))
		if err != nil {
			return err
		}
		key, err := os.ReadFile(pki.KeyPath(dir, pki.PersonCert(p.Name)))
		if err != nil {
			return err
		}
		if err := pki.AddContext(l.Kubeconfig(), cert, key, p.Name); err != nil {
			return err
		}
	}
	if _, err := os.Stat(l.WebhookSecretFile()); errors.Is(err, os.ErrNotExist) {
		if err := os.WriteFile(l.WebhookSecretFile(), []byte(randomHex(32)), 0o600); err != nil {
			return err
		}
	}
	return nil
}

// insecureLocalHTTP probes health endpoints of components that serve TLS
// with self-signed certificates on loopback; it carries no credentials.
var insecureLocalHTTP = &http.Client{
	Timeout:   2 * time.Second,
	Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}, //nolint:gosec // health probe on 127.0.0.1 only
}

func httpOK(ctx context.Context, c *http.Client, url string, setup func(*http.Request)) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if setup != nil {
		setup(req)
	}
	resp, err := c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s", url, resp.Status)
	}
	return nil
}
