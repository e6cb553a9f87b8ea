package lab

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/webhook"
)

// ServerImageRepository is the repository of Slipway's server image in
// the lab's registry; RunnerImageRepository, of its runner image.
const (
	ServerImageRepository = "slipway/server"
	RunnerImageRepository = "slipway/runner"
)

// What each pipeline test Pod of Slipway installed in the lab may use.
const (
	labTestCPU    = "1"
	labTestMemory = "3Gi"
)

// busyboxFile is Debian's static busybox (package busybox-static), the
// runner image's shell.
const busyboxFile = "/bin/busybox"

// slipwayModule is the module a server image is built from.
const slipwayModule = "slipway.dev/slipway"

// ServerImageOptions describe a build of Slipway's server image.
type ServerImageOptions struct {
	// Source is a checkout of Slipway: its module root or a directory in
	// it; the current directory when empty.
	Source string
	// Repository is where the image is pushed: registry host and path,
	// without a tag. The tag is the version.
	Repository string
	// RunnerRepository, when set, is where the runner image is pushed
	// (the same tag): the server image plus a static busybox.
	RunnerRepository string
	// Busybox is the runner image's statically linked busybox;
	// busyboxFile when nil.
	Busybox []byte
	// Key signs the image and its SBOM.
	Key *ecdsa.PrivateKey
	// Remote carries the registry's credentials.
	Remote []remote.Option
	// Progress receives one line per step; may be nil.
	Progress func(format string, args ...any)
}

// ServerImages are the images PushServerImage pushed, pinned by digest.
type ServerImages struct {
	// Server runs slipway server: what `slipway install --image` takes.
	Server string
	// Runner checks out and runs pipeline test commands in Pods, what
	// `slipway install --runner-image` takes; empty unless asked for.
	Runner string
}

