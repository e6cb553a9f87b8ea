// Package pki creates and maintains the certificates and keys of the lab's
// control plane: a cluster CA and the serving and client certificates
// signed by it, a front-proxy CA for the aggregation layer, and the
// service-account signing key pair. Everything is generated in Go and kept
// across runs: EnsureAll replaces only what is missing or no longer valid.
package pki

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"time"
)

// Names of the certificates EnsureAll maintains. Each is stored as
// <name>.crt and <name>.key in the directory given to EnsureAll.
const (
	CA                     = "ca"
	APIServer              = "apiserver"
	APIServerKubeletClient = "apiserver-kubelet-client"
	FrontProxyCA           = "front-proxy-ca"
	FrontProxyClient       = "front-proxy-client"
	Admin                  = "admin"
	ControllerManager      = "controller-manager"
	Scheduler              = "scheduler"
	KWOK                   = "kwok"
	KubeProxy              = "kube-proxy"
)

// NodeClient is the name of the kubelet client certificate of node, which
// EnsureAll maintains for every node in Options.Nodes: the Node authorizer
// and the NodeRestriction admission plugin know a kubelet by this subject.
func NodeClient(node string) string { return "node-" + node }

// Monitoring is the certificate of the lab's Prometheus, which reads the
// API server's and the kubelets' metrics as MonitoringUser.
const (
	Monitoring     = "monitoring"
	MonitoringUser = "slipway-lab:prometheus"
)

// File names of the service-account signing key pair, for the apiserver's
// --service-account-signing-key-file and --service-account-key-file and
// the controller-manager's --service-account-private-key-file.
const (
	ServiceAccountKey       = "sa.key"
	ServiceAccountPublicKey = "sa.pub"
)

// DefaultServiceCIDR is the service range assumed when Options leaves it
// empty; it matches kube-apiserver's --service-cluster-ip-range in the lab.
const DefaultServiceCIDR = "10.96.0.0/12"

const (
	caValidity   = 10 * 365 * 24 * time.Hour
	leafValidity = 365 * 24 * time.Hour
	// renewBefore is how close to expiry a certificate may come before
	// EnsureAll replaces it, so that a lab started today does not fail
	// next week.
	renewBefore = 30 * 24 * time.Hour
	// backdate tolerates clocks of other processes that run slightly
	// behind the one that issued the certificate.
	backdate = 5 * time.Minute
)

// Options shape the certificates that depend on the lab's configuration.
type Options struct {
	// ExtraSANs are IP addresses or DNS names added to the apiserver's
	// serving certificate, such as the host address it binds when pods
	// must reach it.
	ExtraSANs []string
	// ServiceCIDR is the apiserver's service range; its first address is
	// the ClusterIP of the kubernetes Service, which the serving
	// certificate must name. DefaultServiceCIDR when empty.
	ServiceCIDR string
	// People get client certificates of their own, stored as
	// PersonCert(name): the API server authenticates them by the common
	// name and their groups by the organizations.
	People []Person
	// Nodes are the real nodes whose kubelets need client certificates
	// (see NodeClient).
	Nodes []string
}

// Person is a user of the lab with a client certificate.
type Person struct {
	Name   string
	Groups []string
}

// PersonCert is the certificate name of a person.
func PersonCert(name string) string { return "person-" + name }

// CertPath returns the path of the certificate name in dir.
func CertPath(dir, name string) string { return filepath.Join(dir, name+".crt") }

// KeyPath returns the path of the private key of name in dir.
func KeyPath(dir, name string) string { return filepath.Join(dir, name+".key") }

// spec is what a certificate must be; EnsureAll keeps an existing one only
// if it still matches its spec.
type spec struct {
	name     string
	issuer   string // empty for a self-signed CA
	subject  pkix.Name
	usages   []x509.ExtKeyUsage
	dnsNames []string
	ips      []net.IP
}

func (s spec) isCA() bool { return s.issuer == "" }

