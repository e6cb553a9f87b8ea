package install

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/netip"
	"path"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"

	"slipway.dev/slipway/config"
)

// Names of what `slipway install` creates.
const (
	// Namespace holds the server: its Deployment, ServiceAccount, Secrets
	// and leader-election Lease.
	Namespace = "slipway-system"
	// RunNamespace holds the Pods of pipeline test steps (the kubernetes
	// executor), apart from the server and its credentials.
	RunNamespace = "slipway-runs"
	// ServerName names the server's Deployment, ServiceAccount, roles,
	// bindings, Service, PodDisruptionBudget and NetworkPolicy.
	ServerName = "slipway-server"
	// TenantRole is the ClusterRole tenants bind to their ServiceAccounts.
	TenantRole = "slipway-tenant"
	// WebhookSecretName is the Secret (key WebhookSecretKey) holding the
	// HMAC secret of push webhooks, mounted into the server as a file.
	WebhookSecretName = "slipway-webhook"
	WebhookSecretKey  = "secret"
	// Port serves /hooks/git, /metrics, /healthz and /readyz.
	Port = 9443
)

// Where the server keeps its files: every one is an emptyDir, the root
// filesystem is read-only.
const (
	tokenDir   = "/var/run/secrets/kubernetes.io/serviceaccount"
	webhookDir = "/etc/slipway/webhook"
	cacheDir   = "/var/cache/slipway"
	stateDir   = "/var/lib/slipway"
	tmpDir     = "/tmp"
)

// DefaultEgressCIDRs are the private address ranges, where an
// organisation's git server, registry and module proxy usually live; they
// are also what the fin-kr pack allows egress to by default.
var DefaultEgressCIDRs = []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"}

// Options choose what Manifests and Apply install.
type Options struct {
	// Image runs the server, pinned by digest (REPOSITORY@sha256:HEX).
	// Empty installs only the definitions: CRDs, namespaces, the
	// ServiceAccount and RBAC, what a server running outside the cluster
	// (the lab's, a test's) needs.
	Image string
	// Replicas of the server; 2 when zero. Leader election makes one of
	// them reconcile; every one serves webhooks.
	Replicas int32
	// ImagePullSecret names a Secret of Namespace (kubernetes.io/dockerconfigjson)
	// the kubelet pulls Image with; RegistryCredentials, when set, writes it.
	ImagePullSecret string
	// APIServerCIDRs are the addresses of the API server's endpoints, the
	// server's egress to the Kubernetes API; required with Image (Apply
	// finds them in the cluster when empty).
	APIServerCIDRs []string
	// EgressCIDRs are where the server and test Pods may connect besides
	// the API server and DNS: git hosts, registries, the Go module proxy.
	// DefaultEgressCIDRs when empty.
	EgressCIDRs []string
	// Env adds KEY=VALUE variables to the server's container (GOPROXY,
	// HTTPS_PROXY); never credentials, which belong in Secrets.
	Env []string
	// RunnerImage is Slipway's runner image (`slipway lab image` builds
	// it with the server image): slipway, a static sh and the Go
	// toolchain, pinned by digest. Test Pods check the source out with
	// `slipway checkout` in it, with no git or ssh in any image, and run
	// the test command in it unless TestImage or slipway.yaml names
	// another. Empty: the checkout runs git in TestImage.
	RunnerImage string
	// TestImage is the default image of pipeline test steps; the runner
	// image, else the server's default, when empty.
	TestImage string
	// TestCPU and TestMemory are each test step's CPU and memory as
	// Kubernetes quantities: the test Pod's requests and limits, so they
	// must fit on a node. The server's defaults (2 cores, 8Gi) when empty.
	TestCPU, TestMemory string
	// DefaultServiceAccount is what Applications apply as when neither
	// they nor their Tenant name one; empty refuses them.
	DefaultServiceAccount string
}

// RegistryCredentials let the kubelet pull the server's image.
type RegistryCredentials struct {
	// Server is the registry host (host:port) of the image.
	Server   string
	Username string
	Password string
}

