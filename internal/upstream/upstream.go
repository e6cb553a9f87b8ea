// Package upstream provides the pinned upstream binaries the lab and the
// tests run: etcd, kube-apiserver, kube-controller-manager, kube-scheduler
// and KWOK, and for the lab's real nodes kubelet, kube-proxy, CoreDNS,
// Traefik and MetalLB; and, only for the benchmarks, the peers Slipway is
// compared with (Flux's controllers). They come from a directory of release binaries when
// the user has one, or are built once from the Go module proxy and cached.
package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"slipway.dev/slipway/internal/version"
)

// Binaries every lab and test needs, by file name.
var (
	ControlPlane = []string{"etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler"}
	All          = append(append([]string{}, ControlPlane...), "kwok")
)

// KWOKStages is the file, next to the binaries, holding KWOK's stage configs.
const KWOKStages = "kwok-stages.yaml"

// FluxCRDs is the file, next to the peer binaries, holding the CRDs of
// Flux's source-controller and kustomize-controller, from each module's
// config/crd/bases at the version the binaries are built from.
const FluxCRDs = "flux-crds.yaml"

// Peers are the binaries of the systems the benchmarks compare Slipway
// with. Neither the lab nor the tests need them: only a benchmark builds
// them (EnsurePeers), once, into PeerBinDir.
var Peers = []string{"source-controller", "kustomize-controller"}

// MetalLBManifests is the file, next to the node binaries, holding
// MetalLB's own installation manifests (CRDs, RBAC, controller and speaker)
// from the same module version as the binaries.
const MetalLBManifests = "metallb-native.yaml"

// CacheDirEnv names the environment variable that moves Slipway's whole
// cache (upstream binaries, their build modules, clones, run workspaces)
// somewhere else: CI points it at an empty directory to prove a cold build.
const CacheDirEnv = "SLIPWAY_CACHE_DIR"

// CacheDir is $SLIPWAY_CACHE_DIR, or ${XDG_CACHE_HOME:-$HOME/.cache}/slipway.
func CacheDir() string {
	if d := os.Getenv(CacheDirEnv); d != "" {
		return d
	}
	if d := os.Getenv("XDG_CACHE_HOME"); d != "" {
		return filepath.Join(d, "slipway")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".cache", "slipway")
	}
	return filepath.Join(os.TempDir(), "slipway-cache")
}

// DefaultBinDir is where built binaries are cached, one directory per pinned set.
func DefaultBinDir() string {
	return filepath.Join(CacheDir(), "bin", fmt.Sprintf("kubernetes-%s_etcd-%s_kwok-%s", version.Kubernetes, version.Etcd, version.KWOK))
}

// NodeBinDir is where the real nodes' binaries are cached, one directory
// per pinned set, apart from the control plane's so that a version change
// of either rebuilds only its own.
func NodeBinDir() string {
	return filepath.Join(CacheDir(), "bin", fmt.Sprintf("nodes_kubernetes-%s_coredns-%s_traefik-%s_metallb-%s",
		version.Kubernetes, version.CoreDNS, version.Traefik, version.MetalLB))
}

// PeerBinDir is where the peers' binaries are cached, apart from the lab's.
func PeerBinDir() string {
	return filepath.Join(CacheDir(), "bin", "peers_flux-"+version.Flux)
}

// Missing lists which of names (by default every binary and the KWOK
// stages file) are absent from dir.
func Missing(dir string, names ...string) []string {
	if len(names) == 0 {
		names = append(append([]string{}, All...), KWOKStages)
	}
	var missing []string
	for _, name := range names {
		if _, err := os.Stat(filepath.Join(dir, name)); err != nil {
			missing = append(missing, name)
		}
	}
	return missing
}

// Progress receives one line per step of a long build.
type Progress func(format string, args ...any)

// Ensure makes every control-plane binary present in dir, building what
// is missing. A build needs only Go and the module proxy; a cold one takes
// minutes.
func Ensure(ctx context.Context, dir string, progress Progress) error {
	return ensure(ctx, dir, controlPlaneSet(), progress)
}

