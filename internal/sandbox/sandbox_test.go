package sandbox

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var rt *Runtime

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "slipway-sandbox-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	rt, err = New(ctx, Options{Dir: dir})
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "the sandbox tests need root and runc (make deps installs it):", err)
		os.RemoveAll(dir)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// workspace is a host directory the sandbox user may write, as the
// executor hands over a checkout.
func workspace(t *testing.T) string {
	t.Helper()
	d := t.TempDir()
	if err := os.Chown(d, UID, GID); err != nil {
		t.Fatal(err)
	}
	return d
}

func run(t *testing.T, ctx context.Context, script string, mounts []Mount, limits Limits) (string, error) {
	t.Helper()
	var out strings.Builder
	err := rt.Run(ctx, Command{Args: []string{"/bin/sh", "-c", script}, Dir: "/", Mounts: mounts, Limits: limits, Output: &out})
	t.Logf("$ %s\n%s(err %v)", script, out.String(), err)
	return out.String(), err
}

func TestRunIsUnprivileged(t *testing.T) {
	out, err := run(t, t.Context(), "id -u; id -g; grep -E '^(CapEff|CapBnd|NoNewPrivs|Seccomp):' /proc/self/status; hostname; ls /proc | grep -cE '^[0-9]+$'", nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"65532\n65532\n", "CapEff:\t0000000000000000", "CapBnd:\t0000000000000000", "NoNewPrivs:\t1", "Seccomp:\t2", "sandbox\n"} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q", want)
		}
	}
}

func TestRunSeesOnlyWhatIsMounted(t *testing.T) {
	secret := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(secret, []byte("secret-of-the-server"), 0o644); err != nil {
		t.Fatal(err)
	}
	ws := workspace(t)
	out, err := run(t, t.Context(), "cat "+secret+" 2>&1; ls /root /home 2>&1; cat /etc/shadow 2>&1; cat /etc/passwd; echo written > /workspace/out; touch /usr/x 2>&1; touch /x 2>&1; true",
		[]Mount{{Source: ws, Destination: "/workspace", Writable: true}}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "secret-of-the-server") || strings.Contains(out, "root:$") || !strings.Contains(out, "sandbox:x:65532") {
		t.Fatal("the command saw the host's files")
	}
	if b, err := os.ReadFile(filepath.Join(ws, "out")); err != nil || string(b) != "written\n" {
		t.Fatalf("the writable mount did not receive the command's file: %q %v", b, err)
	}
	if strings.Count(out, "Read-only file system") != 2 {
		t.Fatal("the root or /usr is writable")
	}
}

func TestRunExitStatus(t *testing.T) {
	_, err := run(t, t.Context(), "exit 3", nil, Limits{})
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 3 {
		t.Fatalf("error %v, want exit status 3", err)
	}
}

func TestRunNetworkIsLoopbackOnly(t *testing.T) {
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
	_, port, _ := net.SplitHostPort(ln.Addr().String())
	// Perl is part of Debian's essential set; it dials without a tool of
	// the test's own.
	out, err := run(t, t.Context(), `ip -o link 2>/dev/null | cut -d: -f2; perl -MIO::Socket::INET -e 'print IO::Socket::INET->new(PeerAddr=>"127.0.0.1:`+port+`", Timeout=>3) ? "CONNECTED\n" : "refused: $@\n"'`, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(out, "CONNECTED") {
		t.Fatal("the command reached a service on the host's loopback")
	}
}

func TestRunKillsEverythingAtTheEnd(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
	defer cancel()
	start := time.Now()
	_, err := run(t, ctx, "setsid sleep 27182 & sleep 60", nil, Limits{})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("error %v, want the deadline", err)
	}
	t.Logf("returned %s after the start", time.Since(start).Round(time.Millisecond))
	if pids := processes("sleep\x0027182"); len(pids) > 0 {
		t.Fatalf("processes %v outlived the container", pids)
	}
}

func processes(cmdline string) []string {
	var found []string
	matches, _ := filepath.Glob("/proc/[0-9]*/cmdline")
	for _, m := range matches {
		if b, err := os.ReadFile(m); err == nil && strings.Contains(string(b), cmdline) {
			found = append(found, m)
		}
	}
	return found
}

