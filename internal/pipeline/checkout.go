package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"

	"slipway.dev/slipway/internal/gitsource"
)

// CheckoutCommit clones src's branch into dir and checks out src.Commit,
// refusing a commit the branch does not reach, whatever a webhook or a
// PipelineRun claims. The clone has a deadline of timeout; credentials
// go to go-git, never into the URL. The run's checkout step and `slipway
// checkout` (the Kubernetes executor's, in a test Pod) both use it, so
// the Pod tests exactly what the server builds. Its messages name the
// remote without credentials, the branch and the commit.
func CheckoutCommit(ctx context.Context, dir string, src Source, timeout time.Duration, w io.Writer) (*git.Repository, *object.Commit, error) {
	remoteName := gitsource.RedactURL(src.URL)
	switch {
	case src.URL == "" || src.Branch == "":
		return nil, nil, errors.New("checkout: the source URL and branch are required")
	case !commitPattern.MatchString(src.Commit):
		return nil, nil, fmt.Errorf("checkout of %s: %q is not a full commit id", remoteName, src.Commit)
	}
	auth, err := src.Auth.AuthMethod()
	if err != nil {
		return nil, nil, fmt.Errorf("clone %s: %w", remoteName, err)
	}
	branch := plumbing.NewBranchReferenceName(src.Branch)
	opts := &git.CloneOptions{URL: src.URL, NoCheckout: true, Tags: git.NoTags, Auth: auth, ReferenceName: branch, SingleBranch: true}
	fmt.Fprintf(w, "slipway: cloning %s (branch %s) into %s\n", remoteName, src.Branch, dir)
	opCtx, cancel := context.WithTimeout(ctx, timeout)
	started := time.Now()
	repo, err := git.PlainCloneContext(opCtx, dir, false, opts)
	if err != nil {
		err = gitError("clone", remoteName, timeout, opCtx, err)
	}
	cancel()
	gitsource.ObserveOperation(gitsource.OpClone, src.URL, started, gitsource.OperationResult(err))
	if err != nil {
		return nil, nil, err
	}
	head, err := repo.Reference(branch, true)
	if err != nil {
		return nil, nil, fmt.Errorf("read the head of branch %s of %s: %w", src.Branch, remoteName, err)
	}
	hash := plumbing.NewHash(src.Commit)
	commit, err := repo.CommitObject(hash)
	if err == nil && hash != head.Hash() {
		var tip *object.Commit
		if tip, err = repo.CommitObject(head.Hash()); err == nil {
			var onBranch bool
			if onBranch, err = commit.IsAncestor(tip); err == nil && !onBranch {
				err = errors.New("the branch's head does not descend from it")
			}
		}
	}
	if err != nil {
		return nil, nil, fmt.Errorf("commit %s is not on branch %s of %s (its head is %s): a run builds only commits of the branch it names: %w",
			src.Commit, src.Branch, remoteName, head.Hash(), err)
	}
	wt, err := repo.Worktree()
	if err != nil {
		return nil, nil, fmt.Errorf("open the work tree of %s: %w", dir, err)
	}
	if err := wt.Checkout(&git.CheckoutOptions{Hash: hash, Force: true}); err != nil {
		return nil, nil, fmt.Errorf("check out %s of %s: %w", src.Commit, remoteName, err)
	}
	return repo, commit, nil
}

// The variables `slipway checkout` reads: what the Kubernetes executor
// gives its checkout container, the credentials from the Pod's Secret (as
// variables, or as files for SSH), never on a command line or in the URL.
const (
	CheckoutEnvWorkspace      = "SLIPWAY_WORKSPACE"
	CheckoutEnvURL            = "SLIPWAY_SOURCE_URL"
	CheckoutEnvCommit         = "SLIPWAY_COMMIT"
	CheckoutEnvBranch         = "SLIPWAY_BRANCH"
	CheckoutEnvUsername       = "SLIPWAY_GIT_USERNAME"
	CheckoutEnvPassword       = "SLIPWAY_GIT_PASSWORD"
	CheckoutEnvIdentityFile   = "SLIPWAY_GIT_IDENTITY_FILE"
	CheckoutEnvKnownHostsFile = "SLIPWAY_GIT_KNOWN_HOSTS_FILE"
)

// CheckoutFromEnv is `slipway checkout`: CheckoutCommit of the source the
// variables above name into their workspace, which must be empty or
// missing.
func CheckoutFromEnv(ctx context.Context, getenv func(string) string, timeout time.Duration, w io.Writer) error {
	src := Source{URL: getenv(CheckoutEnvURL), Commit: getenv(CheckoutEnvCommit), Branch: getenv(CheckoutEnvBranch)}
	dir := getenv(CheckoutEnvWorkspace)
	if dir == "" {
		return fmt.Errorf("checkout: %s names no workspace", CheckoutEnvWorkspace)
	}
	if u, err := url.Parse(src.URL); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return fmt.Errorf("checkout: the source URL %s carries a password; give it in %s", u.Redacted(), CheckoutEnvPassword)
		}
	}
	switch identity := getenv(CheckoutEnvIdentityFile); {
	case identity != "":
		id, err := os.ReadFile(identity)
		if err != nil {
			return fmt.Errorf("checkout of %s: the SSH identity: %w", gitsource.RedactURL(src.URL), err)
		}
		hosts, err := os.ReadFile(getenv(CheckoutEnvKnownHostsFile))
		if err != nil {
			return fmt.Errorf("checkout of %s: known_hosts (%s): %w", gitsource.RedactURL(src.URL), CheckoutEnvKnownHostsFile, err)
		}
		// The password, if any, is the identity's passphrase.
		src.Auth = &gitsource.Credentials{Username: getenv(CheckoutEnvUsername), Password: getenv(CheckoutEnvPassword), Identity: id, KnownHosts: hosts}
	case getenv(CheckoutEnvUsername) != "" || getenv(CheckoutEnvPassword) != "":
		src.Auth = &gitsource.Credentials{Username: getenv(CheckoutEnvUsername), Password: getenv(CheckoutEnvPassword)}
	}
	if entries, err := os.ReadDir(dir); err == nil && len(entries) > 0 {
		return fmt.Errorf("checkout of %s: the workspace %s is not empty", gitsource.RedactURL(src.URL), dir)
	}
	_, commit, err := CheckoutCommit(ctx, dir, src, timeout, w)
	if err != nil {
		return err
	}
	fmt.Fprintf(w, "slipway: checked out %s of branch %s by %s <%s>\n", src.Commit, src.Branch, commit.Author.Name, commit.Author.Email)
	return nil
}
