package gitserver

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// ErrNoChanges is returned by CommitFiles when the files given leave the
// branch as it is, so that a caller expecting a new revision learns that
// none was made.
var ErrNoChanges = errors.New("no changes to commit")

// BasicAuth holds HTTP basic-auth credentials. Its String and GoString
// methods leave the password out, so printing it cannot leak the secret.
type BasicAuth struct {
	Username string
	Password string
}

func (a BasicAuth) String() string { return a.Username + ":<redacted>" }

func (a BasicAuth) GoString() string {
	return fmt.Sprintf("gitserver.BasicAuth{Username: %q, Password: <redacted>}", a.Username)
}

// Signature names the author and committer of a commit.
type Signature struct {
	Name  string
	Email string
}

// Commit describes a change to push to a branch.
type Commit struct {
	// Branch to commit to; main when empty. A branch that does not exist
	// yet starts from the repository's default branch, or empty.
	Branch string
	// Files to write, by slash-separated path relative to the repository
	// root. They are written after Remove is applied.
	Files map[string][]byte
	// Remove lists files or directories to delete; each must exist.
	Remove  []string
	Message string
	Author  Signature
}

// CommitFiles clones repoURL, applies c, commits it as c.Author and pushes
// it, returning the new commit's SHA. Every git command runs under ctx (or
// a default deadline when ctx has none) and can never prompt. The
// credentials reach git through its environment, never through the URL or
// the command line, and never appear in an error.
func CommitFiles(ctx context.Context, repoURL string, auth BasicAuth, c Commit) (string, error) {
	u, err := url.Parse(repoURL)
	if err != nil {
		// url.Error quotes the raw URL, which may hold credentials.
		return "", errors.New("gitserver: commit: repository URL does not parse")
	}
	remote := u.Redacted()
	if u.User != nil {
		return "", fmt.Errorf("gitserver: commit to %s: the URL must not carry credentials; pass them as BasicAuth", remote)
	}
	if c.Message == "" || c.Author.Name == "" || c.Author.Email == "" {
		return "", fmt.Errorf("gitserver: commit to %s: message, author name and author email are required", remote)
	}
	branch := c.Branch
	if branch == "" {
		branch = "main"
	}

	dir, err := os.MkdirTemp("", "gitserver-commit-*")
	if err != nil {
		return "", fmt.Errorf("gitserver: commit to %s: create work directory: %w", remote, err)
	}
	defer os.RemoveAll(dir)

	env := gitEnv(
		// A credential helper reading the environment keeps the credentials
		// out of URLs, command lines and .git/config. Unlike a fixed
		// Authorization header it lets git see the 401 of a wrong password
		// and say "Authentication failed" rather than that it could not
		// prompt.
		"GIT_CONFIG_COUNT=1",
		"GIT_CONFIG_KEY_0=credential.helper",
		`GIT_CONFIG_VALUE_0=!f() { if test "$1" = get; then printf 'username=%s\npassword=%s\n' "$SLIPWAY_GIT_USERNAME" "$SLIPWAY_GIT_PASSWORD"; fi; }; f`,
		"SLIPWAY_GIT_USERNAME="+auth.Username,
		"SLIPWAY_GIT_PASSWORD="+auth.Password,
		"GIT_AUTHOR_NAME="+c.Author.Name,
		"GIT_AUTHOR_EMAIL="+c.Author.Email,
		"GIT_COMMITTER_NAME="+c.Author.Name,
		"GIT_COMMITTER_EMAIL="+c.Author.Email,
	)
	redact := []string{auth.Password}
	git := func(op string, args ...string) (string, error) {
		out, err := runGit(ctx, dir, env, redact, args...)
		if err != nil {
			return "", fmt.Errorf("gitserver: %s %s (branch %s): %w", op, remote, branch, err)
		}
		return out, nil
	}

	if _, err := git("clone", "clone", "--quiet", "--", repoURL, "."); err != nil {
		return "", err
	}
	existing, err := git("look up branch on", "for-each-ref", "--format=%(refname)", "refs/remotes/origin/"+branch)
	if err != nil {
		return "", err
	}
	checkout := []string{"checkout", "--quiet", "-B", branch}
	if strings.TrimSpace(existing) != "" {
		checkout = append(checkout, "origin/"+branch)
	}
	if _, err := git("check out branch of", checkout...); err != nil {
		return "", err
	}

	if len(c.Remove) > 0 {
		for _, p := range c.Remove {
			if _, err := worktreePath(dir, p); err != nil {
				return "", fmt.Errorf("gitserver: commit to %s: remove: %w", remote, err)
			}
		}
		args := append([]string{"rm", "-r", "--quiet", "--"}, c.Remove...)
		if _, err := git("remove files in clone of", args...); err != nil {
			return "", err
		}
	}
	for p, content := range c.Files {
		full, err := worktreePath(dir, p)
		if err != nil {
			return "", fmt.Errorf("gitserver: commit to %s: write: %w", remote, err)
		}
		if err := os.MkdirAll(filepath.Dir(full), 0o755); err != nil {
			return "", fmt.Errorf("gitserver: commit to %s: write %s: %w", remote, p, err)
		}
		if err := os.WriteFile(full, content, 0o644); err != nil {
			return "", fmt.Errorf("gitserver: commit to %s: write %s: %w", remote, p, err)
		}
	}

	if _, err := git("stage files in clone of", "add", "--all"); err != nil {
		return "", err
	}
	status, err := git("check status of clone of", "status", "--porcelain")
	if err != nil {
		return "", err
	}
	if strings.TrimSpace(status) == "" {
		return "", fmt.Errorf("gitserver: commit to %s (branch %s): %w", remote, branch, ErrNoChanges)
	}
	if _, err := git("commit to clone of", "commit", "--quiet", "--no-verify", "-m", c.Message); err != nil {
		return "", err
	}
	if _, err := git("push to", "push", "--quiet", "origin", "HEAD:refs/heads/"+branch); err != nil {
		return "", err
	}
	sha, err := git("read the new commit of", "rev-parse", "HEAD")
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(sha), nil
}

// worktreePath resolves a slash-separated path inside the work tree,
// refusing paths that would leave it or touch git's own metadata.
func worktreePath(dir, p string) (string, error) {
	if p == "" || path.IsAbs(p) || path.Clean(p) != p || p == ".." || strings.HasPrefix(p, "../") {
		return "", fmt.Errorf("path %q must be a clean relative path inside the repository", p)
	}
	if p == ".git" || strings.HasPrefix(p, ".git/") {
		return "", fmt.Errorf("path %q is inside git's metadata directory", p)
	}
	return filepath.Join(dir, filepath.FromSlash(p)), nil
}
