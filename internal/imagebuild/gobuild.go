package imagebuild

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// DefaultGoBuildTimeout bounds one go build when GoOptions.Timeout is
// zero: long enough for a cold module download, short enough that a hung
// build does not hold a pipeline run forever.
const DefaultGoBuildTimeout = 10 * time.Minute

// NonRootUser is the user images run as unless told otherwise: the
// "nonroot" user of distroless images, so that the same number means the
// same thing on either base.
const NonRootUser = "65532"

// passedEnv lists the variables go build may see from the caller's
// environment: where the toolchain, caches and module proxy are. Anything
// else, registry passwords and signing keys included, stays out.
var passedEnv = []string{
	"PATH", "HOME", "TMPDIR", "XDG_CACHE_HOME",
	"GOROOT", "GOPATH", "GOCACHE", "GOMODCACHE", "GOTOOLCHAIN",
	"GOPROXY", "GONOPROXY", "GOPRIVATE", "GONOSUMDB", "GOSUMDB", "GOINSECURE",
}

// GoOptions describes the build of one Go main package into an image.
type GoOptions struct {
	// Dir is the directory go build runs in: the module root of the
	// checked-out source, or a directory inside it.
	Dir string
	// Package is the main package, as go build takes it ("./cmd/tea");
	// "." when empty.
	Package string
	// Base is the image the binary is layered onto; EmptyBase when nil.
	Base v1.Image
	// Platform to build for; DefaultPlatform when OS is empty.
	Platform v1.Platform
	// SourceDateEpoch is the time every file and the image config carry;
	// the commit time of the source, so that a rebuild gives the same
	// digest. The Unix epoch when zero.
	SourceDateEpoch time.Time
	// User the image runs as; NonRootUser when empty.
	User string
	// Tags and Ldflags are passed to go build as -tags and -ldflags.
	Tags    []string
	Ldflags string
	// Labels are added to the image config.
	Labels map[string]string
	// Env adds KEY=VALUE settings (GOPROXY=off, GOFLAGS=-mod=vendor) to the
	// scrubbed environment go build runs in.
	Env []string
	// Timeout bounds go build; DefaultGoBuildTimeout when zero.
	Timeout time.Duration
}

// GoResult is a built Go image.
type GoResult struct {
	Image v1.Image
	// BinaryPath is where the binary is in the image, the entrypoint.
	BinaryPath string
	// BuildInfo is what the binary records about its build: main module,
	// dependencies and settings; the input of SBOM.
	BuildInfo *debug.BuildInfo
	// Parameters are the settings that decided the result, for the
	// provenance statement.
	Parameters map[string]any
}

// BuildGo compiles a Go main package as ko does (static, CGO_ENABLED=0,
// -trimpath) and layers the binary onto the base image at /app/<name>, with
// the image running it as a non-root user.
func BuildGo(ctx context.Context, o GoOptions) (*GoResult, error) {
	if o.Dir == "" {
		return nil, errors.New("go image build: a source directory is required")
	}
	pkg := o.Package
	if pkg == "" {
		pkg = "."
	}
	platform := o.Platform
	if platform.OS == "" {
		platform = DefaultPlatform()
	}
	user := o.User
	if user == "" {
		user = NonRootUser
	}
	base := o.Base
	if base == nil {
		var err error
		if base, err = EmptyBase(platform); err != nil {
			return nil, fmt.Errorf("go image build of %s: %w", pkg, err)
		}
	}
	epoch := o.SourceDateEpoch
	if epoch.IsZero() {
		epoch = time.Unix(0, 0)
	}
	epoch = epoch.UTC().Truncate(time.Second)

	binary, info, err := goBuild(ctx, o, pkg, platform)
	if err != nil {
		return nil, err
	}
	name := path.Base(info.Path)
	binPath := "/app/" + name

	lb := newLayerBuilder()
	if err := lb.addFile(binPath, binary, 0o755, 0, 0); err != nil {
		return nil, fmt.Errorf("go image build of %s: %w", pkg, err)
	}
	layer, err := lb.layer(epoch)
	if err != nil {
		return nil, fmt.Errorf("go image build of %s: %w", pkg, err)
	}
	img, err := mutate.Append(base, mutate.Addendum{
		Layer: layer,
		History: v1.History{
			Created:   v1.Time{Time: epoch},
			CreatedBy: "slipway go build " + info.Path,
			Comment:   info.GoVersion,
		},
	})
	if err != nil {
		return nil, fmt.Errorf("go image build of %s: append binary layer: %w", pkg, err)
	}
	img, err = configure(img, func(c *v1.Config) {
		c.Entrypoint = []string{binPath}
		c.Cmd = nil
		c.User = user
		c.WorkingDir = "/"
		for k, v := range o.Labels {
			if c.Labels == nil {
				c.Labels = map[string]string{}
			}
			c.Labels[k] = v
		}
	}, epoch)
	if err != nil {
		return nil, fmt.Errorf("go image build of %s: %w", pkg, err)
	}
	return &GoResult{
		Image:      img,
		BinaryPath: binPath,
		BuildInfo:  info,
		Parameters: map[string]any{
			"package":         pkg,
			"platform":        platform.String(),
			"tags":            o.Tags,
			"ldflags":         o.Ldflags,
			"user":            user,
			"sourceDateEpoch": epoch.Unix(),
			"goVersion":       info.GoVersion,
		},
	}, nil
}

