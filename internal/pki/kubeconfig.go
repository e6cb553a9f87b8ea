package pki

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"

	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeconfigCluster is the cluster name in the kubeconfigs WriteKubeconfig
// writes; it is distinct so that merging a lab kubeconfig into a user's
// own does not clash with a cluster called "kubernetes".
const KubeconfigCluster = "slipway-lab"

// WriteKubeconfig writes, with mode 0600, a kubeconfig that reaches
// serverURL trusting caPEM and authenticates as user with the client
// certificate certPEM and its key keyPEM, all embedded so that the file
// stands alone. The context is named user@slipway-lab and is current.
func WriteKubeconfig(path, serverURL string, caPEM, certPEM, keyPEM []byte, user string) error {
	if err := checkKubeconfigInputs(serverURL, caPEM, certPEM, keyPEM, user); err != nil {
		return fmt.Errorf("pki: write kubeconfig %s: %w", path, err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[KubeconfigCluster] = &clientcmdapi.Cluster{Server: serverURL, CertificateAuthorityData: caPEM}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	contextName := user + "@" + KubeconfigCluster
	cfg.Contexts[contextName] = &clientcmdapi.Context{Cluster: KubeconfigCluster, AuthInfo: user}
	cfg.CurrentContext = contextName
	if err := clientcmd.Validate(*cfg); err != nil {
		return fmt.Errorf("pki: write kubeconfig %s: %w", path, err)
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("pki: write kubeconfig %s: encode: %w", path, err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("pki: write kubeconfig %s: %w", path, err)
	}
	return writeFileAtomic(path, data, 0o600)
}

// checkKubeconfigInputs catches what would otherwise surface only when a
// client first uses the kubeconfig, far from the code that wrote it.
func checkKubeconfigInputs(serverURL string, caPEM, certPEM, keyPEM []byte, user string) error {
	if user == "" {
		return errors.New("user name is empty")
	}
	u, err := url.Parse(serverURL)
	if err != nil {
		return fmt.Errorf("parse server URL: %w", err)
	}
	if u.Scheme != "https" || u.Host == "" {
		return fmt.Errorf("server URL %q is not an https URL with a host; client certificates need TLS", serverURL)
	}
	if !x509.NewCertPool().AppendCertsFromPEM(caPEM) {
		return errors.New("CA bundle holds no PEM certificate")
	}
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("client certificate and key: %w", err)
	}
	return nil
}

// AddContext adds a user with a client certificate to the kubeconfig at
// path, as a context of its own on the same cluster; the current context
// stays as it is.
func AddContext(path string, certPEM, keyPEM []byte, user string) error {
	cfg, err := clientcmd.LoadFromFile(path)
	if err != nil {
		return fmt.Errorf("pki: add context for %s to %s: %w", user, path, err)
	}
	cfg.AuthInfos[user] = &clientcmdapi.AuthInfo{ClientCertificateData: certPEM, ClientKeyData: keyPEM}
	cfg.Contexts[user+"@"+KubeconfigCluster] = &clientcmdapi.Context{Cluster: KubeconfigCluster, AuthInfo: user}
	if err := clientcmd.Validate(*cfg); err != nil {
		return fmt.Errorf("pki: add context for %s to %s: %w", user, path, err)
	}
	data, err := clientcmd.Write(*cfg)
	if err != nil {
		return fmt.Errorf("pki: add context for %s to %s: encode: %w", user, path, err)
	}
	return writeFileAtomic(path, data, 0o600)
}
