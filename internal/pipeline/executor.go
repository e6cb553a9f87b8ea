package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"slipway.dev/slipway/internal/sandbox"
)

// Executor runs the commands developers define for a run (the test
// command), which are untrusted: anyone who can push to the source
// repository writes them. The local executor runs them in a container of
// their own on the server's host; the Kubernetes executor (KubeExecutor)
// in a Pod of their own that checks the source out onto a volume. A
// Command therefore carries everything the process may see and nothing
// of the server's own environment.
type Executor interface {
	// Name identifies the executor in logs and provenance ("local",
	// "kubernetes").
	Name() string
	// Isolation says how commands are kept from the server.
	Isolation() Isolation
	// Exec runs cmd to completion, or until ctx is done, when every
	// process it started is killed. A command that exits non-zero returns
	// an *ExitError.
	Exec(ctx context.Context, cmd Command) error
}

// Isolation is how an executor keeps a command from the server, recorded
// in every run's status.
type Isolation string

// Isolations.
const (
	// IsolationContainer is a container of its own on the server's host.
	IsolationContainer Isolation = "container"
	// IsolationPod is a Pod of its own in the cluster.
	IsolationPod Isolation = "pod"
	// IsolationNone is a child process of the server, as its user, which
	// the operator accepted with --allow-unisolated-tests.
	IsolationNone Isolation = "none"
)

// Command is one command of a step.
type Command struct {
	// Script runs with sh -c.
	Script string
	// Workspace is the checkout: HOME and the working directory's root.
	// The command may change it; the build reads a checkout of its own.
	Workspace string
	// Dir is the working directory, inside Workspace.
	Dir string
	// Env is the variables the developers' and operators' settings give
	// the command, secrets included; the executor adds only what running
	// at all needs (PATH, HOME, TMPDIR, build caches).
	Env []string
	// Output receives stdout and stderr, interleaved as written.
	Output io.Writer
	// Limits bound the command's resources.
	Limits Limits
	// Network lets the command reach the network: the Pipeline allowed
	// it and slipway.yaml asked for it.
	Network bool

	// The fields below serve the local executor.

	// Cache is a directory of the command's Pipeline alone that outlives
	// the run: the Go build and module caches go there. No other
	// Pipeline's command and no build of the server ever reads it.
	Cache string
	// Temp is an empty directory that becomes the command's /tmp.
	Temp string

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
	// Memory bounds memory: of the whole command in a container (its
	// memory cgroup or the container's memory limit), and in addition of
	// each process's address space where ulimits apply (RLIMIT_AS:
	// unisolated and in a Pod). Go programs reserve address space
	// generously: keep it at a few GiB for Go toolchains.
	Memory int64
	// OpenFiles is the number of file descriptors (RLIMIT_NOFILE).
	OpenFiles int64
	// CPU is the processor time all processes together may use per
	// second, in thousandths of a core: a container's CPU limit. An
	// unisolated command is not limited by it.
	CPU int64
	// Processes bounds the processes and threads of the command at any one
	// time (the pids cgroup); applied in a container.
	Processes int64
	// FileSize is the largest file a process may write (RLIMIT_FSIZE).
	FileSize int64
	// Disk bounds, in a container, what the workspace, /tmp and the
	// Pipeline's caches hold together; a command that goes over is
	// stopped. Before a command starts, caches over half of it are
	// emptied.
	Disk int64
}

// ExitError is a command that ran and exited non-zero, whichever executor
// ran it.
type ExitError = sandbox.ExitError

// waitDelay bounds how long Exec waits for output pipes after the process
// group is killed, for a process that escaped the group.
const waitDelay = 5 * time.Second

// Where the local executor's container sees a command's directories.
const (
	sandboxWorkspace = "/workspace"
	sandboxCache     = "/cache"
	sandboxTemp      = "/tmp"
)

// LocalOptions configure the local executor.
type LocalOptions struct {
	// Dir holds the containers' state; it should belong to the server.
	Dir string
	// AllowUnisolated lets commands run as plain child processes of the
	// server, as its user, when this host cannot isolate them: they can
	// then read whatever the server can. Every run's status says so.
	AllowUnisolated bool
	// ReadOnlyPaths are more host directories commands see read-only: a
	// toolchain outside /usr.
	ReadOnlyPaths []string
}

