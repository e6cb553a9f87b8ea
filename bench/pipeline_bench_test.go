package bench

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	git "github.com/go-git/go-git/v5"
	githttp "github.com/go-git/go-git/v5/plumbing/transport/http"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/pipeline"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
)

// koModule is the peer of the build step, built from the Go module proxy.
const koModule = "github.com/google/ko@v0.19.1"

const (
	benchGitUser = "bench-git"
	benchGitPass = "bench-git-pass-4c1f"
	benchRegUser = "bench-reg"
	benchRegPass = "bench-reg-pass-9e07"
)

// BenchmarkPipeline: the demo tea service through Engine.Run (checkout,
// go test, build, provenance, push, sign, promote) with the local executor
// and a warm Go build cache, against a real git server and a real registry
// with basic auth, all in this process on loopback. One warm-up run, then
// runs on new commits that each change brew.go, as a developer's push does.
//
// The clock starts when the checkout step starts: the webhook → PipelineRun
// hop (the receiver creating the run through the API server, the controller
// picking it up) is not measured here.
//
// The peer is ko building the same source, interleaved with the runs so that
// both see the same load on the shared cores, each on its own change of
// brew.go so that neither reuses the other's compiled main package.
func BenchmarkPipeline(b *testing.B) {
	runs := envCount(b, "SLIPWAY_BENCH_PIPELINE_RUNS", 10) // the median of 10
	for i := 0; i < b.N; i++ {
		runPipelineBench(b, runs)
	}
}

