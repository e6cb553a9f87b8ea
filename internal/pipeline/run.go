// Package pipeline runs one pipeline run: check out the exact commit,
// run the developers' tests, build the image without a daemon, describe
// it (SPDX SBOM, SLSA provenance), push it, sign it and its attestations,
// and promote it into the ops repository. The PipelineRun controller calls
// Engine.Run and copies the Result into the run's status.
package pipeline

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	gittransport "github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"k8s.io/apimachinery/pkg/util/validation"

	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/promote"
	"slipway.dev/slipway/internal/signing"
)

// StepName names a step of a run.
type StepName string

// The steps of a run, in order.
const (
	StepCheckout   StepName = "checkout"
	StepTest       StepName = "test"
	StepBuild      StepName = "build"
	StepProvenance StepName = "provenance"
	StepPush       StepName = "push"
	StepSign       StepName = "sign"
	StepPromote    StepName = "promote"
)

// StepState is the outcome of a step.
type StepState string

// Step outcomes. A step after a failed one is Skipped, as is a step the
// settings leave out (no test command, no promotion target).
const (
	StepSucceeded StepState = "Succeeded"
	StepFailed    StepState = "Failed"
	StepSkipped   StepState = "Skipped"
)

// DockerfileBuildType identifies, in provenance, an in-process Dockerfile
// build; its parameters are the Dockerfile's path and the context.
const DockerfileBuildType = "https://slipway.dev/buildtypes/dockerfile/v1"

// Timeouts bound each step; zero fields take the defaults.
type Timeouts struct {
	Checkout, Test, Build, Provenance, Push, Sign, Promote time.Duration
	// GitOperation bounds each clone, fetch and push inside the checkout
	// and promote steps.
	GitOperation time.Duration
}

// DefaultTimeouts are the step deadlines when Settings leave them zero.
var DefaultTimeouts = Timeouts{
	Checkout:     2 * time.Minute,
	Test:         15 * time.Minute,
	Build:        10 * time.Minute,
	Provenance:   30 * time.Second,
	Push:         5 * time.Minute,
	Sign:         time.Minute,
	Promote:      3 * time.Minute,
	GitOperation: time.Minute,
}

// DefaultLimits bound the test step.
var DefaultLimits = Limits{CPUTime: 30 * time.Minute, Memory: 8 << 30, OpenFiles: 4096, CPU: 2000,
	Processes: 1024, FileSize: 4 << 30, Disk: 16 << 30}

// DefaultMaxLogBytes bounds each step's log when Engine.MaxLogBytes is zero.
const DefaultMaxLogBytes = 16 << 20

// Source is what to build.
type Source struct {
	// URL is the source repository's clone URL, without credentials.
	URL string
	// Commit is the full SHA to build.
	Commit string
	// Branch the commit was pushed to, which must hold it: the checkout
	// fetches it alone and refuses a commit it cannot reach from the
	// branch's head. Recorded in provenance.
	Branch string
	Auth   *gitsource.Credentials
}

// RegistryAuth is the basic-auth credential for the image registry.
type RegistryAuth struct {
	Username, Password string
}

func (a RegistryAuth) String() string { return a.Username + ":<redacted>" }

// Promotion is where the image goes in the ops repository.
type Promotion struct {
	RepoURL   string
	Branch    string
	Path      string
	ImageName string
	Auth      *gitsource.Credentials
	// MaxAttempts bounds the pushes when the branch moves under the
	// promotion; promote.DefaultMaxAttempts when zero.
	MaxAttempts int
}

// Settings are what operations own, from the Pipeline.
type Settings struct {
	// ImageRepository is "registry/path/name", without tag or digest.
	ImageRepository string
	Registry        RegistryAuth
	// SigningKey signs the image and its attestations.
	SigningKey *ecdsa.PrivateKey
	// Promotion is nil when runs stop at the signed image.
	Promotion *Promotion
	// BuilderID names the builder in provenance; derived from the
	// executor when empty.
	BuilderID string
	// TestEnv are KEY=VALUE variables for the test command.
	TestEnv []string
	// Secrets are variables for the test command whose values are masked
	// in every log of the run.
	Secrets map[string]string
	// BuildEnv adds KEY=VALUE settings to go build's environment
	// (GOFLAGS, GOPROXY).
	BuildEnv []string
	Timeouts Timeouts
	// Limits of the test step's processes; DefaultLimits when zero.
	Limits Limits
	// AllowTestNetwork lets the test command have the network when
	// slipway.yaml asks for it (test.network); without it such a test
	// step fails.
	AllowTestNetwork bool
}

