package imagebuild

import (
	"archive/tar"
	"context"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

const teaMain = `package main

import (
	"fmt"

	"github.com/google/go-cmp/cmp"
)

func main() { fmt.Println("tea", cmp.Equal(1, 1)) }
`

// writeModule lays out a small Go service that depends on one module, the
// shape of the demo services. go-cmp is already in the module cache (it is
// a dependency of this repository), so the build works without a network.
func writeModule(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod":          "module example.com/tea\n\ngo 1.26\n\nrequire github.com/google/go-cmp v0.7.0\n",
		"cmd/tea/main.go": teaMain,
	}
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// offlineEnv lets go build fill go.sum from the module cache and nothing
// else.
var offlineEnv = []string{"GOFLAGS=-mod=mod", "GOPROXY=off", "GOSUMDB=off"}

func buildTea(t *testing.T, ctx context.Context, dir string, epoch time.Time) *GoResult {
	t.Helper()
	res, err := BuildGo(ctx, GoOptions{
		Dir:             dir,
		Package:         "./cmd/tea",
		SourceDateEpoch: epoch,
		Env:             offlineEnv,
		Labels:          map[string]string{"org.opencontainers.image.revision": "abc123"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

func digest(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestBuildGoReproducible(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	dir := writeModule(t)
	epoch := time.Date(2025, 3, 14, 15, 9, 26, 0, time.UTC)

	first := buildTea(t, ctx, dir, epoch)
	// A second checkout of the same source in another directory must give
	// the same image: -trimpath keeps the path out of the binary.
	other := writeModule(t)
	start := time.Now()
	second := buildTea(t, ctx, other, epoch)
	t.Logf("warm build: %s", time.Since(start))
	if a, b := digest(t, first.Image), digest(t, second.Image); a != b {
		t.Fatalf("same source and epoch gave %s and %s", a, b)
	}
	later := buildTea(t, ctx, dir, epoch.Add(time.Hour))
	if digest(t, later.Image) == digest(t, first.Image) {
		t.Fatal("a different SOURCE_DATE_EPOCH gave the same digest")
	}

	cf, err := first.Image.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if got := cf.Config.Entrypoint; len(got) != 1 || got[0] != "/app/tea" || first.BinaryPath != "/app/tea" {
		t.Errorf("entrypoint %v, binary path %s", got, first.BinaryPath)
	}
	if cf.Config.User != NonRootUser || cf.Config.WorkingDir != "/" || !cf.Created.Time.Equal(epoch) {
		t.Errorf("config user %q workdir %q created %s", cf.Config.User, cf.Config.WorkingDir, cf.Created.Time)
	}
	if cf.OS != "linux" || cf.Config.Labels["org.opencontainers.image.revision"] != "abc123" {
		t.Errorf("config os %q labels %v", cf.OS, cf.Config.Labels)
	}
	if first.BuildInfo.Main.Path != "example.com/tea" || first.BuildInfo.Path != "example.com/tea/cmd/tea" {
		t.Errorf("build info main %q path %q", first.BuildInfo.Main.Path, first.BuildInfo.Path)
	}
	for _, s := range first.BuildInfo.Settings {
		if s.Key == "CGO_ENABLED" && s.Value != "0" || s.Key == "-trimpath" && s.Value != "true" {
			t.Errorf("build setting %s=%s", s.Key, s.Value)
		}
	}
}

// TestBuildGoImageRuns pushes the image to the registry, pulls it back,
// unpacks its layer and runs the binary: what the cluster will do, minus
// the container runtime.
func TestBuildGoImageRuns(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	if DefaultPlatform().Architecture != "amd64" && DefaultPlatform().Architecture != "arm64" {
		t.Skip("the binary is only run on common architectures")
	}
	res := buildTea(t, ctx, writeModule(t), time.Unix(1700000000, 0))
	reg := startRegistry(t)
	ref, err := Push(ctx, res.Image, reg.Host()+"/demo/tea:v1", reg.auth())
	if err != nil {
		t.Fatal(err)
	}
	if ref.DigestStr() != digest(t, res.Image).String() {
		t.Fatalf("pushed %s, built %s", ref, digest(t, res.Image))
	}
	pulled, err := remote.Image(ref, reg.auth(), remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	layers, err := pulled.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("layers: %d, %v", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	var names []string
	bin := filepath.Join(t.TempDir(), "tea")
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		if hdr.Uid != 0 || hdr.Gid != 0 || hdr.ModTime.Unix() != 1700000000 {
			t.Errorf("%s: uid %d gid %d mtime %s", hdr.Name, hdr.Uid, hdr.Gid, hdr.ModTime)
		}
		if hdr.Name == "app/tea" {
			if hdr.Mode != 0o755 {
				t.Errorf("binary mode %o", hdr.Mode)
			}
			data, err := io.ReadAll(tr)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(bin, data, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	if strings.Join(names, " ") != "app/ app/tea" {
		t.Fatalf("layer entries %v", names)
	}
	out, err := exec.CommandContext(ctx, bin).CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "tea true" {
		t.Fatalf("running the built binary: %v: %s", err, out)
	}
}

func TestBuildGoFailures(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()

	t.Run("compile error", func(t *testing.T) {
		dir := t.TempDir()
		for name, content := range map[string]string{
			"go.mod":  "module example.com/broken\n\ngo 1.26\n",
			"main.go": "package main\n\nfunc main() { undefinedThing() }\n",
		} {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		_, err := BuildGo(ctx, GoOptions{Dir: dir, Env: offlineEnv})
		if err == nil || !strings.Contains(err.Error(), "go build .") || !strings.Contains(err.Error(), "undefined: undefinedThing") {
			t.Fatalf("want an error naming the package and the compiler's message, got %v", err)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		_, err := BuildGo(ctx, GoOptions{Dir: writeModule(t), Package: "./cmd/tea", Env: offlineEnv, Timeout: time.Millisecond})
		if err == nil || !strings.Contains(err.Error(), "deadline exceeded") {
			t.Fatalf("want a deadline error, got %v", err)
		}
	})

	t.Run("scrubbed environment", func(t *testing.T) {
		// A stand-in go records the environment it was given.
		shim := t.TempDir()
		envFile := filepath.Join(shim, "env")
		script := "#!/bin/sh\nenv > " + envFile + "\necho shim refuses >&2\nexit 3\n"
		if err := os.WriteFile(filepath.Join(shim, "go"), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
		t.Setenv("PATH", shim+string(os.PathListSeparator)+os.Getenv("PATH"))
		t.Setenv("REGISTRY_PASSWORD", "hunter2-secret")
		t.Setenv("GOFLAGS", "-toolexec=/tmp/evil")
		_, err := BuildGo(ctx, GoOptions{Dir: t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), "shim refuses") {
			t.Fatalf("want the shim's failure, got %v", err)
		}
		env, err := os.ReadFile(envFile)
		if err != nil {
			t.Fatal(err)
		}
		for _, bad := range []string{"hunter2-secret", "toolexec"} {
			if strings.Contains(string(env), bad) {
				t.Errorf("go build saw %q in its environment", bad)
			}
		}
		for _, want := range []string{"CGO_ENABLED=0", "GOOS=linux", "GIT_TERMINAL_PROMPT=0"} {
			if !strings.Contains(string(env), want+"\n") {
				t.Errorf("go build environment lacks %s", want)
			}
		}
	})
}

// BenchmarkBuildGo measures a warm build of the demo-shaped service: go
// build with a warm cache, layering and the digest, without pushing.
func BenchmarkBuildGo(b *testing.B) {
	ctx := b.Context()
	dir := b.TempDir()
	for name, content := range map[string]string{
		"go.mod":          "module example.com/tea\n\ngo 1.26\n\nrequire github.com/google/go-cmp v0.7.0\n",
		"cmd/tea/main.go": teaMain,
	} {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			b.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for b.Loop() {
		res, err := BuildGo(ctx, GoOptions{Dir: dir, Package: "./cmd/tea", Env: offlineEnv, SourceDateEpoch: time.Unix(1700000000, 0)})
		if err != nil {
			b.Fatal(err)
		}
		if _, err := res.Image.Digest(); err != nil {
			b.Fatal(err)
		}
	}
}
