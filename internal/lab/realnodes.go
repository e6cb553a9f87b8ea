package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/pki"
	"slipway.dev/slipway/internal/upstream"
)

// Network is the real-node lab's network: a bridge on the host, on which
// the host (the control plane, "master"), the edge load balancer and every
// node have an address, each node in a network namespace of its own. Pods
// of a node are routed through its address, so pods, nodes and the host
// reach each other without NAT, and nothing leaves the machine: the host
// does not forward and the nodes have no default route.
type Network struct {
	Bridge string `json:"bridge"`
	// CIDR is the bridge's subnet.
	CIDR string `json:"cidr"`
	// HostIP is the host's address on the bridge: the API server, the git
	// server and the registry listen there.
	HostIP string `json:"hostIP"`
	// EdgeIP is the edge load balancer's address, standing in for a cloud
	// load balancer's public address.
	EdgeIP string `json:"edgeIP"`
	// LoadBalancerPool is the range MetalLB gives LoadBalancer Services
	// (first-last), inside CIDR: MetalLB answers ARP for them on the bridge.
	LoadBalancerPool string        `json:"loadBalancerPool"`
	Nodes            []NodeNetwork `json:"nodes"`
}

// NodeNetwork is one real node.
type NodeNetwork struct {
	Name    string `json:"name"`
	IP      string `json:"ip"`
	PodCIDR string `json:"podCIDR"`
}

// Fixed ports of the real nodes; each node has its own network namespace,
// so both use the same ones.
const (
	// IngressNodePort is the NodePort of the ingress controller's Service,
	// which the edge load balancer forwards to on every worker.
	IngressNodePort = 30080
	kubeletPort     = 10250
	kubeletHealthz  = 10248
	kubeProxyHealth = 10256
	clusterDNSIP    = "10.96.0.10"
)

func defaultNetwork() *Network {
	nodes := make([]NodeNetwork, len(WorkerNodes))
	for i, name := range WorkerNodes {
		nodes[i] = NodeNetwork{Name: name, IP: fmt.Sprintf("10.210.0.%d", 11+i), PodCIDR: fmt.Sprintf("10.244.%d.0/24", 1+i)}
	}
	return &Network{
		Bridge: "slipway0", CIDR: "10.210.0.0/24", HostIP: "10.210.0.1", EdgeIP: "10.210.0.2",
		LoadBalancerPool: "10.210.0.200-10.210.0.219", Nodes: nodes,
	}
}

func (n *Network) prefixLen() string {
	_, ipnet, err := net.ParseCIDR(n.CIDR)
	if err != nil {
		return "24"
	}
	ones, _ := ipnet.Mask.Size()
	return strconv.Itoa(ones)
}

func netnsName(node string) string  { return "slipway-" + node }
func vethName(node string) string   { return "slw-" + node }
func nodeCgroup(node string) string { return "/slipway-" + node }

// runtimeCgroup holds containerd and its shims; kubelet puts pods beside it.
func runtimeCgroup(node string) string { return nodeCgroup(node) + "/runtime" }

func (l *Lab) nodeDir(node string, parts ...string) string {
	return l.path(append([]string{"nodes", node}, parts...)...)
}

// hostPathsOfNodes are paths outside the lab directory that kubelet,
// containerd, its shims, iptables or mount (libmount's /run/mount, when
// kubelet mounts a volume) create whatever they are told: the lab records
// each that does not exist yet before starting them.
var hostPathsOfNodes = []string{
	"/run/containerd", "/run/xtables.lock", "/run/mount", "/var/lib/cni", "/var/lib/kubelet", "/var/log/containers",
	"/var/log/pods", "/opt/containerd", "/opt/cni", "/etc/cni", "/usr/libexec/kubernetes",
}

// kernelSettingsOfKubelet are the host-wide settings kubelet changes when
// it starts (protectKernelDefaults: false); `lab down` puts them back.
var kernelSettingsOfKubelet = []string{
	"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops",
	"kernel.keys.root_maxkeys", "kernel.keys.root_maxbytes",
}

