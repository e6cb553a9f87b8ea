// Package sandbox runs untrusted commands, a pipeline's test command, in a
// container of their own on the server's host, with runc: an unprivileged
// user without capabilities or new privileges; new mount, PID, IPC, UTS,
// cgroup and network namespaces; a read-only root that holds only what a
// toolchain needs (/usr, the Go toolchain, certificates and a generated
// /etc) and the directories the caller mounts; cgroup limits on memory,
// processes and CPU; limits on file size, open files and CPU time; a bound
// on the disk the writable directories take; a seccomp filter against
// the kernel interfaces a test has no use for (new user namespaces, keys,
// BPF, io_uring); and a deadline. When the command's first process ends,
// the PID namespace ends with it: nothing it started outlives it.
//
// A command has only a loopback network unless it asks for network; then
// it reaches HTTP and HTTPS servers through a proxy that runs in the
// server and refuses the host's own loopback and link-local addresses.
package sandbox

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// UID and GID are the user and group the command runs as: "nonroot" of
// distroless images, a number no host account should own.
const (
	UID = 65532
	GID = 65532
)

// runcTimeout bounds each runc command other than run itself.
const runcTimeout = 15 * time.Second

// waitDelay bounds how long Run waits for the command's output once runc
// has returned.
const waitDelay = 5 * time.Second

// Options configure a Runtime.
type Options struct {
	// Dir holds runc's state, the read-only root filesystem every
	// container shares, and a bundle directory per container. It should
	// belong to the server alone.
	Dir string
	// Runc is the runc executable; looked up on PATH when empty.
	Runc string
	// ReadOnlyPaths are more host directories commands see, read-only and
	// at the same path: a toolchain outside /usr, say.
	ReadOnlyPaths []string
	// MinFreeDisk is the free space the filesystem of a command's
	// writable directories keeps: a command that brings it lower is
	// stopped. DefaultMinFreeDisk when zero.
	MinFreeDisk int64
}

// DefaultMinFreeDisk is the free space a command may not eat into.
const DefaultMinFreeDisk = 1 << 30

// Runtime runs commands in containers.
type Runtime struct {
	runc, state, bundles, rootfs string
	readOnly                     []string
	goroot                       string
	timeout                      string
	minFree                      int64
}

// Mount is a host directory a command sees.
type Mount struct {
	// Source is the host directory.
	Source string
	// Destination is where the command sees it.
	Destination string
	// Writable mounts count against Limits.Disk; others are read-only.
	Writable bool
}

// Limits bound a command. Zero fields are not limited.
type Limits struct {
	// Memory is the memory of every process together, in bytes (the
	// memory cgroup, swap included where the kernel accounts it).
	Memory int64
	// CPU is the processor time all processes together may use per
	// second, in thousandths of a core.
	CPU int64
	// Processes bounds the processes and threads at any one time.
	Processes int64
	// OpenFiles is the number of file descriptors of each process.
	OpenFiles int64
	// FileSize is the largest file a process may write, in bytes.
	FileSize int64
	// CPUTime is the CPU time of each process.
	CPUTime time.Duration
	// Disk bounds what the writable mounts hold together, in bytes.
	Disk int64
}

// Command is one command to run.
type Command struct {
	// Args is the program and its arguments, as the container sees them.
	Args []string
	// Env is the whole environment; PATH is added when missing.
	Env []string
	// Dir is the working directory inside the container.
	Dir    string
	Mounts []Mount
	Limits Limits
	// Network lets the command reach HTTP and HTTPS servers through the
	// egress proxy (HTTP_PROXY and HTTPS_PROXY are set); without it the
	// command has a network namespace with only loopback.
	Network bool
	// Output receives stdout and stderr.
	Output io.Writer
}

// ExitError is a command that ran and exited non-zero.
type ExitError struct {
	Code int
	// OutOfMemory reports that the kernel killed a process of the command
	// for going over Limits.Memory.
	OutOfMemory bool
}

func (e *ExitError) Error() string {
	msg := "exited with status " + strconv.Itoa(e.Code)
	if e.OutOfMemory {
		msg += " after a process was killed for using more than the memory limit"
	}
	return msg
}

// LimitError is a command stopped for going over a limit Run watches
// itself (the disk).
type LimitError struct {
	Reason string
}

func (e *LimitError) Error() string { return "stopped: " + e.Reason }