func specs(opts Options) ([]spec, error) {
	dnsNames := []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local"}
	serviceIP, err := firstServiceIP(opts.ServiceCIDR)
	if err != nil {
		return nil, err
	}
	ips := []net.IP{net.IPv4(127, 0, 0, 1), serviceIP}
	for _, san := range opts.ExtraSANs {
		if addr, err := netip.ParseAddr(san); err == nil {
			ip := net.IP(addr.AsSlice())
			if !slices.ContainsFunc(ips, ip.Equal) {
				ips = append(ips, ip)
			}
			continue
		}
		if san == "" {
			return nil, errors.New("pki: extra apiserver SAN is empty")
		}
		if !slices.Contains(dnsNames, san) {
			dnsNames = append(dnsNames, san)
		}
	}

	server := []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	client := []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	masters := []string{"system:masters"}
	// CAs come before the certificates they sign.
	out := []spec{
		{name: CA, subject: pkix.Name{CommonName: "slipway-lab-ca"}},
		{name: FrontProxyCA, subject: pkix.Name{CommonName: "slipway-lab-front-proxy-ca"}},
		{name: APIServer, issuer: CA, subject: pkix.Name{CommonName: "kube-apiserver"}, usages: server, dnsNames: dnsNames, ips: ips},
		{name: APIServerKubeletClient, issuer: CA, subject: pkix.Name{CommonName: "kube-apiserver-kubelet-client", Organization: masters}, usages: client},
		// The CN must match the apiserver's --requestheader-allowed-names.
		{name: FrontProxyClient, issuer: FrontProxyCA, subject: pkix.Name{CommonName: "front-proxy-client"}, usages: client},
		{name: Admin, issuer: CA, subject: pkix.Name{CommonName: "slipway-admin", Organization: masters}, usages: client},
		{name: Monitoring, issuer: CA, subject: pkix.Name{CommonName: MonitoringUser}, usages: client},
		// The built-in RBAC roles of these components are bound to these
		// exact user names.
		{name: ControllerManager, issuer: CA, subject: pkix.Name{CommonName: "system:kube-controller-manager"}, usages: client},
		{name: Scheduler, issuer: CA, subject: pkix.Name{CommonName: "system:kube-scheduler"}, usages: client},
		{name: KWOK, issuer: CA, subject: pkix.Name{CommonName: "kwok", Organization: masters}, usages: client},
		{name: KubeProxy, issuer: CA, subject: pkix.Name{CommonName: "system:kube-proxy"}, usages: client},
	}
	for _, p := range opts.People {
		if p.Name == "" || slices.Contains(p.Groups, "system:masters") {
			return nil, fmt.Errorf("pki: person %q must have a name and must not be in system:masters", p.Name)
		}
		out = append(out, spec{name: PersonCert(p.Name), issuer: CA, subject: pkix.Name{CommonName: p.Name, Organization: p.Groups}, usages: client})
	}
	for _, node := range opts.Nodes {
		out = append(out, spec{name: NodeClient(node), issuer: CA,
			subject: pkix.Name{CommonName: "system:node:" + node, Organization: []string{"system:nodes"}}, usages: client})
	}
	return out, nil
}

func firstServiceIP(cidr string) (net.IP, error) {
	if cidr == "" {
		cidr = DefaultServiceCIDR
	}
	prefix, err := netip.ParsePrefix(cidr)
	if err != nil {
		return nil, fmt.Errorf("pki: parse service CIDR: %w", err)
	}
	first := prefix.Masked().Addr().Next()
	if !first.IsValid() || !prefix.Contains(first) {
		return nil, fmt.Errorf("pki: service CIDR %s has no address for the kubernetes Service", cidr)
	}
	return net.IP(first.AsSlice()), nil
}