// ensureHostNetwork creates the lab bridge with the host's and the edge's
// addresses.
func (l *Lab) ensureHostNetwork(st *State) error {
	n := st.Network
	bridge := HostChange{Kind: ChangeLink, Name: n.Bridge}
	if linkExists(n.Bridge) && !st.recorded(bridge) {
		return fmt.Errorf("interface %s exists and is not this lab's (another real-node lab on this machine?); this lab uses %s", n.Bridge, n.CIDR)
	}
	if err := checkSubnetFree(n); err != nil {
		return err
	}
	if err := l.record(st, bridge); err != nil {
		return err
	}
	if !linkExists(n.Bridge) {
		if err := ipCmd("link", "add", n.Bridge, "type", "bridge"); err != nil {
			return err
		}
	}
	for _, addr := range []string{n.HostIP + "/" + n.prefixLen(), n.EdgeIP + "/32"} {
		if err := l.record(st, HostChange{Kind: ChangeAddr, Name: n.Bridge, Dev: n.Bridge, Value: addr}); err != nil {
			return err
		}
		if !hasAddr(n.Bridge, addr) {
			if err := ipCmd("addr", "add", addr, "dev", n.Bridge); err != nil {
				return err
			}
		}
	}
	return ipCmd("link", "set", n.Bridge, "up")
}

// checkSubnetFree refuses a lab subnet that an interface of the host
// other than the lab's bridge already has an address in.
func checkSubnetFree(n *Network) error {
	_, subnet, err := net.ParseCIDR(n.CIDR)
	if err != nil {
		return fmt.Errorf("lab subnet %q: %w", n.CIDR, err)
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		return err
	}
	for _, iface := range ifaces {
		if iface.Name == n.Bridge {
			continue
		}
		addrs, err := iface.Addrs()
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ipnet, ok := a.(*net.IPNet); ok && (subnet.Contains(ipnet.IP) || ipnet.Contains(subnet.IP)) {
				return fmt.Errorf("the lab's subnet %s overlaps %s on %s: real nodes need it to themselves", n.CIDR, ipnet, iface.Name)
			}
		}
	}
	return nil
}

// ensureNodeNetwork gives node its namespace, its address on the bridge
// and the routes between pods, nodes and the host.
func (l *Lab) ensureNodeNetwork(st *State, node NodeNetwork) error {
	n := st.Network
	ns, veth := netnsName(node.Name), vethName(node.Name)
	if err := l.recordPathIfAbsent(st, "/run/netns"); err != nil {
		return err
	}
	if err := l.record(st, HostChange{Kind: ChangeNetns, Name: ns}); err != nil {
		return err
	}
	if _, err := os.Stat(netnsPath(ns)); err != nil {
		if err := ipCmd("netns", "add", ns); err != nil {
			return err
		}
	}
	if err := l.record(st, HostChange{Kind: ChangeLink, Name: veth}); err != nil {
		return err
	}
	if !linkExists(veth) {
		if err := ipCmd("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
			return err
		}
	}
	steps := [][]string{
		{"link", "set", veth, "master", n.Bridge, "up"},
		{"-n", ns, "addr", "replace", node.IP + "/" + n.prefixLen(), "dev", "eth0"},
		{"-n", ns, "link", "set", "lo", "up"},
		{"-n", ns, "link", "set", "eth0", "up"},
		// Traffic a node sends to a ClusterIP is translated after the
		// route lookup, which needs a route to start from.
		{"-n", ns, "route", "replace", serviceCIDR, "via", n.HostIP},
	}
	for _, other := range n.Nodes {
		if other.Name != node.Name {
			steps = append(steps, []string{"-n", ns, "route", "replace", other.PodCIDR, "via", other.IP})
		}
	}
	for _, step := range steps {
		if err := ipCmd(step...); err != nil {
			return err
		}
	}
	if err := inNetns(netnsPath(ns), func() error { return writeSysctl("net.ipv4.ip_forward", "1") }); err != nil {
		return fmt.Errorf("node %s: %w", node.Name, err)
	}
	route := HostChange{Kind: ChangeRoute, Name: node.PodCIDR, Value: node.PodCIDR, Via: node.IP}
	if err := l.record(st, route); err != nil {
		return err
	}
	return ipCmd("route", "replace", node.PodCIDR, "via", node.IP)
}

