package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// Process is a component the lab started, recorded by pid so `lab down`
// stops exactly what `lab up` started and nothing else.
type Process struct {
	Name string `json:"name"`
	PID  int    `json:"pid"`
	// Exe is the executable path, checked before signalling so a recycled
	// pid is never killed.
	Exe string `json:"exe"`
	Log string `json:"log"`
}

// placement puts a started process somewhere other than where the lab runs.
type placement struct {
	// netns is the path of the network namespace to start it in.
	netns string
	// cgroup is the cgroup (in every hierarchy) it is moved into at once,
	// so that its children are found and ended with it.
	cgroup string
	// runAs starts it as another user (PostgreSQL refuses root).
	runAs *syscall.Credential
}

// start runs exe detached (own session, no terminal) with output appended to
// logDir/name.log.
func start(name, exe string, args, env []string, logDir string, where placement) (*Process, error) {
	logPath := filepath.Join(logDir, name+".log")
	logFile, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return nil, fmt.Errorf("opening log of %s: %w", name, err)
	}
	defer logFile.Close()
	fmt.Fprintf(logFile, "\n==== %s starting %s\n", time.Now().Format(time.RFC3339), name)
	cmd := exec.Command(exe, args...)
	cmd.Env = env
	cmd.Stdout, cmd.Stderr = logFile, logFile
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Credential: where.runAs}
	if where.netns != "" {
		err = inNetns(where.netns, cmd.Start)
	} else {
		err = cmd.Start()
	}
	if err != nil {
		return nil, fmt.Errorf("starting %s (%s): %w", name, exe, err)
	}
	p := &Process{Name: name, PID: cmd.Process.Pid, Exe: exe, Log: logPath}
	// Reap the child if it exits while this process lives, so it never
	// lingers as a zombie that still looks alive.
	go func() { _ = cmd.Wait() }()
	if where.cgroup != "" {
		if err := joinCgroup(where.cgroup, p.PID); err != nil {
			_ = p.stop(5 * time.Second)
			return nil, fmt.Errorf("starting %s: %w", name, err)
		}
	}
	return p, nil
}

// Running reports whether the recorded process is still the one started.
func (p *Process) Running() bool {
	if p == nil || p.PID <= 0 {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.PID))
	if err != nil {
		return false
	}
	if state, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", p.PID)); err == nil {
		if fields := strings.Fields(string(state)); len(fields) > 2 && fields[2] == "Z" {
			return false
		}
	}
	exe = strings.TrimSuffix(exe, " (deleted)")
	want, _ := filepath.EvalSymlinks(p.Exe)
	return exe == p.Exe || exe == want
}

// stop sends SIGTERM, waits up to grace, then SIGKILL.
func (p *Process) stop(grace time.Duration) error {
	if !p.Running() {
		return nil
	}
	if err := syscall.Kill(p.PID, syscall.SIGTERM); err != nil && !errors.Is(err, syscall.ESRCH) {
		return fmt.Errorf("stopping %s (pid %d): %w", p.Name, p.PID, err)
	}
	deadline := time.Now().Add(grace)
	for time.Now().Before(deadline) {
		if !p.Running() {
			return nil
		}
		time.Sleep(100 * time.Millisecond)
	}
	_ = syscall.Kill(p.PID, syscall.SIGKILL)
	for i := 0; i < 50 && p.Running(); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if p.Running() {
		return fmt.Errorf("%s (pid %d) survived SIGKILL", p.Name, p.PID)
	}
	return nil
}