func runPipelineBench(b *testing.B, runs int) {
	ctx, cancel := context.WithTimeout(b.Context(), 25*time.Minute)
	defer cancel()
	dir := b.TempDir()

	ko, koErr := installKo(ctx, filepath.Join(dir, "gobin"))
	if koErr != nil {
		b.Logf("ko could not be installed, the peer is skipped: %v", koErr)
	}

	gs, err := gitserver.New(filepath.Join(dir, "git"), benchGitUser, benchGitPass)
	if err != nil {
		b.Fatal(err)
	}
	for _, repo := range []string{"tea.git", "ops.git"} {
		if err := gs.CreateRepo(ctx, repo); err != nil {
			b.Fatal(err)
		}
	}
	if _, err := gs.Start(ctx, ""); err != nil {
		b.Fatal(err)
	}
	defer gs.Close()
	reg, err := registry.New(registry.Config{Dir: filepath.Join(dir, "registry"), Username: benchRegUser, Password: benchRegPass})
	if err != nil {
		b.Fatal(err)
	}
	if err := reg.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer reg.Close()
	key, err := signing.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}

	gitAuth := gitserver.BasicAuth{Username: benchGitUser, Password: benchGitPass}
	srcURL, opsURL := gs.RepoURL("tea.git"), gs.RepoURL("ops.git")
	files, err := lab.DemoSource("tea")
	if err != nil {
		b.Fatal(err)
	}
	if _, err := gitserver.CommitFiles(ctx, srcURL, gitAuth, gitserver.Commit{
		Files: files, Message: "Add the tea service", Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	}); err != nil {
		b.Fatal(err)
	}
	if _, err := gitserver.CommitFiles(ctx, opsURL, gitAuth, gitserver.Commit{
		Files: map[string][]byte{"apps/tea/kustomization.yaml": []byte(
			"apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - deployment.yaml\nimages:\n  - name: tea\n")},
		Message: "Add tea", Author: gitserver.Signature{Name: "Platform", Email: "platform@example.com"},
	}); err != nil {
		b.Fatal(err)
	}

	executor := pipeline.NewLocalExecutor(ctx, pipeline.LocalOptions{Dir: filepath.Join(dir, "sandbox")})
	if err := executor.Unisolated(); err != nil {
		b.Fatalf("the pipeline isolates its test step, which needs root and runc: %v", err)
	}
	engine := &pipeline.Engine{Dir: filepath.Join(dir, "runs"), Executor: executor, CacheDir: filepath.Join(dir, "caches")}
	creds := &gitsource.Credentials{Username: benchGitUser, Password: benchGitPass}
	run := func(n int) *pipeline.Result {
		sha, err := gitserver.CommitFiles(ctx, srcURL, gitAuth, gitserver.Commit{
			Files:   map[string][]byte{"brew.go": lab.BrewFile(fmt.Sprintf("pipeline brew %d", n))},
			Message: fmt.Sprintf("Brew %d", n), Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
		})
		if err != nil {
			b.Fatal(err)
		}
		res, err := engine.Run(ctx, pipeline.Request{
			Namespace: "cafe", Pipeline: "tea",
			RunID:  fmt.Sprintf("tea-%d", n),
			Source: pipeline.Source{URL: srcURL, Commit: sha, Branch: "main", Auth: creds},
			Settings: pipeline.Settings{
				ImageRepository: reg.Host() + "/shop/tea",
				Registry:        pipeline.RegistryAuth{Username: benchRegUser, Password: benchRegPass},
				SigningKey:      key,
				Promotion: &pipeline.Promotion{
					RepoURL: opsURL, Path: "apps/tea/kustomization.yaml", ImageName: "tea", Auth: creds,
				},
			},
		})
		if err != nil {
			b.Fatalf("%v\n%s", err, failedStepLog(res))
		}
		for _, s := range res.Steps {
			if s.State != pipeline.StepSucceeded {
				b.Fatalf("run %d: step %s is %s: %s", n, s.Name, s.State, s.Message)
			}
		}
		return res
	}

	var peer *koPeer
	if koErr == nil {
		if peer, err = newKoPeer(ctx, ko, filepath.Join(dir, "ko"), reg, srcURL); err != nil {
			b.Logf("ko could not be set up, the peer is skipped: %v", err)
			peer = nil
		}
	}

	// Warm-up: the first run fills the build cache with what the test
	// binary and the service depend on; ko's first builds do the same for
	// its own flags, so every timed build compiles only the changed package.
	run(0)
	if peer != nil {
		if _, err := peer.build(ctx, "warm-up", false); err != nil {
			b.Logf("ko failed, the peer is skipped: %v", err)
			peer = nil
		} else if _, err := peer.build(ctx, "warm-up push", true); err != nil {
			b.Logf("ko failed, the peer is skipped: %v", err)
			peer = nil
		}
	}

	steps := map[pipeline.StepName][]time.Duration{}
	var order []pipeline.StepName
	var pushed, signed, promoted, buildPush, koLocal, koPush []time.Duration
	for n := 1; n <= runs; n++ {
		res := run(n)
		for _, s := range res.Steps {
			if _, seen := steps[s.Name]; !seen {
				order = append(order, s.Name)
			}
			steps[s.Name] = append(steps[s.Name], s.Duration())
		}
		start := res.Steps[0].Started
		pushed = append(pushed, res.Step(pipeline.StepPush).Finished.Sub(start))
		signed = append(signed, res.Step(pipeline.StepSign).Finished.Sub(start))
		promoted = append(promoted, res.Step(pipeline.StepPromote).Finished.Sub(start))
		buildPush = append(buildPush, res.Step(pipeline.StepBuild).Duration()+res.Step(pipeline.StepPush).Duration())
		if peer == nil {
			continue
		}
		d, err := peer.build(ctx, fmt.Sprintf("ko brew %d", n), false)
		if err == nil {
			koLocal = append(koLocal, d)
			d, err = peer.build(ctx, fmt.Sprintf("ko push brew %d", n), true)
			koPush = append(koPush, d)
		}
		if err != nil {
			b.Logf("ko failed, the peer is skipped: %v", err)
			peer, koLocal, koPush = nil, nil, nil
		}
	}

	for _, name := range order {
		printSpread(fmt.Sprintf("step %s", name), steps[name])
		b.ReportMetric(median(steps[name]).Seconds(), "s-"+string(name))
	}
	// The clock starts at the checkout step: the webhook → PipelineRun hop
	// is outside Engine.Run, and the labels say so.
	printSpread("checkout → digest pushed (end of push; webhook hop not included)", pushed)
	printSpread("checkout → signed and attested (end of sign; webhook hop not included)", signed)
	printSpread("checkout → promoted (ops repo commit pushed; webhook hop not included)", promoted)
	fmt.Printf("| goal: push → promoted under 10 s warm | median %.2f s, max %.2f s from checkout, webhook hop not included | %s | | |\n",
		median(promoted).Seconds(), slices.Max(promoted).Seconds(), metIf(median(promoted) < 10*time.Second))
	b.ReportMetric(median(pushed).Seconds(), "s-to-pushed")
	b.ReportMetric(median(signed).Seconds(), "s-to-signed")
	b.ReportMetric(median(promoted).Seconds(), "s-to-promoted")

	build := steps[pipeline.StepBuild]
	printSpread("build + push steps", buildPush)
	if len(koLocal) == 0 {
		fmt.Printf("| ko %s build | not run | | | |\n", strings.TrimPrefix(koModule, "github.com/google/ko@"))
		return
	}
	printSpread("ko build --push=false (compile, layer, digest)", koLocal)
	printSpread("ko build (compile, layer, push)", koPush)
	b.ReportMetric(median(koLocal).Seconds(), "s-ko-build")
	b.ReportMetric(median(koPush).Seconds(), "s-ko-build-push")
	b.ReportMetric(median(build).Seconds()/median(koLocal).Seconds(), "build/ko")
	fmt.Printf("| build step vs ko --push=false (median) | %.2f s | %.2f s | %.2fx of ko's time | |\n",
		median(build).Seconds(), median(koLocal).Seconds(), median(build).Seconds()/median(koLocal).Seconds())
	fmt.Printf("| build + push steps vs ko build with push (median) | %.2f s | %.2f s | %.2fx of ko's time | |\n",
		median(buildPush).Seconds(), median(koPush).Seconds(), median(buildPush).Seconds()/median(koPush).Seconds())
	// Other work on the shared cores moves single runs by seconds; each ko
	// build ran right after the run it is paired with, so the paired ratios
	// are steadier than the ratio of medians.
	var ratios []float64
	faster := 0
	for i, theirs := range koLocal {
		ours := build[i]
		ratios = append(ratios, ours.Seconds()/theirs.Seconds())
		if ours <= theirs {
			faster++
		}
	}
	b.ReportMetric(median(ratios), "paired-build/ko")
	fmt.Printf("| build step vs ko --push=false, paired runs | median ratio %.2fx | no slower in %d of %d pairs | | |\n",
		median(ratios), faster, len(koLocal))
	fmt.Printf("| goal: build step no slower than ko | %.2f s vs %.2f s | %s | | |\n",
		median(build).Seconds(), median(koLocal).Seconds(), metIf(median(build) <= median(koLocal)))
}