// keyPair is a certificate with its private key.
type keyPair struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// EnsureAll makes dir (created 0700 if needed) hold every certificate and
// key the lab's control plane needs, plus the service-account key pair.
// Files that exist and are still valid for opts are left untouched; the
// rest are generated. A certificate is replaced when it is missing or
// unreadable, does not match its key, is within 30 days of expiry, has the
// wrong subject or usage, lacks a required SAN, or no longer chains to its
// CA (so replacing a CA replaces everything it signed). The
// service-account key is kept whenever it parses, because replacing it
// invalidates every token issued.
func EnsureAll(dir string, opts Options) error {
	all, err := specs(opts)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("pki: create directory %s: %w", dir, err)
	}
	now := time.Now()
	pairs := make(map[string]*keyPair, len(all))
	for _, s := range all {
		kp, err := ensure(dir, s, pairs[s.issuer], now)
		if err != nil {
			return err
		}
		pairs[s.name] = kp
	}
	return ensureServiceAccountKey(dir)
}

func ensure(dir string, s spec, issuer *keyPair, now time.Time) (*keyPair, error) {
	kp, err := load(dir, s.name)
	if err != nil {
		return nil, err
	}
	if kp != nil && s.accepts(kp, issuer, now) {
		return kp, nil
	}
	validity := leafValidity
	if s.isCA() {
		validity = caValidity
	}
	kp, err = issue(s, issuer, now.Add(-backdate), now.Add(validity))
	if err != nil {
		return nil, err
	}
	if err := save(dir, s.name, kp); err != nil {
		return nil, err
	}
	return kp, nil
}

// load reads the pair stored under name. A pair that is missing or does not
// parse comes back nil, to be generated again; only errors that
// regenerating cannot cure (permissions, I/O) are returned.
func load(dir, name string) (*keyPair, error) {
	certPEM, err := readIfExists(CertPath(dir, name))
	if err != nil || certPEM == nil {
		return nil, err
	}
	keyPEM, err := readIfExists(KeyPath(dir, name))
	if err != nil || keyPEM == nil {
		return nil, err
	}
	block, _ := pem.Decode(certPEM)
	if block == nil || block.Type != "CERTIFICATE" {
		return nil, nil
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		return nil, nil
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, nil
	}
	if err := tightenKeyMode(KeyPath(dir, name)); err != nil {
		return nil, err
	}
	return &keyPair{cert: cert, key: key}, nil
}

func readIfExists(path string) ([]byte, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("pki: read %s: %w", path, err)
	}
	return data, nil
}

// tightenKeyMode repairs a key file that others can read, since keeping
// the key is only safe if nobody else has it.
func tightenKeyMode(path string) error {
	info, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("pki: check mode of %s: %w", path, err)
	}
	if info.Mode().Perm()&0o077 == 0 {
		return nil
	}
	if err := os.Chmod(path, 0o600); err != nil {
		return fmt.Errorf("pki: restrict mode of %s to 0600: %w", path, err)
	}
	return nil
}

func parseKey(keyPEM []byte) (crypto.Signer, error) {
	block, _ := pem.Decode(keyPEM)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, errors.New("no PKCS #8 PEM block")
	}
	key, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, err
	}
	signer, ok := key.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key of type %T cannot sign", key)
	}
	return signer, nil
}

// accepts reports whether kp still satisfies s, signed by issuer, at now.
func (s spec) accepts(kp *keyPair, issuer *keyPair, now time.Time) bool {
	cert := kp.cert
	pub, ok := cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(kp.key.Public()) {
		return false
	}
	if cert.Subject.CommonName != s.subject.CommonName || !slices.Equal(cert.Subject.Organization, s.subject.Organization) {
		return false
	}
	if now.Before(cert.NotBefore) || now.Add(renewBefore).After(cert.NotAfter) {
		return false
	}
	if s.isCA() {
		return cert.IsCA && cert.CheckSignatureFrom(cert) == nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(issuer.cert)
	if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, CurrentTime: now, KeyUsages: s.usages}); err != nil {
		return false
	}
	for _, name := range s.dnsNames {
		if !slices.Contains(cert.DNSNames, name) {
			return false
		}
	}
	for _, ip := range s.ips {
		if !slices.ContainsFunc(cert.IPAddresses, ip.Equal) {
			return false
		}
	}
	return true
}

