// Package promote writes a new image, pinned by digest, into an ops
// (manifest) repository: clone, structured YAML edit, commit carrying the
// run's provenance in trailers, push. It is the last step of a pipeline run
// and the one the reference setup's Jenkins job hung on, so every git
// operation runs in-process (go-git) under its own deadline, never prompts,
// and fails with an error naming the remote, the operation and the cause.
// A push rejected because someone else pushed first is not a failure: the
// edit is applied again on the new head and pushed again, a bounded number
// of times.
package promote

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/url"
	"os"
	"path"
	"regexp"
	"strings"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	git "github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"
	"github.com/google/go-containerregistry/pkg/name"

	"slipway.dev/slipway/internal/gitsource"
)

// Defaults for the fields of Request left zero.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultMaxAttempts = 5
	DefaultBranch      = "main"
	DefaultAuthorEmail = "slipway@slipway.dev"
	// AuthorName is the author and committer of every promotion commit, so
	// that the ops repo's history shows which changes the platform made.
	AuthorName = "Slipway"
)

// Trailer keys of the promotion commit message.
const (
	TrailerSourceCommit = "Slipway-Source-Commit"
	TrailerRun          = "Slipway-Run"
	TrailerImageDigest  = "Image-Digest"
)

// backoffBase is the mean wait before the second attempt; it grows
// linearly. A promotion race is between pipeline runs a few hundred
// milliseconds apart, so short waits with jitter separate them.
const backoffBase = 200 * time.Millisecond

// Reference is an image reference pinned by digest.
type Reference struct {
	// Repository is the image repository, "registry/path/name".
	Repository string
	// Digest is "sha256:<hex>".
	Digest string
}

func (r Reference) String() string { return r.Repository + "@" + r.Digest }

// ParseReference reads "registry/repo@sha256:…", refusing references that
// are not pinned by digest: a tag can move, and the ops repo must name
// exactly what was built, signed and attested.
func ParseReference(s string) (Reference, error) {
	d, err := name.NewDigest(s, name.StrictValidation)
	if err != nil {
		return Reference{}, fmt.Errorf("image reference %q must be pinned by digest (repository@sha256:…): %w", s, err)
	}
	return Reference{Repository: d.Context().Name(), Digest: d.DigestStr()}, nil
}

// Request describes one promotion.
type Request struct {
	// RepoURL is the ops repository's clone URL (http or https). It must
	// not carry credentials: they go in Auth, so they cannot end up in an
	// error or a log.
	RepoURL string
	// Branch to promote on; DefaultBranch when empty.
	Branch string
	// Path of the file to edit, relative to the repository root.
	Path string
	// ImageName is the image's name in the file: the name of the
	// kustomization's images entry, or the name in the setter markers.
	ImageName string
	// Image is the new image, pinned by digest.
	Image Reference
	// SourceCommit and RunID are the provenance written into the commit
	// trailers.
	SourceCommit string
	RunID        string
	// Auth is the credential for the ops repository; nil for anonymous.
	Auth *gitsource.Credentials
	// AuthorEmail of the commit; DefaultAuthorEmail when empty.
	AuthorEmail string
	// Trailers are added after the provenance trailers, e.g. the
	// promotion's requester and approvers.
	Trailers []Trailer
	// Timeout bounds each git operation (clone, fetch, push);
	// DefaultTimeout when zero.
	Timeout time.Duration
	// MaxAttempts bounds the pushes tried when the branch moves under
	// the promotion; DefaultMaxAttempts when zero.
	MaxAttempts int
	// Guard, when set, is asked before every attempt whether the image may
	// replace the one the file names now, with the source commit that
	// image was built from, as the promotion commit that wrote it records
	// (empty when no promotion of Slipway's wrote it). An error stops the
	// promotion: Slipway uses it to refuse a build of an older commit.
	Guard func(promotedSource string) error

	// beforePush runs before each push; tests use it to move the branch
	// at a known moment.
	beforePush func(attempt int)
}

// Trailer is one "Key: value" line at the end of the commit message.
type Trailer struct{ Key, Value string }

// Result is a promotion that landed.
type Result struct {
	// Commit is the head of the branch carrying the new image: the
	// promotion commit, or the existing head when the file already named
	// the image.
	Commit string
	// Changed is false when the branch already had the image, so nothing
	// was committed.
	Changed bool
	// Attempts is how many times the edit was applied (1 without a race).
	Attempts int
}

