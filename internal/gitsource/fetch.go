// Package gitsource fetches revisions of git repositories for the GitOps engine.
//
// Every operation runs in-process (go-git) under a deadline and never waits on
// a prompt. Clones are cached per URL as bare repositories: branches and tags
// are fetched shallow, a pinned commit triggers a full fetch in a separate
// cache so the shallow one stays small. Files are read straight from the
// commit's tree, so no work tree is ever checked out or shared between callers.
package gitsource

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	git "github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/cache"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/filesystem"

	"github.com/go-git/go-billy/v5/osfs"
)

// DefaultTimeout bounds a git operation when the caller gives none.
const DefaultTimeout = 60 * time.Second

// DefaultBranch is used when a Ref names nothing.
const DefaultBranch = "main"

// Ref selects a revision: at most one of its fields is set.
type Ref struct {
	Branch string
	Tag    string
	Commit string
}

// String describes the ref for messages, e.g. "branch main".
func (r Ref) String() string {
	switch {
	case r.Commit != "":
		return "commit " + r.Commit
	case r.Tag != "":
		return "tag " + r.Tag
	case r.Branch != "":
		return "branch " + r.Branch
	default:
		return "branch " + DefaultBranch
	}
}

// Request describes one fetch.
type Request struct {
	URL string
	Ref Ref
	// Path limits the returned files to this directory of the repository.
	Path string
	// Auth is the credential, or nil for anonymous access.
	Auth *Credentials
	// Timeout bounds each git operation; DefaultTimeout when zero.
	Timeout time.Duration
	// FreshAfter is the moment from which the remote's state is wanted: a
	// fetch of the same ref begun at or after it answers the request
	// without another. Zero (or a moment still to come) means the moment
	// of the call. A caller working for a webhook names the webhook's
	// moment, so one fetch serves every Application the push concerns.
	FreshAfter time.Time
}

// Snapshot is the content of one revision below the requested path.
type Snapshot struct {
	// Revision is the full commit SHA.
	Revision string
	// Tree is the git tree of the requested path at Revision: equal trees
	// hold equal files.
	Tree string
	// Files maps slash-separated paths, relative to the requested path, to content.
	Files map[string][]byte
}

// Fetcher fetches revisions, sharing cached clones between callers that
// present the same credentials.
type Fetcher struct {
	root string
	// Limits bound what one repository can cost; DefaultLimits unless set
	// before the first fetch.
	Limits Limits

	hosts *hostSlots

	mu    sync.Mutex
	repos map[string]*cachedRepo
}

type cachedRepo struct {
	mu  sync.Mutex
	dir string
	// lastFetchStart of the last successful fetch, per refspec: a caller that
	// asked after that moment must fetch again, an earlier caller may reuse it.
	lastFetchStart map[string]time.Time
	repo           *git.Repository
}

// SetPerHost lets at most n fetches run against one host at a time; a
// caller that finds them all taken for a second gets ErrHostBusy. Zero
// removes the limit. Call before the first fetch.
func (f *Fetcher) SetPerHost(n int) {
	f.hosts = &hostSlots{limit: n, used: map[string]int{}, freed: make(chan struct{})}
}

// NewFetcher caches clones under dir.
func NewFetcher(dir string) *Fetcher {
	return &Fetcher{root: dir, Limits: DefaultLimits, repos: map[string]*cachedRepo{}}
}