// labels mark every object of the installation.
func labels(component string) map[string]string {
	l := map[string]string{"app.kubernetes.io/name": "slipway", "app.kubernetes.io/managed-by": FieldOwner}
	if component != "" {
		l["app.kubernetes.io/component"] = component
	}
	return l
}

// serverSelector selects the server's Pods.
func serverSelector() map[string]string {
	return map[string]string{"app.kubernetes.io/name": "slipway", "app.kubernetes.io/component": "server"}
}

// Manifests returns every object Apply applies for opts, in order, the
// same objects `slipway install --dry-run` prints. Secrets are never among
// them: credentials do not belong in a manifest a GitOps user commits.
func Manifests(opts Options) ([]*unstructured.Unstructured, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	objs, err := embedded(config.CRDs, "crd")
	if err != nil {
		return nil, err
	}
	roles, err := embedded(config.RBAC, "rbac")
	if err != nil {
		return nil, err
	}
	var typed []runtime.Object
	add := func(o ...runtime.Object) { typed = append(typed, o...) }
	add(namespace(Namespace), namespace(RunNamespace))
	if err := convert(&objs, typed); err != nil {
		return nil, err
	}
	for _, role := range roles {
		setLabels(role, labels(""))
		if role.GetName() == ServerName {
			setLabels(role, labels("server"))
		}
		objs = append(objs, role)
	}
	// The API server itself enforces separation of duties on promotions.
	admission, err := embedded(config.Admission, "admission")
	if err != nil {
		return nil, err
	}
	for _, o := range admission {
		setLabels(o, labels("promotions"))
		objs = append(objs, o)
	}
	typed = typed[:0]
	add(&corev1.ServiceAccount{
		TypeMeta:                     metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta:                   metav1.ObjectMeta{Name: ServerName, Namespace: Namespace, Labels: labels("server")},
		AutomountServiceAccountToken: ptr(false), // the Deployment projects a token of its own
	})
	for _, role := range roles {
		if role.GetName() == ServerName {
			add(binding(role))
		}
	}
	if opts.Image != "" {
		add(serverObjects(opts)...)
	}
	if err := convert(&objs, typed); err != nil {
		return nil, err
	}
	return objs, nil
}

func convert(into *[]*unstructured.Unstructured, typed []runtime.Object) error {
	for _, t := range typed {
		u, err := toUnstructured(t)
		if err != nil {
			return err
		}
		*into = append(*into, u)
	}
	return nil
}

func (o Options) validate() error {
	if o.Image == "" {
		if o.ImagePullSecret != "" || len(o.Env) > 0 || o.TestImage != "" || o.RunnerImage != "" || o.TestCPU != "" || o.TestMemory != "" || o.DefaultServiceAccount != "" {
			return errors.New("the server's settings need an image: without one only the definitions are installed")
		}
		return nil
	}
	d, err := name.NewDigest(o.Image)
	if err != nil || !strings.HasPrefix(d.DigestStr(), "sha256:") {
		return fmt.Errorf("image %q is not pinned by digest: give REPOSITORY@sha256:HEX, so every replica and every node runs the same build", o.Image)
	}
	if o.RunnerImage != "" {
		if d, err := name.NewDigest(o.RunnerImage); err != nil || !strings.HasPrefix(d.DigestStr(), "sha256:") {
			return fmt.Errorf("runner image %q is not pinned by digest: give REPOSITORY@sha256:HEX, as the server image", o.RunnerImage)
		}
	}
	for flag, q := range map[string]string{"test CPU": o.TestCPU, "test memory": o.TestMemory} {
		if v, err := resource.ParseQuantity(q); q != "" && (err != nil || v.Sign() <= 0) {
			return fmt.Errorf("%s %q: want a positive quantity (e.g. 1, 500m, 3Gi)", flag, q)
		}
	}
	if o.Replicas < 0 {
		return fmt.Errorf("replicas %d: want 1 or more", o.Replicas)
	}
	if len(o.APIServerCIDRs) == 0 {
		return errors.New("the API server's addresses are unknown: give them (--api-server-cidr) so the NetworkPolicy lets the server reach the Kubernetes API")
	}
	for _, c := range append(append([]string{}, o.APIServerCIDRs...), o.EgressCIDRs...) {
		if _, err := parseCIDR(c); err != nil {
			return err
		}
	}
	for _, kv := range o.Env {
		if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
			return fmt.Errorf("environment setting %q: want KEY=VALUE", kv)
		}
	}
	return nil
}

