package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/go-git/go-billy/v5/memfs"
	git "github.com/go-git/go-git/v5"
	gitconfig "github.com/go-git/go-git/v5/config"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/transport"
	"github.com/go-git/go-git/v5/storage/memory"

	"slipway.dev/slipway/internal/gitsource"
)

// Witness keeps checkpoints where the audit store's owner cannot rewrite
// them, so that a store cut short, or rewritten with the audit key, still
// contradicts what was witnessed before.
type Witness interface {
	String() string
	// Publish keeps a checkpoint.
	Publish(ctx context.Context, c *Checkpoint) error
	// Checkpoints returns every checkpoint kept of the log, oldest first.
	Checkpoints(ctx context.Context, logID string) ([]*Checkpoint, error)
}

// NewGitWitness is the witness at url, authenticated by the
// "username:password" in credentialsFile, or anonymous when it is empty.
func NewGitWitness(url, credentialsFile string) (*GitWitness, error) {
	w := &GitWitness{URL: url}
	if credentialsFile == "" {
		return w, nil
	}
	b, err := os.ReadFile(credentialsFile)
	if err != nil {
		return nil, fmt.Errorf("reading the witness credentials: %w", err)
	}
	user, pass, ok := strings.Cut(strings.TrimSpace(string(b)), ":")
	if !ok {
		return nil, fmt.Errorf("%s must hold username:password", credentialsFile)
	}
	w.Auth = &gitsource.Credentials{Username: user, Password: pass}
	return w, nil
}

// GitWitness commits each checkpoint to a git repository, one commit per
// checkpoint, in the file logs/<log id>/checkpoint: the history of that
// file is the sequence of checkpoints. The repository should accept only
// fast-forward pushes from the credential Slipway holds (the lab's
// git server refuses forced pushes and deletions on it), so the server can
// add checkpoints but never remove one: rewriting the history takes the
// git server's administrator as well.
type GitWitness struct {
	URL    string
	Branch string
	Auth   *gitsource.Credentials
	// Timeout bounds each git operation; a minute when zero.
	Timeout time.Duration
	// Author is the committer's name and email.
	Author object.Signature

	mu sync.Mutex
}

func (w *GitWitness) String() string { return "git witness " + gitsource.RedactURL(w.URL) }

func (w *GitWitness) branch() string {
	if w.Branch == "" {
		return "main"
	}
	return w.Branch
}

func (w *GitWitness) timeout() time.Duration {
	if w.Timeout <= 0 {
		return time.Minute
	}
	return w.Timeout
}

func witnessPath(logID string) string { return path.Join("logs", logID, "checkpoint") }

// clone reads the repository into memory; an empty repository gives an
// empty one with the remote configured.
func (w *GitWitness) clone(ctx context.Context, auth transport.AuthMethod) (*git.Repository, error) {
	ctx, cancel := context.WithTimeout(ctx, w.timeout())
	defer cancel()
	repo, err := git.CloneContext(ctx, memory.NewStorage(), memfs.New(), &git.CloneOptions{
		URL: w.URL, Auth: auth, ReferenceName: plumbing.NewBranchReferenceName(w.branch()), SingleBranch: true, Tags: git.NoTags,
	})
	if errors.Is(err, transport.ErrEmptyRemoteRepository) {
		repo, err = git.InitWithOptions(memory.NewStorage(), memfs.New(), git.InitOptions{DefaultBranch: plumbing.NewBranchReferenceName(w.branch())})
		if err != nil {
			return nil, err
		}
		_, err = repo.CreateRemote(&gitconfig.RemoteConfig{Name: "origin", URLs: []string{w.URL}})
	}
	if err != nil {
		return nil, fmt.Errorf("cloning %s: %w", gitsource.RedactURL(w.URL), err)
	}
	return repo, nil
}