// Request is one run.
type Request struct {
	// Namespace and Pipeline name the run's Pipeline (DNS names). The run's
	// directory is under its namespace, and the test step's caches are
	// the Pipeline's own.
	Namespace, Pipeline string
	// RunID names the run (the PipelineRun's name); letters, digits, '-',
	// '.' and '_'. It names the run's directory and goes into provenance
	// and the promotion commit.
	RunID    string
	Source   Source
	Settings Settings
	// Rollback lets the run promote a commit older than the one the ops
	// repository names; without it such a promotion is refused, so that a
	// replayed or late push never rolls a service back.
	Rollback bool
}

// StepResult is what happened in one step.
type StepResult struct {
	Name  StepName
	State StepState
	// Message says what the step did, or why it failed or was skipped.
	Message           string
	Started, Finished time.Time
	// Log is the path of the step's log file, secrets masked; empty for a
	// step that never started.
	Log string
}

// Duration of the step; zero for a skipped step.
func (s StepResult) Duration() time.Duration { return s.Finished.Sub(s.Started) }

// Result is the outcome of a run.
type Result struct {
	RunID  string
	Commit string
	// CommitAuthor and CommitTime come from the built commit.
	CommitAuthor string
	CommitTime   time.Time
	// Image is the pushed image pinned by digest; Digest its digest.
	Image  string
	Digest string
	// PromotionCommit is the ops repository's commit carrying the image.
	PromotionCommit string
	// TestIsolation is how the test command was kept from the server;
	// empty when no test command ran.
	TestIsolation Isolation
	Steps         []StepResult
}

// Succeeded reports whether no step failed.
func (r *Result) Succeeded() bool {
	for _, s := range r.Steps {
		if s.State == StepFailed {
			return false
		}
	}
	return len(r.Steps) > 0
}

// Step returns the result of the named step, or nil.
func (r *Result) Step(n StepName) *StepResult {
	for i := range r.Steps {
		if r.Steps[i].Name == n {
			return &r.Steps[i]
		}
	}
	return nil
}

// StepError is the failure of a run: the step and its cause.
type StepError struct {
	RunID string
	Step  StepName
	Err   error
}

func (e *StepError) Error() string {
	return fmt.Sprintf("pipeline run %s: step %s: %v", e.RunID, e.Step, e.Err)
}

func (e *StepError) Unwrap() error { return e.Err }

// errSkipped makes a step Skipped rather than Succeeded, with its reason.
type errSkipped struct{ reason string }

func (e errSkipped) Error() string { return e.reason }

// Engine runs pipeline runs.
type Engine struct {
	// Dir holds a directory per run, NAMESPACE/RUN: its checkout and the
	// test step's workspace, removed when the run ends, and its logs,
	// kept.
	Dir      string
	Executor Executor
	// CacheDir holds the caches of each Pipeline's test step,
	// NAMESPACE/PIPELINE, kept from run to run; Dir/.caches when empty.
	// Builds never read them.
	CacheDir string
	// BuildEnv adds KEY=VALUE settings to every go build's environment,
	// before the Pipeline's: where the server's own Go caches are
	// (GOCACHE, GOMODCACHE), which no test step ever sees.
	BuildEnv []string
	// MaxLogBytes bounds each step's log; what a step writes beyond it is
	// dropped and the log says so. DefaultMaxLogBytes when zero.
	MaxLogBytes int64
	// Limits bound the test step of runs whose Settings give none;
	// DefaultLimits when zero. In a cluster, CPU and Memory become the
	// test Pod's requests, so they must fit on a node.
	Limits Limits
}

