package edge

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
)

// nameServer answers every connection with its name and a newline.
type nameServer struct {
	name string
	ln   net.Listener
	wg   sync.WaitGroup
}

func startNameServer(t *testing.T, name, addr string) *nameServer {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	s := &nameServer{name: name, ln: ln}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			fmt.Fprintln(c, name)
			c.Close()
		}
	}()
	t.Cleanup(s.stop)
	return s
}

func (s *nameServer) stop() {
	s.ln.Close()
	s.wg.Wait()
}

func ask(addr string) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(2 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("reading from %s: %w", addr, err)
	}
	return strings.TrimSpace(line), nil
}

func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func healthy(b *Balancer, addr string) bool {
	for _, s := range b.Status().Backends {
		if s.Address == addr {
			return s.Healthy
		}
	}
	return false
}

// TestBalancerSpreadsAndFailsOver: connections go to both backends; when
// one stops, no client connection fails (the refused connection is
// retried on the other backend) and the health check takes it out of
// rotation; when it comes back, so does its share of connections.
func TestBalancerSpreadsAndFailsOver(t *testing.T) {
	a := startNameServer(t, "a", "127.0.0.1:0")
	bAddr := freeAddr(t)
	b := startNameServer(t, "b", bAddr)
	listen := freeAddr(t)
	lb, err := New(Config{Listen: listen, Backends: []string{a.ln.Addr().String(), bAddr}, Source: "127.0.0.1",
		Interval: 50 * time.Millisecond, Timeout: 200 * time.Millisecond, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- lb.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	waitFor(t, "the balancer listens", func() bool { _, err := ask(listen); return err == nil })

	count := func(n int) map[string]int {
		t.Helper()
		seen := map[string]int{}
		for i := 0; i < n; i++ {
			name, err := ask(listen)
			if err != nil {
				t.Fatalf("request %d through the balancer: %v", i, err)
			}
			seen[name]++
		}
		return seen
	}
	if seen := count(20); seen["a"] == 0 || seen["b"] == 0 {
		t.Fatalf("both backends healthy, answers %v", seen)
	}

	b.stop()
	// Before and after the health check notices, every client gets an answer.
	if seen := count(20); seen["a"] != 20 {
		t.Fatalf("with b stopped, answers %v", seen)
	}
	waitFor(t, "b is out of rotation", func() bool { return !healthy(lb, bAddr) })
	if s := lb.Status().Backends[1]; s.LastError == "" {
		t.Errorf("b out of rotation without an error: %+v", s)
	}

	startNameServer(t, "b", bAddr)
	waitFor(t, "b is back in rotation", func() bool { return healthy(lb, bAddr) })
	if seen := count(20); seen["b"] == 0 {
		t.Fatalf("b back in rotation but no answers from it: %v", seen)
	}
}

// TestBalancerWithoutHealthyBackends closes the client's connection rather
// than holding it.
func TestBalancerWithoutHealthyBackends(t *testing.T) {
	listen := freeAddr(t)
	lb, err := New(Config{Listen: listen, Backends: []string{freeAddr(t)}, Interval: 50 * time.Millisecond, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go func() { _ = lb.Run(ctx) }()
	waitFor(t, "the balancer listens", func() bool {
		c, err := net.Dial("tcp", listen)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	if name, err := ask(listen); err == nil {
		t.Fatalf("got %q with no backend listening", name)
	}
}

func TestNewRefusesBadConfig(t *testing.T) {
	for _, cfg := range []Config{
		{Backends: []string{"127.0.0.1:1"}},
		{Listen: "127.0.0.1:0"},
		{Listen: "127.0.0.1:0", Backends: []string{"no-port"}},
		{Listen: "127.0.0.1:0", Backends: []string{"127.0.0.1:1"}, Source: "not-an-ip"},
	} {
		if _, err := New(cfg); err == nil {
			t.Errorf("New(%+v) accepted", cfg)
		}
	}
}
