package gitserver

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

var alice = Signature{Name: "Alice Kim", Email: "alice@example.com"}

func TestCommitFilesRoundTrip(t *testing.T) {
	s, err := New(t.TempDir(), testUser, testPassword)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.CreateRepo(t.Context(), "ops.git"); err != nil {
		t.Fatal(err)
	}
	// Count chunked requests to prove that the large push below took the
	// spooling path, through Handler mounted in another server.
	var chunked atomic.Int32
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.ContentLength < 0 {
			chunked.Add(1)
		}
		s.Handler().ServeHTTP(w, r)
	}))
	t.Cleanup(ts.Close)
	repoURL := ts.URL + "/ops.git"
	auth := BasicAuth{testUser, testPassword}

	// Larger than git's default http.postBuffer (1 MiB) and incompressible,
	// so that git sends the pack chunked.
	blob := make([]byte, 2<<20)
	if _, err := rand.Read(blob); err != nil {
		t.Fatal(err)
	}
	first, err := CommitFiles(t.Context(), repoURL, auth, Commit{
		Files: map[string][]byte{
			"apps/web/deployment.yaml": []byte("image: web@sha256:aaa\n"),
			"apps/web/service.yaml":    []byte("port: 80\n"),
			"blob.bin":                 blob,
		},
		Message: "seed web",
		Author:  alice,
	})
	if err != nil {
		t.Fatal(err)
	}
	if chunked.Load() == 0 {
		t.Error("no request came chunked; the spooling path went untested")
	}

	second, err := CommitFiles(t.Context(), repoURL, auth, Commit{
		Files:   map[string][]byte{"apps/web/deployment.yaml": []byte("image: web@sha256:bbb\n")},
		Remove:  []string{"apps/web/service.yaml", "blob.bin"},
		Message: "bump web\n\nWith a body.",
		Author:  alice,
	})
	if err != nil {
		t.Fatal(err)
	}

	gitDir := filepath.Join(s.root, "ops.git")
	if got := mustGit(t, s.root, "--git-dir", gitDir, "rev-parse", "main"); got != second {
		t.Errorf("server main = %s, CommitFiles returned %s", got, second)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "rev-parse", "main~1"); got != first {
		t.Errorf("parent of main = %s, want the first commit %s", got, first)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "log", "-1", "--format=%an <%ae>|%cn <%ce>|%B", "main"); got != "Alice Kim <alice@example.com>|Alice Kim <alice@example.com>|bump web\n\nWith a body." {
		t.Errorf("last commit = %q", got)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "ls-tree", "-r", "--name-only", "main"); got != "apps/web/deployment.yaml" {
		t.Errorf("tree of main = %q, want only apps/web/deployment.yaml", got)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "show", "main:apps/web/deployment.yaml"); got != "image: web@sha256:bbb" {
		t.Errorf("deployment.yaml = %q", got)
	}
}

func TestCommitFilesToNewBranch(t *testing.T) {
	s, repoURL := startServer(t, "ops.git")
	auth := BasicAuth{testUser, testPassword}
	base, err := CommitFiles(t.Context(), repoURL, auth, Commit{
		Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "base", Author: alice,
	})
	if err != nil {
		t.Fatal(err)
	}
	sha, err := CommitFiles(t.Context(), repoURL, auth, Commit{
		Branch: "stage/prod", Files: map[string][]byte{"b.txt": []byte("b\n")}, Message: "prod", Author: alice,
	})
	if err != nil {
		t.Fatal(err)
	}
	gitDir := filepath.Join(s.root, "ops.git")
	if got := mustGit(t, s.root, "--git-dir", gitDir, "rev-parse", "stage/prod~1"); got != base {
		t.Errorf("new branch starts at %s, want main's %s", got, base)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "rev-parse", "refs/heads/stage/prod"); got != sha {
		t.Errorf("stage/prod = %s, want %s", got, sha)
	}
	if got := mustGit(t, s.root, "--git-dir", gitDir, "rev-parse", "main"); got != base {
		t.Errorf("main moved to %s", got)
	}
}

func TestCommitFilesNoChanges(t *testing.T) {
	_, repoURL := startServer(t, "ops.git")
	auth := BasicAuth{testUser, testPassword}
	c := Commit{Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "same", Author: alice}
	if _, err := CommitFiles(t.Context(), repoURL, auth, c); err != nil {
		t.Fatal(err)
	}
	if _, err := CommitFiles(t.Context(), repoURL, auth, c); !errors.Is(err, ErrNoChanges) {
		t.Errorf("committing identical content: err = %v, want ErrNoChanges", err)
	}
}