// parseCIDR accepts a prefix or a single address (as a /32 or /128).
func parseCIDR(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither an address nor a CIDR", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func namespace(n string) *corev1.Namespace {
	l := labels("")
	// The restricted Pod Security Standard, enforced by the API server:
	// the server and the test Pods comply, and nothing else may run here.
	for _, mode := range []string{"enforce", "audit", "warn"} {
		l["pod-security.kubernetes.io/"+mode] = "restricted"
	}
	return &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"}, ObjectMeta: metav1.ObjectMeta{Name: n, Labels: l}}
}

// binding binds a generated role to the server's ServiceAccount: a
// ClusterRole cluster-wide, a Role in its namespace.
func binding(role *unstructured.Unstructured) runtime.Object {
	subjects := []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Name: ServerName, Namespace: Namespace}}
	meta := metav1.ObjectMeta{Name: role.GetName(), Namespace: role.GetNamespace(), Labels: labels("server")}
	if role.GetKind() == "ClusterRole" {
		return &rbacv1.ClusterRoleBinding{
			TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "ClusterRoleBinding"}, ObjectMeta: meta,
			RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: role.GetName()}, Subjects: subjects,
		}
	}
	return &rbacv1.RoleBinding{
		TypeMeta: metav1.TypeMeta{APIVersion: rbacv1.SchemeGroupVersion.String(), Kind: "RoleBinding"}, ObjectMeta: meta,
		RoleRef: rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.GetName()}, Subjects: subjects,
	}
}

// serverObjects are the server's workload and its network boundary.
func serverObjects(opts Options) []runtime.Object {
	egress := opts.EgressCIDRs
	if len(egress) == 0 {
		egress = DefaultEgressCIDRs
	}
	return []runtime.Object{
		defaultDeny(Namespace), defaultDeny(RunNamespace),
		serverNetworkPolicy(opts.APIServerCIDRs, egress), runNetworkPolicy(egress),
		service(), disruptionBudget(), deployment(opts),
	}
}

func defaultDeny(ns string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "default-deny", Namespace: ns, Labels: labels("")},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
		},
	}
}

// dnsEgress reaches the cluster's DNS (CoreDNS or kube-dns, labelled
// k8s-app=kube-dns in kube-system by convention).
func dnsEgress() networkingv1.NetworkPolicyEgressRule {
	udp, tcp := corev1.ProtocolUDP, corev1.ProtocolTCP
	port := intstr.FromInt32(53)
	return networkingv1.NetworkPolicyEgressRule{
		To: []networkingv1.NetworkPolicyPeer{{
			NamespaceSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"kubernetes.io/metadata.name": "kube-system"}},
			PodSelector:       &metav1.LabelSelector{MatchLabels: map[string]string{"k8s-app": "kube-dns"}},
		}},
		Ports: []networkingv1.NetworkPolicyPort{{Protocol: &udp, Port: &port}, {Protocol: &tcp, Port: &port}},
	}
}

func ipBlocks(cidrs []string) []networkingv1.NetworkPolicyPeer {
	var peers []networkingv1.NetworkPolicyPeer
	for _, c := range cidrs {
		p, _ := parseCIDR(c) // validated
		peers = append(peers, networkingv1.NetworkPolicyPeer{IPBlock: &networkingv1.IPBlock{CIDR: p.String()}})
	}
	return peers
}