// nodeComponents are the processes of one real node: containerd (with its
// shims in the node's cgroup), kubelet and kube-proxy, all in the node's
// network namespace.
func (l *Lab) nodeComponents(st *State, node NodeNetwork) []component {
	ns := netnsPath(netnsName(node.Name))
	dir := func(parts ...string) string { return l.nodeDir(node.Name, parts...) }
	sock := dir("containerd", "containerd.sock")
	// kubelet and kube-proxy run iptables, kube-proxy conntrack: all in sbin.
	env := []string{"PATH=" + os.Getenv("PATH") + ":/usr/local/sbin:/usr/sbin:/sbin"}
	healthz := func(port int) func(context.Context) error {
		url := "http://" + net.JoinHostPort(node.IP, strconv.Itoa(port)) + "/healthz"
		return func(ctx context.Context) error { return httpOK(ctx, http.DefaultClient, url, nil) }
	}
	return []component{
		{
			name: containerdComponent(node.Name), exe: "/usr/bin/containerd", timeout: 30 * time.Second,
			where: placement{netns: ns, cgroup: runtimeCgroup(node.Name)}, env: env,
			args: []string{"--config", dir("containerd", "config.toml")},
			before: func(ctx context.Context) error {
				return l.prepareContainerd(st, node)
			},
			ready: func(ctx context.Context) error {
				d := net.Dialer{Timeout: time.Second}
				conn, err := d.DialContext(ctx, "unix", sock)
				if err != nil {
					return err
				}
				return conn.Close()
			},
		},
		{
			name: kubeletComponent(node.Name), exe: filepath.Join(upstream.NodeBinDir(), "kubelet"), timeout: 60 * time.Second,
			where: placement{netns: ns}, env: env,
			args: []string{
				"--config=" + dir("kubelet", "config.yaml"),
				"--kubeconfig=" + dir("kubelet", "kubeconfig"),
				"--root-dir=" + dir("kubelet", "root"),
				"--cert-dir=" + dir("kubelet", "pki"),
				"--volume-plugin-dir=" + dir("kubelet", "volume-plugins"),
				"--hostname-override=" + node.Name, "--node-ip=" + node.IP,
				"--node-labels=" + SubnetLabel + "=private",
			},
			before: func(ctx context.Context) error { return l.prepareKubelet(ctx, st, node) },
			ready:  healthz(kubeletHealthz),
		},
		{
			name: kubeProxyComponent(node.Name), exe: filepath.Join(upstream.NodeBinDir(), "kube-proxy"), timeout: 30 * time.Second,
			where: placement{netns: ns}, env: env,
			args:   []string{"--config=" + dir("kube-proxy", "config.yaml"), "--hostname-override=" + node.Name},
			before: func(ctx context.Context) error { return l.prepareKubeProxy(st, node) },
			ready:  healthz(kubeProxyHealth),
		},
	}
}

func containerdComponent(node string) string { return "containerd-" + node }
func kubeletComponent(node string) string    { return "kubelet-" + node }
func kubeProxyComponent(node string) string  { return "kube-proxy-" + node }

// componentNames lists the processes of every node, in start order.
func (n *Network) componentNames() []string {
	var names []string
	for _, node := range n.Nodes {
		names = append(names, containerdComponent(node.Name), kubeletComponent(node.Name), kubeProxyComponent(node.Name))
	}
	return names
}

// prepareContainerd sets the node's network and cgroup up, records what
// containerd will touch outside the lab directory, and writes its
// configuration and the CNI template.
func (l *Lab) prepareContainerd(st *State, node NodeNetwork) error {
	if err := l.ensureNodeNetwork(st, node); err != nil {
		return err
	}
	for _, p := range hostPathsOfNodes {
		if err := l.recordPathIfAbsent(st, p); err != nil {
			return err
		}
	}
	// Container root file systems, pod network namespaces, volumes.
	if err := l.record(st, HostChange{Kind: ChangeMounts, Name: l.nodeDir(node.Name)}); err != nil {
		return err
	}
	if err := l.record(st, HostChange{Kind: ChangeCgroup, Name: nodeCgroup(node.Name)}); err != nil {
		return err
	}
	if err := createCgroup(runtimeCgroup(node.Name)); err != nil {
		return err
	}
	for _, d := range []string{"containerd", "cni/net.d", "cni/ipam", "kubelet", "kube-proxy", "pod-logs"} {
		if err := os.MkdirAll(l.nodeDir(node.Name, d), 0o700); err != nil {
			return err
		}
	}
	pause := st.Images[imagePause]
	if pause == "" {
		return fmt.Errorf("the pause image was not built before node %s", node.Name)
	}
	registry := st.serviceHost() + ":" + strconv.Itoa(st.Ports.Registry)
	if err := os.WriteFile(l.nodeDir(node.Name, "containerd", "config.toml"),
		[]byte(containerdConfig(l.nodeDir(node.Name), pause, registry, st.Registry)), 0o600); err != nil {
		return err
	}
	return os.WriteFile(l.nodeDir(node.Name, "cni", "template.conflist"), []byte(cniTemplate(l.nodeDir(node.Name, "cni", "ipam"))), 0o600)
}