func TestCommitFilesRefusesBadInput(t *testing.T) {
	s, repoURL := startServer(t, "ops.git")
	auth := BasicAuth{testUser, testPassword}
	ok := Commit{Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "m", Author: alice}
	cases := map[string]struct {
		url string
		c   Commit
	}{
		"escaping path":        {repoURL, Commit{Files: map[string][]byte{"../x": nil}, Message: "m", Author: alice}},
		"git metadata":         {repoURL, Commit{Files: map[string][]byte{".git/config": nil}, Message: "m", Author: alice}},
		"absolute path":        {repoURL, Commit{Files: map[string][]byte{"/etc/x": nil}, Message: "m", Author: alice}},
		"unclean path":         {repoURL, Commit{Files: map[string][]byte{"a/./b": nil}, Message: "m", Author: alice}},
		"remove escaping":      {repoURL, Commit{Remove: []string{"../x"}, Message: "m", Author: alice}},
		"remove missing":       {repoURL, Commit{Remove: []string{"nope.txt"}, Message: "m", Author: alice}},
		"no message":           {repoURL, Commit{Files: ok.Files, Author: alice}},
		"no author":            {repoURL, Commit{Files: ok.Files, Message: "m"}},
		"credentials in URL":   {withUser(t, repoURL, testUser, testPassword), ok},
		"repository missing":   {s.RepoURL("missing.git"), ok},
		"URL does not parse":   {"http://" + testUser + ":" + testPassword + "@[::1", ok},
		"server not listening": {"http://127.0.0.1:1/ops.git", ok},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := CommitFiles(t.Context(), tc.url, auth, tc.c)
			if err == nil {
				t.Fatal("succeeded, want an error")
			}
			if strings.Contains(err.Error(), testPassword) {
				t.Errorf("error leaks the password: %v", err)
			}
		})
	}
	gitDir := filepath.Join(s.root, "ops.git")
	if out := mustGit(t, s.root, "--git-dir", gitDir, "for-each-ref"); out != "" {
		t.Errorf("refused commits changed the repository: %s", out)
	}
}

func TestCommitFilesErrorsNameTheCauseWithoutSecrets(t *testing.T) {
	_, repoURL := startServer(t, "ops.git")
	c := Commit{Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "m", Author: alice}

	_, err := CommitFiles(t.Context(), repoURL, BasicAuth{testUser, testPassword + "-wrong"}, c)
	if err == nil {
		t.Fatal("commit with a wrong password succeeded")
	}
	msg := err.Error()
	for _, want := range []string{"clone", repoURL, "Authentication failed"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, testPassword) {
		t.Errorf("error leaks the password: %q", msg)
	}

	auth := BasicAuth{testUser, testPassword}
	for _, s := range []string{fmt.Sprint(auth), fmt.Sprintf("%+v", auth), fmt.Sprintf("%#v", auth), fmt.Sprintf("%v", &auth)} {
		if strings.Contains(s, testPassword) {
			t.Errorf("formatting BasicAuth leaks the password: %s", s)
		}
	}
}

func TestCommitFilesStalledServerHitsDeadline(t *testing.T) {
	st, err := NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := st.Close(); err != nil {
			t.Error(err)
		}
	})
	repoURL := st.URL() + "/ops.git"

	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Second)
	defer cancel()
	start := time.Now()
	_, err = CommitFiles(ctx, repoURL, BasicAuth{testUser, testPassword}, Commit{
		Files: map[string][]byte{"a.txt": []byte("a\n")}, Message: "m", Author: alice,
	})
	elapsed := time.Since(start)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want context.DeadlineExceeded", err)
	}
	if elapsed > 10*time.Second {
		t.Errorf("CommitFiles returned %s after a 2s deadline", elapsed)
	}
	msg := err.Error()
	for _, want := range []string{"clone", repoURL} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not mention %q", msg, want)
		}
	}
	if strings.Contains(msg, testPassword) {
		t.Errorf("error leaks the password: %q", msg)
	}
}

func TestSpoolKeepsBodyIntact(t *testing.T) {
	want := bytes.Repeat([]byte("pack"), 50000)
	body, n, err := spool(bytes.NewReader(want))
	if err != nil {
		t.Fatal(err)
	}
	name := body.(spooledBody).Name()
	got := new(bytes.Buffer)
	if _, err := got.ReadFrom(body); err != nil {
		t.Fatal(err)
	}
	if n != int64(len(want)) || !bytes.Equal(got.Bytes(), want) {
		t.Errorf("spooled %d bytes, content equal: %v", n, bytes.Equal(got.Bytes(), want))
	}
	if err := body.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(name); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("spool file %s remains after Close: %v", name, err)
	}
}