func failedStepLog(res *pipeline.Result) string {
	if res == nil {
		return ""
	}
	for _, s := range res.Steps {
		if s.State == pipeline.StepFailed && s.Log != "" {
			b, _ := os.ReadFile(s.Log)
			return string(b)
		}
	}
	return ""
}

// printSpread prints a table line: median, min and max of ds, and the count.
// The median of an even count is the mean of the two middle values.
func printSpread(what string, ds []time.Duration) {
	s := slices.Clone(ds)
	slices.Sort(s)
	fmt.Printf("| %s | %.2f s | %.2f s | %.2f s | %d |\n", what, median(s).Seconds(), s[0].Seconds(), s[len(s)-1].Seconds(), len(s))
}

func metIf(ok bool) string {
	if ok {
		return "met"
	}
	return "not met"
}

func median[T time.Duration | float64](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// installKo builds the peer into gobin with a deadline.
func installKo(ctx context.Context, gobin string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", koModule)
	cmd.Env = append(os.Environ(), "GOBIN="+gobin, "CGO_ENABLED=0", "GOFLAGS=-mod=mod")
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go install %s: %w: %s", koModule, err, out)
	}
	return filepath.Join(gobin, "ko"), nil
}

// koPeer runs `ko build` in a git clone of the tea repository, as CI would
// run it in its checkout.
type koPeer struct {
	bin, src string
	env      []string
}

