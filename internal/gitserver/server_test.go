package gitserver

import (
	"context"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const (
	testUser     = "alice"
	testPassword = "s3cret-Pa55word-never-printed"
)

// startServer starts a server with one empty repository and returns it
// with the repository's URL.
func startServer(t *testing.T, repo string) (*Server, string) {
	t.Helper()
	s, err := New(t.TempDir(), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRepo(t.Context(), repo); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Error(err)
		}
	})
	return s, s.RepoURL(repo)
}

// stockGit runs the git CLI as a user would, in dir.
func stockGit(t *testing.T, dir string, args ...string) (string, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	return runGit(ctx, dir, gitEnv(
		"GIT_AUTHOR_NAME=Alice", "GIT_AUTHOR_EMAIL=alice@example.com",
		"GIT_COMMITTER_NAME=Alice", "GIT_COMMITTER_EMAIL=alice@example.com",
	), nil, args...)
}

func mustGit(t *testing.T, dir string, args ...string) string {
	t.Helper()
	out, err := stockGit(t, dir, args...)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(out)
}

func withUser(t *testing.T, raw, user, pass string) string {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	u.User = url.UserPassword(user, pass)
	return u.String()
}

func TestStockGitCloneAndPush(t *testing.T) {
	s, repoURL := startServer(t, "team/ops.git")
	authURL := withUser(t, repoURL, testUser, testPassword)

	work := t.TempDir()
	mustGit(t, work, "clone", "--quiet", authURL, "a")
	a := filepath.Join(work, "a")
	if got := mustGit(t, a, "symbolic-ref", "HEAD"); got != "refs/heads/main" {
		t.Errorf("HEAD of a clone of a new repository = %s, want refs/heads/main", got)
	}
	if err := os.WriteFile(filepath.Join(a, "app.yaml"), []byte("replicas: 2\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	mustGit(t, a, "add", "app.yaml")
	mustGit(t, a, "commit", "--quiet", "-m", "first")
	mustGit(t, a, "push", "--quiet", "origin", "main")
	pushed := mustGit(t, a, "rev-parse", "HEAD")

	serverSide := mustGit(t, s.root, "--git-dir", filepath.Join(s.root, "team", "ops.git"), "rev-parse", "refs/heads/main")
	if serverSide != pushed {
		t.Errorf("server has main at %s, pushed %s", serverSide, pushed)
	}

	mustGit(t, work, "clone", "--quiet", authURL, "b")
	got, err := os.ReadFile(filepath.Join(work, "b", "app.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if string(got) != "replicas: 2\n" {
		t.Errorf("app.yaml in a fresh clone = %q", got)
	}
}

func TestWrongCredentialsAreRefused(t *testing.T) {
	s, repoURL := startServer(t, "ops.git")
	if _, err := CommitFiles(t.Context(), repoURL, BasicAuth{testUser, testPassword}, Commit{
		Files:   map[string][]byte{"a.txt": []byte("a\n")},
		Message: "seed",
		Author:  Signature{"Alice", "alice@example.com"},
	}); err != nil {
		t.Fatal(err)
	}
	before := mustGit(t, s.root, "--git-dir", filepath.Join(s.root, "ops.git"), "rev-parse", "main")

	for name, set := range map[string]func(*http.Request){
		"no credentials": func(*http.Request) {},
		"wrong password": func(r *http.Request) { r.SetBasicAuth(testUser, "wrong") },
		"wrong user":     func(r *http.Request) { r.SetBasicAuth("mallory", testPassword) },
		"password only":  func(r *http.Request) { r.SetBasicAuth("", testPassword) },
	} {
		t.Run(name, func(t *testing.T) {
			for _, service := range []string{"git-upload-pack", "git-receive-pack"} {
				req, err := http.NewRequestWithContext(t.Context(), http.MethodGet, repoURL+"/info/refs?service="+service, nil)
				if err != nil {
					t.Fatal(err)
				}
				set(req)
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				resp.Body.Close()
				if resp.StatusCode != http.StatusUnauthorized {
					t.Errorf("%s: status %d, want 401", service, resp.StatusCode)
				}
				if got := resp.Header.Get("WWW-Authenticate"); !strings.HasPrefix(got, "Basic ") {
					t.Errorf("%s: WWW-Authenticate = %q, want a Basic challenge", service, got)
				}
			}
		})
	}

	work := t.TempDir()
	_, err := stockGit(t, work, "clone", "--quiet", withUser(t, repoURL, testUser, "wrong"), "bad")
	if err == nil || !strings.Contains(err.Error(), "Authentication failed") {
		t.Errorf("clone with a wrong password: err = %v, want an authentication failure", err)
	}

	mustGit(t, work, "clone", "--quiet", withUser(t, repoURL, testUser, testPassword), "good")
	good := filepath.Join(work, "good")
	mustGit(t, good, "commit", "--quiet", "--allow-empty", "-m", "sneaky")
	mustGit(t, good, "remote", "set-url", "origin", withUser(t, repoURL, testUser, "wrong"))
	_, err = stockGit(t, good, "push", "--quiet", "origin", "main")
	if err == nil || !strings.Contains(err.Error(), "Authentication failed") {
		t.Errorf("push with a wrong password: err = %v, want an authentication failure", err)
	}
	if after := mustGit(t, s.root, "--git-dir", filepath.Join(s.root, "ops.git"), "rev-parse", "main"); after != before {
		t.Errorf("main moved from %s to %s after a refused push", before, after)
	}
}

func TestCreateRepo(t *testing.T) {
	s, err := New(t.TempDir(), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRepo(t.Context(), "dev.git"); err != nil {
		t.Fatal(err)
	}
	gitDir := filepath.Join(s.root, "dev.git")
	if got := mustGit(t, s.root, "--git-dir", gitDir, "symbolic-ref", "HEAD"); got != "refs/heads/main" {
		t.Errorf("HEAD = %s, want refs/heads/main", got)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "config", "http.receivepack"); got != "true" {
		t.Errorf("http.receivepack = %s, want true", got)
	}
	if err := s.CreateRepo(t.Context(), "dev.git"); err != nil {
		t.Errorf("creating an existing repository again: %v", err)
	}

	for _, bad := range []string{"", "/abs.git", "../up.git", "a/../b.git", ".hidden.git", "a/.git", "sp ace.git", "a//b.git"} {
		if err := s.CreateRepo(t.Context(), bad); err == nil {
			t.Errorf("CreateRepo(%q) succeeded, want an error", bad)
		}
	}
	entries, err := os.ReadDir(s.root)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 1 {
		t.Errorf("root holds %d entries after refused names, want only dev.git", len(entries))
	}
}

func TestNewRefusesEmptyCredentials(t *testing.T) {
	if _, err := New(t.TempDir(), "", testPassword); err == nil {
		t.Error("New with an empty username succeeded")
	}
	if _, err := New(t.TempDir(), testUser, ""); err == nil {
		t.Error("New with an empty password succeeded")
	}
}

func TestCloseStopsServingAndStartRefusesTwice(t *testing.T) {
	s, err := New(t.TempDir(), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	base, err := s.Start(t.Context(), "")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Start(t.Context(), ""); err == nil {
		t.Error("second Start succeeded")
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if s.RepoURL("x.git") != "" {
		t.Error("RepoURL is not empty after Close")
	}
	if resp, err := http.Get(base); err == nil {
		resp.Body.Close()
		t.Error("server still answers after Close")
	}
}

func TestStartStopsWhenContextIsDone(t *testing.T) {
	s, err := New(t.TempDir(), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	base, err := s.Start(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	deadline := time.Now().Add(10 * time.Second)
	for {
		resp, err := http.Get(base)
		if err != nil {
			return
		}
		resp.Body.Close()
		if time.Now().After(deadline) {
			t.Fatal("server still answers 10s after its context was cancelled")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestReadersFetchAndDoNotPush: a reader's credential clones with the stock
// git client and is refused at the first request of a push, before
// anything reaches the repository.
func TestReadersFetchAndDoNotPush(t *testing.T) {
	s, repoURL := startServer(t, "ops.git")
	if err := s.AddReader("reader", "read-only-pass"); err != nil {
		t.Fatal(err)
	}
	if err := s.AddReader("", "x"); err == nil {
		t.Error("a reader without a name was added")
	}
	if _, err := CommitFiles(t.Context(), repoURL, BasicAuth{testUser, testPassword}, Commit{
		Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "seed", Author: Signature{"Alice", "alice@example.com"},
	}); err != nil {
		t.Fatal(err)
	}
	before := mustGit(t, s.root, "--git-dir", filepath.Join(s.root, "ops.git"), "rev-parse", "main")
	work := t.TempDir()
	mustGit(t, work, "clone", "--quiet", withUser(t, repoURL, "reader", "read-only-pass"), "r")
	clone := filepath.Join(work, "r")
	mustGit(t, clone, "commit", "--quiet", "--allow-empty", "-m", "not allowed")
	if out, err := stockGit(t, clone, "push", "--quiet", "origin", "main"); err == nil || !strings.Contains(out+err.Error(), "403") {
		t.Errorf("a reader's push: %v %s, want a 403", err, out)
	}
	if after := mustGit(t, s.root, "--git-dir", filepath.Join(s.root, "ops.git"), "rev-parse", "main"); after != before {
		t.Errorf("main moved from %s to %s after a reader's push", before, after)
	}
	for _, u := range []string{repoURL + "/info/refs?service=git-receive-pack", repoURL + "/git-receive-pack"} {
		req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, u, strings.NewReader("0000"))
		if err != nil {
			t.Fatal(err)
		}
		req.SetBasicAuth("reader", "read-only-pass")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Errorf("a reader's %s: %s, want 403", u, resp.Status)
		}
	}
}

// TestProtectedRepo: a protected repository answers only its own
// credential, takes new commits, and refuses a forced push and a deleted
// branch, so its holder can add history but never rewrite it.
func TestProtectedRepo(t *testing.T) {
	s, _ := startServer(t, "ops.git")
	if err := s.CreateProtectedRepo(t.Context(), "audit.git", "auditor", "witness-Pa55"); err != nil {
		t.Fatal(err)
	}
	repoURL := s.RepoURL("audit.git")
	work := t.TempDir()
	for _, u := range []string{withUser(t, repoURL, testUser, testPassword), withUser(t, strings.Replace(repoURL, "/audit.git", "/x/../audit.git", 1), testUser, testPassword)} {
		if out, err := stockGit(t, work, "ls-remote", u); err == nil {
			t.Fatalf("the server's credential reads the protected repository (%s):\n%s", u, out)
		}
	}
	if err := s.AddReader("reader", "read-only-pass"); err != nil {
		t.Fatal(err)
	}
	if out, err := stockGit(t, work, "ls-remote", withUser(t, repoURL, "reader", "read-only-pass")); err == nil {
		t.Fatalf("a reader's credential reads the protected repository:\n%s", out)
	}
	own := withUser(t, repoURL, "auditor", "witness-Pa55")
	mustGit(t, work, "clone", "--quiet", own, "a")
	a := filepath.Join(work, "a")
	for i, msg := range []string{"first", "second"} {
		os.WriteFile(filepath.Join(a, "f"), []byte(msg), 0o600)
		mustGit(t, a, "add", "f")
		mustGit(t, a, "commit", "--quiet", "-m", msg)
		if i == 0 {
			mustGit(t, a, "push", "--quiet", "origin", "main")
		}
	}
	mustGit(t, a, "push", "--quiet", "origin", "main")
	mustGit(t, a, "reset", "--quiet", "--hard", "HEAD~1")
	if out, err := stockGit(t, a, "push", "--force", "origin", "main"); err == nil {
		t.Fatalf("a forced push rewrote the protected repository:\n%s", out)
	}
	if out, err := stockGit(t, a, "push", "origin", ":main"); err == nil {
		t.Fatalf("the branch of the protected repository was deleted:\n%s", out)
	}
	if got := mustGit(t, a, "ls-remote", "origin", "main"); !strings.Contains(got, mustGit(t, a, "rev-parse", "ORIG_HEAD")) {
		t.Fatalf("the remote head moved: %s", got)
	}
}