// LocalExecutor runs each command in a container of its own on the
// server's host (package sandbox): its own unprivileged user, its own
// mount, PID, IPC, UTS and network namespaces, a read-only root of
// programs and libraries, the workspace, /tmp and the Pipeline's caches
// as its only writable directories, the step's limits, and every process
// killed when the command ends. Where the host cannot isolate (no runc,
// not root, no namespaces), it refuses to run commands, unless the
// operator accepted the risk (LocalOptions.AllowUnisolated).
type LocalExecutor struct {
	sandbox         *sandbox.Runtime
	unisolated      error
	allowUnisolated bool
}

// NewLocalExecutor prepares the local executor: it proves the host can
// isolate commands by running one. It does not fail when the host cannot:
// Unisolated says why, and Exec refuses, or runs commands unisolated if
// o allows it.
func NewLocalExecutor(ctx context.Context, o LocalOptions) *LocalExecutor {
	e := &LocalExecutor{allowUnisolated: o.AllowUnisolated}
	if o.Dir == "" {
		e.unisolated = errors.New("no directory for the containers' state was given")
		return e
	}
	e.sandbox, e.unisolated = sandbox.New(ctx, sandbox.Options{Dir: o.Dir, ReadOnlyPaths: o.ReadOnlyPaths})
	return e
}

// Unisolated returns why commands cannot run isolated on this host, or nil.
func (e *LocalExecutor) Unisolated() error {
	if e.sandbox == nil && e.unisolated == nil {
		return errors.New("the executor was not prepared with NewLocalExecutor")
	}
	return e.unisolated
}

// Name implements Executor.
func (*LocalExecutor) Name() string { return "local" }

// Isolation implements Executor.
func (e *LocalExecutor) Isolation() Isolation {
	if e.sandbox != nil {
		return IsolationContainer
	}
	return IsolationNone
}

// Exec implements Executor.
func (e *LocalExecutor) Exec(ctx context.Context, c Command) error {
	if c.Dir == "" || c.Workspace == "" {
		return errors.New("local executor: the workspace and working directory are required")
	}
	rel, err := filepath.Rel(c.Workspace, c.Dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return fmt.Errorf("local executor: the working directory %s is not inside the workspace %s", c.Dir, c.Workspace)
	}
	switch {
	case e.sandbox != nil:
		return e.execIsolated(ctx, c, rel)
	case e.allowUnisolated:
		fmt.Fprintf(c.Output, "slipway: UNISOLATED: the command runs as the server's user with its view of the host (%v); the operator accepted this with --allow-unisolated-tests\n", e.Unisolated())
		return e.execUnisolated(ctx, c)
	}
	return fmt.Errorf("the local executor cannot isolate the command on this host (%v), so it does not run it: "+
		"run slipway server as root with runc installed, use --executor kubernetes, or accept the risk with --allow-unisolated-tests", e.Unisolated())
}