// EnsureNodes makes every binary of the real nodes present in dir, building
// what is missing: kubelet and kube-proxy, and the cluster add-ons the lab
// packs into images of their own (coredns, traefik, metallb-controller,
// metallb-speaker), with MetalLB's manifests.
func EnsureNodes(ctx context.Context, dir string, progress Progress) error {
	return ensure(ctx, dir, nodeSet(), progress)
}

// EnsurePeers makes Flux's source-controller and kustomize-controller and
// their CRDs (FluxCRDs) present in dir, building what is missing: minutes
// on 2 cores the first time.
func EnsurePeers(ctx context.Context, dir string, progress Progress) error {
	return ensure(ctx, dir, peerSet(), progress)
}

// A fileSet is what one cache directory holds: the builds that make its
// binaries and the data files read from upstream modules beside them.
type fileSet struct {
	builds []build
	data   map[string]func(context.Context) ([]byte, error)
}

func (fs fileSet) names() []string {
	var names []string
	for _, b := range fs.builds {
		for _, bin := range b.binaries {
			names = append(names, bin.name)
		}
	}
	for name := range fs.data {
		names = append(names, name)
	}
	return names
}

func controlPlaneSet() fileSet {
	return fileSet{builds: []build{kubernetesBuild(), etcdBuild(), kwokBuild()},
		data: map[string]func(context.Context) ([]byte, error){KWOKStages: kwokStages}}
}

func nodeSet() fileSet {
	return fileSet{builds: []build{kubernetesNodeBuild(), corednsBuild(), traefikBuild(), metallbBuild()},
		data: map[string]func(context.Context) ([]byte, error){MetalLBManifests: metallbManifests}}
}

func peerSet() fileSet {
	return fileSet{builds: []build{fluxSourceBuild(), fluxKustomizeBuild()},
		data: map[string]func(context.Context) ([]byte, error){FluxCRDs: fluxCRDs}}
}

func ensure(ctx context.Context, dir string, set fileSet, progress Progress) error {
	missing := Missing(dir, set.names()...)
	if len(missing) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("creating binary cache %s: %w", dir, err)
	}
	want := map[string]bool{}
	for _, m := range missing {
		want[m] = true
	}
	workRoot := filepath.Join(CacheDir(), "build")
	for _, b := range set.builds {
		var bins []binary
		for _, bin := range b.binaries {
			if want[bin.name] {
				bins = append(bins, bin)
			}
		}
		if len(bins) == 0 {
			continue
		}
		if err := b.run(ctx, filepath.Join(workRoot, b.name), dir, bins, progress); err != nil {
			return err
		}
	}
	for name, read := range set.data {
		if !want[name] {
			continue
		}
		content, err := read(ctx)
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(dir, name), content, 0o644); err != nil {
			return err
		}
	}
	if still := Missing(dir, set.names()...); len(still) > 0 {
		return fmt.Errorf("after building, %s still missing from %s", strings.Join(still, ", "), dir)
	}
	return nil
}

// DryRun resolves every build against the module proxy and asks the go
// command for its build plan (`go build -n`, `go install -n`) without
// compiling, and checks that KWOK's stage configs are where they are read
// from. A wrong module path or version fails here in seconds rather than
// after minutes of compiling. work holds the wrapper modules.
func DryRun(ctx context.Context, work string) error {
	for _, set := range []fileSet{controlPlaneSet(), nodeSet()} {
		for _, b := range set.builds {
			if err := b.dryRun(ctx, filepath.Join(work, b.name)); err != nil {
				return err
			}
		}
		for name, read := range set.data {
			if _, err := read(ctx); err != nil {
				return fmt.Errorf("reading %s: %w", name, err)
			}
		}
	}
	return nil
}

// A build makes some of the binaries from one module: a wrapper module of
// our own whose go.mod pins the upstream release (the releases' own go.mod
// files have replace lines, which `go install pkg@version` refuses), or,
// with no wrapper, a plain `go install pkg@version`.
type build struct {
	name string
	// gomod is the wrapper's go.mod; empty for a plain go install.
	gomod string
	// version is what a plain go install asks for.
	version  string
	binaries []binary
	ldflags  string
	// partialTidy resolves the wrapper with `go mod tidy -e`: for a module
	// some of whose tests import what the module proxy does not serve,
	// which the binary does not need.
	partialTidy bool
}

