package imagebuild

import (
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// GoToolchainDir is where ToolchainBase puts the Go toolchain.
const GoToolchainDir = "/usr/local/go"

// ToolchainBase returns an image holding this machine's Go toolchain (the
// GOROOT `go env` reports) at GoToolchainDir, with its bin on PATH: the
// base of an image that runs go build itself, as slipway server does for
// the Go images its pipelines build. The toolchain's binaries are static,
// so no other file is needed. Only what go build reads is copied: the go
// command, the compiler and linker tools for the platform, the standard
// library's sources and headers; not tests, test data, documentation or
// the toolchain's own sources. The same toolchain gives the same layer.
func ToolchainBase(ctx context.Context, platform v1.Platform, epoch time.Time) (v1.Image, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "go", "env", "GOROOT", "GOOS", "GOARCH", "GOVERSION").Output()
	if err != nil {
		return nil, fmt.Errorf("go toolchain layer: go env: %w", err)
	}
	env := strings.Fields(string(out))
	if len(env) != 4 {
		return nil, fmt.Errorf("go toolchain layer: go env printed %q", out)
	}
	goroot, goos, goarch, goversion := env[0], env[1], env[2], env[3]
	if goos != platform.OS || goarch != platform.Architecture {
		return nil, fmt.Errorf("go toolchain layer: this machine's toolchain is for %s/%s, the image for %s", goos, goarch, platform)
	}
	epoch = epoch.UTC().Truncate(time.Second)
	lb := newLayerBuilder()
	tools := path.Join("pkg", "tool", goos+"_"+goarch)
	err = filepath.WalkDir(goroot, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(goroot, p)
		if err != nil {
			return err
		}
		rel = filepath.ToSlash(rel)
		if d.IsDir() {
			if rel != "." && !toolchainDir(rel, tools) {
				return filepath.SkipDir
			}
			return nil
		}
		if !toolchainFile(rel, tools) || !d.Type().IsRegular() {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		mode := int64(0o644)
		if info.Mode()&0o111 != 0 {
			mode = 0o755
		}
		return lb.addFile(path.Join(GoToolchainDir, rel), data, mode, 0, 0)
	})
	if err != nil {
		return nil, fmt.Errorf("go toolchain layer from %s: %w", goroot, err)
	}
	layer, err := lb.layer(epoch)
	if err != nil {
		return nil, fmt.Errorf("go toolchain layer: %w", err)
	}
	base, err := EmptyBase(platform)
	if err != nil {
		return nil, err
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "slipway go toolchain " + goversion},
	})
	if err != nil {
		return nil, fmt.Errorf("go toolchain layer: %w", err)
	}
	return configure(img, func(c *v1.Config) {
		c.Env = append(c.Env, "PATH="+GoToolchainDir+"/bin")
	}, epoch)
}

// toolchainDir reports whether the walk enters the GOROOT directory rel.
func toolchainDir(rel, tools string) bool {
	switch {
	case rel == "bin" || rel == "pkg" || rel == "pkg/tool" || rel == "src":
		return true
	case rel == tools || strings.HasPrefix(rel, tools+"/"):
		return true
	case rel == "pkg/include" || strings.HasPrefix(rel, "pkg/include/"):
		return true
	case strings.HasPrefix(rel, "src/"):
		// The toolchain's own sources are not needed to build programs.
		return rel != "src/cmd" && path.Base(rel) != "testdata"
	}
	return false
}

// toolchainFile reports whether the GOROOT file rel goes into the layer.
func toolchainFile(rel, tools string) bool {
	switch {
	case rel == "VERSION" || rel == "go.env" || rel == "bin/go":
		return true
	case strings.HasPrefix(rel, tools+"/"), strings.HasPrefix(rel, "pkg/include/"):
		return true
	case strings.HasPrefix(rel, "src/"):
		return !strings.HasSuffix(rel, "_test.go")
	}
	return false
}
