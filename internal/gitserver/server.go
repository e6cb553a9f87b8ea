// Package gitserver serves git repositories over smart HTTP with basic
// authentication, using the system git's http-backend. The lab runs it for
// the dev and ops repositories, and tests use it to exercise real git
// traffic, including a server that stops answering (Staller).
package gitserver

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"sync"
	"time"
)

// requestTimeout bounds the I/O of one HTTP request. net/http/cgi does not
// tie the http-backend process to the request context; it kills the process
// when copying its output fails, so a read and write deadline on the
// connection is what ends a backend serving a client that stopped reading
// or sending.
const requestTimeout = 5 * time.Minute

// shutdownTimeout is how long Close lets requests in flight finish before
// it drops their connections.
const shutdownTimeout = 5 * time.Second

// Server serves the bare repositories under one root directory.
type Server struct {
	root     string
	userHash [sha256.Size]byte
	passHash [sha256.Size]byte
	handler  http.Handler
	backend  *cgi.Handler
	// readers are credentials that may fetch and not push (AddReader).
	readers sync.Map // [2][sha256.Size]byte{user, password} → struct{}

	// protected maps repositories created with CreateProtectedRepo to
	// their own credentials.
	protected sync.Map // name → credential

	mu      sync.Mutex
	srv     *http.Server
	baseURL string
	stop    func() bool
	served  chan error
}

// New returns a server for the repositories under root, creating root if
// needed. Every request must authenticate as username with password.
func New(root, username, password string) (*Server, error) {
	if username == "" || password == "" {
		return nil, errors.New("gitserver: create server: username and password must not be empty")
	}
	abs, err := filepath.Abs(root)
	if err != nil {
		return nil, fmt.Errorf("gitserver: create server for %s: %w", root, err)
	}
	if err := os.MkdirAll(abs, 0o700); err != nil {
		return nil, fmt.Errorf("gitserver: create repository root %s: %w", abs, err)
	}
	gitPath, err := exec.LookPath("git")
	if err != nil {
		return nil, fmt.Errorf("gitserver: create server for %s: find the git binary: %w", abs, err)
	}
	s := &Server{
		root:     abs,
		userHash: sha256.Sum256([]byte(username)),
		passHash: sha256.Sum256([]byte(password)),
		backend: &cgi.Handler{
			Path: gitPath,
			Args: []string{"http-backend"},
			Env: []string{
				"GIT_PROJECT_ROOT=" + abs,
				"GIT_HTTP_EXPORT_ALL=1",
				"GIT_CONFIG_NOSYSTEM=1",
				"GIT_CONFIG_GLOBAL=" + os.DevNull,
				// http-backend records REMOTE_USER in the reflog of pushed refs.
				"REMOTE_USER=" + username,
			},
		},
	}
	s.handler = http.HandlerFunc(s.serveHTTP)
	return s, nil
}

// Handler returns the authenticated git smart-HTTP handler, for mounting
// in another server or in httptest. Repository paths are relative to the
// root given to New.
func (s *Server) Handler() http.Handler { return s.handler }

func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	user, pass, ok := r.BasicAuth()
	want := credential{s.userHash, s.passHash}
	c, protected := s.protectedRepoOf(r.URL.Path)
	if protected {
		want = c
	}
	// Readers fetch from every repository but a protected one.
	reader := ok && !protected && s.isReader(user, pass)
	if !reader && (!ok || !want.matches(user, pass)) {
		w.Header().Set("WWW-Authenticate", `Basic realm="slipway git", charset="UTF-8"`)
		http.Error(w, "authentication required", http.StatusUnauthorized)
		return
	}
	if reader && pushes(r) {
		// As hosted git services answer a read-only token's push.
		http.Error(w, "this credential may fetch, not push", http.StatusForbidden)
		return
	}

	rc := http.NewResponseController(w)
	deadline := time.Now().Add(requestTimeout)
	// Writers that cannot take deadlines (httptest recorders) return
	// ErrNotSupported; the request is still served, only without the bound.
	_ = rc.SetReadDeadline(deadline)
	_ = rc.SetWriteDeadline(deadline)

	r = r.Clone(r.Context())
	// The backend has no use for the credentials; keep them out of its
	// environment.
	r.Header.Del("Authorization")

	if r.ContentLength < 0 {
		// git sends packs larger than http.postBuffer chunked, and
		// net/http/cgi refuses chunked bodies because CGI needs a
		// CONTENT_LENGTH: spool the body to learn its length.
		body, n, err := spool(r.Body)
		if err != nil {
			http.Error(w, "reading request body: "+err.Error(), http.StatusBadRequest)
			return
		}
		defer body.Close()
		r.Body, r.ContentLength, r.TransferEncoding = body, n, nil
	}
	s.backend.ServeHTTP(w, r)
}

