package pipeline

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
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

func TestLocalExecutorScrubsEnvironment(t *testing.T) {
	t.Setenv("SLIPWAY_SERVER_SECRET", "server-only")
	ws := t.TempDir()
	var out bytes.Buffer
	err := (&LocalExecutor{PassEnv: []string{}}).Exec(t.Context(), Command{
		Script: "env | sort", Workspace: ws, Dir: ws, Env: []string{"GIVEN=1"}, Output: &out,
	})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, line := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		k, _, _ := strings.Cut(line, "=")
		names = append(names, k)
	}
	// sh itself adds PWD (and SHLVL in some shells); nothing else may appear.
	allowed := map[string]bool{"PATH": true, "HOME": true, "TMPDIR": true, "GIT_TERMINAL_PROMPT": true, "GIT_SSH_COMMAND": true, "GIVEN": true, "PWD": true, "SHLVL": true, "OLDPWD": true, "_": true}
	for _, n := range names {
		if !allowed[n] {
			t.Fatalf("variable %s reached the command; environment:\n%s", n, out.String())
		}
	}
	if !strings.Contains(out.String(), "HOME="+ws+"\n") {
		t.Fatalf("HOME is not the workspace:\n%s", out.String())
	}
}

func TestLocalExecutorAppliesLimits(t *testing.T) {
	ws := t.TempDir()
	var out bytes.Buffer
	err := (&LocalExecutor{PassEnv: []string{}}).Exec(t.Context(), Command{
		Script: "ulimit -t; ulimit -v; ulimit -n", Workspace: ws, Dir: ws, Output: &out,
		Limits: Limits{CPUTime: 90 * time.Second, Memory: 2 << 30, OpenFiles: 512},
	})
	if err != nil {
		t.Fatal(err, out.String())
	}
	// ulimit -v reports KiB.
	want := "90\n" + strconv.Itoa(2<<30>>10) + "\n512\n"
	if out.String() != want {
		t.Fatalf("limits seen by the command:\n%s\nwant:\n%s", out.String(), want)
	}
}

// TestLocalExecutorKillsProcessGroup starts a background process that
// would outlive the shell; the deadline must end it too.
func TestLocalExecutorKillsProcessGroup(t *testing.T) {
	ws := t.TempDir()
	pidFile := filepath.Join(ws, "child.pid")
	ctx, cancel := context.WithTimeout(t.Context(), time.Second)
	defer cancel()
	start := time.Now()
	err := (&LocalExecutor{PassEnv: []string{}}).Exec(ctx, Command{
		Script: "sleep 60 & echo $! > child.pid; wait", Workspace: ws, Dir: ws, Output: &bytes.Buffer{},
	})
	if took := time.Since(start); took > 4*time.Second {
		t.Fatalf("Exec returned %s after a 1s deadline", took)
	}
	if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "process group was killed") {
		t.Fatalf("error %v, want the deadline", err)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for alive(pid) {
		if time.Now().After(deadline) {
			t.Fatalf("background process %d survived the deadline", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestLocalExecutorExitStatus(t *testing.T) {
	ws := t.TempDir()
	err := (&LocalExecutor{PassEnv: []string{}}).Exec(t.Context(), Command{Script: "exit 7", Workspace: ws, Dir: ws, Output: &bytes.Buffer{}})
	var exit *ExitError
	if !errors.As(err, &exit) || exit.Code != 7 {
		t.Fatalf("error %v, want exit status 7", err)
	}
}

// alive reports whether pid runs; a killed process nobody has reaped yet
// (a zombie) does not.
func alive(pid int) bool {
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return syscall.Kill(pid, 0) == nil
	}
	_, after, _ := strings.Cut(string(stat), ") ")
	return !strings.HasPrefix(after, "Z")
}