// issue creates a new ECDSA P-256 key and a certificate for it, signed by
// issuer or by itself for a CA. P-256 keys are what kubeadm offers besides
// RSA, every control-plane component accepts them, and they are generated
// in microseconds rather than the tens of milliseconds of RSA-2048.
func issue(s spec, issuer *keyPair, notBefore, notAfter time.Time) (*keyPair, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("pki: generate key for %s: %w", s.name, err)
	}
	tmpl := &x509.Certificate{
		Subject:               s.subject,
		NotBefore:             notBefore,
		NotAfter:              notAfter,
		KeyUsage:              x509.KeyUsageDigitalSignature,
		ExtKeyUsage:           s.usages,
		BasicConstraintsValid: true,
		DNSNames:              s.dnsNames,
		IPAddresses:           s.ips,
	}
	parent, signer := tmpl, crypto.Signer(key)
	if s.isCA() {
		tmpl.IsCA = true
		tmpl.KeyUsage |= x509.KeyUsageCertSign | x509.KeyUsageCRLSign
		// The CA signs leaves only (the controller-manager's CSR signer
		// included), never intermediates.
		tmpl.MaxPathLenZero = true
	} else {
		parent, signer = issuer.cert, issuer.key
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, key.Public(), signer)
	if err != nil {
		return nil, fmt.Errorf("pki: sign certificate %s: %w", s.name, err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("pki: parse certificate %s just signed: %w", s.name, err)
	}
	return &keyPair{cert: cert, key: key}, nil
}

// save writes the key before the certificate: if the second write fails,
// the pair no longer matches and the next EnsureAll replaces both.
func save(dir, name string, kp *keyPair) error {
	keyPEM, err := encodeKey(kp.key)
	if err != nil {
		return fmt.Errorf("pki: encode key %s: %w", name, err)
	}
	if err := writeFileAtomic(KeyPath(dir, name), keyPEM, 0o600); err != nil {
		return err
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: kp.cert.Raw})
	return writeFileAtomic(CertPath(dir, name), certPEM, 0o644)
}

func encodeKey(key crypto.Signer) ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

func encodePublicKey(key crypto.PublicKey) ([]byte, error) {
	der, err := x509.MarshalPKIXPublicKey(key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}), nil
}

// ensureServiceAccountKey keeps a parsable sa.key and rewrites sa.pub from
// it when the public half is missing or does not match.
func ensureServiceAccountKey(dir string) error {
	keyPath := filepath.Join(dir, ServiceAccountKey)
	pubPath := filepath.Join(dir, ServiceAccountPublicKey)

	var key crypto.Signer
	keyPEM, err := readIfExists(keyPath)
	if err != nil {
		return err
	}
	if keyPEM != nil {
		if key, err = parseKey(keyPEM); err == nil {
			if err := tightenKeyMode(keyPath); err != nil {
				return err
			}
		}
	}
	if key == nil {
		ec, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("pki: generate service-account key: %w", err)
		}
		key = ec
		if keyPEM, err = encodeKey(key); err != nil {
			return fmt.Errorf("pki: encode service-account key: %w", err)
		}
		if err := writeFileAtomic(keyPath, keyPEM, 0o600); err != nil {
			return err
		}
	}

	pubPEM, err := encodePublicKey(key.Public())
	if err != nil {
		return fmt.Errorf("pki: encode service-account public key: %w", err)
	}
	current, err := readIfExists(pubPath)
	if err != nil {
		return err
	}
	if bytes.Equal(current, pubPEM) {
		return nil
	}
	return writeFileAtomic(pubPath, pubPEM, 0o644)
}

// writeFileAtomic replaces path so that readers (a component starting
// while the lab renews a certificate) see the old or the new content,
// never a partial file.
func writeFileAtomic(path string, data []byte, perm fs.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if closeErr := f.Close(); err == nil {
		err = closeErr
	}
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		_ = os.Remove(tmp)
		return fmt.Errorf("pki: write %s: %w", path, err)
	}
	return nil
}