// credential is a username and password, kept as hashes.
type credential struct{ user, pass [sha256.Size]byte }

// matches compares hashes so that the time taken depends neither on the
// content nor on the length of the expected credentials.
func (c credential) matches(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	return subtle.ConstantTimeCompare(u[:], c.user[:])&subtle.ConstantTimeCompare(p[:], c.pass[:]) == 1
}

// protectedRepoOf finds the protected repository a request path is in,
// after cleaning it the way a file system would resolve it.
func (s *Server) protectedRepoOf(urlPath string) (credential, bool) {
	clean := path.Clean("/" + urlPath)
	var found credential
	ok := false
	s.protected.Range(func(name, c any) bool {
		if p := "/" + name.(string); clean == p || strings.HasPrefix(clean, p+"/") {
			found, ok = c.(credential), true
			return false
		}
		return true
	})
	return found, ok
}

// CreateProtectedRepo creates a repository (as CreateRepo) that only its
// own credential reaches, the server's credential being refused, and that
// refuses forced pushes and deleted branches: whoever holds the
// credential can add commits, never remove one. Rewriting it takes access
// to the server's files. Slipway's audit checkpoints are kept in one.
func (s *Server) CreateProtectedRepo(ctx context.Context, name, username, password string) error {
	if username == "" || password == "" {
		return fmt.Errorf("gitserver: protected repository %s: username and password must not be empty", name)
	}
	// Refuse the server's credential before the repository exists.
	s.protected.Store(name, credential{sha256.Sum256([]byte(username)), sha256.Sum256([]byte(password))})
	if err := s.CreateRepo(ctx, name); err != nil {
		return err
	}
	dir, _ := s.repoDir(name)
	for _, key := range []string{"receive.denyNonFastForwards", "receive.denyDeletes"} {
		if _, err := runGit(ctx, s.root, gitEnv(), nil, "config", "--file", filepath.Join(dir, "config"), key, "true"); err != nil {
			return fmt.Errorf("gitserver: protect repository %s (%s): %w", name, key, err)
		}
	}
	return nil
}

// AddReader adds a credential that may fetch from every repository and
// push to none, as a read-only token or deploy key of a hosted git service.
func (s *Server) AddReader(username, password string) error {
	if username == "" || password == "" {
		return errors.New("gitserver: add reader: username and password must not be empty")
	}
	s.readers.Store([2][sha256.Size]byte{sha256.Sum256([]byte(username)), sha256.Sum256([]byte(password))}, struct{}{})
	return nil
}

func (s *Server) isReader(user, pass string) bool {
	_, ok := s.readers.Load([2][sha256.Size]byte{sha256.Sum256([]byte(user)), sha256.Sum256([]byte(pass))})
	return ok
}

// pushes reports whether a smart HTTP request is part of a push: the
// receive-pack advertisement or the push itself.
func pushes(r *http.Request) bool {
	return r.URL.Query().Get("service") == "git-receive-pack" || strings.HasSuffix(r.URL.Path, "/git-receive-pack")
}

// spooledBody is a request body copied to an unlinked-on-close temp file.
type spooledBody struct{ *os.File }

func (b spooledBody) Close() error {
	err := b.File.Close()
	if rmErr := os.Remove(b.Name()); rmErr != nil && err == nil {
		err = rmErr
	}
	return err
}

