package pki

import (
	"bytes"
	"crypto"
	"crypto/x509"
	"encoding/pem"
	"maps"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/client-go/util/keyutil"
)

var certNames = []string{CA, APIServer, APIServerKubeletClient, FrontProxyCA, FrontProxyClient, Admin, ControllerManager, Scheduler, KWOK, KubeProxy, Monitoring}

func readCert(t *testing.T, dir, name string) *x509.Certificate {
	t.Helper()
	data, err := os.ReadFile(CertPath(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatalf("%s: no PEM block", name)
	}
	cert, err := x509.ParseCertificate(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	return cert
}

// snapshot maps every regular file in dir to its content and modification time.
func snapshot(t *testing.T, dir string) map[string]string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]string, len(entries))
	for _, e := range entries {
		if e.IsDir() {
			continue
		}
		info, err := e.Info()
		if err != nil {
			t.Fatal(err)
		}
		data, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = info.ModTime().String() + "\n" + string(data)
	}
	return out
}

// changed lists the files whose content or time differ between snapshots.
func changed(before, after map[string]string) []string {
	var names []string
	for name := range maps.Keys(after) {
		if before[name] != after[name] {
			names = append(names, name)
		}
	}
	for name := range maps.Keys(before) {
		if _, ok := after[name]; !ok {
			names = append(names, name)
		}
	}
	slices.Sort(names)
	return names
}

func ensureAll(t *testing.T, dir string, opts Options) map[string]string {
	t.Helper()
	if err := EnsureAll(dir, opts); err != nil {
		t.Fatal(err)
	}
	return snapshot(t, dir)
}

func TestEnsureAllIssuesAVerifiableSet(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	ensureAll(t, dir, Options{ExtraSANs: []string{"192.168.10.5", "lab.example.com", "127.0.0.1"}, Nodes: []string{"worker-01"}})

	ca, frontProxyCA := readCert(t, dir, CA), readCert(t, dir, FrontProxyCA)
	for name, c := range map[string]*x509.Certificate{CA: ca, FrontProxyCA: frontProxyCA} {
		if !c.IsCA || c.CheckSignatureFrom(c) != nil {
			t.Errorf("%s is not a self-signed CA", name)
		}
	}

	for _, tc := range []struct {
		name  string
		root  *x509.Certificate
		usage x509.ExtKeyUsage
		cn    string
		org   []string
	}{
		{APIServer, ca, x509.ExtKeyUsageServerAuth, "kube-apiserver", nil},
		{APIServerKubeletClient, ca, x509.ExtKeyUsageClientAuth, "kube-apiserver-kubelet-client", []string{"system:masters"}},
		{FrontProxyClient, frontProxyCA, x509.ExtKeyUsageClientAuth, "front-proxy-client", nil},
		{Admin, ca, x509.ExtKeyUsageClientAuth, "slipway-admin", []string{"system:masters"}},
		{ControllerManager, ca, x509.ExtKeyUsageClientAuth, "system:kube-controller-manager", nil},
		{Scheduler, ca, x509.ExtKeyUsageClientAuth, "system:kube-scheduler", nil},
		{KWOK, ca, x509.ExtKeyUsageClientAuth, "kwok", []string{"system:masters"}},
		{KubeProxy, ca, x509.ExtKeyUsageClientAuth, "system:kube-proxy", nil},
		// The Node authorizer knows a kubelet only by this exact subject.
		{NodeClient("worker-01"), ca, x509.ExtKeyUsageClientAuth, "system:node:worker-01", []string{"system:nodes"}},
		{Monitoring, ca, x509.ExtKeyUsageClientAuth, MonitoringUser, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cert := readCert(t, dir, tc.name)
			roots := x509.NewCertPool()
			roots.AddCert(tc.root)
			if _, err := cert.Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{tc.usage}}); err != nil {
				t.Errorf("chain does not verify: %v", err)
			}
			if cert.Subject.CommonName != tc.cn || !slices.Equal(cert.Subject.Organization, tc.org) {
				t.Errorf("subject = %s, want CN=%s O=%v", cert.Subject, tc.cn, tc.org)
			}
			if cert.IsCA {
				t.Error("leaf certificate is a CA")
			}
			// The components read keys with client-go's keyutil; so does the test.
			key, err := keyutil.PrivateKeyFromFile(KeyPath(dir, tc.name))
			if err != nil {
				t.Fatal(err)
			}
			if !cert.PublicKey.(interface{ Equal(crypto.PublicKey) bool }).Equal(key.(crypto.Signer).Public()) {
				t.Error("key does not match certificate")
			}
		})
	}

	// The front-proxy client must not be accepted as a cluster client.
	roots := x509.NewCertPool()
	roots.AddCert(ca)
	if _, err := readCert(t, dir, FrontProxyClient).Verify(x509.VerifyOptions{Roots: roots, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}); err == nil {
		t.Error("front-proxy-client verifies against the cluster CA")
	}

	apiserver := readCert(t, dir, APIServer)
	for _, name := range []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc.cluster.local", "lab.example.com"} {
		if err := apiserver.VerifyHostname(name); err != nil {
			t.Errorf("apiserver certificate: %v", err)
		}
	}
	for _, ip := range []string{"127.0.0.1", "10.96.0.1", "192.168.10.5"} {
		if err := apiserver.VerifyHostname(ip); err != nil {
			t.Errorf("apiserver certificate: %v", err)
		}
	}
	if n := len(apiserver.IPAddresses); n != 3 {
		t.Errorf("apiserver certificate has %d IP SANs %v, want 3 without duplicates", n, apiserver.IPAddresses)
	}

	saKey, err := keyutil.PrivateKeyFromFile(filepath.Join(dir, ServiceAccountKey))
	if err != nil {
		t.Fatal(err)
	}
	saPubs, err := keyutil.PublicKeysFromFile(filepath.Join(dir, ServiceAccountPublicKey))
	if err != nil {
		t.Fatal(err)
	}
	if len(saPubs) != 1 || !saPubs[0].(interface{ Equal(crypto.PublicKey) bool }).Equal(saKey.(crypto.Signer).Public()) {
		t.Error("sa.pub does not hold the public half of sa.key")
	}

	info, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if perm := info.Mode().Perm(); perm != 0o700 {
		t.Errorf("directory mode %o, want 700", perm)
	}
	for _, name := range certNames {
		assertMode(t, KeyPath(dir, name), 0o600)
		assertMode(t, CertPath(dir, name), 0o644)
	}
	assertMode(t, filepath.Join(dir, ServiceAccountKey), 0o600)
	assertMode(t, filepath.Join(dir, ServiceAccountPublicKey), 0o644)
	// Every name, the node's client certificate and the service-account pair.
	if n := len(snapshot(t, dir)); n != 2*len(certNames)+2+2 {
		t.Errorf("directory holds %d files, want %d", n, 2*len(certNames)+2+2)
	}
}

