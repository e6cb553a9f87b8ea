package promote

import (
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/gittest"
)

const (
	gitUser = "ops-bot"
	gitPass = "ops-secret-7f3a9"
)

var creds = &gitsource.Credentials{Username: gitUser, Password: gitPass}

const kustomization = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- deployment.yaml
images:
- name: tea
  newTag: v1
- name: coffee
  newTag: v1
`

const deployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: tea
spec:
  template:
    spec:
      containers:
      - name: tea
        image: tea:v1 # {"slipway.dev/image": "tea"}
`

// opsRepo starts a git server holding an ops repository with a
// kustomization and a deployment, and returns the server and its URL.
func opsRepo(t *testing.T) (*gitserver.Server, string) {
	t.Helper()
	srv, err := gitserver.New(t.TempDir(), gitUser, gitPass)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	if err := srv.CreateRepo(ctx, "ops.git"); err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Start(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Close() })
	url := srv.RepoURL("ops.git")
	_, err = gitserver.CommitFiles(ctx, url, gitserver.BasicAuth{Username: gitUser, Password: gitPass}, gitserver.Commit{
		Files: map[string][]byte{
			"apps/tea/kustomization.yaml": []byte(kustomization),
			"apps/tea/deployment.yaml":    []byte(deployment),
		},
		Message: "Seed ops repo",
		Author:  gitserver.Signature{Name: "Platform", Email: "platform@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return srv, url
}

func ref(t *testing.T, repo, hexByte string) Reference {
	t.Helper()
	r, err := ParseReference(repo + "@sha256:" + strings.Repeat(hexByte, 32))
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func request(url, path, image string, r Reference) Request {
	return Request{
		RepoURL:      url,
		Path:         path,
		ImageName:    image,
		Image:        r,
		SourceCommit: strings.Repeat("c", 40),
		RunID:        "tea-run-1",
		Auth:         creds,
		Timeout:      20 * time.Second,
	}
}

func TestPromoteKustomizeImage(t *testing.T) {
	_, url := opsRepo(t)
	img := ref(t, "127.0.0.1:5000/shop/tea", "1a")
	res, err := Promote(t.Context(), request(url, "apps/tea/kustomization.yaml", "tea", img))
	if err != nil {
		t.Fatal(err)
	}
	if !res.Changed || res.Attempts != 1 {
		t.Fatalf("result %+v, want a change in one attempt", res)
	}
	c, content := gittest.Head(t, url, gitUser, gitPass, "apps/tea/kustomization.yaml")
	if c.Hash.String() != res.Commit {
		t.Fatalf("remote head %s, promotion says %s", c.Hash, res.Commit)
	}
	if c.Author.Name != "Slipway" || c.Committer.Name != "Slipway" {
		t.Fatalf("author %q committer %q, want Slipway", c.Author.Name, c.Committer.Name)
	}
	for _, trailer := range []string{
		"\nSlipway-Source-Commit: " + strings.Repeat("c", 40) + "\n",
		"\nSlipway-Run: tea-run-1\n",
		"\nImage-Digest: " + img.Digest + "\n",
	} {
		if !strings.Contains(c.Message, trailer) {
			t.Fatalf("commit message lacks %q:\n%s", trailer, c.Message)
		}
	}
	want := "- name: tea\n  newName: 127.0.0.1:5000/shop/tea\n  digest: " + img.Digest + "\n- name: coffee\n  newTag: v1\n"
	if !strings.Contains(content, want) {
		t.Fatalf("kustomization after promotion:\n%s\nwant it to contain:\n%s", content, want)
	}

	again, err := Promote(t.Context(), request(url, "apps/tea/kustomization.yaml", "tea", img))
	if err != nil {
		t.Fatal(err)
	}
	if again.Changed || again.Commit != res.Commit {
		t.Fatalf("promoting the same image again gave %+v, want no new commit on %s", again, res.Commit)
	}
}

func TestPromoteSetterField(t *testing.T) {
	_, url := opsRepo(t)
	img := ref(t, "127.0.0.1:5000/shop/tea", "2b")
	if _, err := Promote(t.Context(), request(url, "apps/tea/deployment.yaml", "tea", img)); err != nil {
		t.Fatal(err)
	}
	_, content := gittest.Head(t, url, gitUser, gitPass, "apps/tea/deployment.yaml")
	want := "        image: " + img.String() + ` # {"slipway.dev/image": "tea"}` + "\n"
	if !strings.Contains(content, want) {
		t.Fatalf("deployment after promotion:\n%s\nwant it to contain:\n%s", content, want)
	}
}

func TestPromoteNoTargetChangesNothing(t *testing.T) {
	_, url := opsRepo(t)
	before, _ := gittest.Head(t, url, gitUser, gitPass, "apps/tea/kustomization.yaml")
	_, err := Promote(t.Context(), request(url, "apps/tea/kustomization.yaml", "milk", ref(t, "r.example/milk", "3c")))
	if !errors.Is(err, ErrNoTarget) || !strings.Contains(err.Error(), url) {
		t.Fatalf("error %v, want ErrNoTarget naming %s", err, url)
	}
	after, _ := gittest.Head(t, url, gitUser, gitPass, "apps/tea/kustomization.yaml")
	if after.Hash != before.Hash {
		t.Fatal("a failed promotion moved the branch")
	}
}

// TestPromoteRebasesOnRace moves the branch between the promotion's
// commit and its push, so the first push is rejected for certain: the
// promotion must fetch, apply its edit on the new head and land, keeping
// the other change.
func TestPromoteRebasesOnRace(t *testing.T) {
	_, url := opsRepo(t)
	tea, coffee := ref(t, "127.0.0.1:5000/shop/tea", "4d"), ref(t, "127.0.0.1:5000/shop/coffee", "5e")
	req := request(url, "apps/tea/kustomization.yaml", "tea", tea)
	req.beforePush = func(attempt int) {
		if attempt != 1 {
			return
		}
		other := request(url, "apps/tea/kustomization.yaml", "coffee", coffee)
		other.RunID = "coffee-run-1"
		if _, err := Promote(t.Context(), other); err != nil {
			t.Errorf("the competing promotion failed: %v", err)
		}
	}
	res, err := Promote(t.Context(), req)
	if err != nil {
		t.Fatal(err)
	}
	if res.Attempts != 2 {
		t.Fatalf("%d attempts, want 2 (one rejected push)", res.Attempts)
	}
	c, content := gittest.Head(t, url, gitUser, gitPass, "apps/tea/kustomization.yaml")
	if !strings.Contains(content, tea.Digest) || !strings.Contains(content, coffee.Digest) {
		t.Fatalf("both promotions must be in the file:\n%s", content)
	}
	if !strings.Contains(c.Message, "Slipway-Run: tea-run-1") || c.NumParents() != 1 {
		t.Fatalf("head is not tea's promotion on top of coffee's:\n%s", c.Message)
	}
	parent, err := c.Parent(0)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(parent.Message, "Slipway-Run: coffee-run-1") {
		t.Fatalf("parent of tea's promotion is not coffee's:\n%s", parent.Message)
	}
}

// TestPromoteConcurrent races real promotions against each other, with no
// hook deciding who wins.
func TestPromoteConcurrent(t *testing.T) {
	_, url := opsRepo(t)
	images := map[string]Reference{
		"tea":    ref(t, "127.0.0.1:5000/shop/tea", "6f"),
		"coffee": ref(t, "127.0.0.1:5000/shop/coffee", "70"),
	}
	var wg sync.WaitGroup
	for name, img := range images {
		wg.Go(func() {
			req := request(url, "apps/tea/kustomization.yaml", name, img)
			req.RunID = name + "-run"
			req.MaxAttempts = 10
			if _, err := Promote(t.Context(), req); err != nil {
				t.Errorf("promotion of %s: %v", name, err)
			}
		})
	}
	wg.Wait()
	_, content := gittest.Head(t, url, gitUser, gitPass, "apps/tea/kustomization.yaml")
	for name, img := range images {
		if !strings.Contains(content, img.Digest) {
			t.Fatalf("promotion of %s did not land:\n%s", name, content)
		}
	}
}

func TestPromoteStalledServerFailsWithinDeadline(t *testing.T) {
	st, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	url := st.URL() + "/ops.git"
	req := request(url, "apps/tea/kustomization.yaml", "tea", ref(t, "r.example/tea", "81"))
	req.Timeout = 2 * time.Second
	start := time.Now()
	_, err = Promote(t.Context(), req)
	took := time.Since(start)
	t.Log(err)
	if took > 5*time.Second {
		t.Fatalf("a stalled server held the promotion for %s with a 2s deadline", took)
	}
	if !errors.Is(err, gitsource.ErrTimeout) || !strings.Contains(err.Error(), "clone "+url) {
		t.Fatalf("error %v, want a timeout naming the clone of %s", err, url)
	}
}

// TestPromoteStalledPushFailsWithinDeadline puts the real git server behind
// a proxy that answers clones and fetches but never answers a push, the
// way the reference setup's last Jenkins stage hung.
func TestPromoteStalledPushFailsWithinDeadline(t *testing.T) {
	srv, _ := opsRepo(t)
	release := make(chan struct{})
	proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/git-receive-pack") {
			_, _ = io.Copy(io.Discard, r.Body)
			select {
			case <-r.Context().Done():
			case <-release:
			}
			return
		}
		srv.Handler().ServeHTTP(w, r)
	}))
	defer proxy.Close()
	defer close(release)
	url := proxy.URL + "/ops.git"
	req := request(url, "apps/tea/kustomization.yaml", "tea", ref(t, "r.example/tea", "92"))
	req.Timeout = 2 * time.Second
	start := time.Now()
	_, err := Promote(t.Context(), req)
	t.Log(err)
	if took := time.Since(start); took > 8*time.Second {
		t.Fatalf("a push that never got an answer held the promotion for %s", took)
	}
	if !errors.Is(err, gitsource.ErrTimeout) || !strings.Contains(err.Error(), "push to "+url) {
		t.Fatalf("error %v, want a timeout naming the push to %s", err, url)
	}
}