// PushServerImage builds ./cmd/slipway of a checkout of Slipway with
// Slipway's own daemonless builder, onto the Go toolchain (the server
// runs go build for the Go images its pipelines build), pushes it, signs
// it and its SPDX SBOM with the key, checks the signature as `cosign
// verify` would, and returns the image reference pinned by digest, what
// `slipway install --image` takes. The version (git describe) is stamped
// into the binary and is the tag; the commit time is SOURCE_DATE_EPOCH,
// so a rebuild of the same commit gives the same digest.
//
// With o.RunnerRepository it also pushes and signs the runner image: the
// same layers plus a static busybox for sh. The server image stays
// without a shell: it holds the server's credentials, and nothing in it
// needs one; test Pods, which run scripts, hold none of them.
func PushServerImage(ctx context.Context, o ServerImageOptions) (ServerImages, error) {
	progress := func(format string, args ...any) {
		if o.Progress != nil {
			o.Progress(format, args...)
		}
	}
	if o.Key == nil || o.Repository == "" {
		return ServerImages{}, errors.New("server image: a repository and a signing key are required")
	}
	src, err := checkout(ctx, o.Source)
	if err != nil {
		return ServerImages{}, err
	}
	platform := imagebuild.DefaultPlatform()
	start := time.Now()
	base, err := imagebuild.ToolchainBase(ctx, platform, src.commitTime)
	if err != nil {
		return ServerImages{}, err
	}
	progress("Go toolchain layered in %.1fs", time.Since(start).Seconds())
	start = time.Now()
	labels := map[string]string{
		"org.opencontainers.image.title":   "slipway",
		"org.opencontainers.image.source":  slipwayModule,
		"org.opencontainers.image.version": src.version,
	}
	if src.commit != "" {
		labels["org.opencontainers.image.revision"] = src.commit
	}
	built, err := imagebuild.BuildGo(ctx, imagebuild.GoOptions{
		Dir:             src.root,
		Package:         "./cmd/slipway",
		Base:            base,
		Platform:        platform,
		SourceDateEpoch: src.commitTime,
		Ldflags:         "-X " + slipwayModule + "/internal/version.Version=" + src.version,
		Labels:          labels,
	})
	if err != nil {
		return ServerImages{}, err
	}
	progress("slipway %s built in %.1fs", src.version, time.Since(start).Seconds())
	start = time.Now()
	ref, err := imagebuild.Push(ctx, built.Image, o.Repository+":"+imageTag(src.version), o.Remote...)
	if err != nil {
		return ServerImages{}, err
	}
	if err := signing.SignImage(ctx, ref, o.Key, o.Remote...); err != nil {
		return ServerImages{}, err
	}
	digest, err := v1.NewHash(ref.DigestStr())
	if err != nil {
		return ServerImages{}, err
	}
	sbom, err := imagebuild.SPDX(built.BuildInfo, digest, src.commitTime, "slipway")
	if err != nil {
		return ServerImages{}, err
	}
	stmt, err := imagebuild.Statement(ref.Context().Name(), digest, imagebuild.PredicateSPDX, sbom)
	if err != nil {
		return ServerImages{}, err
	}
	if err := signing.Attest(ctx, ref, o.Key, stmt, o.Remote...); err != nil {
		return ServerImages{}, err
	}
	if _, err := signing.Verify(ctx, ref, &o.Key.PublicKey, []string{imagebuild.PredicateSPDX}, o.Remote...); err != nil {
		return ServerImages{}, err
	}
	progress("pushed and signed %s in %.1fs", ref, time.Since(start).Seconds())
	images := ServerImages{Server: ref.String()}
	if o.RunnerRepository == "" {
		return images, nil
	}
	start = time.Now()
	busybox := o.Busybox
	if busybox == nil {
		if busybox, err = os.ReadFile(busyboxFile); err != nil {
			return ServerImages{}, fmt.Errorf("runner image: the static busybox (Debian package busybox-static): %w", err)
		}
	}
	runner, err := imagebuild.WithBusybox(built.Image, busybox, src.commitTime)
	if err != nil {
		return ServerImages{}, fmt.Errorf("runner image: %w", err)
	}
	// Test Pods call `slipway checkout` by name.
	if runner, err = imagebuild.AppendPath(runner, path.Dir(built.BinaryPath)); err != nil {
		return ServerImages{}, fmt.Errorf("runner image: %w", err)
	}
	runnerRef, err := imagebuild.Push(ctx, runner, o.RunnerRepository+":"+imageTag(src.version), o.Remote...)
	if err != nil {
		return ServerImages{}, err
	}
	if err := signing.SignImage(ctx, runnerRef, o.Key, o.Remote...); err != nil {
		return ServerImages{}, err
	}
	progress("pushed and signed the runner image %s in %.1fs", runnerRef, time.Since(start).Seconds())
	images.Runner = runnerRef.String()
	return images, nil
}

// source is the checkout an image is built from.
type source struct {
	root, version, commit string
	commitTime            time.Time
}

// checkout finds the module root of Slipway at or above dir and what git
// says of it. Outside git the version is "dev" and the time the epoch.
func checkout(ctx context.Context, dir string) (*source, error) {
	if dir == "" {
		dir = "."
	}
	run := func(name string, args ...string) (string, error) {
		ctx, cancel := context.WithTimeout(ctx, time.Minute)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "GIT_TERMINAL_PROMPT=0")
		out, err := cmd.Output()
		if err != nil {
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				err = fmt.Errorf("%w: %s", err, strings.TrimSpace(string(ee.Stderr)))
			}
			return "", fmt.Errorf("%s %s in %s: %w", name, strings.Join(args, " "), dir, err)
		}
		return strings.TrimSpace(string(out)), nil
	}
	mod, err := run("go", "list", "-m", "-f", "{{.Path}} {{.Dir}}")
	if err != nil {
		return nil, fmt.Errorf("server image: finding Slipway's source: %w", err)
	}
	path, root, _ := strings.Cut(mod, " ")
	if path != slipwayModule {
		return nil, fmt.Errorf("server image: %s is in module %s, not %s: build from a checkout of Slipway", dir, path, slipwayModule)
	}
	src := &source{root: root, version: "dev", commitTime: time.Unix(0, 0)}
	dir = root
	if v, err := run("git", "describe", "--tags", "--always", "--dirty"); err == nil && v != "" {
		src.version = v
	}
	if out, err := run("git", "log", "-1", "--format=%H %ct"); err == nil {
		commit, ts, _ := strings.Cut(out, " ")
		if secs, err := strconv.ParseInt(ts, 10, 64); err == nil {
			src.commit, src.commitTime = commit, time.Unix(secs, 0)
		}
	}
	return src, nil
}

