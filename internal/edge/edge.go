// Package edge is a TCP load balancer of the kind a cloud puts in front of
// a cluster's ingress NodePorts: it listens on one address, spreads
// connections over the backends round-robin, and checks each backend with a
// TCP connect (an HTTP check of an ingress controller fails for lack of a
// matching host, which is why clouds check TCP), taking a backend out of
// rotation after Fall failed checks and back after Rise good ones.
// A connection whose backend refuses it is retried on the next healthy
// backend before the client notices.
package edge

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
)

// Config of a Balancer.
type Config struct {
	// Listen is the address clients connect to (host:port).
	Listen string
	// Backends are host:port addresses, e.g. every worker's ingress NodePort.
	Backends []string
	// Source is the address connections to backends come from; empty lets
	// the kernel choose.
	Source string
	// Interval between health checks of a backend, and the connect
	// timeout of each check (and of each proxied connection).
	Interval, Timeout time.Duration
	// Fall is how many failed checks in a row take a backend out of
	// rotation; Rise how many good ones bring it back.
	Fall, Rise int
	// IdleTimeout closes a proxied connection without traffic either way.
	IdleTimeout time.Duration
	// Status, when set, serves the backends' state as JSON at /status.
	Status string
	Log    logr.Logger
}

// BackendStatus is what /status reports of one backend.
type BackendStatus struct {
	Address string `json:"address"`
	Healthy bool   `json:"healthy"`
	// LastError is the last failed check's error, empty after a good one.
	LastError string `json:"lastError,omitempty"`
	// Since is when the backend last entered or left rotation.
	Since       time.Time `json:"since"`
	Connections int64     `json:"connections"`
}

// Status is the balancer's state.
type Status struct {
	Listen   string          `json:"listen"`
	Backends []BackendStatus `json:"backends"`
}

type backend struct {
	address string

	mu sync.Mutex
	// checked is false until the first check, which alone decides.
	checked   bool
	healthy   bool
	successes int
	failures  int
	lastErr   string
	since     time.Time

	connections atomic.Int64
}

// check records the result of one health check or connection attempt and
// reports whether the backend changed state.
func (b *backend) check(err error, fall, rise int) (changed, healthy bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.checked {
		b.checked, b.healthy, b.since = true, err == nil, time.Now()
		if err != nil {
			b.lastErr = err.Error()
		}
		return true, b.healthy
	}
	if err != nil {
		b.successes, b.lastErr = 0, err.Error()
		b.failures++
		if b.healthy && b.failures >= fall {
			b.healthy, b.since, changed = false, time.Now(), true
		}
	} else {
		b.failures, b.lastErr = 0, ""
		b.successes++
		if !b.healthy && b.successes >= rise {
			b.healthy, b.since, changed = true, time.Now(), true
		}
	}
	return changed, b.healthy
}

func (b *backend) status() BackendStatus {
	b.mu.Lock()
	defer b.mu.Unlock()
	return BackendStatus{Address: b.address, Healthy: b.healthy, LastError: b.lastErr, Since: b.since, Connections: b.connections.Load()}
}

func (b *backend) isHealthy() bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.healthy
}

// Balancer is a running edge load balancer.
type Balancer struct {
	cfg      Config
	backends []*backend
	next     atomic.Uint64
	dialer   net.Dialer
}

// New validates cfg and fills in defaults: checks every second with a
// one-second timeout, two failures out, two successes back, connections
// idle for five minutes closed.
func New(cfg Config) (*Balancer, error) {
	if cfg.Listen == "" || len(cfg.Backends) == 0 {
		return nil, errors.New("edge: a listen address and at least one backend are required")
	}
	if cfg.Interval <= 0 {
		cfg.Interval = time.Second
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = time.Second
	}
	if cfg.Fall <= 0 {
		cfg.Fall = 2
	}
	if cfg.Rise <= 0 {
		cfg.Rise = 2
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = 5 * time.Minute
	}
	b := &Balancer{cfg: cfg, dialer: net.Dialer{Timeout: cfg.Timeout}}
	if cfg.Source != "" {
		ip := net.ParseIP(cfg.Source)
		if ip == nil {
			return nil, fmt.Errorf("edge: source %q is not an IP address", cfg.Source)
		}
		b.dialer.LocalAddr = &net.TCPAddr{IP: ip}
	}
	for _, addr := range cfg.Backends {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			return nil, fmt.Errorf("edge: backend %q: %w", addr, err)
		}
		b.backends = append(b.backends, &backend{address: addr, since: time.Now()})
	}
	return b, nil
}

