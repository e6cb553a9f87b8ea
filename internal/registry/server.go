// Package registry runs a real OCI distribution registry for the lab and
// the tests: go-containerregistry's registry handler with blobs and
// manifests kept on disk, behind HTTP basic authentication, on loopback.
// In production Slipway pushes to the organisation's own registry; this
// one exists so that the lab and the tests speak the real protocol to a
// real server without Docker or a network.
package registry

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sync"
	"time"

	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
)

// shutdownTimeout is how long Close lets requests in flight finish before
// it drops their connections.
const shutdownTimeout = 5 * time.Second

// Config describes a registry server.
type Config struct {
	// Dir holds the registry's data: blobs under blobs/ and the manifest
	// journal. A server started again on the same Dir serves the same
	// content. Required.
	Dir string
	// Addr to listen on; 127.0.0.1 on a free port when empty.
	Addr string
	// Username and Password every request must present with HTTP basic
	// authentication. Both are required: the registry never runs open.
	Username string
	Password string
	// Logger receives one line per request; requests are not logged when
	// it is nil.
	Logger *log.Logger
}

// Server is an OCI registry listening on one address.
type Server struct {
	addr     string
	userHash [sha256.Size]byte
	passHash [sha256.Size]byte
	handler  http.Handler
	journal  *journal

	mu     sync.Mutex
	srv    *http.Server
	host   string
	stop   func() bool
	served chan error
	conns  *connTracker
}

// connTracker remembers connections that have not sent a request yet.
// http.Server.Shutdown waits up to five seconds for those, and clients
// such as go-containerregistry's keep spare ones open, so Close drops
// them: no request is in flight on them.
type connTracker struct {
	mu    sync.Mutex
	fresh map[net.Conn]struct{}
}

func (t *connTracker) track(c net.Conn, state http.ConnState) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if state == http.StateNew {
		t.fresh[c] = struct{}{}
	} else {
		delete(t.fresh, c)
	}
}

func (t *connTracker) closeFresh() {
	t.mu.Lock()
	defer t.mu.Unlock()
	for c := range t.fresh {
		_ = c.Close()
		delete(t.fresh, c)
	}
}

// New opens (or creates) the registry data under cfg.Dir and replays the
// manifests recorded there. It does not listen yet: see Start.
func New(cfg Config) (*Server, error) {
	if cfg.Username == "" || cfg.Password == "" {
		return nil, errors.New("registry: create server: username and password must not be empty")
	}
	if cfg.Dir == "" {
		return nil, errors.New("registry: create server: a data directory is required")
	}
	dir, err := filepath.Abs(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("registry: create server in %s: %w", cfg.Dir, err)
	}
	blobDir := filepath.Join(dir, "blobs")
	if err := os.MkdirAll(blobDir, 0o700); err != nil {
		return nil, fmt.Errorf("registry: create blob directory %s: %w", blobDir, err)
	}
	logger := cfg.Logger
	if logger == nil {
		logger = log.New(io.Discard, "", 0)
	}
	inner := ggcrregistry.New(
		ggcrregistry.WithBlobHandler(ggcrregistry.NewDiskBlobHandler(blobDir)),
		ggcrregistry.WithReferrersSupport(true),
		ggcrregistry.Logger(logger),
	)
	j, err := openJournal(dir, inner)
	if err != nil {
		return nil, err
	}
	addr := cfg.Addr
	if addr == "" {
		addr = "127.0.0.1:0"
	}
	s := &Server{
		addr:     addr,
		userHash: sha256.Sum256([]byte(cfg.Username)),
		passHash: sha256.Sum256([]byte(cfg.Password)),
		journal:  j,
	}
	s.handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, ok := r.BasicAuth()
		if !ok || !s.authorized(user, pass) {
			unauthorized(w)
			return
		}
		j.ServeHTTP(w, r)
	})
	return s, nil
}

// unauthorized answers as a distribution registry does, so that clients
// both know to retry with basic credentials (the challenge) and can show a
// useful message when those credentials are wrong (the error body).
func unauthorized(w http.ResponseWriter) {
	h := w.Header()
	h.Set("WWW-Authenticate", `Basic realm="slipway registry", charset="UTF-8"`)
	h.Set("Docker-Distribution-API-Version", "registry/2.0")
	h.Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusUnauthorized)
	_, _ = io.WriteString(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required: wrong or missing username or password"}]}`)
}

// authorized compares hashes so that the time taken depends neither on the
// content nor on the length of the expected credentials.
func (s *Server) authorized(user, pass string) bool {
	u := sha256.Sum256([]byte(user))
	p := sha256.Sum256([]byte(pass))
	return subtle.ConstantTimeCompare(u[:], s.userHash[:])&subtle.ConstantTimeCompare(p[:], s.passHash[:]) == 1
}

// Handler returns the authenticated registry handler, for mounting in
// another server.
func (s *Server) Handler() http.Handler { return s.handler }

// Start listens and serves until Close is called or ctx is done.
func (s *Server) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.srv != nil {
		return fmt.Errorf("registry: start on %s: already serving at %s", s.addr, s.host)
	}
	var lc net.ListenConfig
	ln, err := lc.Listen(ctx, "tcp", s.addr)
	if err != nil {
		return fmt.Errorf("registry: listen on %s: %w", s.addr, err)
	}
	conns := &connTracker{fresh: map[net.Conn]struct{}{}}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 30 * time.Second,
		IdleTimeout:       2 * time.Minute,
		ConnState:         conns.track,
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }()
	s.srv = srv
	s.served = served
	s.conns = conns
	s.host = ln.Addr().String()
	s.stop = context.AfterFunc(ctx, func() { _ = s.Close() })
	return nil
}

// Host returns host:port of the running server, the form image references
// use ("127.0.0.1:5000/team/app:tag"). It is empty when not serving.
func (s *Server) Host() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.host
}

// URL returns the base URL of the running server; empty when not serving.
func (s *Server) URL() string {
	if h := s.Host(); h != "" {
		return "http://" + h
	}
	return ""
}

// Close stops the server, letting requests in flight finish for a few
// seconds. Closing a server that is not running does nothing; a closed
// server can be started again.
func (s *Server) Close() error {
	s.mu.Lock()
	srv, served, stop, host, conns := s.srv, s.served, s.stop, s.host, s.conns
	s.srv, s.served, s.stop, s.host, s.conns = nil, nil, nil, "", nil
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	stop()
	ctx, cancel := context.WithTimeout(context.Background(), shutdownTimeout)
	defer cancel()
	shutdown := make(chan error, 1)
	go func() { shutdown <- srv.Shutdown(ctx) }()
	var shutdownErr error
	// Repeated because a connection accepted just before the listener
	// closed can still turn up.
	for waiting := true; waiting; {
		conns.closeFresh()
		select {
		case shutdownErr = <-shutdown:
			waiting = false
		case <-time.After(50 * time.Millisecond):
		}
	}
	if shutdownErr != nil {
		_ = srv.Close()
	}
	serveErr := <-served
	if errors.Is(serveErr, http.ErrServerClosed) {
		serveErr = nil
	}
	if err := errors.Join(shutdownErr, serveErr); err != nil {
		return fmt.Errorf("registry: stop server at %s: %w", host, err)
	}
	return nil
}
