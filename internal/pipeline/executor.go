package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// Executor runs the commands developers define for a run (the test
// command) in the run's workspace. The local executor runs them as child
// processes of the server; the Kubernetes executor (KubeExecutor) runs
// them in a Pod of their own that checks the source out onto a volume,
// which is why a Command carries everything the process may see and
// nothing of the server's own environment.
type Executor interface {
	// Name identifies the executor in logs and provenance ("local",
	// "kubernetes").
	Name() string
	// Exec runs cmd to completion, or until ctx is done, when every
	// process it started is killed. A command that exits non-zero returns
	// an *ExitError.
	Exec(ctx context.Context, cmd Command) error
}

// Command is one command of a step.
type Command struct {
	// Script runs with sh -c.
	Script string
	// Workspace is the checkout: HOME and the working directory's root.
	Workspace string
	// Dir is the working directory, inside Workspace.
	Dir string
	// Env is the variables the developers' and operators' settings give
	// the command, secrets included; the executor adds only what running
	// at all needs (PATH, HOME, TMPDIR, build caches).
	Env []string
	// Output receives stdout and stderr, interleaved as written.
	Output io.Writer
	// Limits bound the resources of each process the command starts.
	Limits Limits

	// The fields below serve executors that run the command away from the
	// server's workspace, such as the Kubernetes executor, which check the
	// source out themselves; the local executor ignores them.

	// RunID names the run the command belongs to.
	RunID string
	// Source is the repository and commit checked out in Workspace, with
	// the credentials to fetch it.
	Source Source
	// Image is the container image to run the command in; empty for the
	// executor's default.
	Image string
}

// Limits bound a step's processes. Zero fields are not limited.
type Limits struct {
	// CPUTime is the CPU time each process may use (RLIMIT_CPU).
	CPUTime time.Duration
	// Memory is the address space each process may map, in bytes
	// (RLIMIT_AS). Go programs reserve address space generously: keep it
	// at a few GiB for Go toolchains.
	Memory int64
	// OpenFiles is the number of file descriptors (RLIMIT_NOFILE).
	OpenFiles int64
	// CPU is the processor time all processes together may use per
	// second, in thousandths of a core: a container's CPU limit. The
	// local executor does not apply it.
	CPU int64
}

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Code int
}

func (e *ExitError) Error() string { return "exited with status " + strconv.Itoa(e.Code) }

// waitDelay bounds how long Exec waits for output pipes after the process
// group is killed, for a process that escaped the group.
const waitDelay = 5 * time.Second

// LocalExecutor runs commands as child processes, each in its own process
// group so that a deadline kills everything the command started. Resource
// limits are applied with util-linux's prlimit, which sets them on itself
// before it executes the shell, so no process of the command ever runs
// unlimited; where prlimit is missing the command runs without limits and
// its log says so.
type LocalExecutor struct {
	// PassEnv names variables of the server's environment passed to
	// commands; by default only the Go build and module caches, resolved
	// with `go env` when not set, so tests reuse what earlier runs built.
	PassEnv []string

	once   sync.Once
	cached []string
}

// Name implements Executor.
func (*LocalExecutor) Name() string { return "local" }

// Exec implements Executor.
func (e *LocalExecutor) Exec(ctx context.Context, c Command) error {
	if c.Dir == "" || c.Workspace == "" {
		return errors.New("local executor: the workspace and working directory are required")
	}
	tmp := filepath.Join(c.Workspace, ".slipway-tmp")
	if err := os.MkdirAll(tmp, 0o700); err != nil {
		return fmt.Errorf("local executor: create temporary directory in %s: %w", c.Workspace, err)
	}
	defer os.RemoveAll(tmp)

	argv := []string{"sh", "-c", c.Script}
	if limit := c.Limits.prlimitArgs(); len(limit) > 0 {
		if p, err := exec.LookPath("prlimit"); err == nil {
			argv = append(append([]string{p}, limit...), append([]string{"--"}, argv...)...)
		} else {
			fmt.Fprintf(c.Output, "slipway: prlimit not found (%v): running without CPU and memory limits\n", err)
		}
	}
	env := []string{
		"PATH=" + os.Getenv("PATH"),
		"HOME=" + c.Workspace,
		"TMPDIR=" + tmp,
		// Nothing may wait for a password nobody will type.
		"GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
	}
	env = append(env, e.passedEnv(ctx)...)
	env = append(env, c.Env...)

	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = c.Dir
	cmd.Env = env
	cmd.Stdout = c.Output
	cmd.Stderr = c.Output
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = waitDelay
	err := cmd.Run()
	// A command that exits on its own may leave background processes in
	// its group; they must not outlive the step.
	if cmd.Process != nil {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("its process group was killed: %w", ctx.Err())
	}
	var exit *exec.ExitError
	if errors.As(err, &exit) {
		return &ExitError{Code: exit.ExitCode()}
	}
	if err != nil {
		return fmt.Errorf("run %s: %w", argv[0], err)
	}
	return nil
}

func (l Limits) prlimitArgs() []string {
	var args []string
	if l.CPUTime > 0 {
		args = append(args, "--cpu="+strconv.FormatInt(int64(l.CPUTime.Seconds()+0.5), 10))
	}
	if l.Memory > 0 {
		args = append(args, "--as="+strconv.FormatInt(l.Memory, 10))
	}
	if l.OpenFiles > 0 {
		args = append(args, "--nofile="+strconv.FormatInt(l.OpenFiles, 10))
	}
	return args
}

// passedEnv returns the server's values of PassEnv, once.
func (e *LocalExecutor) passedEnv(ctx context.Context) []string {
	e.once.Do(func() {
		names := e.PassEnv
		if names == nil {
			names = []string{"GOCACHE", "GOMODCACHE"}
		}
		var missing []string
		for _, k := range names {
			if v, ok := os.LookupEnv(k); ok {
				e.cached = append(e.cached, k+"="+v)
			} else {
				missing = append(missing, k)
			}
		}
		e.cached = append(e.cached, goEnv(ctx, missing)...)
	})
	return e.cached
}

// goEnv asks the go command for the Go variables among names that the
// environment does not set; without it they would default to the
// workspace's HOME, and every run would start with a cold cache.
func goEnv(ctx context.Context, names []string) []string {
	var goVars []string
	for _, k := range names {
		if k == "GOCACHE" || k == "GOMODCACHE" {
			goVars = append(goVars, k)
		}
	}
	if len(goVars) == 0 {
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", append([]string{"env", "-json"}, goVars...)...).Output()
	if err != nil {
		// Tests then run with caches in the workspace: slower, not wrong.
		return nil
	}
	var vals map[string]string
	if json.Unmarshal(out, &vals) != nil {
		return nil
	}
	var env []string
	for _, k := range goVars {
		if v := vals[k]; v != "" {
			env = append(env, k+"="+v)
		}
	}
	return env
}