// execIsolated runs c in a container.
func (e *LocalExecutor) execIsolated(ctx context.Context, c Command, rel string) error {
	if c.Temp == "" || c.Cache == "" {
		return errors.New("local executor: a temporary and a cache directory are required")
	}
	// The checkout and the directories are the server's: hand them to the
	// user the command runs as.
	if err := chownTree(c.Workspace); err != nil {
		return fmt.Errorf("local executor: hand the workspace to the sandbox's user: %w", err)
	}
	for _, d := range []string{c.Temp, c.Cache} {
		if err := os.Chown(d, sandbox.UID, sandbox.GID); err != nil {
			return fmt.Errorf("local executor: hand %s to the sandbox's user: %w", d, err)
		}
	}
	if c.Limits.Disk > 0 {
		if used, _ := sandbox.Usage([]string{c.Cache}, c.Limits.Disk/2, 0); used > c.Limits.Disk/2 {
			fmt.Fprintf(c.Output, "slipway: the Pipeline's caches take more than half the step's disk: emptying them\n")
			if err := emptyDir(c.Cache); err != nil {
				return fmt.Errorf("local executor: empty the caches: %w", err)
			}
		}
	}
	env := []string{
		"HOME=" + sandboxWorkspace,
		"TMPDIR=" + sandboxTemp,
		"GOCACHE=" + sandboxCache + "/go-build",
		"GOMODCACHE=" + sandboxCache + "/go-mod",
		"GOPATH=" + sandboxCache + "/go",
		"XDG_CACHE_HOME=" + sandboxCache + "/xdg",
		// The toolchain is the one the container sees; a go.mod asking
		// for another cannot download it.
		"GOTOOLCHAIN=local",
		// Nothing may wait for a password nobody will type.
		"GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
	}
	if !c.Network {
		// Fail at once, with the go command saying why, rather than
		// after a timeout.
		env = append(env, "GOPROXY=off")
	}
	env = append(env, c.Env...)
	err := e.sandbox.Run(ctx, sandbox.Command{
		Args: []string{"/bin/sh", "-c", c.Script},
		Env:  env,
		Dir:  path.Join(sandboxWorkspace, filepath.ToSlash(rel)),
		Mounts: []sandbox.Mount{
			{Source: c.Workspace, Destination: sandboxWorkspace, Writable: true},
			{Source: c.Temp, Destination: sandboxTemp, Writable: true},
			{Source: c.Cache, Destination: sandboxCache, Writable: true},
		},
		Limits: sandbox.Limits{
			Memory: c.Limits.Memory, CPU: c.Limits.CPU, Processes: c.Limits.Processes, OpenFiles: c.Limits.OpenFiles,
			FileSize: c.Limits.FileSize, CPUTime: c.Limits.CPUTime, Disk: c.Limits.Disk,
		},
		Network: c.Network,
		Output:  c.Output,
	})
	var exit *sandbox.ExitError
	var limit *sandbox.LimitError
	switch {
	case errors.As(err, &exit):
		return exit
	case errors.As(err, &limit):
		return fmt.Errorf("was %w", limit)
	case err != nil && ctx.Err() != nil:
		return fmt.Errorf("its container was killed: %w", ctx.Err())
	}
	return err
}

// chownTree hands every file under dir to the sandbox's user, without
// following symbolic links.
func chownTree(dir string) error {
	return filepath.WalkDir(dir, func(p string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		return os.Lchown(p, sandbox.UID, sandbox.GID)
	})
}

// emptyDir removes what dir holds, keeping dir.
func emptyDir(dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	for _, e := range entries {
		if err := os.RemoveAll(filepath.Join(dir, e.Name())); err != nil {
			return err
		}
	}
	return nil
}

// execUnisolated runs c as a child process of the server, in a process
// group of its own so that a deadline kills what it started. Resource
// limits are applied with util-linux's prlimit, which sets them on itself
// before it executes the shell; where prlimit is missing the command runs
// without them and its log says so.
func (e *LocalExecutor) execUnisolated(ctx context.Context, c Command) error {
	tmp := c.Temp
	if tmp == "" {
		tmp = filepath.Join(c.Workspace, ".slipway-tmp")
		if err := os.MkdirAll(tmp, 0o700); err != nil {
			return fmt.Errorf("local executor: create temporary directory in %s: %w", c.Workspace, err)
		}
		defer os.RemoveAll(tmp)
	}
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
		"GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
	}
	if c.Cache != "" {
		env = append(env, "GOCACHE="+filepath.Join(c.Cache, "go-build"), "GOMODCACHE="+filepath.Join(c.Cache, "go-mod"),
			"GOPATH="+filepath.Join(c.Cache, "go"), "XDG_CACHE_HOME="+filepath.Join(c.Cache, "xdg"))
	}
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
	// its group; they must not outlive the step. (One that left the group
	// can: this is what isolation is for.)
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
	if l.FileSize > 0 {
		args = append(args, "--fsize="+strconv.FormatInt(l.FileSize, 10))
	}
	return args
}