// Fetch resolves req.Ref on the remote (or pinned, when not empty) and returns
// the files of that revision below req.Path.
func (f *Fetcher) Fetch(ctx context.Context, req Request, pinned string) (*Snapshot, error) {
	asked := time.Now()
	if !req.FreshAfter.IsZero() && req.FreshAfter.Before(asked) {
		asked = req.FreshAfter
	}
	timeout := req.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	timeout = min(timeout, MaxTimeout)
	release, err := f.hosts.acquire(ctx, hostOf(req.URL), time.Second)
	if err != nil {
		return nil, &Error{Op: "fetch", URL: RedactURL(req.URL), Ref: req.Ref.String(), Err: err}
	}
	defer release()
	ref := req.Ref
	if pinned != "" {
		ref = Ref{Commit: pinned}
	}
	full := ref.Commit != ""
	cr, err := f.open(req.URL, req.Auth, full)
	if err != nil {
		return nil, err
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()

	hash, err := cr.resolve(ctx, req, ref, timeout, asked)
	if err != nil {
		return nil, err
	}
	files, tree, err := readTree(cr.repo, hash, req.Path, f.Limits)
	if err != nil {
		return nil, fmt.Errorf("reading %s at %s from %s: %w", displayPath(req.Path), hash, RedactURL(req.URL), err)
	}
	return &Snapshot{Revision: hash.String(), Tree: tree.String(), Files: files}, nil
}

// open returns the cached repository for url and the credentials, creating
// it on first use. Callers with other credentials (or none) get a clone of
// their own: a commit fetched with one credential is never served to a
// caller who could not have fetched it.
func (f *Fetcher) open(url string, auth *Credentials, full bool) (*cachedRepo, error) {
	mode := "shallow"
	if full {
		mode = "full"
	}
	h := sha256.New()
	h.Write([]byte(url))
	h.Write([]byte{0})
	h.Write(auth.fingerprint())
	key := hex.EncodeToString(h.Sum(nil)[:12]) + "-" + mode

	f.mu.Lock()
	defer f.mu.Unlock()
	if cr, ok := f.repos[key]; ok {
		return cr, nil
	}
	dir := filepath.Join(f.root, key)
	repo, err := f.openBare(dir, url)
	if err != nil {
		// A corrupt cache is not worth keeping: start again from nothing.
		_ = os.RemoveAll(dir)
		if repo, err = f.openBare(dir, url); err != nil {
			return nil, fmt.Errorf("preparing git cache for %s in %s: %w", RedactURL(url), dir, err)
		}
	}
	cr := &cachedRepo{repo: repo, dir: dir, lastFetchStart: map[string]time.Time{}}
	f.repos[key] = cr
	return cr, nil
}

// openBare opens or creates the bare cache repository in dir, on storage
// whose pack writer enforces the limits.
func (f *Fetcher) openBare(dir, url string) (*git.Repository, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	st := &guardedStorage{Storage: filesystem.NewStorage(osfs.New(dir), cache.NewObjectLRUDefault()), limits: f.Limits}
	repo, err := git.Open(st, nil)
	if !errors.Is(err, git.ErrRepositoryNotExists) {
		return repo, err
	}
	if repo, err = git.Init(st, nil); err != nil {
		return nil, err
	}
	_, err = repo.CreateRemote(&gitconfig.RemoteConfig{Name: "origin", URLs: []string{url}})
	return repo, err
}

// resolve fetches what ref needs and returns its commit hash.
func (cr *cachedRepo) resolve(ctx context.Context, req Request, ref Ref, timeout time.Duration, asked time.Time) (plumbing.Hash, error) {
	var (
		refspec gitconfig.RefSpec
		local   plumbing.ReferenceName
		depth   = 1
	)
	switch {
	case ref.Commit != "":
		hash := plumbing.NewHash(ref.Commit)
		if _, err := cr.repo.CommitObject(hash); err == nil {
			return hash, nil
		}
		refspec, depth = "+refs/heads/*:refs/remotes/origin/*", 0
	case ref.Tag != "":
		refspec = gitconfig.RefSpec(fmt.Sprintf("+refs/tags/%s:refs/tags/%[1]s", ref.Tag))
		local = plumbing.NewTagReferenceName(ref.Tag)
	default:
		branch := ref.Branch
		if branch == "" {
			branch = DefaultBranch
		}
		refspec = gitconfig.RefSpec(fmt.Sprintf("+refs/heads/%s:refs/remotes/origin/%[1]s", branch))
		local = plumbing.NewRemoteReferenceName("origin", branch)
	}

	if start, ok := cr.lastFetchStart[string(refspec)]; !ok || start.Before(asked) {
		start := time.Now()
		if err := cr.fetch(ctx, req, ref, refspec, depth, timeout); err != nil {
			return plumbing.ZeroHash, err
		}
		cr.lastFetchStart[string(refspec)] = start
	}

	if ref.Commit != "" {
		hash := plumbing.NewHash(ref.Commit)
		if _, err := cr.repo.CommitObject(hash); err != nil {
			return plumbing.ZeroHash, fmt.Errorf("commit %s not found in %s", ref.Commit, RedactURL(req.URL))
		}
		return hash, nil
	}
	r, err := cr.repo.Reference(local, true)
	if err != nil {
		return plumbing.ZeroHash, fmt.Errorf("%s not found in %s: %w", ref, RedactURL(req.URL), err)
	}
	return peel(cr.repo, r.Hash())
}

func (cr *cachedRepo) fetch(ctx context.Context, req Request, ref Ref, refspec gitconfig.RefSpec, depth int, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	auth, err := req.Auth.AuthMethod()
	if err != nil {
		return fmt.Errorf("git fetch %s from %s: %w", ref, RedactURL(req.URL), err)
	}
	start := time.Now()
	err = cr.repo.FetchContext(ctx, &git.FetchOptions{
		RemoteName: "origin",
		RemoteURL:  req.URL,
		RefSpecs:   []gitconfig.RefSpec{refspec},
		Depth:      depth,
		Auth:       auth,
		Tags:       git.NoTags,
		Force:      true,
	})
	if err == nil || errors.Is(err, git.NoErrAlreadyUpToDate) {
		ObserveOperation(OpFetch, req.URL, start, ResultSuccess)
		return nil
	}
	err = classify(ctx, err)
	ObserveOperation(OpFetch, req.URL, start, OperationResult(err))
	// A pack refused half-way leaves go-git's temporary files behind.
	if tmp, _ := filepath.Glob(filepath.Join(cr.dir, "objects", "pack", "tmp_*")); len(tmp) > 0 {
		for _, t := range tmp {
			_ = os.Remove(t)
		}
	}
	return &Error{Op: "fetch", URL: RedactURL(req.URL), Ref: ref.String(), Timeout: timeout, Err: err}
}

// peel follows annotated tags to their commit.
func peel(repo *git.Repository, hash plumbing.Hash) (plumbing.Hash, error) {
	if tag, err := repo.TagObject(hash); err == nil {
		c, err := tag.Commit()
		if err != nil {
			return plumbing.ZeroHash, fmt.Errorf("tag %s does not point to a commit: %w", tag.Name, err)
		}
		return c.Hash, nil
	}
	return hash, nil
}

// readTree returns the files below dir in the commit's tree and that
// directory's tree hash, refusing before reading them files over the limits.
func readTree(repo *git.Repository, hash plumbing.Hash, dir string, limits Limits) (map[string][]byte, plumbing.Hash, error) {
	commit, err := repo.CommitObject(hash)
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	tree, err := commit.Tree()
	if err != nil {
		return nil, plumbing.ZeroHash, err
	}
	dir = strings.Trim(path.Clean("/"+dir), "/")
	if dir != "" {
		if tree, err = tree.Tree(dir); err != nil {
			return nil, plumbing.ZeroHash, fmt.Errorf("path %q does not exist in the repository: %w", dir, err)
		}
	}
	files := map[string][]byte{}
	var total int64
	err = tree.Files().ForEach(func(f *object.File) error {
		if !f.Mode.IsFile() {
			return nil
		}
		// Sizes come from the object headers: nothing is inflated yet.
		if f.Size > limits.MaxFileBytes {
			return fmt.Errorf("%w: %s is %s, over the %s limit for one file", ErrTooLarge, f.Name, mib(f.Size), mib(limits.MaxFileBytes))
		}
		if total += f.Size; total > limits.MaxTreeBytes {
			return fmt.Errorf("%w: the files below %s add up to more than %s", ErrTooLarge, displayPath(dir), mib(limits.MaxTreeBytes))
		}
		r, err := f.Reader()
		if err != nil {
			return err
		}
		defer r.Close()
		b, err := io.ReadAll(r)
		if err != nil {
			return err
		}
		files[f.Name] = b
		return nil
	})
	return files, tree.Hash, err
}

func displayPath(p string) string {
	if p == "" || p == "." || p == "/" {
		return "the repository root"
	}
	return "path " + p
}

// Error is a failed git operation: it names the remote, the operation and the cause.
type Error struct {
	Op      string
	URL     string
	Ref     string
	Timeout time.Duration
	Err     error
}

func (e *Error) Error() string {
	return fmt.Sprintf("git %s of %s from %s: %v", e.Op, e.Ref, e.URL, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// ErrTimeout and ErrAuthentication let callers tell the common causes apart.
var (
	ErrTimeout        = errors.New("timed out")
	ErrAuthentication = errors.New("authentication failed")
)

// classify turns go-git's and net's errors into a cause a person can act on,
// keeping the original for errors.Is.
func classify(ctx context.Context, err error) error {
	err = trimmed{err}
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w: the remote did not answer before the deadline (%v)", ErrTimeout, err)
	case errors.Is(err, transport.ErrAuthenticationRequired), errors.Is(err, transport.ErrAuthorizationFailed):
		return fmt.Errorf("%w: the remote refused the credentials (%v)", ErrAuthentication, err)
	case errors.Is(err, transport.ErrRepositoryNotFound):
		return fmt.Errorf("repository not found: %w", err)
	}
	return err
}

// RedactURL removes any user information from a URL so it is safe to log.
func RedactURL(raw string) string {
	scheme, rest, ok := strings.Cut(raw, "://")
	if !ok {
		return raw
	}
	host := rest
	if i := strings.IndexByte(rest, '/'); i >= 0 {
		host = rest[:i]
	}
	if at := strings.LastIndexByte(host, '@'); at >= 0 {
		return scheme + "://" + rest[at+1:]
	}
	return raw
}

// trimmed drops the trailing newlines some transports leave in messages.
type trimmed struct{ error }

func (t trimmed) Error() string { return strings.TrimSpace(t.error.Error()) }
func (t trimmed) Unwrap() error { return t.error }

// Authors returns the author emails of the commits reachable from to and
// not from from (git log from..to), at most limit commits: the people whose
// code a change between two builds carries. An empty from walks all of
// to's history. More than limit commits is an error, not a shorter list.
func (f *Fetcher) Authors(ctx context.Context, req Request, from, to string, limit int) ([]string, error) {
	req.Ref, req.Path = Ref{Commit: to}, ""
	if _, err := f.Fetch(ctx, req, ""); err != nil {
		return nil, err
	}
	cr, err := f.open(req.URL, req.Auth, true)
	if err != nil {
		return nil, err
	}
	cr.mu.Lock()
	defer cr.mu.Unlock()
	seen := map[plumbing.Hash]bool{}
	if from != "" {
		// Everything from already carries is not new.
		if err := walk(cr.repo, plumbing.NewHash(from), seen, nil, -1); err != nil && !errors.Is(err, plumbing.ErrObjectNotFound) {
			return nil, fmt.Errorf("reading the history of %s in %s: %w", from, RedactURL(req.URL), err)
		}
	}
	emails := map[string]bool{}
	err = walk(cr.repo, plumbing.NewHash(to), seen, func(c *object.Commit) {
		emails[strings.ToLower(c.Author.Email)] = true
	}, limit)
	if err != nil {
		return nil, fmt.Errorf("reading the commits between %s and %s in %s: %w", short(from), short(to), RedactURL(req.URL), err)
	}
	out := make([]string, 0, len(emails))
	for e := range emails {
		out = append(out, e)
	}
	sort.Strings(out)
	return out, nil
}

// walk visits the commits reachable from start that are not in seen,
// marking them; more than limit (when not negative) is an error.
func walk(repo *git.Repository, start plumbing.Hash, seen map[plumbing.Hash]bool, visit func(*object.Commit), limit int) error {
	queue := []plumbing.Hash{start}
	for n := 0; len(queue) > 0; {
		h := queue[0]
		queue = queue[1:]
		if seen[h] {
			continue
		}
		seen[h] = true
		c, err := repo.CommitObject(h)
		if err != nil {
			return err
		}
		if n++; limit >= 0 && n > limit {
			return fmt.Errorf("more than %d commits", limit)
		}
		if visit != nil {
			visit(c)
		}
		queue = append(queue, c.ParentHashes...)
	}
	return nil
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	if rev == "" {
		return "the first commit"
	}
	return rev
}