func assertMode(t *testing.T, path string, want os.FileMode) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if got := info.Mode().Perm(); got != want {
		t.Errorf("%s: mode %o, want %o", filepath.Base(path), got, want)
	}
}

func TestEnsureAllIsIdempotent(t *testing.T) {
	dir := t.TempDir()
	opts := Options{ExtraSANs: []string{"192.168.10.5"}}
	before := ensureAll(t, dir, opts)
	after := ensureAll(t, dir, opts)
	if diff := changed(before, after); len(diff) != 0 {
		t.Errorf("second EnsureAll changed %v", diff)
	}
}

func TestEnsureAllReplacesOnlyWhatIsNoLongerValid(t *testing.T) {
	opts := Options{ExtraSANs: []string{"192.168.10.5"}}
	keyAndCert := func(name string) []string {
		return []string{filepath.Base(CertPath("", name)), filepath.Base(KeyPath("", name))}
	}
	leavesOfCA := slices.Concat(keyAndCert(CA), keyAndCert(APIServer), keyAndCert(APIServerKubeletClient),
		keyAndCert(Admin), keyAndCert(ControllerManager), keyAndCert(Scheduler), keyAndCert(KWOK), keyAndCert(KubeProxy), keyAndCert(Monitoring))
	slices.Sort(leavesOfCA)

	for _, tc := range []struct {
		name   string
		opts   Options
		damage func(t *testing.T, dir string)
		want   []string
	}{
		{
			name: "new SAN",
			opts: Options{ExtraSANs: []string{"192.168.10.5", "10.0.0.9"}},
			want: keyAndCert(APIServer),
		},
		{
			name: "other service CIDR",
			opts: Options{ExtraSANs: opts.ExtraSANs, ServiceCIDR: "10.100.0.0/16"},
			want: keyAndCert(APIServer),
		},
		{
			name:   "missing key",
			damage: func(t *testing.T, dir string) { remove(t, KeyPath(dir, Admin)) },
			want:   keyAndCert(Admin),
		},
		{
			name:   "corrupt certificate",
			damage: func(t *testing.T, dir string) { write(t, CertPath(dir, Scheduler), []byte("garbage")) },
			want:   keyAndCert(Scheduler),
		},
		{
			name: "key of another certificate",
			damage: func(t *testing.T, dir string) {
				write(t, KeyPath(dir, KWOK), read(t, KeyPath(dir, Admin)))
			},
			want: keyAndCert(KWOK),
		},
		{
			name: "about to expire",
			damage: func(t *testing.T, dir string) {
				replaceWithShortLived(t, dir, ControllerManager, 10*24*time.Hour)
			},
			want: keyAndCert(ControllerManager),
		},
		{
			name:   "new CA",
			damage: func(t *testing.T, dir string) { remove(t, CertPath(dir, CA)) },
			want:   leavesOfCA,
		},
		{
			name:   "missing sa.pub",
			damage: func(t *testing.T, dir string) { remove(t, filepath.Join(dir, ServiceAccountPublicKey)) },
			want:   []string{ServiceAccountPublicKey},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			before := ensureAll(t, dir, opts)
			if tc.damage != nil {
				tc.damage(t, dir)
			}
			if tc.opts.ExtraSANs == nil {
				tc.opts = opts
			}
			after := ensureAll(t, dir, tc.opts)
			slices.Sort(tc.want)
			if diff := changed(before, after); !slices.Equal(diff, tc.want) {
				t.Errorf("changed %v, want %v", diff, tc.want)
			}
		})
	}
}

