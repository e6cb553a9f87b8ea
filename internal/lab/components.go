package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/pki"
)

// component is one process of the lab and how to tell it is ready.
type component struct {
	name string
	exe  string
	args []string
	env  []string
	// ownEnv starts the component with serverEnvironment, not everything
	// the shell that started the lab holds.
	ownEnv  bool
	timeout time.Duration
	// where places the process in a node's network namespace and cgroup.
	where placement
	ready func(ctx context.Context) error
	// before runs before the component is started (not when it runs already).
	before func(ctx context.Context) error
	// after runs once the component is ready (e.g. create nodes).
	after func(ctx context.Context) error
}

// Component names, in start order.
const (
	compEtcd              = "etcd"
	compAPIServer         = "kube-apiserver"
	compControllerManager = "kube-controller-manager"
	compScheduler         = "kube-scheduler"
	compKWOK              = "kwok"
	compGit               = "git-server"
	compRegistry          = "registry"
	compServer            = "slipway-server"
	compEdge              = "edge"
)

// componentOrder lists the lab's processes in start order: the real-node
// lab has no KWOK but a containerd, kubelet and kube-proxy per node, and
// the edge load balancer; monitoring comes last.
func (s *State) componentOrder() []string {
	if s.ControlPlaneOnly {
		return []string{compEtcd, compAPIServer, compControllerManager, compScheduler, compKWOK}
	}
	var order []string
	if s.Network == nil {
		order = s.withAuditStore([]string{compEtcd, compAPIServer, compControllerManager, compScheduler, compKWOK, compGit, compRegistry, compServer})
	} else {
		order = s.withAuditStore([]string{compEtcd, compAPIServer, compControllerManager, compScheduler, compGit, compRegistry, compServer})
		order = append(append(order, s.Network.componentNames()...), compEdge)
	}
	return append(order, s.monitoringComponentNames()...)
}

const (
	serviceCIDR = pki.DefaultServiceCIDR
	clusterCIDR = "10.244.0.0/16"
)