func TestRunLimits(t *testing.T) {
	t.Run("processes", func(t *testing.T) {
		// The shell counts with builtins alone: at the limit, it cannot fork.
		out, _ := run(t, t.Context(), "(for i in $(seq 100); do sleep 5 & done) 2>/dev/null; n=0; for p in /proc/[0-9]*; do n=$((n+1)); done; echo $n", nil, Limits{Processes: 20})
		var n int
		if _, err := fmt.Sscan(strings.TrimSpace(out[strings.LastIndex(strings.TrimSpace(out), "\n")+1:]), &n); err != nil || n > 20 {
			t.Fatalf("%d processes ran under a limit of 20 (%v)", n, err)
		}
	})
	t.Run("memory", func(t *testing.T) {
		_, err := run(t, t.Context(), "head -c 300000000 /dev/zero | tail -c 300000000 >/dev/null", nil, Limits{Memory: 64 << 20})
		var exit *ExitError
		if !errors.As(err, &exit) || !exit.OutOfMemory {
			t.Fatalf("holding 300 MB under a 64 MiB limit ended with %v, want the memory limit", err)
		}
	})
	t.Run("file size", func(t *testing.T) {
		ws := workspace(t)
		_, _ = run(t, t.Context(), "head -c 5000000 /dev/zero > /workspace/big", []Mount{{Source: ws, Destination: "/workspace", Writable: true}}, Limits{FileSize: 1 << 20})
		if info, err := os.Stat(filepath.Join(ws, "big")); err != nil || info.Size() > 1<<20 {
			t.Fatalf("a file grew past the 1 MiB limit: %v %v", info, err)
		}
	})
	t.Run("disk", func(t *testing.T) {
		ws := workspace(t)
		ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
		defer cancel()
		_, err := run(t, ctx, "for i in $(seq 8); do head -c 4000000 /dev/zero > /workspace/f$i; done; sleep 20", []Mount{{Source: ws, Destination: "/workspace", Writable: true}}, Limits{Disk: 16 << 20})
		var le *LimitError
		if !errors.As(err, &le) || !strings.Contains(le.Reason, "16.0 MiB of disk") {
			t.Fatalf("writing 32 MB with 16 MiB of disk ended with %v, want the disk limit", err)
		}
	})
}

func TestEgressRefusesTheHostsOwnAddresses(t *testing.T) {
	for _, addr := range []string{"127.0.0.1:80", "[::1]:80", "169.254.169.254:80", "0.0.0.0:80", "[::ffff:127.0.0.1]:80"} {
		if _, err := dialer.DialContext(t.Context(), "tcp", addr); !errors.Is(err, ErrRefusedAddress) {
			t.Errorf("dial %s: %v, want it refused", addr, err)
		}
	}
}

func TestStaleContainers(t *testing.T) {
	if stale(containerID()) {
		t.Fatal("this process's container counted as left behind")
	}
	if !stale("slipway-999999999-abcdef") {
		t.Fatal("a container of a process that is gone is not counted as left behind")
	}
	if stale("someone-else") {
		t.Fatal("a container not of Slipway's naming counted as ours")
	}
}

// BenchmarkRun measures what isolation adds to a step: a container that
// runs `sh -c true`, against the same command as a plain child process.
func BenchmarkRun(b *testing.B) {
	ws := b.TempDir()
	if err := os.Chown(ws, UID, GID); err != nil {
		b.Fatal(err)
	}
	mounts := []Mount{{Source: ws, Destination: "/workspace", Writable: true}}
	limits := Limits{Memory: 1 << 30, Processes: 256, CPU: 1000, Disk: 1 << 30, FileSize: 1 << 30, OpenFiles: 1024}
	b.Run("container", func(b *testing.B) {
		for b.Loop() {
			if err := rt.Run(b.Context(), Command{Args: []string{"/bin/sh", "-c", "true"}, Dir: "/workspace", Mounts: mounts, Limits: limits}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("container-with-network", func(b *testing.B) {
		for b.Loop() {
			if err := rt.Run(b.Context(), Command{Args: []string{"/bin/sh", "-c", "true"}, Dir: "/workspace", Mounts: mounts, Limits: limits, Network: true}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("child-process", func(b *testing.B) {
		for b.Loop() {
			if err := exec.CommandContext(b.Context(), "/bin/sh", "-c", "true").Run(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
