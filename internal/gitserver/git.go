package gitserver

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"
)

// defaultTimeout bounds a git command whose context carries no deadline, so
// that no caller can make git wait forever by forgetting one.
const defaultTimeout = 2 * time.Minute

// maxStderr keeps error strings readable when git prints progress or a long
// trace before failing; the end of stderr is where git states the cause.
const maxStderr = 2048

// gitEnv is the environment of every git command this package runs. It is
// hermetic: the user's and the system's git configuration (credential
// helpers, url rewrites, hooks paths) must not change what the lab or a test
// does, and an inherited GIT_DIR or GIT_WORK_TREE would point git at another
// repository. Prompts are disabled so that a missing or wrong credential fails
// at once instead of waiting on a terminal that nobody watches.
func gitEnv(extra ...string) []string {
	base := os.Environ()
	env := make([]string, 0, len(base)+8+len(extra))
	for _, kv := range base {
		if !strings.HasPrefix(kv, "GIT_") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"GIT_TERMINAL_PROMPT=0",
		// An empty GIT_ASKPASS stops git from falling back to SSH_ASKPASS or
		// an askpass inherited from an IDE.
		"GIT_ASKPASS=",
		"GIT_CONFIG_NOSYSTEM=1",
		"GIT_CONFIG_GLOBAL="+os.DevNull,
		"LC_ALL=C",
	)
	return append(env, extra...)
}

// runGit runs git with args in dir and returns its standard output. The
// strings in redact are replaced in git's stderr before it becomes part of
// an error, so that a secret git echoes back cannot leak through the error.
func runGit(ctx context.Context, dir string, env, redact []string, args ...string) (string, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, defaultTimeout)
		defer cancel()
	}
	var stdout, stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	cmd.Env = env
	cmd.Stdout = &stdout
	cmd.Stderr = &stderr
	// git runs transports (git-remote-http, index-pack) as children that
	// inherit its pipes: killing only git would leave them running and Wait
	// blocked on the pipes, so the whole process group goes, and WaitDelay
	// bounds the wait for anything that escaped the group.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 2 * time.Second

	err := cmd.Run()
	if err == nil {
		return stdout.String(), nil
	}
	if ctxErr := ctx.Err(); ctxErr != nil {
		// "signal: killed" says nothing; the deadline is the cause.
		err = ctxErr
	}
	// One line, so that the error reads well in logs and status conditions.
	msg := strings.Join(strings.Fields(stderr.String()), " ")
	for _, secret := range redact {
		if secret != "" {
			msg = strings.ReplaceAll(msg, secret, "<redacted>")
		}
	}
	if len(msg) > maxStderr {
		msg = "..." + msg[len(msg)-maxStderr:]
	}
	if msg == "" {
		return "", fmt.Errorf("git %s: %w", args[0], err)
	}
	return "", fmt.Errorf("git %s: %w: %s", args[0], err, msg)
}
