package pipeline

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var (
	probeOnce sync.Once
	probeDir  string // removed by TestMain
	probeBin  string
	probeErr  error
)

// probe builds testdata/probe once: what a hostile test command runs.
func probe(t *testing.T) string {
	t.Helper()
	probeOnce.Do(func() {
		var err error
		if probeDir, err = os.MkdirTemp("", "slipway-probe-"); err != nil {
			probeErr = err
			return
		}
		probeBin = filepath.Join(probeDir, "probe")
		cmd := exec.Command("go", "build", "-o", probeBin, "./testdata/probe")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			probeErr = fmt.Errorf("building the probe: %v\n%s", err, out)
		}
	})
	if probeErr != nil {
		t.Fatal(probeErr)
	}
	return probeBin
}

// hostileWorkspace is a workspace holding the probe, as a checkout would
// hold a developer's test binary.
func hostileWorkspace(t *testing.T) string {
	t.Helper()
	ws := t.TempDir()
	b, err := os.ReadFile(probe(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(ws, "probe"), b, 0o755); err != nil {
		t.Fatal(err)
	}
	return ws
}

// execScript runs script with the local executor in workspace ws, with
// a /tmp and a cache of its own.
func execScript(t *testing.T, ctx context.Context, ws, script string, limits Limits) (string, error) {
	t.Helper()
	var out bytes.Buffer
	err := localExecutor.Exec(ctx, Command{Script: script, Workspace: ws, Dir: ws, Output: &out, Limits: limits,
		Temp: t.TempDir(), Cache: t.TempDir()})
	t.Logf("%s\n%s", script, out.String())
	return out.String(), err
}

// TestTestStepCannotReachTheServer runs what a developer with push access
// would put in the test command against the local executor.
func TestTestStepCannotReachTheServer(t *testing.T) {
	const marker = "server-secret-5f0c2a9e"
	t.Setenv("SLIPWAY_WEBHOOK_SECRET", marker)
	secretFile := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(secretFile, []byte("token: "+marker+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()

	ws := hostileWorkspace(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	out, err := execScript(t, ctx, ws, strings.Join([]string{
		"./probe environ " + marker,
		"cat /proc/$PPID/environ 2>/dev/null | tr '\\0' '\\n' | grep SLIPWAY_",
		"./probe read " + secretFile,
		"./probe read /proc/" + strconv.Itoa(os.Getpid()) + "/environ",
		"./probe dial " + ln.Addr().String(),
		"./probe pids",
		"true",
	}, "\n"), Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for _, leak := range []string{marker, "FOUND", "READ", "CONNECTED"} {
		if strings.Contains(out, leak) {
			t.Errorf("the test command reached %q", leak)
		}
	}
}

// TestTestStepLeavesNoProcess starts a process in a session of its own,
// which a process-group kill misses; it must not outlive the step.
func TestTestStepLeavesNoProcess(t *testing.T) {
	ws := t.TempDir()
	const marker = "31415"
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if _, err := execScript(t, ctx, ws, "setsid sleep "+marker+" </dev/null >/dev/null 2>&1 &\nsleep 1\necho started", Limits{}); err != nil {
		t.Fatal(err)
	}
	// The kernel reaps the processes of an ended PID namespace at once;
	// give it a moment rather than racing it.
	deadline := time.Now().Add(5 * time.Second)
	for {
		left := hostProcesses("sleep\x00" + marker + "\x00")
		if len(left) == 0 {
			return
		}
		if time.Now().After(deadline) {
			for _, pid := range left {
				p, _ := os.FindProcess(pid)
				_ = p.Kill()
			}
			t.Fatalf("processes %v of the step outlived it", left)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// hostProcesses lists the host's processes whose command line holds cmd.
func hostProcesses(cmd string) []int {
	var pids []int
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		b, err := os.ReadFile(m)
		if err == nil && bytes.Contains(b, []byte(cmd)) {
			if pid, err := strconv.Atoi(filepath.Base(filepath.Dir(m))); err == nil {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// TestTestStepForksWithinItsLimit forks far more processes than the step
// may have; the count it reaches is bounded by the limit.
func TestTestStepForksWithinItsLimit(t *testing.T) {
	ws := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	// A shell that cannot fork stops; the count uses builtins alone.
	out, _ := execScript(t, ctx, ws, `(i=0; while [ $i -lt 300 ]; do sleep 20 & i=$((i+1)); done) 2>/dev/null
n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo "running $n"`, Limits{Processes: 50})
	var running int
	if i := strings.Index(out, "running"); i < 0 {
		t.Fatalf("no count in %q", out)
	} else if _, err := fmt.Sscanf(out[i:], "running %d", &running); err != nil {
		t.Fatalf("no count in %q: %v", out, err)
	}
	if running > 50 {
		t.Fatalf("the step ran %d processes, over its limit of 50", running)
	}
}

// TestTestStepDiskIsBounded writes more than the step's disk allows, in
// one file and in many.
func TestTestStepDiskIsBounded(t *testing.T) {
	ws := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	limits := Limits{FileSize: 8 << 20, Disk: 32 << 20}
	out, _ := execScript(t, ctx, ws, "head -c 20000000 /dev/zero > big; ls -l big", limits)
	if info, err := os.Stat(filepath.Join(ws, "big")); err == nil && info.Size() > limits.FileSize {
		t.Fatalf("the step wrote a file of %d bytes, over its limit of %d:\n%s", info.Size(), limits.FileSize, out)
	}
	_, err := execScript(t, ctx, ws, "for i in 1 2 3 4 5 6 7 8; do head -c 8000000 /dev/zero > f$i; done; sleep 30", limits)
	if err == nil || !strings.Contains(err.Error(), "disk") {
		t.Fatalf("a step writing 64 MB with 32 MB of disk ended with %v, want the disk limit", err)
	}
}

// hostAddress is an address of this machine other than loopback, which a
// command with network reaches as it would any server.
func hostAddress(t *testing.T) string {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.String()
		}
	}
	t.Fatal("this machine has no IPv4 address but loopback: the network tests need one")
	return ""
}

func serveText(t *testing.T, addr, text string) string {
	t.Helper()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { fmt.Fprintln(w, text) }), ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// TestTestStepNetwork gives a command the network: it reaches a server
// through the egress proxy, but not the host's loopback services; and
// without network it reaches neither.
func TestTestStepNetwork(t *testing.T) {
	outside := serveText(t, net.JoinHostPort(hostAddress(t), "0"), "from outside")
	loopback := serveText(t, "127.0.0.1:0", "from the host's loopback")
	// HTTPS goes through a CONNECT tunnel: the test server's certificate
	// is its own, so the handshake reaching it and failing verification
	// proves the tunnel.
	tlsServer := httptest.NewUnstartedServer(http.NotFoundHandler())
	tlsLn, err := net.Listen("tcp", net.JoinHostPort(hostAddress(t), "0"))
	if err != nil {
		t.Fatal(err)
	}
	tlsServer.Listener = tlsLn
	tlsServer.StartTLS()
	defer tlsServer.Close()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	script := "./probe get http://" + outside + "/\n./probe get http://" + loopback + "/\n./probe viaproxy http://" + loopback + "/\n./probe dial " + outside +
		"\n./probe get " + tlsServer.URL + "/\n./probe viaproxy https://" + loopback + "/\n"

	var out bytes.Buffer
	ws := hostileWorkspace(t)
	err = localExecutor.Exec(ctx, Command{Script: script, Workspace: ws, Dir: ws, Output: &out, Network: true, Temp: t.TempDir(), Cache: t.TempDir()})
	t.Logf("with network:\n%s", out.String())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "GOT http://"+outside+"/ 200 from outside") {
		t.Error("a command with network did not reach a server through the proxy")
	}
	if strings.Contains(out.String(), "from the host's loopback") || !strings.Contains(out.String(), "VIAPROXY http://"+loopback+"/ 403") {
		t.Error("the proxy did not refuse the host's loopback")
	}
	if strings.Contains(out.String(), "CONNECTED") {
		t.Error("a command connected past the proxy")
	}
	if !strings.Contains(out.String(), "get "+tlsServer.URL+"/: Get \""+tlsServer.URL+"/\": tls: failed to verify certificate") {
		t.Error("an HTTPS request did not reach the server through the proxy's tunnel")
	}
	if !strings.Contains(out.String(), "viaproxy https://"+loopback+"/: Get \"https://"+loopback+"/\": Forbidden") {
		t.Error("the proxy did not refuse a tunnel to the host's loopback")
	}

	out.Reset()
	ws = hostileWorkspace(t)
	if err := localExecutor.Exec(ctx, Command{Script: script, Workspace: ws, Dir: ws, Output: &out, Temp: t.TempDir(), Cache: t.TempDir()}); err != nil {
		t.Fatal(err)
	}
	t.Logf("without network:\n%s", out.String())
	if strings.Contains(out.String(), "GOT") || strings.Contains(out.String(), "CONNECTED") {
		t.Error("a command without network reached a server")
	}
}
