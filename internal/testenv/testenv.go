// Package testenv starts a real etcd and kube-apiserver (controller-runtime's
// envtest, pointed at the pinned upstream binaries) with Slipway's CRDs
// installed, for tests that depend on API server behaviour.
package testenv

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/upstream"
)

// Scheme knows the built-in types, CRDs and Slipway's types.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, apiextensionsv1.AddToScheme, slipwayv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// BinDir is where the tests find etcd and kube-apiserver: SLIPWAY_BIN_DIR,
// or the cache `slipway lab build` fills.
func BinDir() string {
	if d := os.Getenv("SLIPWAY_BIN_DIR"); d != "" {
		return d
	}
	return upstream.DefaultBinDir()
}

// Env is a running API server.
type Env struct {
	Config *rest.Config
	Client client.Client
	Scheme *runtime.Scheme
	env    *envtest.Environment
	// auditDir holds the audit policy and log, when there are any.
	auditDir string
}

// Options change how the API server runs.
type Options struct {
	// AuditPolicy, when set, is an audit.k8s.io/v1 Policy: the API server
	// writes the events it selects, one JSON object a line, to AuditLog.
	AuditPolicy string
}

// Start runs etcd and kube-apiserver and installs Slipway's CRDs.
func Start() (*Env, error) { return StartWith(Options{}) }

// StartWith is Start with options.
func StartWith(o Options) (*Env, error) {
	dir := BinDir()
	if err := upstream.Require(dir, "etcd", "kube-apiserver"); err != nil {
		return nil, err
	}
	scheme := Scheme()
	env := &envtest.Environment{BinaryAssetsDirectory: dir, Scheme: scheme}
	var auditDir string
	if o.AuditPolicy != "" {
		var err error
		if auditDir, err = os.MkdirTemp("", "slipway-audit-"); err != nil {
			return nil, err
		}
		policy := filepath.Join(auditDir, "policy.yaml")
		if err := os.WriteFile(policy, []byte(o.AuditPolicy), 0o600); err != nil {
			os.RemoveAll(auditDir)
			return nil, err
		}
		// Blocking mode: an event is in the file once its request is answered.
		env.ControlPlane.GetAPIServer().Configure().
			Set("audit-policy-file", policy).
			Set("audit-log-path", filepath.Join(auditDir, "audit.log")).
			Set("audit-log-mode", "blocking").
			Set("audit-log-format", "json")
	}
	cfg, err := env.Start()
	if err != nil {
		if auditDir != "" {
			os.RemoveAll(auditDir)
		}
		return nil, fmt.Errorf("starting etcd and kube-apiserver from %s: %w", dir, err)
	}
	// Tests hammer the API server; the client-side default limit (5 QPS) would
	// make them slow, not more correct.
	cfg.QPS, cfg.Burst = 200, 400
	c, err := client.New(cfg, client.Options{Scheme: scheme})
	if err != nil {
		_ = env.Stop()
		return nil, err
	}
	// Installing through `slipway install`'s code tests it on every run.
	if _, err := install.Apply(context.Background(), c, install.ApplyOptions{Timeout: time.Minute}); err != nil {
		_ = env.Stop()
		return nil, err
	}
	return &Env{Config: cfg, Client: c, Scheme: scheme, env: env, auditDir: auditDir}, nil
}

// AuditLog is the API server's audit log; empty without an audit policy.
func (e *Env) AuditLog() string {
	if e.auditDir == "" {
		return ""
	}
	return filepath.Join(e.auditDir, "audit.log")
}

// Stop shuts the API server and etcd down.
func (e *Env) Stop() error {
	err := e.env.Stop()
	if e.auditDir != "" {
		os.RemoveAll(e.auditDir)
	}
	return err
}

// ServiceAccountConfig returns a config that authenticates as the
// ServiceAccount namespace/name, with a token the API server issues for
// it (TokenRequest), as a Pod running as it would: its requests get that
// ServiceAccount's RBAC, not the tests' administrator rights.
func (e *Env) ServiceAccountConfig(ctx context.Context, namespace, name string, ttl time.Duration) (*rest.Config, error) {
	seconds := int64(ttl.Seconds())
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &seconds}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: namespace, Name: name}}
	if err := e.Client.SubResource("token").Create(ctx, sa, req); err != nil {
		return nil, fmt.Errorf("requesting a token for ServiceAccount %s/%s: %w", namespace, name, err)
	}
	cfg := rest.AnonymousClientConfig(e.Config)
	cfg.BearerToken = req.Status.Token
	cfg.QPS, cfg.Burst = e.Config.QPS, e.Config.Burst
	return cfg, nil
}

// Namespace creates a fresh namespace for one test and deletes it afterwards.
func (e *Env) Namespace(t testing.TB) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "test-"}}
	if err := e.Client.Create(context.Background(), ns); err != nil {
		t.Fatalf("creating test namespace: %v", err)
	}
	t.Cleanup(func() { _ = e.Client.Delete(context.Background(), ns) })
	return ns.Name
}

// TenantServiceAccount is the ServiceAccount TenantNamespace creates for
// Applications to apply as.
const TenantServiceAccount = "slipway-deployer"

// TenantNamespace creates a fresh namespace set up as the README tells a
// platform team to: a ServiceAccount bound to the slipway-tenant
// ClusterRole with a RoleBinding in that namespace only.
func (e *Env) TenantNamespace(t testing.TB) string {
	t.Helper()
	ns := e.Namespace(t)
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: TenantServiceAccount}}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: TenantServiceAccount},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-tenant"},
		Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: ns, Name: TenantServiceAccount}},
	}
	for _, o := range []client.Object{sa, binding} {
		if err := e.Client.Create(context.Background(), o); err != nil {
			t.Fatalf("setting up tenant namespace %s: %v", ns, err)
		}
	}
	return ns
}

// Kubeconfig returns a kubeconfig reaching this API server with the test
// administrator's client certificate, as a cluster Secret holds it.
func (e *Env) Kubeconfig() ([]byte, error) {
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["envtest"] = &clientcmdapi.Cluster{Server: e.Config.Host, CertificateAuthorityData: e.Config.CAData}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{ClientCertificateData: e.Config.CertData, ClientKeyData: e.Config.KeyData, Token: e.Config.BearerToken}
	cfg.Contexts["envtest"] = &clientcmdapi.Context{Cluster: "envtest", AuthInfo: "admin"}
	cfg.CurrentContext = "envtest"
	return clientcmd.Write(*cfg)
}

// RequireDepsEnv is set by `make test`, which installs every system
// package the tests use first: a test that would skip for a missing one
// fails instead, so that a broken install cannot pass as skipped tests.
const RequireDepsEnv = "SLIPWAY_TEST_REQUIRE_DEPS"

// MissingDependency skips t for a system dependency that is not there,
// or fails it under `make test` (RequireDepsEnv).
func MissingDependency(t testing.TB, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv(RequireDepsEnv) == "1" {
		t.Fatal(msg + " (make test installs it first: its absence is a failure there)")
	}
	t.Skip(msg)
}
