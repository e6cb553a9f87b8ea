package pki

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
)

// TestKubeconfigAuthenticatesAgainstTheServingCert connects with client-go,
// through the written kubeconfig, to a TLS server that presents the
// apiserver certificate and requires a client certificate from the CA, as
// kube-apiserver does.
func TestKubeconfigAuthenticatesAgainstTheServingCert(t *testing.T) {
	dir := t.TempDir()
	if err := EnsureAll(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	serving, err := tls.LoadX509KeyPair(CertPath(dir, APIServer), KeyPath(dir, APIServer))
	if err != nil {
		t.Fatal(err)
	}
	clientCAs := x509.NewCertPool()
	clientCAs.AddCert(readCert(t, dir, CA))

	ts := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		peer := r.TLS.PeerCertificates[0].Subject
		io.WriteString(w, peer.CommonName+"/"+strings.Join(peer.Organization, ","))
	}))
	ts.TLS = &tls.Config{
		Certificates: []tls.Certificate{serving},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    clientCAs,
	}
	ts.StartTLS()
	t.Cleanup(ts.Close)

	kubeconfig := filepath.Join(dir, "kubeconfigs", "admin.kubeconfig")
	if err := WriteKubeconfig(kubeconfig, ts.URL, read(t, CertPath(dir, CA)), read(t, CertPath(dir, Admin)), read(t, KeyPath(dir, Admin)), "slipway-admin"); err != nil {
		t.Fatal(err)
	}
	assertMode(t, kubeconfig, 0o600)

	raw, err := clientcmd.LoadFromFile(kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	if raw.CurrentContext != "slipway-admin@"+KubeconfigCluster {
		t.Errorf("current context = %q", raw.CurrentContext)
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
	if err != nil {
		t.Fatal(err)
	}
	client, err := rest.HTTPClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Get(ts.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if got := string(body); got != "slipway-admin/system:masters" {
		t.Errorf("server saw client %q, want slipway-admin/system:masters", got)
	}
}

func TestWriteKubeconfigRefusesBadInput(t *testing.T) {
	dir := t.TempDir()
	if err := EnsureAll(dir, Options{}); err != nil {
		t.Fatal(err)
	}
	ca, cert, key := read(t, CertPath(dir, CA)), read(t, CertPath(dir, Admin)), read(t, KeyPath(dir, Admin))
	otherKey := read(t, KeyPath(dir, KWOK))
	for name, tc := range map[string]struct {
		server        string
		ca, cert, key []byte
		user          string
	}{
		"plain http":        {"http://127.0.0.1:6443", ca, cert, key, "admin"},
		"no host":           {"https://", ca, cert, key, "admin"},
		"no user":           {"https://127.0.0.1:6443", ca, cert, key, ""},
		"CA not PEM":        {"https://127.0.0.1:6443", []byte("nope"), cert, key, "admin"},
		"key of other cert": {"https://127.0.0.1:6443", ca, cert, otherKey, "admin"},
	} {
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "kubeconfig")
			if err := WriteKubeconfig(path, tc.server, tc.ca, tc.cert, tc.key, tc.user); err == nil {
				t.Fatal("succeeded, want an error")
			}
		})
	}
}