// Publish commits the checkpoint unless the file already holds it, and
// pushes, trying again from the new head when another push got in first.
func (w *GitWitness) Publish(ctx context.Context, c *Checkpoint) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	auth, err := w.Auth.AuthMethod()
	if err != nil {
		return err
	}
	file := witnessPath(c.LogID)
	for attempt := 1; ; attempt++ {
		repo, err := w.clone(ctx, auth)
		if err != nil {
			return err
		}
		wt, err := repo.Worktree()
		if err != nil {
			return err
		}
		if old, err := wt.Filesystem.Open(file); err == nil {
			b, _ := io.ReadAll(io.LimitReader(old, maxCheckpointBytes+1))
			old.Close()
			if string(b) == string(c.Marshal()) {
				return nil
			}
		}
		if err := wt.Filesystem.MkdirAll(path.Dir(file), 0o755); err != nil {
			return err
		}
		f, err := wt.Filesystem.Create(file)
		if err != nil {
			return err
		}
		_, err = f.Write(c.Marshal())
		if cerr := f.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if _, err := wt.Add(file); err != nil {
			return err
		}
		sig := w.Author
		if sig.Name == "" {
			sig = object.Signature{Name: "Slipway audit", Email: "audit@slipway.dev"}
		}
		sig.When = time.Now()
		msg := fmt.Sprintf("Audit checkpoint %d of log %s\n\nSlipway-Audit-Log: %s\nSlipway-Audit-Size: %d\nSlipway-Audit-Head: %s\n", c.Size, c.LogID, c.LogID, c.Size, c.Head)
		if _, err := wt.Commit(msg, &git.CommitOptions{Author: &sig}); err != nil {
			return err
		}
		ref := plumbing.NewBranchReferenceName(w.branch())
		pctx, cancel := context.WithTimeout(ctx, w.timeout())
		err = repo.PushContext(pctx, &git.PushOptions{RemoteName: "origin", Auth: auth,
			RefSpecs: []gitconfig.RefSpec{gitconfig.RefSpec(ref + ":" + ref)}})
		cancel()
		if err == nil || errors.Is(err, git.NoErrAlreadyUpToDate) {
			return nil
		}
		if attempt >= 3 || !pushRejected(err) {
			return fmt.Errorf("pushing to %s: %w", gitsource.RedactURL(w.URL), err)
		}
	}
}

func pushRejected(err error) bool {
	if errors.Is(err, git.ErrForceNeeded) {
		return true
	}
	msg := err.Error()
	return strings.Contains(msg, "non-fast-forward") || strings.Contains(msg, "fetch first")
}

// Checkpoints reads the file's history, oldest first. A commit whose file
// is not a checkpoint is skipped: it can add no evidence, and hides none.
func (w *GitWitness) Checkpoints(ctx context.Context, logID string) ([]*Checkpoint, error) {
	auth, err := w.Auth.AuthMethod()
	if err != nil {
		return nil, err
	}
	repo, err := w.clone(ctx, auth)
	if err != nil {
		return nil, err
	}
	head, err := repo.Head()
	if errors.Is(err, plumbing.ErrReferenceNotFound) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var out []*Checkpoint
	file := witnessPath(logID)
	previous := ""
	// First parents only: the branch's own line of history. A commit that
	// leaves the file as its child had it adds nothing.
	c, err := repo.CommitObject(head.Hash())
	for {
		if err != nil {
			return nil, fmt.Errorf("reading the history of %s: %w", w, err)
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		content, ferr := fileAt(c, file)
		if ferr != nil {
			return nil, ferr
		}
		if content != "" && content != previous {
			if cp, perr := ParseCheckpoint([]byte(content)); perr == nil && cp.LogID == logID {
				out = append(out, cp)
			}
		}
		previous = content
		if c.NumParents() == 0 {
			break
		}
		c, err = c.Parent(0)
	}
	// Walked newest first; the checks want the order they were written in.
	for i, j := 0, len(out)-1; i < j; i, j = i+1, j-1 {
		out[i], out[j] = out[j], out[i]
	}
	return out, nil
}

// fileAt reads a file of a commit; "" when it has none (or one too large
// to be a checkpoint).
func fileAt(c *object.Commit, name string) (string, error) {
	f, err := c.File(name)
	if errors.Is(err, object.ErrFileNotFound) {
		return "", nil
	}
	if err != nil {
		return "", err
	}
	if f.Size > maxCheckpointBytes {
		return "", nil
	}
	return f.Contents()
}
