package pipeline

import (
	"archive/tar"
	"archive/zip"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gittest"
)

// TestRunRefusesToPromoteAnOlderCommit replays the run of a commit older
// than the one the ops repository runs, as a replayed push would start.
func TestRunRefusesToPromoteAnOlderCommit(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	old := l.commit
	newer := l.commitSource(t, map[string][]byte{"NOTES.txt": []byte("a newer brew\n")}, "Newer")
	res, err := l.engine.Run(ctx, l.request("tea-newer", newer))
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	replay, err := l.engine.Run(ctx, l.request("tea-replayed", old))
	logSteps(t, replay)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepPromote || !strings.Contains(err.Error(), "older") {
		t.Fatalf("promoting an older commit ended with %v, want the promote step to refuse it", err)
	}
	if _, content := gittest.Head(t, l.opsURL, gitUser, gitPass, "apps/tea/kustomization.yaml"); !strings.Contains(content, res.Digest) {
		t.Fatalf("the ops repository no longer runs the newer build %s:\n%s", res.Digest, content)
	}
	// An explicit rollback may.
	req := l.request("tea-rollback", old)
	req.Rollback = true
	back, err := l.engine.Run(ctx, req)
	logSteps(t, back)
	if err != nil {
		t.Fatalf("an explicit rollback: %v", err)
	}
	if _, content := gittest.Head(t, l.opsURL, gitUser, gitPass, "apps/tea/kustomization.yaml"); !strings.Contains(content, back.Digest) {
		t.Fatalf("the rollback did not promote %s:\n%s", back.Digest, content)
	}
}