func TestPromoteWrongCredentials(t *testing.T) {
	_, url := opsRepo(t)
	req := request(url, "apps/tea/kustomization.yaml", "tea", ref(t, "r.example/tea", "a3"))
	req.Auth = &gitsource.Credentials{Username: gitUser, Password: "wrong-pass-d41d8"}
	_, err := Promote(t.Context(), req)
	t.Log(err)
	if !errors.Is(err, gitsource.ErrAuthentication) {
		t.Fatalf("error %v, want an authentication error", err)
	}
	if strings.Contains(err.Error(), "wrong-pass-d41d8") || strings.Contains(err.Error(), gitPass) {
		t.Fatalf("the error reveals a password: %v", err)
	}
	if !strings.Contains(err.Error(), url) || !strings.Contains(err.Error(), "clone") {
		t.Fatalf("error %v does not name the remote and the operation", err)
	}
}

func TestPromoteRefusesBadRequests(t *testing.T) {
	good := request("http://git.example/ops.git", "apps/kustomization.yaml", "tea", teaRef)
	cases := map[string]func(*Request){
		"credentials in URL": func(r *Request) { r.RepoURL = "http://bot:hunter2@git.example/ops.git" },
		"path escapes":       func(r *Request) { r.Path = "../etc/passwd" },
		"tag not digest":     func(r *Request) { r.Image = Reference{Repository: "r.example/tea", Digest: "v1"} },
		"forged trailer":     func(r *Request) { r.RunID = "x\nImage-Digest: sha256:00" },
		"ssh remote":         func(r *Request) { r.RepoURL = "ssh://git@git.example/ops.git" },
	}
	for name, mutate := range cases {
		t.Run(name, func(t *testing.T) {
			req := good
			mutate(&req)
			_, err := Promote(t.Context(), req)
			if err == nil {
				t.Fatal("accepted")
			}
			if strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error reveals the password: %v", err)
			}
		})
	}
}