// Error is a failed promotion step. Its message names the remote (without
// credentials), the operation and the cause.
type Error struct {
	Op     string
	Remote string
	Branch string
	Err    error
}

func (e *Error) Error() string {
	return fmt.Sprintf("promote: %s %s (branch %s): %v", e.Op, e.Remote, e.Branch, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrRejected means the remote kept refusing the push because its branch
// moved, more times than MaxAttempts allows.
var ErrRejected = errors.New("push rejected: the branch moved")

// Promote writes req.Image into req.Path of the ops repository and pushes
// the commit. It is idempotent: promoting an image the file already names
// commits nothing.
func Promote(ctx context.Context, req Request) (*Result, error) {
	if err := req.defaults(); err != nil {
		return nil, err
	}
	remote := gitsource.RedactURL(req.RepoURL)
	fail := func(op string, err error) error {
		return &Error{Op: op, Remote: remote, Branch: req.Branch, Err: err}
	}
	auth, err := req.Auth.AuthMethod()
	if err != nil {
		return nil, fail("authenticate to", err)
	}

	branch := plumbing.NewBranchReferenceName(req.Branch)
	var repo *git.Repository
	err = withTimeout(ctx, gitsource.OpClone, req, func(ctx context.Context) error {
		var err error
		repo, err = git.CloneContext(ctx, memory.NewStorage(), memfs.New(), &git.CloneOptions{
			URL:           req.RepoURL,
			Auth:          auth,
			ReferenceName: branch,
			SingleBranch:  true,
			Tags:          git.NoTags,
		})
		return err
	})
	if err != nil {
		return nil, fail("clone", err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return nil, fail("open the work tree of the clone of", err)
	}
	tracking := plumbing.NewRemoteReferenceName("origin", req.Branch)

	for attempt := 1; ; attempt++ {
		head, err := repo.Reference(tracking, true)
		if err != nil {
			return nil, fail("read the head of", err)
		}
		// Reset moves the local branch too, so a commit made by an earlier
		// attempt is dropped and the edit starts again from the remote head.
		if err := wt.Reset(&git.ResetOptions{Commit: head.Hash(), Mode: git.HardReset}); err != nil {
			return nil, fail("check out the head of", err)
		}
		if req.Guard != nil {
			promoted, err := promotedSource(repo, head.Hash(), wt, req)
			if err != nil {
				return nil, fail("read what "+req.Path+" names in", err)
			}
			if err := req.Guard(promoted); err != nil {
				return nil, fail("replace the image "+req.Path+" names in", err)
			}
		}
		commit, changed, err := commitEdit(wt, req)
		if err != nil {
			return nil, fail("edit "+req.Path+" in", err)
		}
		if !changed {
			return &Result{Commit: head.Hash().String(), Attempts: attempt}, nil
		}
		if req.beforePush != nil {
			req.beforePush(attempt)
		}
		err = withTimeout(ctx, gitsource.OpPush, req, func(ctx context.Context) error {
			return repo.PushContext(ctx, &git.PushOptions{
				RemoteName: "origin",
				RefSpecs:   []gitconfig.RefSpec{gitconfig.RefSpec(branch + ":" + branch)},
				Auth:       auth,
			})
		})
		if err == nil {
			return &Result{Commit: commit.String(), Changed: true, Attempts: attempt}, nil
		}
		if !rejected(err) {
			return nil, fail("push to", err)
		}
		if attempt >= req.MaxAttempts {
			return nil, fail("push to", fmt.Errorf("%w %d times; last: %v", ErrRejected, attempt, err))
		}
		if err := sleep(ctx, backoff(attempt)); err != nil {
			return nil, fail("wait to retry the push to", err)
		}
		err = withTimeout(ctx, gitsource.OpFetch, req, func(ctx context.Context) error {
			err := repo.FetchContext(ctx, &git.FetchOptions{
				RemoteName: "origin",
				RefSpecs:   []gitconfig.RefSpec{gitconfig.RefSpec("+" + branch + ":" + tracking)},
				Auth:       auth,
				Tags:       git.NoTags,
			})
			if errors.Is(err, git.NoErrAlreadyUpToDate) {
				return nil
			}
			return err
		})
		if err != nil {
			return nil, fail("fetch", err)
		}
	}
}

func (req *Request) defaults() error {
	u, err := url.Parse(req.RepoURL)
	switch {
	case err != nil:
		// url.Error quotes the URL, which may hold credentials.
		return errors.New("promote: the ops repository URL does not parse")
	case u.User != nil:
		return fmt.Errorf("promote: the ops repository URL %s carries credentials; pass them as Auth", u.Redacted())
	case u.Scheme != "http" && u.Scheme != "https":
		return fmt.Errorf("promote: the ops repository URL %s is not http(s); SSH remotes are not supported for promotion", u.Redacted())
	}
	p := path.Clean(req.Path)
	if req.Path == "" || path.IsAbs(req.Path) || p != req.Path || p == ".." || strings.HasPrefix(p, "../") {
		return fmt.Errorf("promote: file path %q must be a clean path relative to the repository root", req.Path)
	}
	if req.ImageName == "" {
		return errors.New("promote: the image name to set in the manifests is required")
	}
	if _, err := ParseReference(req.Image.String()); err != nil {
		return fmt.Errorf("promote: %w", err)
	}
	// Trailers are one line each; a newline would forge further trailers.
	for k, v := range map[string]string{"source commit": req.SourceCommit, "run id": req.RunID} {
		if v == "" || strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("promote: the %s is required and must be a single line", k)
		}
	}
	for _, t := range req.Trailers {
		if !trailerKey.MatchString(t.Key) || t.Value == "" || strings.ContainsAny(t.Value, "\r\n") {
			return fmt.Errorf("promote: trailer %q must be a word and a single-line value", t.Key)
		}
	}
	if req.Branch == "" {
		req.Branch = DefaultBranch
	}
	if req.AuthorEmail == "" {
		req.AuthorEmail = DefaultAuthorEmail
	}
	if req.Timeout <= 0 {
		req.Timeout = DefaultTimeout
	}
	if req.MaxAttempts <= 0 {
		req.MaxAttempts = DefaultMaxAttempts
	}
	return nil
}

// commitEdit applies the edit to the work tree and commits it; changed is
// false when the file already names the image.
func commitEdit(wt *git.Worktree, req Request) (plumbing.Hash, bool, error) {
	fs := wt.Filesystem
	f, err := fs.Open(req.Path)
	if err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("open %s: %w", req.Path, err)
	}
	before, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("read %s: %w", req.Path, err)
	}
	after, err := Edit(req.Path, before, req.ImageName, req.Image)
	if err != nil {
		return plumbing.ZeroHash, false, err
	}
	if string(after) == string(before) {
		return plumbing.ZeroHash, false, nil
	}
	info, err := fs.Stat(req.Path)
	if err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("stat %s: %w", req.Path, err)
	}
	w, err := fs.OpenFile(req.Path, os.O_WRONLY|os.O_TRUNC, info.Mode())
	if err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("open %s for writing: %w", req.Path, err)
	}
	if _, err := w.Write(after); err != nil {
		w.Close()
		return plumbing.ZeroHash, false, fmt.Errorf("write %s: %w", req.Path, err)
	}
	if err := w.Close(); err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("write %s: %w", req.Path, err)
	}
	if _, err := wt.Add(req.Path); err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("stage %s: %w", req.Path, err)
	}
	sig := &object.Signature{Name: AuthorName, Email: req.AuthorEmail, When: time.Now()}
	hash, err := wt.Commit(CommitMessage(req), &git.CommitOptions{Author: sig, Committer: sig})
	if err != nil {
		return plumbing.ZeroHash, false, fmt.Errorf("commit: %w", err)
	}
	return hash, true, nil
}

