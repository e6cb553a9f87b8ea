package pipeline

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/gittest"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
)

const (
	gitUser     = "slipway-ci"
	gitPass     = "git-pass-5b1e0c"
	regUser     = "ci"
	regPass     = "registry-pass-93d2aa"
	deployToken = "s3cr3t-deploy-token-42"
)

var gitAuth = gitserver.BasicAuth{Username: gitUser, Password: gitPass}

const opsKustomization = `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
- deployment.yaml
images:
- name: tea
  newTag: v1
`

// lab is a real git server with the tea service's source and an ops
// repository, a real registry, and a signing key.
type lab struct {
	git      *gitserver.Server
	registry *registry.Server
	key      *ecdsa.PrivateKey
	srcURL   string
	opsURL   string
	commit   string
	engine   *Engine
}

func startLab(t *testing.T) *lab {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	gs, err := gitserver.New(t.TempDir(), gitUser, gitPass)
	if err != nil {
		t.Fatal(err)
	}
	for _, repo := range []string{"tea.git", "ops.git"} {
		if err := gs.CreateRepo(ctx, repo); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := gs.Start(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gs.Close() })
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Username: regUser, Password: regPass})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	l := &lab{git: gs, registry: reg, key: key, srcURL: gs.RepoURL("tea.git"), opsURL: gs.RepoURL("ops.git"),
		engine: &Engine{Dir: t.TempDir(), Executor: localExecutor, CacheDir: testCaches}}

	files := map[string][]byte{}
	entries, err := os.ReadDir("testdata/tea")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join("testdata/tea", e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		files[e.Name()] = b
	}
	l.commit = l.commitSource(t, files, "Serve tea")
	if _, err := gitserver.CommitFiles(ctx, l.opsURL, gitAuth, gitserver.Commit{
		Files:   map[string][]byte{"apps/tea/kustomization.yaml": []byte(opsKustomization)},
		Message: "Seed ops repo",
		Author:  gitserver.Signature{Name: "Platform", Email: "platform@example.com"},
	}); err != nil {
		t.Fatal(err)
	}
	return l
}

