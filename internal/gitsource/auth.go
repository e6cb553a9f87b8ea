package gitsource

import (
	"crypto/sha256"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"strings"

	"github.com/go-git/go-git/v5/plumbing/transport"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	gitssh "github.com/go-git/go-git/v5/plumbing/transport/ssh"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/knownhosts"
)

// Credentials for a remote, read from the Secret an Application names.
// Its String method never reveals the secret parts.
type Credentials struct {
	Username   string
	Password   string
	Identity   []byte // SSH private key (PEM)
	KnownHosts []byte // SSH known_hosts content
}

// CredentialsFromSecretData reads the keys documented for spec.source.secretRef.
func CredentialsFromSecretData(data map[string][]byte) (*Credentials, error) {
	c := &Credentials{
		Username:   string(data["username"]),
		Password:   string(data["password"]),
		Identity:   data["identity"],
		KnownHosts: data["known_hosts"],
	}
	switch {
	case len(c.Identity) > 0 && len(c.KnownHosts) == 0:
		return nil, errors.New("the secret has an SSH identity but no known_hosts: refusing to connect without verifying the host key")
	case len(c.Identity) == 0 && c.Password == "" && c.Username == "":
		return nil, errors.New("the secret has neither username/password nor identity/known_hosts")
	}
	return c, nil
}

// fingerprint identifies the credentials without revealing them, to key
// the clone cache; anonymous access has its own.
func (c *Credentials) fingerprint() []byte {
	if c == nil {
		return []byte("anonymous")
	}
	h := sha256.New()
	for _, part := range [][]byte{[]byte(c.Username), []byte(c.Password), c.Identity, c.KnownHosts} {
		fmt.Fprintf(h, "%d:", len(part))
		h.Write(part)
	}
	return h.Sum(nil)
}

func (c *Credentials) String() string {
	if c == nil {
		return "anonymous"
	}
	if len(c.Identity) > 0 {
		return "ssh key"
	}
	return "basic auth for " + c.Username
}

// AuthMethod turns the credentials into go-git's form; nil credentials give
// a nil method (anonymous access).
func (c *Credentials) AuthMethod() (transport.AuthMethod, error) {
	if c == nil {
		return nil, nil
	}
	if len(c.Identity) == 0 {
		user := c.Username
		if user == "" {
			// Token-only secrets: most servers accept any non-empty user name.
			user = "git"
		}
		return &githttp.BasicAuth{Username: user, Password: c.Password}, nil
	}
	user := c.Username
	if user == "" {
		user = "git"
	}
	keys, err := gitssh.NewPublicKeys(user, c.Identity, c.Password)
	if err != nil {
		return nil, fmt.Errorf("reading the SSH identity: %w", err)
	}
	callback, err := hostKeyCallback(c.KnownHosts)
	if err != nil {
		return nil, err
	}
	keys.HostKeyCallback = callback
	return keys, nil
}

// hostKeyCallback builds a strict known_hosts check; the knownhosts package
// only reads files, so the content goes through a private temporary file.
func hostKeyCallback(knownHosts []byte) (ssh.HostKeyCallback, error) {
	f, err := os.CreateTemp("", "slipway-known-hosts-")
	if err != nil {
		return nil, fmt.Errorf("writing known_hosts: %w", err)
	}
	defer os.Remove(f.Name())
	if _, err := f.Write(knownHosts); err != nil {
		f.Close()
		return nil, fmt.Errorf("writing known_hosts: %w", err)
	}
	if err := f.Close(); err != nil {
		return nil, fmt.Errorf("writing known_hosts: %w", err)
	}
	cb, err := knownhosts.New(f.Name())
	if err != nil {
		return nil, fmt.Errorf("parsing known_hosts: %w", err)
	}
	return cb, nil
}

// AllowedURLsAnnotation, on a Secret of credentials, lists the URL prefixes
// the credentials may be sent to, separated by commas or new lines, e.g.
// "https://git.example.com/team-a/". Without it, anyone who may create an
// Application could send any credentials Secret of the namespace to a
// server of their choosing.
const AllowedURLsAnnotation = "slipway.dev/allowed-urls"

// CheckCredentialScope says whether the credentials of the Secret named
// secret, with these annotations, may be sent to url (a URL, or a
// registry's host/path). A Secret without the annotation is refused when
// required (the default), allowed otherwise.
func CheckCredentialScope(secret string, annotations map[string]string, url string, required bool) error {
	allowed, ok := annotations[AllowedURLsAnnotation]
	if !ok {
		if required {
			return fmt.Errorf("the credentials of Secret %s do not say where they may be sent: annotate it %s with the URL prefixes of its repositories", secret, AllowedURLsAnnotation)
		}
		return nil
	}
	target, err := normalizeURL(url)
	if err != nil {
		return fmt.Errorf("the credentials of Secret %s: %w", secret, err)
	}
	for _, prefix := range strings.FieldsFunc(allowed, func(r rune) bool { return r == ',' || r == '\n' || r == ' ' }) {
		p, err := normalizeURL(prefix)
		if err != nil {
			continue
		}
		t := target
		if strings.HasPrefix(p, anyScheme) {
			// A prefix without a scheme (a registry's host/path) matches
			// any scheme.
			_, rest, _ := strings.Cut(t, "://")
			t = anyScheme + rest
		}
		// A prefix matches whole path elements only: https://git.example.com
		// must not match https://git.example.com.evil.net or /team-ab.
		if t == p || strings.HasPrefix(t, strings.TrimSuffix(p, "/")+"/") {
			return nil
		}
	}
	return fmt.Errorf("the credentials of Secret %s may not be sent to %s: its %s annotation allows only %s", secret, RedactURL(url), AllowedURLsAnnotation, strings.Join(strings.Fields(strings.ReplaceAll(allowed, ",", " ")), ", "))
}

// anyScheme stands for the missing scheme of a host/path reference, such
// as an image repository.
const anyScheme = "any://"

// normalizeURL gives scheme://host[:port]/path in lower-case scheme and
// host, without user information, query or fragment; a reference without
// a scheme (registry.example.com/team/app) gets anyScheme.
func normalizeURL(raw string) (string, error) {
	raw = strings.TrimSpace(raw)
	if !strings.Contains(raw, "://") {
		raw = anyScheme + raw
	}
	u, err := neturl.Parse(raw)
	if err != nil || u.Scheme == "" || u.Host == "" {
		return "", fmt.Errorf("%q is not an absolute URL", RedactURL(raw))
	}
	return strings.ToLower(u.Scheme) + "://" + strings.ToLower(u.Host) + u.EscapedPath(), nil
}