// serverNetworkPolicy lets traffic reach the server only on its HTTP port
// (webhooks from git hosts, scrapes from Prometheus, probes), and lets the
// server reach only DNS, the API server and the egress ranges.
func serverNetworkPolicy(apiServer, egress []string) *networkingv1.NetworkPolicy {
	tcp := corev1.ProtocolTCP
	port := intstr.FromInt32(Port)
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: ServerName, Namespace: Namespace, Labels: labels("server")},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{MatchLabels: serverSelector()},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Ingress:     []networkingv1.NetworkPolicyIngressRule{{Ports: []networkingv1.NetworkPolicyPort{{Protocol: &tcp, Port: &port}}}},
			Egress: []networkingv1.NetworkPolicyEgressRule{
				dnsEgress(),
				{To: ipBlocks(apiServer)},
				{To: ipBlocks(egress)},
			},
		},
	}
}

// runNetworkPolicy lets test Pods reach DNS and the egress ranges (the
// checkout clones from git; tests may fetch modules); nothing reaches them.
func runNetworkPolicy(egress []string) *networkingv1.NetworkPolicy {
	return &networkingv1.NetworkPolicy{
		TypeMeta:   metav1.TypeMeta{APIVersion: networkingv1.SchemeGroupVersion.String(), Kind: "NetworkPolicy"},
		ObjectMeta: metav1.ObjectMeta{Name: "slipway-runs", Namespace: RunNamespace, Labels: labels("runs")},
		Spec: networkingv1.NetworkPolicySpec{
			PodSelector: metav1.LabelSelector{},
			PolicyTypes: []networkingv1.PolicyType{networkingv1.PolicyTypeIngress, networkingv1.PolicyTypeEgress},
			Egress:      []networkingv1.NetworkPolicyEgressRule{dnsEgress(), {To: ipBlocks(egress)}},
		},
	}
}

func service() *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Name: ServerName, Namespace: Namespace, Labels: labels("server")},
		Spec: corev1.ServiceSpec{
			Type:     corev1.ServiceTypeClusterIP,
			Selector: serverSelector(),
			Ports: []corev1.ServicePort{{
				Name: "http", Port: Port, TargetPort: intstr.FromString("http"), Protocol: corev1.ProtocolTCP,
				AppProtocol: ptr("http"),
			}},
		},
	}
}

// disruptionBudget lets a drain take one replica at a time: with two, one
// always serves, and with one a drain is not blocked forever.
func disruptionBudget() *policyv1.PodDisruptionBudget {
	one := intstr.FromInt32(1)
	return &policyv1.PodDisruptionBudget{
		TypeMeta:   metav1.TypeMeta{APIVersion: policyv1.SchemeGroupVersion.String(), Kind: "PodDisruptionBudget"},
		ObjectMeta: metav1.ObjectMeta{Name: ServerName, Namespace: Namespace, Labels: labels("server")},
		Spec: policyv1.PodDisruptionBudgetSpec{
			MaxUnavailable: &one,
			Selector:       &metav1.LabelSelector{MatchLabels: serverSelector()},
		},
	}
}

// serverArgs are slipway server's flags in the cluster: leader election
// on, files in emptyDirs, test steps as Pods in RunNamespace.
func serverArgs(opts Options) []string {
	args := []string{
		"server",
		fmt.Sprintf("--addr=:%d", Port),
		"--webhook-secret-file=" + path.Join(webhookDir, WebhookSecretKey),
		"--leader-elect=true",
		"--leader-election-namespace=" + Namespace,
		"--git-cache-dir=" + path.Join(cacheDir, "git"),
		"--run-dir=" + path.Join(stateDir, "runs"),
		"--cache-dir=" + path.Join(cacheDir, "pipelines"),
		"--executor=kubernetes",
		"--run-namespace=" + RunNamespace,
	}
	if opts.RunnerImage != "" {
		args = append(args, "--runner-image="+opts.RunnerImage)
	}
	if opts.TestImage != "" {
		args = append(args, "--test-image="+opts.TestImage)
	}
	if opts.TestCPU != "" {
		args = append(args, "--test-cpu="+opts.TestCPU)
	}
	if opts.TestMemory != "" {
		args = append(args, "--test-memory="+opts.TestMemory)
	}
	if opts.DefaultServiceAccount != "" {
		args = append(args, "--default-service-account="+opts.DefaultServiceAccount)
	}
	return args
}