var tagUnsafe = regexp.MustCompile(`[^A-Za-z0-9_.-]`)

// imageTag turns a version into a valid image tag.
func imageTag(version string) string {
	t := tagUnsafe.ReplaceAllString(version, "-")
	if t == "" || t[0] == '.' || t[0] == '-' {
		t = "v" + t
	}
	return t[:min(len(t), 128)]
}

// BuildServerImage builds Slipway's server image and its runner image
// from the checkout at source (the current directory when empty), pushes
// them to the lab's registry under ServerImageRepository and
// RunnerImageRepository, signs them with the lab's key (the one `cosign
// verify --key PublicKeyFile()` checks) and returns them pinned by
// digest. The lab must be up.
func (l *Lab) BuildServerImage(ctx context.Context, source string) (ServerImages, error) {
	st, err := loadState(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return ServerImages{}, ErrNotUp
	}
	if err != nil {
		return ServerImages{}, err
	}
	keyPEM, err := l.signingKey()
	if err != nil {
		return ServerImages{}, err
	}
	key, err := signing.DecodePrivateKey(keyPEM)
	if err != nil {
		return ServerImages{}, fmt.Errorf("the lab's signing key %s: %w", l.SigningKeyFile(), err)
	}
	return PushServerImage(ctx, ServerImageOptions{
		Source:           source,
		Repository:       l.registryHost(st) + "/" + ServerImageRepository,
		RunnerRepository: l.registryHost(st) + "/" + RunnerImageRepository,
		Key:              key,
		Remote:           []remote.Option{remote.WithAuth(&authn.Basic{Username: st.Registry.Username, Password: st.Registry.Password})},
		Progress:         l.Progress,
	})
}

// registryHost is the registry's host:port; with real nodes, the host's
// bridge address, which the nodes pull from.
func (l *Lab) registryHost(st *State) string {
	return net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Registry))
}

// ServerInstallOptions are what install.Apply needs to run the images in
// the lab's cluster: the server and runner images, the credentials the
// kubelet pulls them from the lab's registry with, and the secret the
// lab's git server signs webhooks with. The caller adds what depends on
// its nodes (APIServerCIDRs).
func (l *Lab) ServerInstallOptions(images ServerImages) (install.ApplyOptions, error) {
	st, err := loadState(l.Dir)
	if errors.Is(err, os.ErrNotExist) {
		return install.ApplyOptions{}, ErrNotUp
	}
	if err != nil {
		return install.ApplyOptions{}, err
	}
	secret, err := webhook.ReadSecretFile(l.WebhookSecretFile())
	if err != nil {
		return install.ApplyOptions{}, err
	}
	return install.ApplyOptions{
		Options: install.Options{
			Image: images.Server, RunnerImage: images.Runner,
			// The lab's workers share one small machine: a test Pod's
			// requests (the server's default is 2 cores and 8Gi) must fit
			// beside the workloads.
			TestCPU: labTestCPU, TestMemory: labTestMemory,
		},
		WebhookSecret: secret,
		RegistryCredentials: &install.RegistryCredentials{
			Server: l.registryHost(st), Username: st.Registry.Username, Password: st.Registry.Password,
		},
	}, nil
}