// New prepares a runtime in o.Dir and proves that this host can isolate
// commands by running one: it needs root, runc, and kernel support for
// namespaces, cgroups and seccomp. The error says what is missing.
// Containers that a server which is no longer running left behind in
// o.Dir are removed first.
func New(ctx context.Context, o Options) (*Runtime, error) {
	if o.Dir == "" {
		return nil, errors.New("sandbox: a state directory is required")
	}
	if uid := os.Geteuid(); uid != 0 {
		return nil, fmt.Errorf("sandbox: the server runs as uid %d; runc needs root to create namespaces and cgroups", uid)
	}
	runc := o.Runc
	if runc == "" {
		runc = "runc"
	}
	path, err := exec.LookPath(runc)
	if err != nil {
		return nil, fmt.Errorf("sandbox: %s not found (install Debian's runc package): %w", runc, err)
	}
	rt := &Runtime{
		runc:     path,
		state:    filepath.Join(o.Dir, "runc"),
		bundles:  filepath.Join(o.Dir, "bundles"),
		rootfs:   filepath.Join(o.Dir, "rootfs"),
		readOnly: o.ReadOnlyPaths,
		minFree:  o.MinFreeDisk,
	}
	if rt.minFree == 0 {
		rt.minFree = DefaultMinFreeDisk
	}
	for _, p := range rt.readOnly {
		if !filepath.IsAbs(p) {
			return nil, fmt.Errorf("sandbox: read-only path %q is not absolute", p)
		}
	}
	// coreutils' timeout, where the container sees it.
	for _, t := range []string{"/usr/bin/timeout", "/bin/timeout"} {
		if _, err := os.Stat(t); err == nil {
			rt.timeout = t
			break
		}
	}
	rt.goroot = goroot()
	for _, d := range []string{o.Dir, rt.state, rt.bundles} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("sandbox: create %s: %w", d, err)
		}
	}
	if err := rt.sweep(ctx); err != nil {
		return nil, err
	}
	if err := writeRootfs(rt.rootfs); err != nil {
		return nil, fmt.Errorf("sandbox: prepare the root filesystem in %s: %w", rt.rootfs, err)
	}
	var out strings.Builder
	if err := rt.Run(ctx, Command{Args: []string{"/bin/sh", "-c", "exit 0"}, Dir: "/", Output: &out,
		Limits: Limits{Memory: 64 << 20, Processes: 16}}); err != nil {
		return nil, fmt.Errorf("sandbox: runc cannot run an isolated container on this host: %w %s", err, strings.TrimSpace(out.String()))
	}
	return rt, nil
}

// goroot is the Go toolchain of the server's PATH, which commands see too.
func goroot() string {
	p, err := exec.LookPath("go")
	if err != nil {
		return ""
	}
	if p, err = filepath.EvalSymlinks(p); err != nil {
		return ""
	}
	root := filepath.Dir(filepath.Dir(p))
	if _, err := os.Stat(filepath.Join(root, "pkg", "tool")); err != nil {
		return ""
	}
	return root
}

// Run runs c to completion, or until ctx is done or c goes over its disk
// limit, when every process of it is killed. It returns nil when the
// command exits 0, an *ExitError when it exits otherwise, a *LimitError
// when it was stopped for its disk, ctx's error when ctx ended it.
func (rt *Runtime) Run(ctx context.Context, c Command) (err error) {
	if len(c.Args) == 0 {
		return errors.New("sandbox: no command to run")
	}
	if ctx.Err() != nil {
		return fmt.Errorf("sandbox: not started: %w", ctx.Err())
	}
	for _, m := range c.Mounts {
		if !filepath.IsAbs(m.Source) || !filepath.IsAbs(m.Destination) {
			return fmt.Errorf("sandbox: mount %s on %s: both paths must be absolute", m.Source, m.Destination)
		}
	}
	out := c.Output
	if out == nil {
		out = io.Discard
	}
	id := containerID()
	bundle := filepath.Join(rt.bundles, id)
	if err := os.Mkdir(bundle, 0o700); err != nil {
		return fmt.Errorf("sandbox: create bundle %s: %w", bundle, err)
	}
	defer os.RemoveAll(bundle)

	env := c.Env
	netns := ""
	if c.Network {
		eg, err := startEgress()
		if err != nil {
			return err
		}
		defer eg.Close()
		netns = eg.nsPath
		env = append(append([]string{}, env...), eg.env()...)
	}
	args := c.Args
	if d, ok := ctx.Deadline(); ok && rt.timeout != "" {
		// A deadline of its own inside the container, a little after the
		// server's, ends the command even if the server dies first.
		secs := int64(time.Until(d).Seconds()) + 5
		args = append([]string{rt.timeout, "-s", "KILL", strconv.FormatInt(secs, 10)}, args...)
	}
	spec, err := rt.spec(id, Command{Args: args, Env: env, Dir: c.Dir, Mounts: c.Mounts, Limits: c.Limits}, netns)
	if err != nil {
		return err
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("sandbox: encode the container's configuration: %w", err)
	}
	if err := os.WriteFile(filepath.Join(bundle, "config.json"), data, 0o600); err != nil {
		return fmt.Errorf("sandbox: write the container's configuration: %w", err)
	}

	var watched []string
	for _, m := range c.Mounts {
		if m.Writable {
			watched = append(watched, m.Source)
		}
	}
	watch, err := newDiskWatch(watched, c.Limits.Disk, rt.minFree)
	if err != nil {
		return err
	}

	// --keep leaves the stopped container, and its cgroup, for outOfMemory
	// to read; remove deletes it.
	cmd := exec.Command(rt.runc, "--root", rt.state, "run", "--keep", "--bundle", bundle, id)
	cmd.Stdout, cmd.Stderr = out, out
	// A group of its own keeps a terminal's Ctrl-C, meant for the server,
	// from reaching runc.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = waitDelay
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("sandbox: start %s: %w", rt.runc, err)
	}
	defer func() { err = errors.Join(err, rt.remove(id)) }()

	stopped := make(chan error, 1)
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(diskInterval)
		defer tick.Stop()
		var why error
		ended := ctx.Done()
		for {
			select {
			case <-done:
				return
			case <-ended:
				ended = nil
				if why == nil {
					why = ctx.Err()
					stopped <- why
				}
			case <-tick.C:
				if over := watch.check(); why == nil && over != "" {
					why = &LimitError{Reason: over}
					stopped <- why
				}
			}
			// Again every tick until runc returns: a kill sent while runc
			// was still creating the container finds none to kill.
			if why != nil {
				rt.kill(id)
			}
		}
	}()
	waitErr := cmd.Wait()
	close(done)
	oom := outOfMemory(id)
	select {
	case err := <-stopped:
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("sandbox: killed: %w", err)
		}
		return err
	default:
	}
	var exit *exec.ExitError
	if errors.As(waitErr, &exit) {
		return &ExitError{Code: exit.ExitCode(), OutOfMemory: oom}
	}
	if waitErr != nil {
		return fmt.Errorf("sandbox: runc run: %w", waitErr)
	}
	return nil
}