// serverEnv points go build (the pipeline's Go image builds run in the
// server) at the writable directories, and adds the operator's settings.
func serverEnv(opts Options) []corev1.EnvVar {
	env := []corev1.EnvVar{
		{Name: "HOME", Value: stateDir},
		{Name: "TMPDIR", Value: tmpDir},
		{Name: "GOCACHE", Value: path.Join(cacheDir, "go-build")},
		{Name: "GOMODCACHE", Value: path.Join(cacheDir, "go-mod")},
		{Name: "GOPATH", Value: path.Join(cacheDir, "go")},
		{Name: "GOTOOLCHAIN", Value: "local"},
	}
	for _, kv := range opts.Env {
		k, v, _ := strings.Cut(kv, "=")
		env = append(env, corev1.EnvVar{Name: k, Value: v})
	}
	return env
}

func emptyDir(name string, size string) corev1.Volume {
	limit := resource.MustParse(size)
	return corev1.Volume{Name: name, VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{SizeLimit: &limit}}}
}

// tokenVolume is the ServiceAccount token, CA and namespace as the
// kubelet would mount them, projected explicitly so that no other Pod of
// the ServiceAccount gets a token by default.
func tokenVolume() corev1.Volume {
	return corev1.Volume{Name: "kube-api-access", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
		DefaultMode: ptr(int32(0o444)),
		Sources: []corev1.VolumeProjection{
			{ServiceAccountToken: &corev1.ServiceAccountTokenProjection{Path: "token", ExpirationSeconds: ptr(int64(3607))}},
			{ConfigMap: &corev1.ConfigMapProjection{
				LocalObjectReference: corev1.LocalObjectReference{Name: "kube-root-ca.crt"},
				Items:                []corev1.KeyToPath{{Key: "ca.crt", Path: "ca.crt"}},
			}},
			{DownwardAPI: &corev1.DownwardAPIProjection{Items: []corev1.DownwardAPIVolumeFile{{
				Path: "namespace", FieldRef: &corev1.ObjectFieldSelector{APIVersion: "v1", FieldPath: "metadata.namespace"},
			}}}},
		},
	}}}
}

// The server's user: the nonroot user of the images Slipway builds.
const serverUser int64 = 65532