func (l *lab) commitSource(t *testing.T, files map[string][]byte, msg string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	sha, err := gitserver.CommitFiles(ctx, l.srcURL, gitAuth, gitserver.Commit{
		Files: files, Message: msg, Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

// commitTo pushes files to another repository of the lab's git server.
func (l *lab) commitTo(t *testing.T, url string, files map[string][]byte, msg string) string {
	t.Helper()
	saved := l.srcURL
	l.srcURL = url
	defer func() { l.srcURL = saved }()
	return l.commitSource(t, files, msg)
}

func (l *lab) request(runID, commit string) Request {
	return Request{
		Namespace: "shop", Pipeline: "tea",
		RunID: runID,
		Source: Source{
			URL: l.srcURL, Commit: commit, Branch: "main",
			Auth: &gitsource.Credentials{Username: gitUser, Password: gitPass},
		},
		Settings: Settings{
			ImageRepository: l.registry.Host() + "/shop/tea",
			Registry:        RegistryAuth{Username: regUser, Password: regPass},
			SigningKey:      l.key,
			Promotion: &Promotion{
				RepoURL: l.opsURL, Path: "apps/tea/kustomization.yaml", ImageName: "tea",
				Auth: &gitsource.Credentials{Username: gitUser, Password: gitPass},
			},
			Secrets: map[string]string{"DEPLOY_TOKEN": deployToken},
		},
	}
}

func (l *lab) remoteAuth() remote.Option {
	return remote.WithAuth(&authn.Basic{Username: regUser, Password: regPass})
}

func logSteps(t *testing.T, res *Result) {
	t.Helper()
	var total time.Duration
	for _, s := range res.Steps {
		total += s.Duration()
		t.Logf("%-10s %-9s %8s  %s", s.Name, s.State, s.Duration().Round(time.Millisecond), s.Message)
	}
	t.Logf("checkout → promoted: %s", total.Round(time.Millisecond))
}

func readLog(t *testing.T, res *Result, step StepName) string {
	t.Helper()
	s := res.Step(step)
	if s == nil || s.Log == "" {
		t.Fatalf("step %s has no log", step)
	}
	b, err := os.ReadFile(s.Log)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestRunEndToEnd(t *testing.T) {
	l := startLab(t)
	// The server's own environment must not reach the test command.
	t.Setenv("SLIPWAY_SERVER_ONLY", "leaked")
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()

	res, err := l.engine.Run(ctx, l.request("tea-1", l.commit))
	logSteps(t, res)
	if err != nil {
		t.Fatalf("%v\ntest log:\n%s", err, readLog(t, res, StepTest))
	}
	for _, s := range res.Steps {
		if s.State != StepSucceeded {
			t.Fatalf("step %s is %s, want Succeeded", s.Name, s.State)
		}
	}

	digest, err := name.NewDigest(res.Image)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := remote.Head(digest, l.remoteAuth(), remote.WithContext(ctx)); err != nil {
		t.Fatalf("the registry does not hold %s: %v", digest, err)
	}
	v, err := signing.Verify(ctx, digest, &l.key.PublicKey,
		[]string{imagebuild.PredicateSPDX, imagebuild.PredicateSLSAProvenance}, l.remoteAuth())
	if err != nil {
		t.Fatalf("verify %s: %v", digest, err)
	}
	if v.Signatures != 1 {
		t.Fatalf("%d signatures, want 1", v.Signatures)
	}
	for _, a := range v.Attestations {
		if a.PredicateType == imagebuild.PredicateSLSAProvenance && !strings.Contains(string(a.Statement), l.commit) {
			t.Fatalf("provenance does not name the source commit:\n%s", a.Statement)
		}
	}

	c, content := gittest.Head(t, l.opsURL, gitUser, gitPass, "apps/tea/kustomization.yaml")
	if c.Hash.String() != res.PromotionCommit || c.Author.Name != "Slipway" {
		t.Fatalf("ops head %s by %s, want the promotion %s by Slipway", c.Hash, c.Author.Name, res.PromotionCommit)
	}
	for _, want := range []string{"Slipway-Source-Commit: " + l.commit, "Slipway-Run: tea-1", "Image-Digest: " + res.Digest} {
		if !strings.Contains(c.Message, want) {
			t.Fatalf("promotion commit lacks %q:\n%s", want, c.Message)
		}
	}
	if !strings.Contains(content, "digest: "+res.Digest) || !strings.Contains(content, "newName: "+digest.Context().Name()) {
		t.Fatalf("ops kustomization does not pin the image:\n%s", content)
	}

	testLog := readLog(t, res, StepTest)
	if !strings.Contains(testLog, "deploy token: "+Mask) || !strings.Contains(testLog, "ok") {
		t.Fatalf("test log lacks the masked token or the test result:\n%s", testLog)
	}
	for _, s := range res.Steps {
		b, err := os.ReadFile(s.Log)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{deployToken, regPass, gitPass} {
			if strings.Contains(string(b), secret) {
				t.Fatalf("the %s log reveals a secret:\n%s", s.Name, b)
			}
		}
	}

	// The same commit again, warm: the same digest, nothing new to promote.
	again, err := l.engine.Run(ctx, l.request("tea-2", l.commit))
	logSteps(t, again)
	if err != nil {
		t.Fatal(err)
	}
	if again.Digest != res.Digest {
		t.Fatalf("the same commit built twice gave %s and %s", res.Digest, again.Digest)
	}
	if again.PromotionCommit != res.PromotionCommit {
		t.Fatalf("promoting the same digest again made commit %s", again.PromotionCommit)
	}
}

func TestRunFailingTestStopsBeforeBuild(t *testing.T) {
	l := startLab(t)
	commit := l.commitSource(t, map[string][]byte{
		"fail_test.go": []byte("package main\n\nimport \"testing\"\n\nfunc TestFails(t *testing.T) { t.Fatal(\"the kettle is cold\") }\n"),
	}, "Add a failing test")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := l.engine.Run(ctx, l.request("tea-fail", commit))
	logSteps(t, res)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepTest {
		t.Fatalf("error %v, want a failure of the test step", err)
	}
	if !strings.Contains(err.Error(), "exited with status 1") {
		t.Fatalf("error %v does not give the exit status", err)
	}
	for _, n := range []StepName{StepBuild, StepProvenance, StepPush, StepSign, StepPromote} {
		if s := res.Step(n); s.State != StepSkipped || s.Log != "" {
			t.Fatalf("step %s is %s with log %q after a failed test, want Skipped without a log", n, s.State, s.Log)
		}
	}
	if log := readLog(t, res, StepTest); !strings.Contains(log, "the kettle is cold") || !strings.Contains(log, "slipway: failed") {
		t.Fatalf("the test log does not keep the failure:\n%s", log)
	}
	if c, _ := gittest.Head(t, l.opsURL, gitUser, gitPass, "apps/tea/kustomization.yaml"); c.Author.Name == "Slipway" {
		t.Fatal("a failed run promoted")
	}
}

func TestRunRegistryRefusesAuth(t *testing.T) {
	l := startLab(t)
	req := l.request("tea-badauth", l.commit)
	req.Settings.Registry.Password = "not-the-registry-pass-77"
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := l.engine.Run(ctx, req)
	logSteps(t, res)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepPush {
		t.Fatalf("error %v, want a failure of the push step", err)
	}
	msg := err.Error()
	t.Log(msg)
	if !strings.Contains(msg, "refused the credentials of user \"ci\"") || !strings.Contains(msg, l.registry.Host()) {
		t.Fatalf("error %q does not say the registry refused the credentials", msg)
	}
	if strings.Contains(msg, "not-the-registry-pass-77") {
		t.Fatal("the error reveals the password")
	}
	if b := res.Step(StepBuild); b.State != StepSucceeded {
		t.Fatalf("build is %s, want Succeeded before the push", b.State)
	}
	if p := res.Step(StepPromote); p.State != StepSkipped {
		t.Fatalf("promote is %s after a failed push", p.State)
	}
}

func TestRunRefusesBadRequests(t *testing.T) {
	e := &Engine{Dir: t.TempDir(), Executor: localExecutor}
	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	good := Request{Namespace: "shop", Pipeline: "tea", RunID: "r1", Source: Source{URL: "http://git.example/tea.git", Commit: strings.Repeat("a", 40), Branch: "main"},
		Settings: Settings{ImageRepository: "r.example/tea", SigningKey: key}}
	for name, mutate := range map[string]func(*Request){
		"run id escapes":  func(r *Request) { r.RunID = "../x" },
		"short commit":    func(r *Request) { r.Source.Commit = "abc123" },
		"no signing key":  func(r *Request) { r.Settings.SigningKey = nil },
		"bad image repo":  func(r *Request) { r.Settings.ImageRepository = "R.example/UPPER:tag" },
		"no source URL":   func(r *Request) { r.Source.URL = "" },
		"no image target": func(r *Request) { r.Settings.ImageRepository = "" },
		"no branch":       func(r *Request) { r.Source.Branch = "" },
		"namespace path":  func(r *Request) { r.Namespace = "../shop" },
		"pipeline path":   func(r *Request) { r.Pipeline = "tea/../../x" },
	} {
		t.Run(name, func(t *testing.T) {
			req := good
			mutate(&req)
			if res, err := e.Run(t.Context(), req); err == nil || res != nil {
				t.Fatalf("accepted: %v %v", res, err)
			}
		})
	}
}

func TestRunDockerfile(t *testing.T) {
	l := startLab(t)
	commit := l.commitSource(t, map[string][]byte{
		"slipway.yaml": []byte("build:\n  dockerfile: Dockerfile\n"),
		"Dockerfile":   []byte("FROM scratch\nCOPY main.go /src/main.go\nUSER 65532\nENTRYPOINT [\"/src/main.go\"]\n"),
	}, "Build from a Dockerfile")
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	res, err := l.engine.Run(ctx, l.request("tea-dockerfile", commit))
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	if s := res.Step(StepTest); s.State != StepSkipped {
		t.Fatalf("test step is %s without a test command, want Skipped", s.State)
	}
	digest, err := name.NewDigest(res.Image)
	if err != nil {
		t.Fatal(err)
	}
	v, err := signing.Verify(ctx, digest, &l.key.PublicKey, []string{imagebuild.PredicateSLSAProvenance}, l.remoteAuth())
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(v.Attestations[0].Statement), DockerfileBuildType) {
		t.Fatalf("provenance does not record the Dockerfile build type:\n%s", v.Attestations[0].Statement)
	}
}