// containerdConfig is containerd 1.6's configuration for a node: all state
// under the node's directory, images pulled from the lab registry with its
// credentials, and the CRI settings this kind of host needs.
func containerdConfig(dir, pauseImage, registry string, auth GitCredentials) string {
	return fmt.Sprintf(`version = 2
root = %[1]q
state = %[2]q
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]

[grpc]
  address = %[3]q

[ttrpc]
  address = %[4]q

[plugins."io.containerd.internal.v1.opt"]
  path = %[5]q

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = %[6]q
  # Without CAP_SYS_RESOURCE (as root in many VMs and containers) a negative
  # oom_score_adj is refused and every pod sandbox would fail.
  restrict_oom_score_adj = true
  # Pod network namespaces under the state directory, not /var/run/netns.
  netns_mounts_under_state_dir = true

  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"

    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"

      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
        Root = %[7]q

  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = %[8]q
    max_conf_num = 1
    # Rendered once kubelet reports the node's pod CIDR.
    conf_template = %[9]q

  [plugins."io.containerd.grpc.v1.cri".registry.mirrors.%[10]q]
    endpoint = [%[11]q]

  [plugins."io.containerd.grpc.v1.cri".registry.configs.%[10]q.auth]
    username = %[12]q
    password = %[13]q
`,
		filepath.Join(dir, "containerd", "root"), filepath.Join(dir, "containerd", "state"),
		filepath.Join(dir, "containerd", "containerd.sock"), filepath.Join(dir, "containerd", "containerd.sock.ttrpc"),
		filepath.Join(dir, "containerd", "opt"), pauseImage, filepath.Join(dir, "containerd", "runc"),
		filepath.Join(dir, "cni", "net.d"), filepath.Join(dir, "cni", "template.conflist"),
		registry, "http://"+registry, auth.Username, auth.Password)
}

// cniTemplate is the node's pod network: a bridge in the node's namespace
// with the node's pod CIDR (filled in by containerd). No masquerading:
// routes carry pod addresses between nodes and to the host.
func cniTemplate(ipamDir string) string {
	return fmt.Sprintf(`{
  "cniVersion": "0.4.0",
  "name": "slipway-lab",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "cni0",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": %q,
        "ranges": [{{range $i, $range := .PodCIDRRanges}}{{if $i}}, {{end}}[{"subnet": "{{$range}}"}]{{end}}],
        "routes": [{"dst": "0.0.0.0/0"}]
      }
    },
    {"type": "portmap", "capabilities": {"portMappings": true}}
  ]
}
`, ipamDir)
}

// prepareKubelet records the kernel settings kubelet changes, creates the
// Node with its role, subnet and pod CIDR (kubelet may not set a role on
// itself), and writes kubelet's configuration and kubeconfig.
func (l *Lab) prepareKubelet(ctx context.Context, st *State, node NodeNetwork) error {
	for _, key := range kernelSettingsOfKubelet {
		if err := l.recordSysctl(st, key); err != nil {
			return err
		}
	}
	if err := l.writeNodeKubeconfig(st, pki.NodeClient(node.Name), "system:node:"+node.Name, l.nodeDir(node.Name, "kubelet", "kubeconfig")); err != nil {
		return err
	}
	if err := os.WriteFile(l.nodeDir(node.Name, "kubelet", "resolv.conf"), []byte("# pods use the cluster DNS; the lab has no other\n"), 0o644); err != nil {
		return err
	}
	cfg := kubeletConfig(node, l.nodeDir(node.Name), pki.CertPath(l.path("pki"), pki.CA))
	if err := os.WriteFile(l.nodeDir(node.Name, "kubelet", "config.yaml"), []byte(cfg), 0o600); err != nil {
		return err
	}
	return l.ensureNodeObject(ctx, node)
}