func deployment(opts Options) *appsv1.Deployment {
	replicas := opts.Replicas
	if replicas == 0 {
		replicas = 2
	}
	probe := func(p string, period int32) *corev1.Probe {
		return &corev1.Probe{
			ProbeHandler:  corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: p, Port: intstr.FromString("http")}},
			PeriodSeconds: period, TimeoutSeconds: 2, FailureThreshold: 3,
		}
	}
	podSpec := corev1.PodSpec{
		ServiceAccountName:           ServerName,
		AutomountServiceAccountToken: ptr(false),
		EnableServiceLinks:           ptr(false),
		SecurityContext: &corev1.PodSecurityContext{
			RunAsNonRoot: ptr(true), RunAsUser: ptr(serverUser), RunAsGroup: ptr(serverUser), FSGroup: ptr(serverUser),
			SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
		},
		TopologySpreadConstraints: []corev1.TopologySpreadConstraint{{
			MaxSkew: 1, TopologyKey: "kubernetes.io/hostname", WhenUnsatisfiable: corev1.DoNotSchedule,
			LabelSelector:    &metav1.LabelSelector{MatchLabels: serverSelector()},
			NodeTaintsPolicy: ptr(corev1.NodeInclusionPolicyHonor),
		}},
		Containers: []corev1.Container{{
			Name:  "server",
			Image: opts.Image,
			Args:  serverArgs(opts),
			Env:   serverEnv(opts),
			Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: Port, Protocol: corev1.ProtocolTCP}},
			Resources: corev1.ResourceRequirements{
				// go build runs inside the server: its limit is the build's.
				Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("250m"), corev1.ResourceMemory: resource.MustParse("512Mi")},
				Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("2"), corev1.ResourceMemory: resource.MustParse("3Gi")},
			},
			LivenessProbe:  probe("/healthz", 10),
			ReadinessProbe: probe("/readyz", 5),
			SecurityContext: &corev1.SecurityContext{
				RunAsNonRoot: ptr(true), RunAsUser: ptr(serverUser), RunAsGroup: ptr(serverUser),
				AllowPrivilegeEscalation: ptr(false), ReadOnlyRootFilesystem: ptr(true), Privileged: ptr(false),
				Capabilities:   &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			VolumeMounts: []corev1.VolumeMount{
				{Name: "kube-api-access", MountPath: tokenDir, ReadOnly: true},
				{Name: "webhook-secret", MountPath: webhookDir, ReadOnly: true},
				{Name: "cache", MountPath: cacheDir},
				{Name: "state", MountPath: stateDir},
				{Name: "tmp", MountPath: tmpDir},
			},
		}},
		Volumes: []corev1.Volume{
			tokenVolume(),
			// Optional: a server without the Secret starts and refuses
			// webhooks until it appears (it reads the file per delivery).
			{Name: "webhook-secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
				SecretName: WebhookSecretName, Optional: ptr(true), DefaultMode: ptr(int32(0o440)),
				Items: []corev1.KeyToPath{{Key: WebhookSecretKey, Path: WebhookSecretKey}},
			}}},
			emptyDir("cache", "8Gi"),
			emptyDir("state", "4Gi"),
			emptyDir("tmp", "2Gi"),
		},
	}
	if opts.ImagePullSecret != "" {
		podSpec.ImagePullSecrets = []corev1.LocalObjectReference{{Name: opts.ImagePullSecret}}
	}
	maxSurge, maxUnavailable := intstr.FromInt32(1), intstr.FromInt32(0)
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: appsv1.SchemeGroupVersion.String(), Kind: "Deployment"},
		ObjectMeta: metav1.ObjectMeta{Name: ServerName, Namespace: Namespace, Labels: labels("server")},
		Spec: appsv1.DeploymentSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: serverSelector()},
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RollingUpdateDeploymentStrategyType, RollingUpdate: &appsv1.RollingUpdateDeployment{
				MaxSurge: &maxSurge, MaxUnavailable: &maxUnavailable,
			}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: merge(labels("server"), serverSelector())},
				Spec:       podSpec,
			},
		},
	}
}

func merge(a, b map[string]string) map[string]string {
	out := map[string]string{}
	for k, v := range a {
		out[k] = v
	}
	for k, v := range b {
		out[k] = v
	}
	return out
}

func ptr[T any](v T) *T { return &v }

// toUnstructured converts a typed object, leaving out what a typed object
// carries but a manifest does not say (empty status, null timestamps).
func toUnstructured(o runtime.Object) (*unstructured.Unstructured, error) {
	m, err := runtime.DefaultUnstructuredConverter.ToUnstructured(o)
	if err != nil {
		return nil, fmt.Errorf("converting %T: %w", o, err)
	}
	delete(m, "status")
	unstructured.RemoveNestedField(m, "metadata", "creationTimestamp")
	unstructured.RemoveNestedField(m, "spec", "template", "metadata", "creationTimestamp")
	return &unstructured.Unstructured{Object: m}, nil
}

func setLabels(o *unstructured.Unstructured, l map[string]string) {
	have := o.GetLabels()
	if have == nil {
		have = map[string]string{}
	}
	for k, v := range l {
		have[k] = v
	}
	o.SetLabels(have)
}

// embedded reads every object of the YAML files under dir (one file may
// hold several documents), in file name order.
func embedded(files fs.FS, dir string) ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	err := fs.WalkDir(files, dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(p, ".yaml") {
			return err
		}
		f, err := files.Open(p)
		if err != nil {
			return err
		}
		defer f.Close()
		dec := utilyaml.NewYAMLOrJSONDecoder(f, 4096)
		for {
			o := &unstructured.Unstructured{}
			if err := dec.Decode(&o.Object); err != nil {
				if errors.Is(err, io.EOF) {
					return nil
				}
				return fmt.Errorf("decoding embedded %s: %w", p, err)
			}
			if len(o.Object) == 0 {
				continue // an empty document, as after a leading ---
			}
			objs = append(objs, o)
		}
	})
	return objs, err
}