func spool(r io.Reader) (io.ReadCloser, int64, error) {
	f, err := os.CreateTemp("", "gitserver-body-*")
	if err != nil {
		return nil, 0, fmt.Errorf("create spool file: %w", err)
	}
	body := spooledBody{f}
	n, err := io.Copy(f, r)
	if err == nil {
		_, err = f.Seek(0, io.SeekStart)
	}
	if err != nil {
		body.Close()
		return nil, 0, fmt.Errorf("spool to %s: %w", f.Name(), err)
	}
	return body, n, nil
}

// CreateRepo creates the bare repository name (for example "ops.git" or
// "team/dev.git") under the root, with main as its default branch and push
// over HTTP enabled. Creating a repository that exists keeps its content,
// so the lab can start again on the data of an earlier run.
func (s *Server) CreateRepo(ctx context.Context, name string) error {
	dir, err := s.repoDir(name)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(dir), 0o700); err != nil {
		return fmt.Errorf("gitserver: create repository %s: %w", name, err)
	}
	env := gitEnv()
	if _, err := runGit(ctx, s.root, env, nil, "init", "--quiet", "--bare", "--initial-branch=main", dir); err != nil {
		return fmt.Errorf("gitserver: create repository %s in %s: %w", name, s.root, err)
	}
	// Without this, http-backend allows receive-pack only when REMOTE_USER
	// is set; opting in explicitly keeps push working however the backend
	// is reached.
	if _, err := runGit(ctx, s.root, env, nil, "config", "--file", filepath.Join(dir, "config"), "http.receivepack", "true"); err != nil {
		return fmt.Errorf("gitserver: enable push on repository %s: %w", name, err)
	}
	return nil
}

// repoDir maps a repository name to its directory, refusing names that
// would leave the root or hide in dot directories.
func (s *Server) repoDir(name string) (string, error) {
	if name == "" || path.IsAbs(name) || path.Clean(name) != name {
		return "", fmt.Errorf("gitserver: repository name %q must be a clean relative path", name)
	}
	for seg := range strings.SplitSeq(name, "/") {
		if strings.HasPrefix(seg, ".") {
			return "", fmt.Errorf("gitserver: repository name %q: path segment %q starts with a dot", name, seg)
		}
		if strings.IndexFunc(seg, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.')
		}) >= 0 {
			return "", fmt.Errorf("gitserver: repository name %q: only letters, digits, '-', '_' and '.' are allowed in a path segment", name)
		}
	}
	return filepath.Join(s.root, filepath.FromSlash(name)), nil
}

// Start listens on addr (127.0.0.1 on a free port when addr is empty) and
// serves until Close is called or ctx is done. It returns the base URL of
// the server, built from the address it listens on.
func (s *Server) Start(ctx context.Context, addr string) (string, error) {
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return "", fmt.Errorf("gitserver: start on %s: already serving at %s", addr, s.baseURL)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return "", fmt.Errorf("gitserver: listen on %s: %w", addr, err)
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()

	s.srv = srv
	s.served = served
	s.baseURL = "http://" + ln.Addr().String()
	s.stop = context.AfterFunc(ctx, func() { _ = s.Close() })
	return s.baseURL, nil
}

// RepoURL returns the clone URL of the repository name. It is empty until
// Start has returned.
func (s *Server) RepoURL(name string) string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.baseURL == "" {
		return ""
	}
	return s.baseURL + "/" + name
}

// Close stops the server started by Start, letting requests in flight
// finish for a few seconds. Closing a server that is not running does
// nothing.
func (s *Server) Close() error {
	s.mu.Lock()
	srv, served, stop, url := s.srv, s.served, s.stop, s.baseURL
	s.srv, s.served, s.stop, s.baseURL = nil, nil, nil, ""
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	stop()

	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	shutdownErr := srv.Shutdown(ctx)
	if shutdownErr != nil {
		// Dropping the connections makes the cgi handler kill the backends
		// still writing to them.
		_ = srv.Close()
	}
	serveErr := <-served
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	if err := errors.Join(shutdownErr, serveErr); err != nil {
		return fmt.Errorf("gitserver: stop server at %s: %w", url, err)
	}
	return nil
}