// moduleProxy lays out a GOPROXY directory serving example.com/greet
// v1.0.0, a module both Pipelines' builds depend on.
func moduleProxy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	at := filepath.Join(dir, "example.com", "greet", "@v")
	if err := os.MkdirAll(at, 0o755); err != nil {
		t.Fatal(err)
	}
	mod := "module example.com/greet\n\ngo 1.26\n"
	files := map[string]string{
		"list":        "v1.0.0\n",
		"v1.0.0.info": `{"Version":"v1.0.0","Time":"2026-01-01T00:00:00Z"}`,
		"v1.0.0.mod":  mod,
	}
	for n, c := range files {
		if err := os.WriteFile(filepath.Join(at, n), []byte(c), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	f, err := os.Create(filepath.Join(at, "v1.0.0.zip"))
	if err != nil {
		t.Fatal(err)
	}
	zw := zip.NewWriter(f)
	for n, c := range map[string]string{
		"go.mod":   mod,
		"greet.go": "package greet\n\n// Hello greets.\nfunc Hello() string { return \"hello from greet\" }\n",
	} {
		w, err := zw.Create("example.com/greet@v1.0.0/" + n)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := io.WriteString(w, c); err != nil {
			t.Fatal(err)
		}
	}
	if err := zw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return dir
}

// runImage extracts the Go binary of a pushed image and runs it.
func runImage(t *testing.T, ctx context.Context, l *lab, image string) string {
	t.Helper()
	ref, err := name.NewDigest(image)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(ref, l.remoteAuth(), remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	entry := strings.TrimPrefix(cfg.Config.Entrypoint[0], "/")
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(t.TempDir(), "app")
	for _, layer := range layers {
		rc, err := layer.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if err != nil {
				break
			}
			if hdr.Name == entry {
				b, _ := io.ReadAll(tr)
				if err := os.WriteFile(bin, b, 0o755); err != nil {
					t.Fatal(err)
				}
			}
		}
		rc.Close()
	}
	runCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(runCtx, bin).CombinedOutput()
	if err != nil {
		t.Fatalf("running %s of %s: %v\n%s", entry, image, err, out)
	}
	return string(out)
}

// TestTestStepCannotPoisonAnotherPipelinesBuild has one Pipeline's test
// command append an init function to a module in the Go module cache it
// can see; the next image another Pipeline builds from that module must
// not run it.
func TestTestStepCannotPoisonAnotherPipelinesBuild(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 8*time.Minute)
	defer cancel()
	// The server's own module cache, for this test alone.
	serverCache := t.TempDir()
	t.Setenv("GOMODCACHE", serverCache)
	proxy := moduleProxy(t)
	buildEnv := []string{"GOPROXY=file://" + proxy, "GOSUMDB=off", "GOFLAGS=-mod=mod"}
	for _, repo := range []string{"greeter.git", "attacker.git"} {
		if err := l.git.CreateRepo(ctx, repo); err != nil {
			t.Fatal(err)
		}
	}
	greeter := map[string][]byte{
		"go.mod":       []byte("module example.com/greeter\n\ngo 1.26\n\nrequire example.com/greet v1.0.0\n"),
		"main.go":      []byte("package main\n\nimport (\n\t\"fmt\"\n\n\t\"example.com/greet\"\n)\n\nfunc main() { fmt.Println(greet.Hello()) }\n"),
		"slipway.yaml": []byte("build:\n  package: .\n"),
	}
	greeterURL := l.git.RepoURL("greeter.git")
	first := l.commitTo(t, greeterURL, greeter, "Greet")
	req := l.request("greeter-1", first)
	req.Pipeline, req.Source.URL, req.Settings.ImageRepository, req.Settings.Promotion = "greeter", greeterURL, l.registry.Host()+"/shop/greeter", nil
	req.Settings.BuildEnv = buildEnv
	res, err := l.engine.Run(ctx, req)
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	if out := runImage(t, ctx, l, res.Image); !strings.Contains(out, "hello from greet") {
		t.Fatalf("the greeter image printed %q", out)
	}

	attackerURL := l.git.RepoURL("attacker.git")
	attack := l.commitTo(t, attackerURL, map[string][]byte{
		"go.mod":  []byte("module example.com/attacker\n\ngo 1.26\n"),
		"main.go": []byte("package main\n\nfunc main() {}\n"),
		// The module cache the command is given, and the server's own,
		// whose path an attacker can guess.
		"slipway.yaml": []byte(`test:
  command: |
    for d in "$(go env GOMODCACHE)/example.com/greet@v1.0.0" "` + serverCache + `/example.com/greet@v1.0.0"; do
      if [ -f "$d/greet.go" ]; then
        chmod -R u+w "$d" && printf '\nfunc init() { println("POISONED by another pipeline") }\n' >> "$d/greet.go" && echo "poisoned $d"
      else
        echo "no greet module in $d"
      fi
    done
`),
	}, "Innocent change")
	areq := l.request("attacker-1", attack)
	areq.Pipeline, areq.Source.URL, areq.Settings.ImageRepository, areq.Settings.Promotion = "attacker", attackerURL, l.registry.Host()+"/shop/attacker", nil
	res, err = l.engine.Run(ctx, areq)
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(readLog(t, res, StepTest))

	greeter["NOTES.txt"] = []byte("rebuild\n")
	second := l.commitTo(t, greeterURL, greeter, "Rebuild")
	req = l.request("greeter-2", second)
	req.Pipeline, req.Source.URL, req.Settings.ImageRepository, req.Settings.Promotion = "greeter", greeterURL, l.registry.Host()+"/shop/greeter", nil
	req.Settings.BuildEnv = buildEnv
	res, err = l.engine.Run(ctx, req)
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	if out := runImage(t, ctx, l, res.Image); strings.Contains(out, "POISONED") || !strings.Contains(out, "hello from greet") {
		t.Fatalf("the greeter image built after another Pipeline's test printed:\n%s", out)
	}
}

// TestTestStepCannotChangeWhatIsBuilt has the test command rewrite the
// source and git's history in its workspace: the image is built from the
// commit all the same.
func TestTestStepCannotChangeWhatIsBuilt(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	if err := l.git.CreateRepo(ctx, "printer.git"); err != nil {
		t.Fatal(err)
	}
	url := l.git.RepoURL("printer.git")
	commit := l.commitTo(t, url, map[string][]byte{
		"go.mod":       []byte("module example.com/printer\n\ngo 1.26\n"),
		"main.go":      []byte("package main\n\nimport \"fmt\"\n\nfunc main() { fmt.Println(\"built from the commit\") }\n"),
		"slipway.yaml": []byte("test:\n  command: sed -i 's/built from the commit/TAMPERED by the test/' main.go && rm -rf .git/objects && grep TAMPERED main.go\n"),
	}, "Print")
	req := l.request("printer-1", commit)
	req.Pipeline, req.Source.URL, req.Settings.ImageRepository, req.Settings.Promotion = "printer", url, l.registry.Host()+"/shop/printer", nil
	res, err := l.engine.Run(ctx, req)
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	if out := runImage(t, ctx, l, res.Image); strings.TrimSpace(out) != "built from the commit" {
		t.Fatalf("the image built after the test printed %q", out)
	}
}

