package sandbox

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/netip"
	"os"
	"runtime"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Deadlines of the egress proxy's connections to the outside.
const (
	egressDialTimeout   = 30 * time.Second
	egressHeaderTimeout = 30 * time.Second
)

// egress is a network namespace with only loopback, made for one
// container, and an HTTP proxy listening on that loopback but serving from
// the server: the command's only way out. The proxy dials from the
// server's network and refuses the host's own loopback and link-local
// addresses, so a command reaches neither the services that trust
// 127.0.0.1 (an etcd without authentication, say) nor a cloud's metadata
// endpoint.
type egress struct {
	ns     *os.File
	nsPath string
	ln     net.Listener
	srv    *http.Server

	mu      sync.Mutex
	tunnels map[net.Conn]struct{}
}

// startEgress creates the namespace on a thread of its own: unshare
// changes only the calling thread, which is never given back to the Go
// scheduler and ends with the goroutine. The listener's socket, created
// on that thread, belongs to the namespace from then on.
func startEgress() (*egress, error) {
	type result struct {
		ns  *os.File
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("sandbox: create a network namespace: %w", err)}
			return
		}
		if err := loopbackUp(); err != nil {
			ch <- result{err: fmt.Errorf("sandbox: bring up loopback in the new network namespace: %w", err)}
			return
		}
		ns, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			ch <- result{err: fmt.Errorf("sandbox: open the new network namespace: %w", err)}
			return
		}
		ln, err := net.Listen("tcp4", "127.0.0.1:0")
		if err != nil {
			ns.Close()
			ch <- result{err: fmt.Errorf("sandbox: listen in the new network namespace: %w", err)}
			return
		}
		ch <- result{ns: ns, ln: ln}
	}()
	r := <-ch
	if r.err != nil {
		return nil, r.err
	}
	e := &egress{ns: r.ns, ln: r.ln, tunnels: map[net.Conn]struct{}{},
		nsPath: "/proc/" + strconv.Itoa(os.Getpid()) + "/fd/" + strconv.Itoa(int(r.ns.Fd()))}
	e.srv = &http.Server{Handler: e, ReadHeaderTimeout: egressHeaderTimeout}
	go func() { _ = e.srv.Serve(e.ln) }()
	return e, nil
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

// env points the command's HTTP clients at the proxy.
func (e *egress) env() []string {
	u := "http://" + e.ln.Addr().String()
	return []string{"HTTP_PROXY=" + u, "HTTPS_PROXY=" + u, "http_proxy=" + u, "https_proxy=" + u,
		"NO_PROXY=localhost,127.0.0.1,::1", "no_proxy=localhost,127.0.0.1,::1"}
}

// Close stops the proxy, cuts its tunnels and lets the namespace go.
func (e *egress) Close() {
	_ = e.srv.Close()
	e.mu.Lock()
	for c := range e.tunnels {
		_ = c.Close()
	}
	e.tunnels = nil
	e.mu.Unlock()
	_ = e.ns.Close()
}

// ErrRefusedAddress is a destination the proxy does not connect to.
var ErrRefusedAddress = errors.New("refused: the host's own loopback and link-local addresses are out of the sandbox's reach")

// dialer connects to the outside, refusing the host's own addresses after
// the name is resolved, at the moment of connecting.
var dialer = &net.Dialer{
	Timeout: egressDialTimeout,
	Control: func(_, address string, _ syscall.RawConn) error {
		ap, err := netip.ParseAddrPort(address)
		if err != nil {
			return fmt.Errorf("%s: %w", address, err)
		}
		if ip := ap.Addr().Unmap(); ip.IsLoopback() || ip.IsLinkLocalUnicast() || ip.IsLinkLocalMulticast() ||
			ip.IsUnspecified() || ip.IsMulticast() || ip.IsInterfaceLocalMulticast() {
			return fmt.Errorf("%s: %w", address, ErrRefusedAddress)
		}
		return nil
	},
}

var forward = &httputil.ReverseProxy{
	Rewrite: func(r *httputil.ProxyRequest) {
		r.Out.URL = r.In.URL
		r.Out.Host = r.In.Host
	},
	Transport: &http.Transport{
		Proxy:                 nil,
		DialContext:           dialer.DialContext,
		ResponseHeaderTimeout: egressHeaderTimeout,
		IdleConnTimeout:       30 * time.Second,
	},
	ErrorHandler: func(w http.ResponseWriter, _ *http.Request, err error) {
		refuse(w, err)
	},
}

func (e *egress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	switch {
	case r.Method == http.MethodConnect:
		e.tunnel(w, r)
	case r.URL.IsAbs() && (r.URL.Scheme == "http" || r.URL.Scheme == "https"):
		forward.ServeHTTP(w, r)
	default:
		http.Error(w, "slipway egress proxy: send absolute http URLs or CONNECT", http.StatusBadRequest)
	}
}

// refuse answers 403 for an address the proxy refuses, 502 for one it
// could not reach.
func refuse(w http.ResponseWriter, err error) {
	code := http.StatusBadGateway
	if errors.Is(err, ErrRefusedAddress) {
		code = http.StatusForbidden
	}
	http.Error(w, "slipway egress proxy: "+err.Error(), code)
}

// tunnel serves CONNECT: the command speaks TLS end to end through it.
func (e *egress) tunnel(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := context.WithTimeout(r.Context(), egressDialTimeout)
	defer cancel()
	out, err := dialer.DialContext(ctx, "tcp", r.Host)
	if err != nil {
		refuse(w, err)
		return
	}
	hj, ok := w.(http.Hijacker)
	if !ok {
		out.Close()
		http.Error(w, "slipway egress proxy: cannot tunnel", http.StatusInternalServerError)
		return
	}
	in, buf, err := hj.Hijack()
	if err != nil {
		out.Close()
		return
	}
	if !e.track(in, out) {
		return
	}
	defer e.untrack(in, out)
	if _, err := in.Write([]byte("HTTP/1.1 200 Connection established\r\n\r\n")); err != nil {
		return
	}
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(out, buf); closeWrite(out); done <- struct{}{} }()
	go func() { _, _ = io.Copy(in, out); closeWrite(in); done <- struct{}{} }()
	<-done
	<-done
}

// track records a tunnel's connections so that Close can cut them; it
// refuses, closing them, once the proxy is closed.
func (e *egress) track(conns ...net.Conn) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.tunnels == nil {
		for _, c := range conns {
			c.Close()
		}
		return false
	}
	for _, c := range conns {
		e.tunnels[c] = struct{}{}
	}
	return true
}

func (e *egress) untrack(conns ...net.Conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, c := range conns {
		c.Close()
		if e.tunnels != nil {
			delete(e.tunnels, c)
		}
	}
}

func closeWrite(c net.Conn) {
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.CloseWrite()
		return
	}
	_ = c.Close()
}