func TestEnsureAllRepairsStaleServiceAccountPublicKey(t *testing.T) {
	dir := t.TempDir()
	ensureAll(t, dir, Options{})
	keyPath, pubPath := filepath.Join(dir, ServiceAccountKey), filepath.Join(dir, ServiceAccountPublicKey)
	key, pub := read(t, keyPath), read(t, pubPath)
	write(t, pubPath, []byte("stale"))
	ensureAll(t, dir, Options{})
	if !bytes.Equal(read(t, pubPath), pub) {
		t.Error("sa.pub not restored to the public half of the kept sa.key")
	}
	if !bytes.Equal(read(t, keyPath), key) {
		t.Error("sa.key replaced; every issued token would be invalidated")
	}
}

func TestEnsureAllTightensLooseKeyModes(t *testing.T) {
	dir := t.TempDir()
	before := ensureAll(t, dir, Options{})
	for _, p := range []string{KeyPath(dir, Admin), filepath.Join(dir, ServiceAccountKey)} {
		if err := os.Chmod(p, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	after := ensureAll(t, dir, Options{})
	assertMode(t, KeyPath(dir, Admin), 0o600)
	assertMode(t, filepath.Join(dir, ServiceAccountKey), 0o600)
	if diff := changed(before, after); len(diff) != 0 {
		t.Errorf("tightening modes changed content of %v", diff)
	}
}

func TestEnsureAllRefusesBadOptions(t *testing.T) {
	for name, opts := range map[string]Options{
		"CIDR does not parse": {ServiceCIDR: "10.96.0.0"},
		"CIDR has no room":    {ServiceCIDR: "10.96.0.1/32"},
		"empty SAN":           {ExtraSANs: []string{""}},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "pki")
			if err := EnsureAll(dir, opts); err == nil {
				t.Fatal("succeeded, want an error")
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("refused options left %s behind: %v", dir, err)
			}
		})
	}
}

func TestEnsureAllReportsUnreadableFiles(t *testing.T) {
	dir := t.TempDir()
	before := ensureAll(t, dir, Options{})
	// A directory in place of the CA key fails to read for root too,
	// unlike a file without permissions.
	remove(t, KeyPath(dir, CA))
	if err := os.Mkdir(KeyPath(dir, CA), 0o700); err != nil {
		t.Fatal(err)
	}
	err := EnsureAll(dir, Options{})
	if err == nil || !strings.Contains(err.Error(), KeyPath(dir, CA)) {
		t.Errorf("err = %v, want a read error naming %s", err, KeyPath(dir, CA))
	}
	after := snapshot(t, dir)
	if diff := changed(before, after); !slices.Equal(diff, []string{"ca.key"}) {
		t.Errorf("a failed EnsureAll changed %v", diff)
	}
}

// replaceWithShortLived swaps name's certificate for one, signed by the same
// CA, that expires after lifetime.
func replaceWithShortLived(t *testing.T, dir, name string, lifetime time.Duration) {
	t.Helper()
	all, err := specs(Options{})
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(all, func(s spec) bool { return s.name == name })
	ca, err := load(dir, all[i].issuer)
	if err != nil || ca == nil {
		t.Fatalf("load issuer of %s: %v", name, err)
	}
	now := time.Now()
	kp, err := issue(all[i], ca, now.Add(-time.Hour), now.Add(lifetime))
	if err != nil {
		t.Fatal(err)
	}
	if err := save(dir, name, kp); err != nil {
		t.Fatal(err)
	}
}

func read(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func write(t *testing.T, path string, data []byte) {
	t.Helper()
	if err := os.WriteFile(path, data, 0o600); err != nil {
		t.Fatal(err)
	}
}

func remove(t *testing.T, path string) {
	t.Helper()
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
}

func TestFirstServiceIP(t *testing.T) {
	for cidr, want := range map[string]string{
		"":              "10.96.0.1",
		"10.96.0.0/12":  "10.96.0.1",
		"10.100.7.0/16": "10.100.0.1",
		"fd00:10::/108": "fd00:10::1",
	} {
		got, err := firstServiceIP(cidr)
		if err != nil {
			t.Errorf("%q: %v", cidr, err)
			continue
		}
		if !got.Equal(net.ParseIP(want)) {
			t.Errorf("%q: got %s, want %s", cidr, got, want)
		}
	}
}