// TestRunsOfOneNameInTwoNamespaces runs two runs of the same name for two
// namespaces' Pipelines: each keeps its own directory and logs.
func TestRunsOfOneNameInTwoNamespaces(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	other := l.commitSource(t, map[string][]byte{"NOTES.txt": []byte("the other team's brew\n")}, "Other")
	first := l.request("tea-run", l.commit)
	first.Namespace, first.Settings.Promotion = "team-a", nil
	a, err := l.engine.Run(ctx, first)
	if err != nil {
		t.Fatal(err)
	}
	second := l.request("tea-run", other)
	second.Namespace, second.Settings.Promotion = "team-b", nil
	b, err := l.engine.Run(ctx, second)
	if err != nil {
		t.Fatal(err)
	}
	for i := range a.Steps {
		if a.Steps[i].Log != "" && a.Steps[i].Log == b.Steps[i].Log {
			t.Fatalf("both runs wrote step %s to %s", a.Steps[i].Name, a.Steps[i].Log)
		}
	}
	if log := readLog(t, a, StepCheckout); !strings.Contains(log, "checked out "+l.commit) || !strings.Contains(a.Step(StepCheckout).Log, "team-a") {
		t.Fatalf("the first run's checkout log %s was overwritten:\n%s", a.Step(StepCheckout).Log, log)
	}
}

// TestStepLogIsBounded has the test command write far more than a step's
// log holds.
func TestStepLogIsBounded(t *testing.T) {
	l := startLab(t)
	l.engine.MaxLogBytes = 64 << 10
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	commit := l.commitSource(t, map[string][]byte{
		"slipway.yaml": []byte("test:\n  command: head -c 3000000 /dev/zero | tr '\\\\0' x; echo; echo after-the-$((40+2))\n"),
	}, "Flood the log")
	req := l.request("tea-flood", commit)
	req.Settings.Promotion = nil
	res, err := l.engine.Run(ctx, req)
	logSteps(t, res)
	if err != nil {
		t.Fatal(err)
	}
	info, err := os.Stat(res.Step(StepTest).Log)
	if err != nil {
		t.Fatal(err)
	}
	log := readLog(t, res, StepTest)
	if info.Size() > l.engine.MaxLogBytes+1024 || strings.Contains(log, "after-the-42") {
		t.Fatalf("the test log holds %d bytes, over its limit of %d", info.Size(), l.engine.MaxLogBytes)
	}
	if !strings.Contains(log, "reached its limit of 65536 bytes") || !strings.HasSuffix(log, "tests passed\n") {
		t.Fatalf("the truncated log does not say so, or lost its outcome:\n%s", log[len(log)-400:])
	}
}

// TestTestStepNetworkNeedsThePipeline asks for the network from a
// Pipeline that does not allow it.
func TestTestStepNetworkNeedsThePipeline(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	commit := l.commitSource(t, map[string][]byte{
		"slipway.yaml": []byte("test:\n  command: go test ./...\n  network: true\n"),
	}, "Ask for the network")
	req := l.request("tea-net", commit)
	res, err := l.engine.Run(ctx, req)
	logSteps(t, res)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepTest || !strings.Contains(err.Error(), "spec.test.allowNetwork") {
		t.Fatalf("a step asking for the network its Pipeline does not allow ended with %v", err)
	}
}

// TestRunBuildsOnlyCommitsOfItsBranch asks for a commit of another branch
// under the name of the watched one.
func TestRunBuildsOnlyCommitsOfItsBranch(t *testing.T) {
	l := startLab(t)
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
	defer cancel()
	feature, err := gitserver.CommitFiles(ctx, l.srcURL, gitAuth, gitserver.Commit{
		Branch: "feature", Files: map[string][]byte{"NOTES.txt": []byte("unreviewed\n")}, Message: "Unreviewed",
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	res, err := l.engine.Run(ctx, l.request("tea-feature", feature))
	logSteps(t, res)
	var se *StepError
	if !errors.As(err, &se) || se.Step != StepCheckout || !strings.Contains(err.Error(), "is not on branch main") {
		t.Fatalf("building a commit of another branch as main's ended with %v", err)
	}
}