func kubeletConfig(node NodeNetwork, dir, caFile string) string {
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# cgroup v1 hosts (the hybrid layout of Debian 12) are deprecated upstream, not refused.
failCgroupV1: false
cgroupDriver: cgroupfs
# Each node has its own cgroup root: two kubelets on one host must not share /kubepods.
cgroupRoot: %[1]s
cgroupsPerQOS: true
failSwapOn: false
containerRuntimeEndpoint: unix://%[2]s
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[3]s}
authorization: {mode: Webhook}
address: %[4]s
port: %[5]d
readOnlyPort: 0
healthzBindAddress: %[4]s
healthzPort: %[6]d
clusterDomain: cluster.local
clusterDNS: [%[7]s]
resolvConf: %[8]s
podLogsDir: %[9]s
maxPods: 110
# A lab on a small disk must not evict its own pods.
evictionHard: {memory.available: "100Mi", nodefs.available: "2%%", imagefs.available: "2%%", nodefs.inodesFree: "2%%"}
imageGCHighThresholdPercent: 99
imageGCLowThresholdPercent: 98
serializeImagePulls: false
# Renew the node's lease every 3 s: a stopped kubelet is noticed in about 20 s.
nodeLeaseDurationSeconds: 12
`, nodeCgroup(node.Name), filepath.Join(dir, "containerd", "containerd.sock"), caFile, node.IP, kubeletPort, kubeletHealthz,
		clusterDNSIP, filepath.Join(dir, "kubelet", "resolv.conf"), filepath.Join(dir, "pod-logs"))
}

// ensureNodeObject creates the Node before its kubelet registers, with
// what the kubelet may not or cannot say about itself: its role and the
// pod CIDR the routes were laid out for.
func (l *Lab) ensureNodeObject(ctx context.Context, node NodeNetwork) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: node.Name, Labels: map[string]string{
			"kubernetes.io/hostname": node.Name, "kubernetes.io/os": "linux",
			"node-role.kubernetes.io/worker": "", SubnetLabel: "private",
		}},
		Spec: corev1.NodeSpec{PodCIDR: node.PodCIDR, PodCIDRs: []string{node.PodCIDR}},
	}
	err = c.Create(ctx, n)
	if apierrors.IsAlreadyExists(err) {
		existing := &corev1.Node{}
		if err := c.Get(ctx, client.ObjectKey{Name: node.Name}, existing); err != nil {
			return err
		}
		if existing.Spec.PodCIDR != node.PodCIDR {
			return fmt.Errorf("node %s has pod CIDR %q, not %s: this lab's etcd holds another lab's nodes (run `slipway lab down --purge`)",
				node.Name, existing.Spec.PodCIDR, node.PodCIDR)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("creating node %s: %w", node.Name, err)
	}
	return nil
}

func (l *Lab) prepareKubeProxy(st *State, node NodeNetwork) error {
	kubeconfig := l.nodeDir(node.Name, "kube-proxy", "kubeconfig")
	if err := l.writeNodeKubeconfig(st, pki.KubeProxy, "system:kube-proxy", kubeconfig); err != nil {
		return err
	}
	cfg := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %[1]s
mode: iptables
hostnameOverride: %[2]s
clusterCIDR: %[3]s
bindAddress: %[4]s
healthzBindAddress: %[4]s:%[5]d
metricsBindAddress: %[4]s:10249
# Negative scores need CAP_SYS_RESOURCE.
oomScoreAdj: 0
# Leave the host-wide conntrack limits alone.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
nodePortAddresses: ["primary"]
iptables:
  localhostNodePorts: false
  masqueradeAll: false
  syncPeriod: 30s
  minSyncPeriod: 1s
`, kubeconfig, node.Name, clusterCIDR, node.IP, kubeProxyHealth)
	return os.WriteFile(l.nodeDir(node.Name, "kube-proxy", "config.yaml"), []byte(cfg), 0o600)
}

// writeNodeKubeconfig writes a kubeconfig for a node agent with the client
// certificate certName.
func (l *Lab) writeNodeKubeconfig(st *State, certName, user, path string) error {
	dir := l.path("pki")
	ca, err := os.ReadFile(pki.CertPath(dir, pki.CA))
	if err != nil {
		return err
	}
	cert, err := os.ReadFile(pki.CertPath(dir, certName))
	if err != nil {
		return err
	}
	key, err := os.ReadFile(pki.KeyPath(dir, certName))
	if err != nil {
		return err
	}
	return pki.WriteKubeconfig(path, st.apiURL(), ca, cert, key, user)
}

// waitNodesReady waits until every real node reports Ready.
func (l *Lab) waitNodesReady(ctx context.Context, st *State) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	start := time.Now()
	var waiting []string
	err = wait.PollUntilContextTimeout(ctx, 250*time.Millisecond, 2*time.Minute, true, func(ctx context.Context) (bool, error) {
		waiting = waiting[:0]
		for _, node := range st.Network.Nodes {
			n := &corev1.Node{}
			if err := c.Get(ctx, client.ObjectKey{Name: node.Name}, n); err != nil || !nodeReady(n) {
				waiting = append(waiting, node.Name)
			}
		}
		return len(waiting) == 0, nil
	})
	if err != nil {
		return fmt.Errorf("nodes %s not Ready within 2m (see their kubelet logs in %s): %w", strings.Join(waiting, ", "), l.path("logs"), err)
	}
	l.progress("real nodes Ready in %.1fs", time.Since(start).Seconds())
	return nil
}