type binary struct{ name, pkg string }

// kubernetesStaging lists the modules k8s.io/kubernetes replaces with its
// staging directories; the wrapper points each at its published v0 version.
var kubernetesStaging = []string{
	"api", "apiextensions-apiserver", "apimachinery", "apiserver", "cli-runtime", "client-go",
	"cloud-provider", "cluster-bootstrap", "code-generator", "component-base", "component-helpers",
	"controller-manager", "cri-api", "cri-client", "csi-translation-lib", "dynamic-resource-allocation",
	"endpointslice", "externaljwt", "kms", "kube-aggregator", "kube-controller-manager", "kube-proxy",
	"kube-scheduler", "kubectl", "kubelet", "metrics", "mount-utils", "pod-security-admission",
	"sample-apiserver", "sample-cli-plugin", "sample-controller",
}

func kubernetesBuild() build {
	return kubernetesComponents("kubernetes", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
}

// kubernetesNodeBuild builds the node agents in a wrapper of their own, so
// that adding them never rewrites (and re-resolves) the control plane's.
func kubernetesNodeBuild() build {
	return kubernetesComponents("kubernetes-node", "kubelet", "kube-proxy")
}

func kubernetesComponents(name string, components ...string) build {
	staging := "v0" + strings.TrimPrefix(version.Kubernetes, "v1")
	var gomod strings.Builder
	fmt.Fprintf(&gomod, "module slipway.dev/upstream/%s\n\ngo 1.24.0\n\nrequire k8s.io/kubernetes %s\n\nreplace (\n", name, version.Kubernetes)
	for _, m := range kubernetesStaging {
		fmt.Fprintf(&gomod, "\tk8s.io/%s => k8s.io/%[1]s %s\n", m, staging)
	}
	gomod.WriteString(")\n\ntool (\n")
	var bins []binary
	for _, c := range components {
		fmt.Fprintf(&gomod, "\tk8s.io/kubernetes/cmd/%s\n", c)
		bins = append(bins, binary{c, "k8s.io/kubernetes/cmd/" + c})
	}
	gomod.WriteString(")\n")
	// Without these, binaries report v0.0.0-master and clients cannot parse it.
	minor := strings.Split(strings.TrimPrefix(version.Kubernetes, "v"), ".")[1]
	v := "k8s.io/component-base/version"
	ldflags := fmt.Sprintf("-s -w -X %s.gitVersion=%s -X %[1]s.gitMajor=1 -X %[1]s.gitMinor=%s -X %[1]s.gitTreeState=clean -X %[1]s.buildDate=2026-01-01T00:00:00Z",
		v, version.Kubernetes, minor)
	return build{name: name, gomod: gomod.String(), binaries: bins, ldflags: ldflags}
}

func etcdBuild() build {
	gomod := fmt.Sprintf(`module slipway.dev/upstream/etcd

go 1.24.0

require go.etcd.io/etcd/server/v3 %[1]s

replace (
	go.etcd.io/etcd/api/v3 => go.etcd.io/etcd/api/v3 %[1]s
	go.etcd.io/etcd/client/pkg/v3 => go.etcd.io/etcd/client/pkg/v3 %[1]s
	go.etcd.io/etcd/client/v3 => go.etcd.io/etcd/client/v3 %[1]s
	go.etcd.io/etcd/pkg/v3 => go.etcd.io/etcd/pkg/v3 %[1]s
)

tool go.etcd.io/etcd/server/v3
`, version.Etcd)
	return build{name: "etcd", gomod: gomod, binaries: []binary{{"etcd", "go.etcd.io/etcd/server/v3"}}, ldflags: "-s -w"}
}

func kwokBuild() build {
	return build{name: "kwok", version: version.KWOK, binaries: []binary{{"kwok", "sigs.k8s.io/kwok/cmd/kwok"}}, ldflags: "-s -w"}
}

func corednsBuild() build {
	return build{name: "coredns", version: version.CoreDNS, binaries: []binary{{"coredns", "github.com/coredns/coredns"}}, ldflags: "-s -w"}
}

// traefikBuild wraps Traefik: its go.mod replaces three modules with forks,
// which `go install` refuses, so the wrapper repeats those replaces.
func traefikBuild() build {
	gomod := fmt.Sprintf(`module slipway.dev/upstream/traefik

go 1.25.0

require github.com/traefik/traefik/v3 %s

replace (
	github.com/abbot/go-http-auth => github.com/containous/go-http-auth v0.4.1-0.20200324110947-a37a7636d23e
	github.com/gorilla/mux => github.com/containous/mux v0.0.0-20250523120546-41b6ec3aed59
	github.com/mailgun/minheap => github.com/containous/minheap v0.0.0-20190809180810-6e71eb837595
)

tool github.com/traefik/traefik/v3/cmd/traefik
`, version.Traefik)
	return build{name: "traefik", gomod: gomod, binaries: []binary{{"traefik", "github.com/traefik/traefik/v3/cmd/traefik"}},
		ldflags: "-s -w -X github.com/traefik/traefik/v3/pkg/version.Version=" + version.Traefik}
}

// metallbBuild builds MetalLB's controller (address allocation) and
// speaker (layer 2 announcements) under names that say whose they are.
func metallbBuild() build {
	gomod := fmt.Sprintf(`module slipway.dev/upstream/metallb

go 1.24.0

require go.universe.tf/metallb %s

tool (
	go.universe.tf/metallb/controller
	go.universe.tf/metallb/speaker
)
`, version.MetalLB)
	return build{name: "metallb", gomod: gomod, ldflags: "-s -w", binaries: []binary{
		{"metallb-controller", "go.universe.tf/metallb/controller"},
		{"metallb-speaker", "go.universe.tf/metallb/speaker"},
	}}
}

// fluxSourceBuild wraps Flux's source-controller, repeating the replace
// of its go.mod and pinning github.com/fluxcd/pkg/artifact to the version
// it builds with.
func fluxSourceBuild() build {
	gomod := fmt.Sprintf(`module slipway.dev/upstream/flux-source-controller

go 1.26.0

require github.com/fluxcd/source-controller %s

replace (
	github.com/fluxcd/pkg/artifact => github.com/fluxcd/pkg/artifact %s
	github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be
)

tool github.com/fluxcd/source-controller
`, version.Flux, version.FluxArtifact)
	// Its controller tests import github.com/fluxcd/pkg/helmtestserver
	// v0.40.2, which the module proxy does not serve.
	return build{name: "flux-source-controller", gomod: gomod, ldflags: "-s -w", partialTidy: true,
		binaries: []binary{{"source-controller", "github.com/fluxcd/source-controller"}}}
}

// fluxKustomizeBuild wraps Flux's kustomize-controller, repeating the
// replaces of its go.mod (its ./api replace is not needed: that module is
// published at the same version).
func fluxKustomizeBuild() build {
	gomod := fmt.Sprintf(`module slipway.dev/upstream/flux-kustomize-controller

go 1.26.0

require github.com/fluxcd/kustomize-controller %s

replace (
	github.com/opencontainers/go-digest => github.com/opencontainers/go-digest v1.0.1-0.20220411205349-bde1400a84be
	gopkg.in/yaml.v3 => gopkg.in/yaml.v3 v3.0.1
	sigs.k8s.io/kustomize/api => sigs.k8s.io/kustomize/api v0.21.1
	sigs.k8s.io/kustomize/kyaml => sigs.k8s.io/kustomize/kyaml v0.21.1
)

tool github.com/fluxcd/kustomize-controller
`, version.Flux)
	return build{name: "flux-kustomize-controller", gomod: gomod, ldflags: "-s -w",
		binaries: []binary{{"kustomize-controller", "github.com/fluxcd/kustomize-controller"}}}
}

// run builds bins into out, in work for a wrapper module.
func (b build) run(ctx context.Context, work, out string, bins []binary, progress Progress) error {
	if b.gomod == "" {
		for _, bin := range bins {
			if err := goInstall(ctx, bin.pkg+"@"+b.version, out, b.ldflags, progress); err != nil {
				return err
			}
		}
		return nil
	}
	if err := prepareWrapper(ctx, work, b.gomod, b.partialTidy, progress); err != nil {
		return err
	}
	for _, bin := range bins {
		if err := goBuild(ctx, work, filepath.Join(out, bin.name), bin.pkg, b.ldflags, progress); err != nil {
			return err
		}
	}
	return nil
}

func (b build) dryRun(ctx context.Context, work string) error {
	if b.gomod == "" {
		for _, bin := range b.binaries {
			target := bin.pkg + "@" + b.version
			cmd := exec.CommandContext(ctx, "go", "install", "-n", target)
			cmd.Env = append(goEnv(), "GOBIN="+work)
			if out, err := cmd.CombinedOutput(); err != nil {
				return fmt.Errorf("go install -n %s: %w\n%s", target, err, tail(out))
			}
		}
		return nil
	}
	if err := prepareWrapper(ctx, work, b.gomod, b.partialTidy, func(string, ...any) {}); err != nil {
		return err
	}
	for _, bin := range b.binaries {
		cmd := exec.CommandContext(ctx, "go", "build", "-n", "-o", os.DevNull, bin.pkg)
		cmd.Dir = work
		cmd.Env = append(goEnv(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			return fmt.Errorf("go build -n %s in %s: %w\n%s", bin.pkg, work, err, tail(out))
		}
	}
	return nil
}

func goInstall(ctx context.Context, target, out, ldflags string, progress Progress) error {
	cmd := exec.CommandContext(ctx, "go", "install", "-trimpath", "-ldflags="+ldflags, target)
	cmd.Env = append(goEnv(), "GOBIN="+out, "CGO_ENABLED=0")
	return compile(ctx, target, cmd, progress)
}

// kwokStageFiles are the upstream stage configs for fast nodes and pods, taken
// from the KWOK module itself so they always match the binary.
var kwokStageFiles = []string{
	"kustomize/stage/node/fast/node-initialize.yaml",
	"kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
	"kustomize/stage/pod/fast/pod-ready.yaml",
	"kustomize/stage/pod/fast/pod-complete.yaml",
	"kustomize/stage/pod/fast/pod-delete.yaml",
}

// WriteKWOKStages writes KWOK's fast node and pod stages to path. Release
// binaries come without them, so the lab also calls this for --bin-dir.
func WriteKWOKStages(ctx context.Context, path string) error {
	stages, err := kwokStages(ctx)
	if err != nil {
		return err
	}
	return os.WriteFile(path, stages, 0o644)
}

// kwokStages reads the stage configs from the KWOK module's source.
func kwokStages(ctx context.Context) ([]byte, error) {
	return moduleFiles(ctx, "sigs.k8s.io/kwok@"+version.KWOK, kwokStageFiles)
}

// metallbManifests reads MetalLB's native-mode manifests from the module
// the binaries come from.
func metallbManifests(ctx context.Context) ([]byte, error) {
	return moduleFiles(ctx, "go.universe.tf/metallb@"+version.MetalLB, []string{"config/manifests/metallb-native.yaml"})
}

// fluxCRDs reads the CRDs the two Flux controllers serve from their
// modules, so that they always match the binaries.
func fluxCRDs(ctx context.Context) ([]byte, error) {
	var out []byte
	for _, m := range []string{"github.com/fluxcd/source-controller", "github.com/fluxcd/kustomize-controller"} {
		crds, err := moduleFiles(ctx, m+"@"+version.Flux, []string{"config/crd/bases/*.yaml"})
		if err != nil {
			return nil, err
		}
		out = append(out, crds...)
	}
	return out, nil
}

// moduleFiles downloads module (path@version) and joins the named files of
// its source (each name may be a pattern of filepath.Match; its matches are
// read in order) into one multi-document YAML stream.
func moduleFiles(ctx context.Context, module string, files []string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "mod", "download", "-json", module)
	cmd.Env = goEnv()
	b, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("go mod download %s failed: %w%s", module, err, exitDetail(err))
	}
	var info struct{ Dir, Error string }
	if err := json.Unmarshal(b, &info); err != nil || info.Dir == "" {
		return nil, fmt.Errorf("go mod download %s gave no source directory: %v %s", module, err, info.Error)
	}
	var out []byte
	for _, pattern := range files {
		matches, err := filepath.Glob(filepath.Join(info.Dir, pattern))
		if err != nil || len(matches) == 0 {
			return nil, fmt.Errorf("reading %s from %s: no such file (%v)", pattern, module, err)
		}
		for _, f := range matches {
			content, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("reading %s from %s: %w", pattern, module, err)
			}
			out = append(out, "---\n"...)
			out = append(out, content...)
		}
	}
	return out, nil
}

