package pipeline

import (
	"bytes"
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestMaskingWriter(t *testing.T) {
	var out bytes.Buffer
	w := newMaskingWriter(&out, []string{"hunter2", "", "hunter2-long", "tok"})
	// Written a byte at a time, every secret arrives split.
	for _, b := range []byte("a hunter2 b hunter2-long c to tok hunte") {
		if _, err := w.Write([]byte{b}); err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, want := out.String(), "a *** b *** c to *** hunte"; got != want {
		t.Fatalf("masked output %q, want %q", got, want)
	}
}

// unisolatedExecutor is what a host without runc gives an operator who
// accepted the risk: runc is not on PATH; the shell, sleep, prlimit and
// the go command, which the tests run, are.
func unisolatedExecutor(t *testing.T, allow bool) *LocalExecutor {
	t.Helper()
	bin := t.TempDir()
	for _, tool := range []string{"sh", "sleep", "prlimit", "go"} {
		p, err := exec.LookPath(tool)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(p, filepath.Join(bin, tool)); err != nil {
			t.Fatal(err)
		}
	}
	t.Setenv("PATH", bin)
	e := NewLocalExecutor(t.Context(), LocalOptions{Dir: t.TempDir(), AllowUnisolated: allow})
	if e.Unisolated() == nil {
		t.Fatal("an executor without runc says it isolates")
	}
	return e
}

// TestLocalExecutorRefusesUnisolated runs a command where the host cannot
// isolate it: refused, unless the operator accepted the risk, and then
// said so in the log and the isolation.
func TestLocalExecutorRefusesUnisolated(t *testing.T) {
	ws := t.TempDir()
	var out bytes.Buffer
	e := unisolatedExecutor(t, false)
	err := e.Exec(t.Context(), Command{Script: "echo ran > ran", Workspace: ws, Dir: ws, Output: &out})
	if err == nil || !strings.Contains(err.Error(), "cannot isolate") || !strings.Contains(err.Error(), "--allow-unisolated-tests") {
		t.Fatalf("error %v, want a refusal naming the flag", err)
	}
	if _, err := os.Stat(filepath.Join(ws, "ran")); err == nil {
		t.Fatal("the refused command ran")
	}
	e = unisolatedExecutor(t, true)
	if err := e.Exec(t.Context(), Command{Script: "echo ran > ran", Workspace: ws, Dir: ws, Output: &out}); err != nil {
		t.Fatal(err)
	}
	if e.Isolation() != IsolationNone || !strings.Contains(out.String(), "UNISOLATED") {
		t.Fatalf("isolation %q, log %q: an unisolated command must say so", e.Isolation(), out.String())
	}
}

func TestLocalExecutorEnvironment(t *testing.T) {
	t.Setenv("SLIPWAY_SERVER_SECRET", "server-only")
	ws := t.TempDir()
	out, err := execScript(t, t.Context(), ws, "env | sort; id -u", Limits{})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		k, _, _ := strings.Cut(line, "=")
		names = append(names, k)
	}
	// sh itself adds PWD (and SHLVL in some shells); nothing else may appear.
	allowed := map[string]bool{"PATH": true, "HOME": true, "TMPDIR": true, "GIT_TERMINAL_PROMPT": true, "GIT_SSH_COMMAND": true,
		"GOCACHE": true, "GOMODCACHE": true, "GOPATH": true, "XDG_CACHE_HOME": true, "GOTOOLCHAIN": true, "GOPROXY": true,
		"PWD": true, "SHLVL": true, "OLDPWD": true, "_": true, "65532": true}
	for _, n := range names {
		if !allowed[n] {
			t.Fatalf("variable %s reached the command", n)
		}
	}
	for _, want := range []string{"HOME=/workspace\n", "GOCACHE=/cache/go-build\n", "GOPROXY=off\n", "65532\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("the command's environment lacks %q", strings.TrimSpace(want))
		}
	}
}

func TestLocalExecutorAppliesLimits(t *testing.T) {
	ws := t.TempDir()
	out, err := execScript(t, t.Context(), ws, "ulimit -t; ulimit -n; cat /sys/fs/cgroup/memory/memory.limit_in_bytes /sys/fs/cgroup/pids/pids.max 2>/dev/null",
		Limits{CPUTime: 90 * time.Second, Memory: 2 << 30, OpenFiles: 512, Processes: 300})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "90\n512\n") {
		t.Fatalf("limits seen by the command:\n%s", out)
	}
	// With a cgroup namespace the command sees its own cgroup at the root.
	if strings.Contains(out, "\n2147483648\n") != strings.Contains(out, "\n300\n") {
		t.Fatalf("the cgroup limits are partly missing:\n%s", out)
	}
}

// TestLocalExecutorKillsAtTheDeadline starts a background process that
// would outlive the shell; the deadline must end it too.
func TestLocalExecutorKillsAtTheDeadline(t *testing.T) {
	ws := t.TempDir()
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	_, err := execScript(t, ctx, ws, "sleep 61 & sleep 62", Limits{})
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "container was killed") {
		t.Fatalf("error %v, want the deadline", err)
	}
	for _, marker := range []string{"sleep\x0061\x00", "sleep\x0062\x00"} {
		if pids := hostProcesses(marker); len(pids) > 0 {
			t.Fatalf("processes %v survived the deadline", pids)
		}
	}
}

func TestLocalExecutorExitStatus(t *testing.T) {
	ws := t.TempDir()
	_, err := execScript(t, t.Context(), ws, "exit 7", Limits{})
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 7 {
		t.Fatalf("error %v, want exit status 7", err)
	}
}
