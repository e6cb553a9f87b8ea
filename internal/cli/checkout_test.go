package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/pipeline"
)

// TestCheckout runs `slipway checkout` as a test Pod does, against a real
// git server: it checks out exactly the commit asked for, with credentials
// from the environment, and refuses wrong credentials, a commit the
// server does not have and a commit of another branch, naming the
// repository (never the password) and the commit.
func TestCheckout(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	const user, password = "pusher", "checkout-password-7c1e"
	srv, err := gitserver.New(t.TempDir(), user, password)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.CreateRepo(ctx, "tea.git"); err != nil {
		t.Fatal(err)
	}
	base, err := srv.Start(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	repo := base + "/tea.git"
	auth := gitserver.BasicAuth{Username: user, Password: password}
	commit := func(branch, brew string) string {
		sha, err := gitserver.CommitFiles(ctx, repo, auth, gitserver.Commit{
			Branch: branch, Files: map[string][]byte{"brew.txt": []byte(brew)}, Message: "Brew " + brew,
			Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
		})
		if err != nil {
			t.Fatal(err)
		}
		return sha
	}
	first := commit("main", "first")
	commit("main", "second")
	side := commit("side", "side")

	checkout := func(sha, pass, url string) (string, string, string, int) {
		workspace := filepath.Join(t.TempDir(), "workspace")
		t.Setenv(pipeline.CheckoutEnvWorkspace, workspace)
		t.Setenv(pipeline.CheckoutEnvURL, url)
		t.Setenv(pipeline.CheckoutEnvCommit, sha)
		t.Setenv(pipeline.CheckoutEnvBranch, "main")
		t.Setenv(pipeline.CheckoutEnvUsername, user)
		t.Setenv(pipeline.CheckoutEnvPassword, pass)
		out, errOut, code := runSlipway(t, "checkout", "--timeout", "30s")
		if strings.Contains(out+errOut, password) || pass != "" && strings.Contains(out+errOut, pass) {
			t.Fatalf("a password is in the output: %s%s", out, errOut)
		}
		return workspace, out, errOut, code
	}

	t.Run("an older commit of the branch", func(t *testing.T) {
		workspace, out, errOut, code := checkout(first, password, repo)
		if code != ExitOK {
			t.Fatalf("exit %d: %s", code, errOut)
		}
		if b, err := os.ReadFile(filepath.Join(workspace, "brew.txt")); err != nil || string(b) != "first" {
			t.Fatalf("brew.txt holds %q (%v), want the first commit's", b, err)
		}
		if !strings.Contains(out, "checked out "+first) {
			t.Fatalf("output %q does not name the commit", out)
		}
	})
	t.Run("wrong password", func(t *testing.T) {
		_, _, errOut, code := checkout(first, "not-the-password", repo)
		if code == ExitOK || !strings.Contains(errOut, repo) || !strings.Contains(errOut, "refused the credentials") {
			t.Fatalf("exit %d: %s; want a refusal naming %s", code, errOut, repo)
		}
	})
	t.Run("a commit the server does not have", func(t *testing.T) {
		missing := strings.Repeat("ab", 20)
		_, _, errOut, code := checkout(missing, password, repo)
		if code == ExitOK || !strings.Contains(errOut, missing) || !strings.Contains(errOut, repo) {
			t.Fatalf("exit %d: %s; want an error naming %s and %s", code, errOut, missing, repo)
		}
	})
	t.Run("a commit of another branch", func(t *testing.T) {
		_, _, errOut, code := checkout(side, password, repo)
		if code == ExitOK || !strings.Contains(errOut, side) || !strings.Contains(errOut, "not on branch main") {
			t.Fatalf("exit %d: %s; want a refusal of %s as not on main", code, errOut, side)
		}
	})
	t.Run("a password in the URL", func(t *testing.T) {
		withPassword := strings.Replace(repo, "://", "://"+user+":"+password+"@", 1)
		_, _, errOut, code := checkout(first, "", withPassword)
		if code == ExitOK || !strings.Contains(errOut, "carries a password") {
			t.Fatalf("exit %d: %s; want the URL refused", code, errOut)
		}
	})
}