func (l *Lab) components(st *State) []component {
	bin := func(name string) string { return filepath.Join(l.binDir(), name) }
	pkiDir := l.path("pki")
	crt := func(name string) string { return pki.CertPath(pkiDir, name) }
	key := func(name string) string { return pki.KeyPath(pkiDir, name) }
	kubeconfig := func(name string) string { return l.path("kubeconfigs", name+".kubeconfig") }
	p := st.Ports
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(p.Etcd)
	host := st.serviceHost()
	// The kubernetes Service's endpoints cannot point at loopback: the KWOK
	// lab has none, the real-node lab's point at the host's bridge address.
	apiserverAddress := []string{"--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--endpoint-reconciler-type=none"}
	nodeMonitor := []string{}
	if st.RealNodes() {
		apiserverAddress = []string{"--bind-address=" + host, "--advertise-address=" + host}
		// A stopped kubelet (leases renewed every 3 s) is NotReady after 20 s
		// instead of 50, so traffic leaves its node sooner.
		nodeMonitor = []string{"--node-monitor-grace-period=20s", "--node-monitor-period=2s"}
	}

	all := []component{
		{
			name: compEtcd, exe: bin("etcd"), timeout: 30 * time.Second,
			args: []string{
				"--name=lab", "--data-dir=" + l.path("etcd"),
				"--listen-client-urls=" + etcdURL, "--advertise-client-urls=" + etcdURL,
				"--listen-peer-urls=http://127.0.0.1:" + strconv.Itoa(p.EtcdPeer),
				"--initial-advertise-peer-urls=http://127.0.0.1:" + strconv.Itoa(p.EtcdPeer),
				"--initial-cluster=lab=http://127.0.0.1:" + strconv.Itoa(p.EtcdPeer),
				"--quota-backend-bytes=4294967296",
				// The lab's data is disposable; fsync would only slow it down.
				"--unsafe-no-fsync=true",
			},
			ready: func(ctx context.Context) error { return httpOK(ctx, http.DefaultClient, etcdURL+"/health", nil) },
		},
		{
			name: compAPIServer, exe: bin("kube-apiserver"), timeout: 60 * time.Second,
			args: append([]string{
				"--etcd-servers=" + etcdURL, "--secure-port=" + strconv.Itoa(p.APIServer),
				"--tls-cert-file=" + crt(pki.APIServer), "--tls-private-key-file=" + key(pki.APIServer),
				"--client-ca-file=" + crt(pki.CA),
				"--kubelet-client-certificate=" + crt(pki.APIServerKubeletClient), "--kubelet-client-key=" + key(pki.APIServerKubeletClient),
				"--kubelet-preferred-address-types=InternalIP,Hostname",
				"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
				"--service-account-key-file=" + filepath.Join(pkiDir, pki.ServiceAccountPublicKey),
				"--service-account-signing-key-file=" + filepath.Join(pkiDir, pki.ServiceAccountKey),
				"--service-cluster-ip-range=" + serviceCIDR, "--service-node-port-range=30000-32767",
				"--authorization-mode=Node,RBAC", "--allow-privileged=true",
				"--enable-admission-plugins=NodeRestriction",
				"--requestheader-client-ca-file=" + crt(pki.FrontProxyCA), "--requestheader-allowed-names=front-proxy-client",
				"--requestheader-username-headers=X-Remote-User", "--requestheader-group-headers=X-Remote-Group",
				"--requestheader-extra-headers-prefix=X-Remote-Extra-",
				"--proxy-client-cert-file=" + crt(pki.FrontProxyClient), "--proxy-client-key-file=" + key(pki.FrontProxyClient),
				"--profiling=false",
			}, apiserverAddress...),
			ready: func(ctx context.Context) error { return l.apiReady(ctx) },
			after: func(ctx context.Context) error {
				c, _, err := l.Client()
				if err != nil {
					return err
				}
				if _, err := install.Apply(ctx, c, install.ApplyOptions{Timeout: time.Minute}); err != nil {
					return fmt.Errorf("installing Slipway's CRDs: %w", err)
				}
				l.progress("Slipway CRDs installed")
				return nil
			},
		},
		{
			name: compControllerManager, exe: bin("kube-controller-manager"), timeout: 60 * time.Second,
			args: append([]string{
				"--kubeconfig=" + kubeconfig(pki.ControllerManager),
				"--authentication-kubeconfig=" + kubeconfig(pki.ControllerManager),
				"--authorization-kubeconfig=" + kubeconfig(pki.ControllerManager),
				"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(p.ControllerManager), "--leader-elect=false",
				"--service-account-private-key-file=" + filepath.Join(pkiDir, pki.ServiceAccountKey), "--root-ca-file=" + crt(pki.CA),
				"--cluster-signing-cert-file=" + crt(pki.CA), "--cluster-signing-key-file=" + key(pki.CA),
				"--use-service-account-credentials=true",
				"--service-cluster-ip-range=" + serviceCIDR,
				"--allocate-node-cidrs=true", "--cluster-cidr=" + clusterCIDR, "--node-cidr-mask-size=24",
				"--controllers=*,bootstrapsigner,tokencleaner",
				"--flex-volume-plugin-dir=" + l.path("kcm-flexvolume"),
				// The default client rate (20 QPS) makes hundreds of pods take half a minute.
				"--kube-api-qps=100", "--kube-api-burst=200",
			}, nodeMonitor...),
			ready: func(ctx context.Context) error {
				return httpOK(ctx, insecureLocalHTTP, "https://127.0.0.1:"+strconv.Itoa(p.ControllerManager)+"/healthz", nil)
			},
			after: l.waitDefaultServiceAccount,
		},
		{
			name: compScheduler, exe: bin("kube-scheduler"), timeout: 60 * time.Second,
			args: []string{
				"--kubeconfig=" + kubeconfig(pki.Scheduler),
				"--authentication-kubeconfig=" + kubeconfig(pki.Scheduler),
				"--authorization-kubeconfig=" + kubeconfig(pki.Scheduler),
				"--bind-address=127.0.0.1", "--secure-port=" + strconv.Itoa(p.Scheduler), "--leader-elect=false",
			},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, insecureLocalHTTP, "https://127.0.0.1:"+strconv.Itoa(p.Scheduler)+"/healthz", nil)
			},
		},
		{
			name: compKWOK, exe: bin("kwok"), timeout: 60 * time.Second,
			env: []string{"HOME=" + l.path("kwok")},
			args: []string{
				"--kubeconfig=" + kubeconfig(pki.KWOK),
				"--config=" + l.kwokStages(),
				"--manage-all-nodes=false",
				"--manage-nodes-with-annotation-selector=" + kwokNodeAnnotation + "=fake",
				"--node-lease-duration-seconds=40",
				"--cidr=10.0.0.0/16", "--node-ip=10.255.0.1",
				"--server-address=127.0.0.1:" + strconv.Itoa(p.KWOK),
			},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(p.KWOK)+"/healthz", nil)
			},
			after: l.ensureNodes,
		},
		{
			name: compGit, exe: l.Slipway, timeout: 30 * time.Second,
			args: []string{"lab", "git-server", "--dir", l.Dir},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, http.DefaultClient, "http://"+net.JoinHostPort(host, strconv.Itoa(p.Git))+"/"+OpsRepo+"/info/refs?service=git-upload-pack",
					func(r *http.Request) { r.SetBasicAuth(st.Git.Username, st.Git.Password) })
			},
		},
		{
			name: compRegistry, exe: l.Slipway, timeout: 30 * time.Second,
			args: []string{"lab", "registry", "--dir", l.Dir},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, http.DefaultClient, "http://"+net.JoinHostPort(host, strconv.Itoa(p.Registry))+"/v2/",
					func(r *http.Request) { r.SetBasicAuth(st.Registry.Username, st.Registry.Password) })
			},
		},
		{
			// Secrets reach the server as files the lab keeps 0600 (paths on
			// its command line, never values), and its environment is its
			// own: test commands run in containers that see neither.
			name: compServer, exe: l.Slipway, timeout: 60 * time.Second, ownEnv: true,
			args: []string{"server", "--kubeconfig", l.Kubeconfig(), "--addr", "127.0.0.1:" + strconv.Itoa(p.Server),
				"--webhook-secret-file", l.WebhookSecretFile(), "--git-cache-dir", l.path("git-cache"), "--run-dir", l.path("runs"),
				"--cache-dir", l.path("pipeline-caches")},
			ready: func(ctx context.Context) error {
				return httpOK(ctx, http.DefaultClient, "http://127.0.0.1:"+strconv.Itoa(p.Server)+"/readyz", nil)
			},
		},
	}
	all = l.withAudit(st, all)
	if st.ControlPlaneOnly {
		return slices.DeleteFunc(all, func(c component) bool { return !slices.Contains(st.componentOrder(), c.name) })
	}
	if !st.RealNodes() {
		return all
	}
	var comps []component
	for _, c := range all {
		switch c.name {
		case compKWOK:
			continue
		case compRegistry:
			c.after = func(ctx context.Context) error { return l.ensureImages(ctx, st) }
		}
		comps = append(comps, c)
	}
	for i, node := range st.Network.Nodes {
		nodeComps := l.nodeComponents(st, node)
		if i == len(st.Network.Nodes)-1 {
			last := &nodeComps[len(nodeComps)-1]
			last.after = func(ctx context.Context) error {
				if err := l.waitNodesReady(ctx, st); err != nil {
					return err
				}
				return l.ensureAddons(ctx, st)
			}
		}
		comps = append(comps, nodeComps...)
	}
	edgeListen := net.JoinHostPort(st.Network.EdgeIP, strconv.Itoa(EdgePort))
	return append(comps, component{
		name: compEdge, exe: l.Slipway, timeout: 30 * time.Second,
		args: []string{"lab", "edge", "--dir", l.Dir},
		ready: func(ctx context.Context) error {
			if err := httpOK(ctx, http.DefaultClient, "http://"+edgeStatusAddr(st)+"/status", nil); err != nil {
				return err
			}
			d := net.Dialer{Timeout: time.Second}
			conn, err := d.DialContext(ctx, "tcp", edgeListen)
			if err != nil {
				return err
			}
			return conn.Close()
		},
	})
}

// serverEnvironment keeps of env what `slipway server` runs on: where it
// finds its tools and Go toolchain, caches and proxies. Whatever else the
// shell that started the lab holds (cloud credentials, tokens) stays out.
func serverEnvironment(env []string) []string {
	keep := map[string]bool{"PATH": true, "HOME": true, "USER": true, "LANG": true, "LC_ALL": true, "TZ": true, "TMPDIR": true,
		"HTTP_PROXY": true, "HTTPS_PROXY": true, "NO_PROXY": true, "http_proxy": true, "https_proxy": true, "no_proxy": true}
	var out []string
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if keep[k] || strings.HasPrefix(k, "GO") || strings.HasPrefix(k, "XDG_") {
			out = append(out, kv)
		}
	}
	return out
}

func (l *Lab) apiReady(ctx context.Context) error {
	_, cfg, err := l.Client()
	if err != nil {
		return err
	}
	c, err := restHTTPClient(cfg)
	if err != nil {
		return err
	}
	return httpOK(ctx, c, cfg.Host+"/readyz", nil)
}