// maxHistory bounds the commits promotedSource reads back from the head.
const maxHistory = 1000

// promotedSource returns the source commit of the image the file names
// now: the Slipway-Source-Commit trailer of the newest promotion commit
// that wrote that digest into that file. "" when the file names no digest
// for the image, or no promotion within maxHistory commits wrote it (an
// edit by hand).
func promotedSource(repo *git.Repository, head plumbing.Hash, wt *git.Worktree, req Request) (string, error) {
	f, err := wt.Filesystem.Open(req.Path)
	if err != nil {
		return "", fmt.Errorf("open %s: %w", req.Path, err)
	}
	content, err := io.ReadAll(f)
	f.Close()
	if err != nil {
		return "", fmt.Errorf("read %s: %w", req.Path, err)
	}
	digests, err := Current(req.Path, content, req.ImageName)
	if err != nil || len(digests) == 0 {
		return "", err
	}
	commits, err := repo.Log(&git.LogOptions{From: head})
	if err != nil {
		return "", fmt.Errorf("read the history: %w", err)
	}
	defer commits.Close()
	source := ""
	for i := 0; i < maxHistory && source == ""; i++ {
		c, err := commits.Next()
		if err != nil {
			break
		}
		t := trailers(c.Message)
		if t["File"] == req.Path && t[TrailerImageDigest] == digests[0] {
			source = t[TrailerSourceCommit]
		}
	}
	return source, nil
}