// TestPromoteAsksTheGuard promotes twice into a kustomization and a
// marked manifest: the guard hears the source commit of what each file
// names, and its refusal leaves the file as it was.
func TestPromoteAsksTheGuard(t *testing.T) {
	_, url := opsRepo(t)
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for _, path := range []string{"apps/tea/kustomization.yaml", "apps/tea/deployment.yaml"} {
		t.Run(path, func(t *testing.T) {
			var heard []string
			guard := func(promoted string) error {
				heard = append(heard, promoted)
				if promoted == "1111111111111111111111111111111111111111" {
					return errors.New("refused by the guard")
				}
				return nil
			}
			first := request(url, path, "tea", ref(t, "registry.example.com/shop/tea", "ab"))
			first.SourceCommit, first.Guard = strings.Repeat("1", 40), guard
			if _, err := Promote(ctx, first); err != nil {
				t.Fatal(err)
			}
			second := request(url, path, "tea", ref(t, "registry.example.com/shop/tea", "cd"))
			second.SourceCommit, second.Guard = strings.Repeat("2", 40), guard
			_, err := Promote(ctx, second)
			if err == nil || !strings.Contains(err.Error(), "refused by the guard") {
				t.Fatalf("the guard's refusal gave %v", err)
			}
			if len(heard) != 2 || heard[0] != "" || heard[1] != strings.Repeat("1", 40) {
				t.Fatalf("the guard heard %q, want nothing promoted, then the first source commit", heard)
			}
			if _, content := gittest.Head(t, url, gitUser, gitPass, path); !strings.Contains(content, strings.Repeat("ab", 32)) {
				t.Fatalf("a refused promotion changed %s:\n%s", path, content)
			}
		})
	}
}