var (
	runIDPattern  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$`)
	commitPattern = regexp.MustCompile(`^[0-9a-f]{40}$`)
)

// run is the state passed from step to step.
type run struct {
	req      Request
	s        Settings
	dir      string
	source   string
	repo     name.Repository
	keychain authn.Keychain
	remote   []remote.Option
	git      *git.Repository
	commit   *object.Commit

	cfg        *Config
	commitTime time.Time
	image      v1.Image
	goBuild    *imagebuild.GoResult
	buildType  string
	params     map[string]any
	built      [2]time.Time
	statements [][]byte
	digest     name.Digest
}

// Run runs every step of req and returns what happened. The error, a
// *StepError, is that of the failed step; the Result is returned either
// way, with the logs of every step that ran. A request that cannot start
// (invalid id, commit or settings) returns only an error.
func (e *Engine) Run(ctx context.Context, req Request) (*Result, error) {
	if err := validate(req); err != nil {
		return nil, err
	}
	s := req.Settings
	s.Timeouts = withDefaults(s.Timeouts)
	if s.Limits == (Limits{}) {
		s.Limits = cmp.Or(e.Limits, DefaultLimits)
	}
	if s.BuilderID == "" {
		s.BuilderID = "https://slipway.dev/pipeline/executor/" + e.Executor.Name()
	}
	repo, err := name.NewRepository(s.ImageRepository)
	if err != nil {
		return nil, fmt.Errorf("pipeline run %s: image repository %q: %w", req.RunID, s.ImageRepository, err)
	}
	// Namespaces keep same-named runs of different teams apart.
	runDir := filepath.Join(e.Dir, req.Namespace, req.RunID)
	logDir := filepath.Join(runDir, "logs")
	if err := os.MkdirAll(logDir, 0o700); err != nil {
		return nil, fmt.Errorf("pipeline run %s/%s: create log directory: %w", req.Namespace, req.RunID, err)
	}
	// A run retried under the same id starts from a clean checkout.
	scratch := []string{filepath.Join(runDir, "source"), filepath.Join(runDir, "test"), filepath.Join(runDir, "tmp")}
	for _, d := range scratch {
		if err := os.RemoveAll(d); err != nil {
			return nil, fmt.Errorf("pipeline run %s/%s: clear %s: %w", req.Namespace, req.RunID, d, err)
		}
	}
	defer func() {
		for _, d := range scratch {
			_ = os.RemoveAll(d)
		}
	}()

	// The registry's credentials go to the Pipeline's registry alone,
	// never to the registry of a Dockerfile's base image.
	keychain := imagebuild.RegistryKeychain(repo.RegistryStr(), &authn.Basic{Username: s.Registry.Username, Password: s.Registry.Password})
	r := &run{
		req: req, s: s, dir: runDir, source: scratch[0], repo: repo, keychain: keychain,
		remote: []remote.Option{remote.WithAuthFromKeychain(keychain)},
	}
	secrets := []string{s.Registry.Password}
	for _, v := range s.Secrets {
		secrets = append(secrets, v)
	}
	for _, c := range []*gitsource.Credentials{req.Source.Auth, promotionAuth(s.Promotion)} {
		if c != nil {
			secrets = append(secrets, c.Password, string(c.Identity))
		}
	}

	res := &Result{RunID: req.RunID, Commit: req.Source.Commit}
	steps := []struct {
		name    StepName
		timeout time.Duration
		fn      func(context.Context, io.Writer, *Result) (string, error)
	}{
		{StepCheckout, s.Timeouts.Checkout, r.checkout},
		{StepTest, s.Timeouts.Test, e.test(r)},
		{StepBuild, s.Timeouts.Build, e.build(r)},
		{StepProvenance, s.Timeouts.Provenance, r.provenance},
		{StepPush, s.Timeouts.Push, r.push},
		{StepSign, s.Timeouts.Sign, r.sign},
		{StepPromote, s.Timeouts.Promote, r.promote},
	}
	var failed *StepError
	for i, st := range steps {
		sr := StepResult{Name: st.name}
		if failed != nil {
			sr.State, sr.Message = StepSkipped, "step "+string(failed.Step)+" failed"
			res.Steps = append(res.Steps, sr)
			continue
		}
		sr.Log = filepath.Join(logDir, fmt.Sprintf("%d-%s.log", i+1, st.name))
		sr.Started = time.Now()
		msg, err := runStep(ctx, sr.Log, secrets, e.maxLogBytes(), st.timeout, func(ctx context.Context, w io.Writer) (string, error) {
			return st.fn(ctx, w, res)
		})
		sr.Finished = time.Now()
		var skipped errSkipped
		switch {
		case errors.As(err, &skipped):
			sr.State, sr.Message = StepSkipped, skipped.reason
		case err != nil:
			sr.State, sr.Message = StepFailed, err.Error()
			failed = &StepError{RunID: req.RunID, Step: st.name, Err: err}
		default:
			sr.State, sr.Message = StepSucceeded, msg
		}
		res.Steps = append(res.Steps, sr)
	}
	if failed != nil {
		return res, failed
	}
	return res, nil
}

func (e *Engine) maxLogBytes() int64 {
	if e.MaxLogBytes > 0 {
		return e.MaxLogBytes
	}
	return DefaultMaxLogBytes
}

// runStep runs one step under its deadline with its log open, writing the
// outcome as the log's last line so that the log alone tells the story.
// What the step writes past maxLog bytes is dropped, the log says so, and
// the outcome line is written all the same.
func runStep(ctx context.Context, logPath string, secrets []string, maxLog int64, timeout time.Duration, fn func(context.Context, io.Writer) (string, error)) (string, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return "", fmt.Errorf("open step log: %w", err)
	}
	limited := newMaskingWriter(&limitWriter{w: f, limit: maxLog}, secrets)
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	start := time.Now()
	msg, err := fn(ctx, limited)
	if ctx.Err() != nil && err != nil && !errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) {
		err = fmt.Errorf("%w (the step's %s deadline passed)", err, timeout)
	}
	closeErr := limited.Close()
	w := newMaskingWriter(f, secrets)
	var skipped errSkipped
	switch {
	case errors.As(err, &skipped):
		fmt.Fprintf(w, "slipway: skipped: %s\n", skipped.reason)
	case err != nil:
		fmt.Fprintf(w, "slipway: failed after %s: %v\n", time.Since(start).Round(time.Millisecond), err)
	default:
		fmt.Fprintf(w, "slipway: succeeded in %s: %s\n", time.Since(start).Round(time.Millisecond), msg)
	}
	return msg, errors.Join(err, closeErr, w.Close(), f.Close())
}

// limitWriter passes on limit bytes, then a line saying the rest was
// dropped, then nothing. It never fails a write, so the step goes on.
type limitWriter struct {
	w              io.Writer
	limit, written int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.written >= l.limit {
		return len(p), nil
	}
	head := p[:min(int64(len(p)), l.limit-l.written)]
	l.written += int64(len(head))
	if _, err := l.w.Write(head); err != nil {
		return len(p), err
	}
	if l.written >= l.limit {
		_, err := fmt.Fprintf(l.w, "\nslipway: the log reached its limit of %d bytes here; the step's further output is dropped\n", l.limit)
		return len(p), err
	}
	return len(p), nil
}

func validate(req Request) error {
	s := req.Settings
	switch {
	case !runIDPattern.MatchString(req.RunID):
		return fmt.Errorf("pipeline run: id %q must be letters, digits, '.', '-' and '_'", req.RunID)
	case len(validation.IsDNS1123Label(req.Namespace)) > 0:
		return fmt.Errorf("pipeline run %s: namespace %q is not a namespace name", req.RunID, req.Namespace)
	case len(validation.IsDNS1123Subdomain(req.Pipeline)) > 0:
		return fmt.Errorf("pipeline run %s: pipeline %q is not a Pipeline name", req.RunID, req.Pipeline)
	case !commitPattern.MatchString(req.Source.Commit):
		return fmt.Errorf("pipeline run %s: commit %q must be a full 40-character SHA", req.RunID, req.Source.Commit)
	case req.Source.Branch == "":
		return fmt.Errorf("pipeline run %s: the branch is required: a run builds only a commit of the branch it names", req.RunID)
	case req.Source.URL == "":
		return fmt.Errorf("pipeline run %s: the source repository URL is required", req.RunID)
	case s.ImageRepository == "":
		return fmt.Errorf("pipeline run %s: the image repository is required", req.RunID)
	case s.SigningKey == nil:
		return fmt.Errorf("pipeline run %s: a signing key is required: Slipway pushes no unsigned image", req.RunID)
	}
	return nil
}

func withDefaults(t Timeouts) Timeouts {
	d := DefaultTimeouts
	for _, f := range []struct{ v, def *time.Duration }{
		{&t.Checkout, &d.Checkout}, {&t.Test, &d.Test}, {&t.Build, &d.Build}, {&t.Provenance, &d.Provenance},
		{&t.Push, &d.Push}, {&t.Sign, &d.Sign}, {&t.Promote, &d.Promote}, {&t.GitOperation, &d.GitOperation},
	} {
		if *f.v <= 0 {
			*f.v = *f.def
		}
	}
	return t
}

func promotionAuth(p *Promotion) *gitsource.Credentials {
	if p == nil {
		return nil
	}
	return p.Auth
}

// checkout clones the source into the workspace and checks out the exact
// commit, then reads slipway.yaml from it.
func (r *run) checkout(ctx context.Context, w io.Writer, res *Result) (string, error) {
	src := r.req.Source
	remoteName := gitsource.RedactURL(src.URL)
	repo, commit, err := CheckoutCommit(ctx, r.source, src, r.s.Timeouts.GitOperation, w)
	if err != nil {
		return "", err
	}
	r.git, r.commit = repo, commit
	res.CommitAuthor = commit.Author.Name + " <" + commit.Author.Email + ">"
	res.CommitTime = commit.Committer.When.UTC()
	r.commitTime = res.CommitTime
	fmt.Fprintf(w, "slipway: checked out %s of branch %s by %s, committed %s\n", src.Commit, src.Branch, res.CommitAuthor, res.CommitTime.Format(time.RFC3339))

	cfg, err := readConfig(commit)
	if err != nil {
		return "", fmt.Errorf("commit %s of %s: %w", src.Commit, remoteName, err)
	}
	r.cfg = cfg
	return fmt.Sprintf("checked out %s", src.Commit), nil
}

// readConfig reads slipway.yaml from the commit itself, not the work tree,
// so that what the run obeys is exactly what was committed.
func readConfig(c *object.Commit) (*Config, error) {
	f, err := c.File(ConfigFile)
	if errors.Is(err, object.ErrFileNotFound) {
		return nil, fmt.Errorf("%s not found at the repository root: add one to say how to test and build the service", ConfigFile)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ConfigFile, err)
	}
	if f.Size > maxConfigBytes {
		return nil, fmt.Errorf("%s is %d bytes, over the %d byte limit", ConfigFile, f.Size, maxConfigBytes)
	}
	data, err := f.Contents()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", ConfigFile, err)
	}
	return ParseConfig([]byte(data))
}

// gitError says which git operation on which remote failed and why,
// telling a deadline from refused credentials.
func gitError(op, remoteName string, timeout time.Duration, ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("git %s of %s: %w: the remote did not answer within %s: %v", op, remoteName, gitsource.ErrTimeout, timeout, err)
	case errors.Is(err, gittransport.ErrAuthenticationRequired) || errors.Is(err, gittransport.ErrAuthorizationFailed):
		return fmt.Errorf("git %s of %s: %w: the remote refused the credentials (%v)", op, remoteName, gitsource.ErrAuthentication, err)
	}
	return fmt.Errorf("git %s of %s: %w", op, remoteName, err)
}

// contextDir is the build context in dir, a checkout.
func (r *run) contextDir(dir string) string {
	return filepath.Join(dir, filepath.FromSlash(r.cfg.Build.Context))
}

func (e *Engine) cacheDir() string {
	if e.CacheDir != "" {
		return e.CacheDir
	}
	return filepath.Join(e.Dir, ".caches")
}

// test runs the developers' test command through the executor, in a copy
// of the checkout: what the command changes there never reaches the
// build, which reads the checkout.
func (e *Engine) test(r *run) func(context.Context, io.Writer, *Result) (string, error) {
	return func(ctx context.Context, w io.Writer, res *Result) (string, error) {
		if r.cfg.Test.Command == "" {
			return "", errSkipped{ConfigFile + " has no test.command"}
		}
		if r.cfg.Test.Network && !r.s.AllowTestNetwork {
			return "", fmt.Errorf("%s asks for the network (test.network: true), which the Pipeline does not allow: its spec.test.allowNetwork must be true", ConfigFile)
		}
		workspace, temp := filepath.Join(r.dir, "test"), filepath.Join(r.dir, "tmp")
		if err := copyTree(r.source, workspace); err != nil {
			return "", fmt.Errorf("copy the checkout for the test command: %w", err)
		}
		cache := filepath.Join(e.cacheDir(), r.req.Namespace, r.req.Pipeline)
		for _, d := range []string{temp, cache} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return "", fmt.Errorf("create %s: %w", d, err)
			}
		}
		env := append([]string{}, r.s.TestEnv...)
		for k, v := range r.s.Secrets {
			env = append(env, k+"="+v)
		}
		isolation := e.Executor.Isolation()
		fmt.Fprintf(w, "slipway: %s executor (isolation: %s, network: %t): sh -c %q in %s\n",
			e.Executor.Name(), isolation, r.cfg.Test.Network, r.cfg.Test.Command, r.cfg.Build.Context)
		err := e.Executor.Exec(ctx, Command{
			Script:    r.cfg.Test.Command,
			Workspace: workspace,
			Dir:       r.contextDir(workspace),
			Env:       env,
			Output:    w,
			Limits:    r.s.Limits,
			Network:   r.cfg.Test.Network,
			Cache:     cache,
			Temp:      temp,
			RunID:     r.req.RunID,
			Source:    r.req.Source,
			Image:     r.cfg.Test.Image,
		})
		res.TestIsolation = isolation
		if err != nil {
			// The command itself is in the log; the message stays short
			// enough for a status condition.
			return "", fmt.Errorf("the test command %w; its output is in the step log", err)
		}
		if isolation == IsolationNone {
			return "tests passed, UNISOLATED: the command ran as the server's user (--allow-unisolated-tests)", nil
		}
		return "tests passed", nil
	}
}

// copyTree copies the checkout src, which the server wrote, to dst: files
// with their modes, links as links.
func copyTree(src, dst string) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		target := filepath.Join(dst, rel)
		info, err := d.Info()
		if err != nil {
			return err
		}
		switch {
		case d.IsDir():
			return os.Mkdir(target, info.Mode().Perm()|0o700)
		case info.Mode()&fs.ModeSymlink != 0:
			link, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return os.Symlink(link, target)
		case info.Mode().IsRegular():
			return copyFile(p, target, info.Mode().Perm())
		}
		return nil // git checks out nothing else
	})
}

func copyFile(src, dst string, mode fs.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_CREATE|os.O_EXCL|os.O_WRONLY, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// build builds the image in-process from the checkout, with the commit
// time as SOURCE_DATE_EPOCH so that the same commit gives the same
// digest. The checkout is untrusted: a link in it that leads out of it,
// or a go.mod replacement by a directory outside it, fails the build
// rather than letting it read the server's files.
func (e *Engine) build(r *run) func(context.Context, io.Writer, *Result) (string, error) {
	return func(ctx context.Context, w io.Writer, _ *Result) (string, error) {
		r.built[0] = time.Now()
		defer func() { r.built[1] = time.Now() }()
		if err := linksStayInside(r.source); err != nil {
			return "", err
		}
		labels := map[string]string{
			"org.opencontainers.image.revision": r.req.Source.Commit,
			"org.opencontainers.image.source":   gitsource.RedactURL(r.req.Source.URL),
		}
		if df := r.cfg.Build.Dockerfile; df != "" {
			fmt.Fprintf(w, "slipway: building Dockerfile %s in context %s, SOURCE_DATE_EPOCH=%d\n", df, r.cfg.Build.Context, r.commitTime.Unix())
			img, err := imagebuild.BuildDockerfile(ctx, imagebuild.DockerfileOptions{
				SourceDir:       r.source,
				ContextDir:      r.contextDir(r.source),
				Dockerfile:      filepath.Join(r.source, filepath.FromSlash(df)),
				SourceDateEpoch: r.commitTime,
				Keychain:        r.keychain,
			})
			if err != nil {
				return "", err
			}
			r.image, r.buildType = img, DockerfileBuildType
			r.params = map[string]any{"dockerfile": df, "context": r.cfg.Build.Context, "sourceDateEpoch": r.commitTime.Unix()}
		} else {
			if err := replacementsStayInside(r.source, r.contextDir(r.source)); err != nil {
				return "", err
			}
			fmt.Fprintf(w, "slipway: go build %s in context %s, SOURCE_DATE_EPOCH=%d\n", r.cfg.Build.Package, r.cfg.Build.Context, r.commitTime.Unix())
			// The Pipeline's settings, then what no setting may change: a
			// go.work would reach modules outside the checkout.
			env := append(append(append([]string{}, e.BuildEnv...), r.s.BuildEnv...), "GOWORK=off")
			gr, err := imagebuild.BuildGo(ctx, imagebuild.GoOptions{
				Dir:             r.contextDir(r.source),
				Package:         r.cfg.Build.Package,
				SourceDateEpoch: r.commitTime,
				Labels:          labels,
				Env:             env,
				Timeout:         r.s.Timeouts.Build,
			})
			if err != nil {
				return "", err
			}
			r.image, r.goBuild, r.buildType, r.params = gr.Image, gr, imagebuild.DefaultGoBuildType, gr.Parameters
			r.params["context"] = r.cfg.Build.Context
		}
		d, err := r.image.Digest()
		if err != nil {
			return "", fmt.Errorf("compute the image digest: %w", err)
		}
		r.digest = r.repo.Digest(d.String())
		fmt.Fprintf(w, "slipway: image %s\n", r.digest)
		return "built " + d.String(), nil
	}
}

// provenance writes the SBOM and SLSA provenance statements about the
// image; they are signed and attached in the sign step, once the image
// is in the registry.
func (r *run) provenance(_ context.Context, w io.Writer, _ *Result) (string, error) {
	d, err := v1.NewHash(r.digest.DigestStr())
	if err != nil {
		return "", err
	}
	subject := r.repo.Name()
	var made []string
	if r.goBuild != nil {
		doc, err := imagebuild.SPDX(r.goBuild.BuildInfo, d, r.commitTime, "slipway")
		if err != nil {
			return "", err
		}
		stmt, err := imagebuild.Statement(subject, d, imagebuild.PredicateSPDX, doc)
		if err != nil {
			return "", err
		}
		r.statements = append(r.statements, stmt)
		made = append(made, fmt.Sprintf("SPDX SBOM of %d packages", len(doc.Packages)))
	} else {
		fmt.Fprintln(w, "slipway: no SBOM: a Dockerfile build records no build information to describe")
	}
	pred, err := imagebuild.Provenance(imagebuild.ProvenanceInput{
		BuilderID:    r.s.BuilderID,
		BuildType:    r.buildType,
		SourceRepo:   gitsource.RedactURL(r.req.Source.URL),
		SourceCommit: r.req.Source.Commit,
		SourceRef:    branchRef(r.req.Source.Branch),
		Parameters:   r.params,
		InvocationID: r.req.RunID,
		StartedOn:    r.built[0],
		FinishedOn:   r.built[1],
	})
	if err != nil {
		return "", err
	}
	stmt, err := imagebuild.Statement(subject, d, imagebuild.PredicateSLSAProvenance, pred)
	if err != nil {
		return "", err
	}
	r.statements = append(r.statements, stmt)
	made = append(made, "SLSA v1 provenance")
	fmt.Fprintf(w, "slipway: %v\n", made)
	return fmt.Sprintf("%d statements", len(r.statements)), nil
}

func branchRef(b string) string {
	if b == "" {
		return ""
	}
	return "refs/heads/" + b
}

// push sends the image to the registry, tagged with the commit; blobs the
// registry has are not sent again.
func (r *run) push(ctx context.Context, w io.Writer, res *Result) (string, error) {
	ref := r.repo.Tag(r.req.Source.Commit).String()
	fmt.Fprintf(w, "slipway: pushing %s as %s\n", r.digest.DigestStr(), ref)
	pushed, err := imagebuild.Push(ctx, r.image, ref, r.remote...)
	if err != nil {
		return "", registryError(r.repo, r.s.Registry.Username, err)
	}
	if pushed.String() != r.digest.String() {
		return "", fmt.Errorf("the registry holds %s, not the built %s", pushed, r.digest)
	}
	res.Image, res.Digest = r.digest.String(), r.digest.DigestStr()
	return "pushed " + res.Image, nil
}

// registryError puts the common cause first: a registry refusing the
// credentials answers 401 or 403, and the fix is in the Pipeline's
// registry secret, not in the build.
func registryError(repo name.Repository, user string, err error) error {
	var terr *transport.Error
	if errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden) {
		return fmt.Errorf("the registry %s refused the credentials of user %q for %s (HTTP %d); check the Pipeline's registry secret: %w",
			repo.RegistryStr(), user, repo.RepositoryStr(), terr.StatusCode, err)
	}
	return fmt.Errorf("registry %s: %w", repo.RegistryStr(), err)
}

// sign signs the image and attaches the statements, signed, as cosign
// attestations.
func (r *run) sign(ctx context.Context, w io.Writer, _ *Result) (string, error) {
	start := time.Now()
	err := signing.SignImage(ctx, r.digest, r.s.SigningKey, r.remote...)
	imagebuild.ObserveRegistryOperation(imagebuild.RegistrySign, r.repo.RegistryStr(), start, err)
	if err != nil {
		return "", registryError(r.repo, r.s.Registry.Username, err)
	}
	fmt.Fprintf(w, "slipway: signed %s\n", r.digest)
	for _, stmt := range r.statements {
		start := time.Now()
		err := signing.Attest(ctx, r.digest, r.s.SigningKey, stmt, r.remote...)
		imagebuild.ObserveRegistryOperation(imagebuild.RegistrySign, r.repo.RegistryStr(), start, err)
		if err != nil {
			return "", registryError(r.repo, r.s.Registry.Username, err)
		}
	}
	fmt.Fprintf(w, "slipway: attached %d signed attestations\n", len(r.statements))
	return fmt.Sprintf("signed with %d attestations", len(r.statements)), nil
}

// promote writes the image, pinned by digest, into the ops repository.
func (r *run) promote(ctx context.Context, w io.Writer, res *Result) (string, error) {
	p := r.s.Promotion
	if p == nil {
		return "", errSkipped{"the Pipeline has no promotion target"}
	}
	fmt.Fprintf(w, "slipway: promoting %s into %s of %s\n", r.digest, p.Path, gitsource.RedactURL(p.RepoURL))
	pr, err := promote.Promote(ctx, promote.Request{
		RepoURL:      p.RepoURL,
		Branch:       p.Branch,
		Path:         p.Path,
		ImageName:    p.ImageName,
		Image:        promote.Reference{Repository: r.repo.Name(), Digest: r.digest.DigestStr()},
		SourceCommit: r.req.Source.Commit,
		RunID:        r.req.RunID,
		Auth:         p.Auth,
		Timeout:      r.s.Timeouts.GitOperation,
		MaxAttempts:  p.MaxAttempts,
		Guard:        func(promoted string) error { return r.notOlderThan(promoted, w) },
	})
	if err != nil {
		return "", err
	}
	res.PromotionCommit = pr.Commit
	if !pr.Changed {
		return "the ops repository already names the image at " + pr.Commit, nil
	}
	return fmt.Sprintf("promoted in commit %s after %d attempt(s)", pr.Commit, pr.Attempts), nil
}

// notOlderThan refuses to replace the image of commit promoted with a
// build of a commit that does not descend from it (an older one, as a
// replayed or late push would bring), unless the run is an explicit
// rollback. A promoted commit the checkout's branch does not hold (built
// from another branch, or from history since rewritten) cannot be
// compared, and is replaced.
func (r *run) notOlderThan(promoted string, w io.Writer) error {
	ours := r.req.Source.Commit
	if promoted == "" || promoted == ours {
		return nil
	}
	p, err := r.git.CommitObject(plumbing.NewHash(promoted))
	if err != nil {
		fmt.Fprintf(w, "slipway: the ops repository runs a build of %s, which branch %s does not hold: not compared\n", promoted, r.req.Source.Branch)
		return nil
	}
	newer, err := p.IsAncestor(r.commit)
	if err != nil {
		return fmt.Errorf("compare %s with %s, which the ops repository runs: %w", ours, promoted, err)
	}
	switch {
	case newer:
		return nil
	case r.req.Rollback:
		fmt.Fprintf(w, "slipway: rolling back from %s to %s, as the run asks (rollback)\n", promoted, ours)
		return nil
	}
	if older, _ := r.commit.IsAncestor(p); older {
		return fmt.Errorf("commit %s is older than %s, which the ops repository runs: a replayed or late push does not roll back; a PipelineRun with spec.rollback does", ours, promoted)
	}
	return fmt.Errorf("commit %s does not descend from %s, which the ops repository runs: a PipelineRun with spec.rollback replaces it", ours, promoted)
}