// trailers reads the "Key: value" lines of a commit message.
func trailers(msg string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(msg, "\n") {
		if k, v, ok := strings.Cut(line, ": "); ok && !strings.Contains(k, " ") {
			out[k] = strings.TrimSpace(v)
		}
	}
	return out
}

// CommitMessage is the promotion commit's message: a subject a person
// reads in `git log --oneline`, and trailers (`git interpret-trailers
// --parse`) that the audit trail reads.
func CommitMessage(req Request) string {
	short := strings.TrimPrefix(req.Image.Digest, "sha256:")
	if len(short) > 12 {
		short = short[:12]
	}
	msg := fmt.Sprintf("Promote %s to %s\n\nImage: %s\nFile: %s\n\n%s: %s\n%s: %s\n%s: %s\n",
		req.ImageName, short,
		req.Image, req.Path,
		TrailerSourceCommit, req.SourceCommit,
		TrailerRun, req.RunID,
		TrailerImageDigest, req.Image.Digest)
	for _, t := range req.Trailers {
		msg += t.Key + ": " + t.Value + "\n"
	}
	return msg
}

// trailerKey is what git accepts as a trailer key.
var trailerKey = regexp.MustCompile(`^[A-Za-z][A-Za-z0-9-]*$`)

// withTimeout runs one git operation on the ops repository under its own
// deadline, explains its error and records it.
func withTimeout(ctx context.Context, operation string, req Request, op func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, req.Timeout)
	defer cancel()
	start := time.Now()
	err := classify(ctx, op(ctx), req.Timeout)
	result := gitsource.OperationResult(err)
	if err != nil && rejected(err) {
		result = gitsource.ResultRejected
	}
	gitsource.ObserveOperation(operation, req.RepoURL, start, result)
	return err
}

// classify turns go-git's errors into a cause a person can act on, keeping
// gitsource's sentinels so callers tell timeouts and refused credentials
// apart the same way for fetches and promotions.
func classify(ctx context.Context, err error, timeout time.Duration) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: the remote did not answer within %s: %v", gitsource.ErrTimeout, timeout, trim(err))
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed):
		return fmt.Errorf("%w: the remote refused the credentials (%v)", gitsource.ErrAuthentication, trim(err))
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return fmt.Errorf("repository not found: %w", err)
	case errors.Is(err, transport.ErrEmptyRemoteRepository):
		return fmt.Errorf("the repository has no commits yet; push the manifests first: %w", err)
	case errors.Is(err, plumbing.ErrReferenceNotFound), errors.Is(err, git.NoMatchingRefSpecError{}):
		return fmt.Errorf("the branch does not exist: %w", err)
	}
	return err
}

func trim(err error) string { return strings.TrimSpace(err.Error()) }

// rejected reports whether a push failed because the remote branch is no
// longer the head the commit was made on. go-git has no sentinel for
// either form: its own fast-forward check says "non-fast-forward update",
// and a server that lost the race on its ref lock answers "ng <ref> <why>"
// in the report status, which go-git turns into "command error on <ref>".
func rejected(err error) bool {
	if errors.Is(err, git.ErrForceNeeded) {
		return true
	}
	msg := err.Error()
	for _, s := range []string{"non-fast-forward", "fetch first", "failed to update ref", "cannot lock ref", "failed to lock", "stale info"} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}

// backoff waits attempt × backoffBase on average, jittered by ±50% so that
// two runs that collided do not collide again.
func backoff(attempt int) time.Duration {
	mean := time.Duration(attempt) * backoffBase
	return mean/2 + rand.N(mean)
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