// Status reports every backend's state.
func (b *Balancer) Status() Status {
	s := Status{Listen: b.cfg.Listen}
	for _, be := range b.backends {
		s.Backends = append(s.Backends, be.status())
	}
	return s
}

// Run checks the backends once, then listens and serves until ctx ends.
func (b *Balancer) Run(ctx context.Context) error {
	b.checkAll(ctx)
	ln, err := net.Listen("tcp", b.cfg.Listen)
	if err != nil {
		return fmt.Errorf("edge: listening on %s: %w", b.cfg.Listen, err)
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if b.cfg.Status != "" {
		srv := &http.Server{Addr: b.cfg.Status, Handler: b.statusHandler(), ReadHeaderTimeout: 5 * time.Second}
		sl, err := net.Listen("tcp", b.cfg.Status)
		if err != nil {
			ln.Close()
			return fmt.Errorf("edge: status listener on %s: %w", b.cfg.Status, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = srv.Serve(sl)
		}()
		go func() {
			<-ctx.Done()
			_ = srv.Close()
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		b.healthLoop(ctx)
	}()
	go func() {
		<-ctx.Done()
		ln.Close()
	}()
	b.cfg.Log.Info("edge load balancer listening", "address", b.cfg.Listen, "backends", b.cfg.Backends)
	for {
		conn, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				continue
			}
			return fmt.Errorf("edge: accepting on %s: %w", b.cfg.Listen, err)
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			b.serve(ctx, conn)
		}()
	}
}

func (b *Balancer) statusHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(b.Status())
	})
	return mux
}

func (b *Balancer) healthLoop(ctx context.Context) {
	t := time.NewTicker(b.cfg.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			b.checkAll(ctx)
		}
	}
}

// checkAll connects to every backend at once and records the results.
func (b *Balancer) checkAll(ctx context.Context) {
	var wg sync.WaitGroup
	for _, be := range b.backends {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conn, err := b.dialer.DialContext(ctx, "tcp", be.address)
			if err == nil {
				conn.Close()
			}
			if ctx.Err() != nil {
				return
			}
			b.record(be, err)
		}()
	}
	wg.Wait()
}

func (b *Balancer) record(be *backend, err error) {
	if changed, healthy := be.check(err, b.cfg.Fall, b.cfg.Rise); changed {
		if healthy {
			b.cfg.Log.Info("backend back in rotation", "backend", be.address)
		} else {
			b.cfg.Log.Info("backend out of rotation", "backend", be.address, "error", err.Error())
		}
	}
}

// pick returns the healthy backends, starting with the next in rotation.
func (b *Balancer) pick() []*backend {
	n := len(b.backends)
	start := int(b.next.Add(1) % uint64(n))
	var out []*backend
	for i := 0; i < n; i++ {
		if be := b.backends[(start+i)%n]; be.isHealthy() {
			out = append(out, be)
		}
	}
	return out
}

func (b *Balancer) serve(ctx context.Context, client net.Conn) {
	defer client.Close()
	var upstream net.Conn
	var chosen *backend
	for _, be := range b.pick() {
		conn, err := b.dialer.DialContext(ctx, "tcp", be.address)
		if err != nil {
			// Counts like a failed check: a dead backend leaves rotation
			// as soon as clients find it, not only at the next check.
			b.record(be, err)
			continue
		}
		upstream, chosen = conn, be
		break
	}
	if upstream == nil {
		b.cfg.Log.Info("no healthy backend for a connection", "client", client.RemoteAddr().String())
		return
	}
	defer upstream.Close()
	chosen.connections.Add(1)
	done := make(chan struct{}, 2)
	go func() { b.pipe(upstream, client); done <- struct{}{} }()
	go func() { b.pipe(client, upstream); done <- struct{}{} }()
	select {
	case <-done:
	case <-ctx.Done():
		return
	}
	select {
	case <-done:
	case <-ctx.Done():
	}
}

// pipe copies src to dst until src ends or stays idle for IdleTimeout, then
// half-closes dst so the other side sees the end of the stream.
func (b *Balancer) pipe(dst, src net.Conn) {
	buf := make([]byte, 32*1024)
	for {
		_ = src.SetReadDeadline(time.Now().Add(b.cfg.IdleTimeout))
		n, err := src.Read(buf)
		if n > 0 {
			_ = dst.SetWriteDeadline(time.Now().Add(b.cfg.IdleTimeout))
			if _, werr := dst.Write(buf[:n]); werr != nil {
				break
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				// A reset or an idle timeout ends both directions.
				_ = dst.Close()
				return
			}
			break
		}
	}
	if tc, ok := dst.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
	}
}