// containerID names a container after the server's process, so that a
// later server tells containers it left behind from another's.
func containerID() string {
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	return "slipway-" + strconv.Itoa(os.Getpid()) + "-" + hex.EncodeToString(b)
}

// kill ends the container's first process; the PID namespace takes every
// other with it.
func (rt *Runtime) kill(id string) {
	ctx, cancel := context.WithTimeout(context.Background(), runcTimeout)
	defer cancel()
	_ = exec.CommandContext(ctx, rt.runc, "--root", rt.state, "kill", id, "KILL").Run()
}

// remove deletes the container, killing what is left of it, and its cgroups.
func (rt *Runtime) remove(id string) error {
	ctx, cancel := context.WithTimeout(context.Background(), runcTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, rt.runc, "--root", rt.state, "delete", "--force", id).CombinedOutput()
	if err != nil && !strings.Contains(string(out), "does not exist") {
		return fmt.Errorf("sandbox: runc delete %s: %w: %s", id, err, strings.TrimSpace(string(out)))
	}
	return nil
}

// sweep removes the containers and bundles of servers no longer running.
func (rt *Runtime) sweep(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, runcTimeout)
	defer cancel()
	out, err := exec.CommandContext(ctx, rt.runc, "--root", rt.state, "list", "-q").Output()
	if err != nil {
		return fmt.Errorf("sandbox: runc list in %s: %w", rt.state, err)
	}
	for _, id := range strings.Fields(string(out)) {
		if stale(id) {
			if err := rt.remove(id); err != nil {
				return err
			}
		}
	}
	entries, err := os.ReadDir(rt.bundles)
	if err != nil {
		return fmt.Errorf("sandbox: read %s: %w", rt.bundles, err)
	}
	for _, e := range entries {
		if stale(e.Name()) {
			_ = os.RemoveAll(filepath.Join(rt.bundles, e.Name()))
		}
	}
	return nil
}

// stale reports whether a container id names a server process that is gone.
func stale(id string) bool {
	rest, ok := strings.CutPrefix(id, "slipway-")
	if !ok {
		return false
	}
	pidStr, _, _ := strings.Cut(rest, "-")
	pid, err := strconv.Atoi(pidStr)
	if err != nil || pid == os.Getpid() {
		return false
	}
	_, err = os.Stat("/proc/" + pidStr)
	return errors.Is(err, os.ErrNotExist)
}

// outOfMemory reads the memory cgroup's count of OOM kills (cgroup v1
// memory.oom_control, v2 memory.events) before runc deletes the cgroup.
func outOfMemory(id string) bool {
	for _, p := range []string{
		"/sys/fs/cgroup/memory/slipway/" + id + "/memory.oom_control",
		"/sys/fs/cgroup/slipway/" + id + "/memory.events",
	} {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(b), "\n") {
			if n, ok := strings.CutPrefix(line, "oom_kill "); ok && strings.TrimSpace(n) != "0" {
				return true
			}
		}
	}
	return false
}