func exitDetail(err error) string {
	var ee *exec.ExitError
	if errors.As(err, &ee) && len(ee.Stderr) > 0 {
		return "\n" + tail(ee.Stderr)
	}
	return ""
}

func prepareWrapper(ctx context.Context, work, gomod string, partialTidy bool, progress Progress) error {
	if err := os.MkdirAll(work, 0o755); err != nil {
		return err
	}
	path := filepath.Join(work, "go.mod")
	if old, err := os.ReadFile(path); err == nil && strings.HasPrefix(string(old), gomod) {
		return nil
	}
	if err := os.WriteFile(path, []byte(gomod), 0o644); err != nil {
		return err
	}
	progress("resolving modules in %s", work)
	args := []string{"mod", "tidy"}
	if partialTidy {
		args = append(args, "-e")
	}
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = work
	cmd.Env = goEnv()
	if b, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("go mod tidy in %s failed: %w\n%s", work, err, tail(b))
	}
	return nil
}

func goBuild(ctx context.Context, work, out, pkg, ldflags string, progress Progress) error {
	tmp := out + ".tmp"
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", ldflags, "-o", tmp, pkg)
	cmd.Dir = work
	cmd.Env = append(goEnv(), "CGO_ENABLED=0")
	if err := compile(ctx, filepath.Base(out), cmd, progress); err != nil {
		_ = os.Remove(tmp)
		return err
	}
	return os.Rename(tmp, out)
}