// newKoPeer clones the source and sets ko up against the bench registry.
// The registry is on loopback, which ko (through go-containerregistry)
// speaks plain HTTP to without --insecure-registry. ko's base is the same
// empty image our build step layers onto, pushed to the registry, so that
// both build the same image and neither needs the network: ko fetches its
// manifest and config on every build, where our build step holds it in
// memory.
func newKoPeer(ctx context.Context, bin, dir string, reg *registry.Server, srcURL string) (*koPeer, error) {
	src := filepath.Join(dir, "tea")
	if _, err := git.PlainCloneContext(ctx, src, false, &git.CloneOptions{
		URL: srcURL, Auth: &githttp.BasicAuth{Username: benchGitUser, Password: benchGitPass},
	}); err != nil {
		return nil, fmt.Errorf("clone the tea source: %w", err)
	}
	base, err := imagebuild.EmptyBase(imagebuild.DefaultPlatform())
	if err != nil {
		return nil, err
	}
	baseRef := reg.Host() + "/base/empty:latest"
	if _, err := imagebuild.Push(ctx, base, baseRef,
		remote.WithAuth(&authn.Basic{Username: benchRegUser, Password: benchRegPass})); err != nil {
		return nil, err
	}
	dockerConfig := filepath.Join(dir, "docker")
	if err := os.MkdirAll(dockerConfig, 0o700); err != nil {
		return nil, err
	}
	cfg, err := json.Marshal(map[string]any{"auths": map[string]any{
		reg.Host(): map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(benchRegUser + ":" + benchRegPass))},
	}})
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), cfg, 0o600); err != nil {
		return nil, err
	}
	// Our build step's go build sees no GOFLAGS (its environment is
	// scrubbed), so it stamps VCS information from the checkout; ko's sees
	// none either, so that both do the same work.
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "GOFLAGS=") && !strings.HasPrefix(kv, "KO_") && !strings.HasPrefix(kv, "DOCKER_CONFIG=") {
			env = append(env, kv)
		}
	}
	env = append(env,
		"KO_DOCKER_REPO="+reg.Host()+"/ko/tea",
		"KO_DEFAULTBASEIMAGE="+baseRef,
		"DOCKER_CONFIG="+dockerConfig,
		// As our build step does with the commit time: a fixed creation time.
		"SOURCE_DATE_EPOCH="+strconv.FormatInt(time.Now().Unix(), 10),
	)
	return &koPeer{bin: bin, src: src, env: env}, nil
}

// build changes brew.go in the clone (untimed) and times one `ko build`.
// --sbom=none because our build step makes no SBOM (the provenance step
// does, after it); --bare names the image KO_DOCKER_REPO itself. With
// push false ko stops at the digest, as our build step does; with push
// true it also writes the image, to compare with our build and push steps.
func (k *koPeer) build(ctx context.Context, brew string, push bool) (time.Duration, error) {
	if err := os.WriteFile(filepath.Join(k.src, "brew.go"), lab.BrewFile(brew), 0o644); err != nil {
		return 0, err
	}
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, k.bin, "build", "--bare", "--sbom=none",
		"--platform=linux/"+runtime.GOARCH, "--push="+strconv.FormatBool(push), ".")
	cmd.Dir = k.src
	cmd.Env = k.env
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err := cmd.Run()
	d := time.Since(start)
	if err != nil {
		return 0, fmt.Errorf("ko build (push %t): %w: %s", push, err, tailString(stderr.String(), 2048))
	}
	if !strings.Contains(stdout.String(), "@sha256:") {
		return 0, fmt.Errorf("ko build (push %t) printed no digest: %q", push, stdout.String())
	}
	return d, nil
}

func tailString(s string, n int) string {
	if len(s) > n {
		return "…" + s[len(s)-n:]
	}
	return s
}