// configure edits the image config and sets its creation time, the one
// field of the config that would otherwise change on every build.
func configure(img v1.Image, edit func(*v1.Config), created time.Time) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	cf = cf.DeepCopy()
	edit(&cf.Config)
	cf.Created = v1.Time{Time: created}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, fmt.Errorf("write image config: %w", err)
	}
	return img, nil
}

func goBuild(ctx context.Context, o GoOptions, pkg string, platform v1.Platform) ([]byte, *debug.BuildInfo, error) {
	timeout := o.Timeout
	if timeout == 0 {
		timeout = DefaultGoBuildTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()

	out, err := os.MkdirTemp("", "slipway-gobuild-*")
	if err != nil {
		return nil, nil, fmt.Errorf("go build %s: create output directory: %w", pkg, err)
	}
	defer os.RemoveAll(out)
	binFile := filepath.Join(out, "app")

	// No version control stamping: it runs git in the source, whose
	// configuration an untrusted checkout could bring; provenance records
	// the commit instead.
	args := []string{"build", "-trimpath", "-buildvcs=false", "-o", binFile}
	if len(o.Tags) > 0 {
		args = append(args, "-tags", strings.Join(o.Tags, ","))
	}
	if o.Ldflags != "" {
		args = append(args, "-ldflags", o.Ldflags)
	}
	args = append(args, "--", pkg)

	env := []string{
		"CGO_ENABLED=0",
		"GOOS=" + platform.OS,
		"GOARCH=" + platform.Architecture,
		// Fetching a private module must fail, not wait for a password.
		"GIT_TERMINAL_PROMPT=0",
		"GIT_SSH_COMMAND=ssh -o BatchMode=yes",
	}
	if platform.Architecture == "arm" && platform.Variant != "" {
		env = append(env, "GOARM="+strings.TrimPrefix(platform.Variant, "v"))
	}
	for _, k := range passedEnv {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	env = append(env, o.Env...)

	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = o.Dir
	cmd.Env = env
	var output bytes.Buffer
	cmd.Stdout = &output
	cmd.Stderr = &output
	// go build runs the compiler and linker as children; killing the group
	// ends them too when the deadline passes.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	start := time.Now()
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = fmt.Errorf("%w after %s (%w)", ctx.Err(), time.Since(start).Round(time.Millisecond), err)
		}
		return nil, nil, fmt.Errorf("go build %s in %s for %s: %w\n%s", pkg, o.Dir, platform, err, tail(output.Bytes(), 4096))
	}
	binary, err := os.ReadFile(binFile)
	if err != nil {
		return nil, nil, fmt.Errorf("go build %s: read the binary: %w", pkg, err)
	}
	info, err := buildinfo.Read(bytes.NewReader(binary))
	if err != nil {
		return nil, nil, fmt.Errorf("go build %s: read build information from the binary: %w", pkg, err)
	}
	return binary, info, nil
}

// tail keeps the end of a long compiler output, where the errors are.
func tail(b []byte, n int) string {
	b = bytes.TrimSpace(b)
	if len(b) > n {
		b = append([]byte("…"), b[len(b)-n:]...)
	}
	return string(b)
}