// compile runs one go build or go install, saying every 30 seconds that it
// is still going: a cold build of kube-apiserver takes minutes.
func compile(ctx context.Context, name string, cmd *exec.Cmd, progress Progress) error {
	progress("building %s (first time only; a few minutes on 2 cores)", name)
	start := time.Now()
	done := make(chan struct{})
	defer close(done)
	go func() {
		t := time.NewTicker(30 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				progress("still building %s: %s elapsed", name, time.Since(start).Round(time.Second))
			}
		}
	}()
	if b, err := cmd.CombinedOutput(); err != nil {
		if ctx.Err() != nil {
			return fmt.Errorf("building %s: %w", name, ctx.Err())
		}
		return fmt.Errorf("%s failed: %w\n%s", strings.Join(cmd.Args, " "), err, tail(b))
	}
	progress("built %s in %s", name, time.Since(start).Round(time.Second))
	return nil
}

// goEnv keeps the user's Go settings but never lets a build stop at a prompt.
func goEnv() []string {
	return append(os.Environ(), "GOFLAGS=-mod=mod", "GIT_TERMINAL_PROMPT=0")
}

func tail(b []byte) string {
	s := strings.TrimSpace(string(b))
	if len(s) > 4000 {
		s = "..." + s[len(s)-4000:]
	}
	return s
}

// ErrMissing is returned by Require when binaries are absent.
var ErrMissing = errors.New("upstream binaries missing")

// Require checks that dir holds the named binaries (all by default), without building.
func Require(dir string, names ...string) error {
	if m := Missing(dir, names...); len(m) > 0 {
		return fmt.Errorf("%w in %s: %s (run `slipway lab build` or `make test` to build them)", ErrMissing, dir, strings.Join(m, ", "))
	}
	return nil
}
