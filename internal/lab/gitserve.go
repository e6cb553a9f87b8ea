package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/object"
	"github.com/go-git/go-git/v5/plumbing/storer"
	"github.com/go-logr/logr"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/webhook"
)

// ServeGit runs the lab's git server until ctx ends. After every push it
// sends a signed push event to `slipway server`, as a hosted git service
// would, so a push is deployed at once rather than at the next interval.
func (l *Lab) ServeGit(ctx context.Context, log logr.Logger) error {
	st, err := loadState(l.Dir)
	if err != nil {
		return err
	}
	root := l.path("git")
	srv, err := gitserver.New(root, st.Git.Username, st.Git.Password)
	if err != nil {
		return err
	}
	if err := srv.AddReader(st.GitReader.Username, st.GitReader.Password); err != nil {
		return err
	}
	for _, repo := range append([]string{OpsRepo}, sourceRepos()...) {
		if err := srv.CreateRepo(ctx, repo); err != nil {
			return err
		}
	}
	if a := st.Audit; a != nil {
		if err := srv.CreateProtectedRepo(ctx, AuditRepo, a.Witness.Username, a.Witness.Password); err != nil {
			return err
		}
	}
	secret, err := os.ReadFile(l.WebhookSecretFile())
	if err != nil {
		return fmt.Errorf("reading the webhook secret: %w", err)
	}
	n := &notifier{
		root: root, secret: bytes.TrimSpace(secret), log: log,
		webhook: "http://127.0.0.1:" + strconv.Itoa(st.Ports.Server) + "/hooks/git",
		routed:  l.webhookRouteFile(),
		baseURL: "http://" + net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Git)),
		next:    srv.Handler(),
	}
	addr := net.JoinHostPort(st.serviceHost(), strconv.Itoa(st.Ports.Git))
	httpSrv := &http.Server{Addr: addr, Handler: n, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		shutdown, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = httpSrv.Shutdown(shutdown)
	}()
	log.Info("git server listening", "url", n.baseURL, "repos", root)
	if err := httpSrv.ListenAndServe(); err != nil && err != http.ErrServerClosed {
		return fmt.Errorf("git server on %s: %w", addr, err)
	}
	return nil
}

// sourceRepos are the demo services' source repositories.
func sourceRepos() []string {
	var repos []string
	for _, app := range DemoApps {
		repos = append(repos, SourceRepo(app))
	}
	return repos
}

type notifier struct {
	// webhook is the host's slipway server's; routed names a file that,
	// when it holds a URL, sends deliveries there instead (read at each
	// delivery, so that routing changes without a restart).
	root, webhook, routed, baseURL string
	secret                         []byte
	log                            logr.Logger
	next                           http.Handler
}

func (n *notifier) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	repo, isPush := strings.CutSuffix(r.URL.Path, "/git-receive-pack")
	if !isPush || r.Method != http.MethodPost {
		n.next.ServeHTTP(w, r)
		return
	}
	repo = strings.TrimPrefix(repo, "/")
	before := n.heads(repo)
	n.next.ServeHTTP(w, r)
	after := n.heads(repo)
	for ref, sha := range after {
		if before[ref] != sha {
			go n.notify(repo, ref, before[ref], sha)
		}
	}
}

// open opens a repository under the root, refusing names that leave it.
func (n *notifier) open(repo string) (*git.Repository, error) {
	if strings.Contains(repo, "..") {
		return nil, fmt.Errorf("repository name %q leaves the root", repo)
	}
	return git.PlainOpen(filepath.Join(n.root, repo))
}

// heads reads the repository's branches straight from disk.
func (n *notifier) heads(repo string) map[string]string {
	out := map[string]string{}
	r, err := n.open(repo)
	if err != nil {
		return out
	}
	refs, err := r.References()
	if err != nil {
		return out
	}
	_ = refs.ForEach(func(ref *plumbing.Reference) error {
		if ref.Name().IsBranch() {
			out[ref.Name().String()] = ref.Hash().String()
		}
		return nil
	})
	return out
}

// maxNotifiedCommits is how many commits a push event lists, as GitHub does;
// a receiver treats a list this long as possibly incomplete.
const maxNotifiedCommits = 20

type pushCommit struct {
	ID        string            `json:"id"`
	Message   string            `json:"message"`
	Timestamp string            `json:"timestamp"`
	Author    map[string]string `json:"author"`
	Added     []string          `json:"added"`
	Removed   []string          `json:"removed"`
	Modified  []string          `json:"modified"`
}

// pushEvent is a GitHub-shaped push payload: the ref, both heads, and the
// pushed commits (newest first, at most maxNotifiedCommits) with the files
// each changed, so receivers can skip pushes that touch only files they ignore.
func (n *notifier) pushEvent(repo, ref, before, after string) map[string]any {
	event := map[string]any{
		"ref": ref, "before": before, "after": after,
		"repository": map[string]string{"clone_url": n.baseURL + "/" + repo, "full_name": strings.TrimSuffix(repo, ".git")},
	}
	r, err := n.open(repo)
	if err != nil {
		return event
	}
	commits, err := r.Log(&git.LogOptions{From: plumbing.NewHash(after)})
	if err != nil {
		return event
	}
	var listed []pushCommit
	_ = commits.ForEach(func(c *object.Commit) error {
		if c.Hash.String() == before || len(listed) == maxNotifiedCommits {
			return storer.ErrStop
		}
		pc := pushCommit{
			ID: c.Hash.String(), Message: c.Message, Timestamp: c.Committer.When.Format(time.RFC3339),
			Author: map[string]string{"name": c.Author.Name, "email": c.Author.Email},
			Added:  []string{}, Removed: []string{}, Modified: []string{},
		}
		if err := changedFiles(c, &pc); err != nil {
			return err
		}
		listed = append(listed, pc)
		return nil
	})
	if len(listed) > 0 {
		event["head_commit"] = listed[0]
		event["commits"] = listed
	}
	return event
}

// changedFiles fills the files c changed against its first parent.
func changedFiles(c *object.Commit, pc *pushCommit) error {
	tree, err := c.Tree()
	if err != nil {
		return err
	}
	var parentTree *object.Tree
	if c.NumParents() > 0 {
		parent, err := c.Parent(0)
		if err != nil {
			return err
		}
		if parentTree, err = parent.Tree(); err != nil {
			return err
		}
	}
	changes, err := object.DiffTree(parentTree, tree)
	if err != nil {
		return err
	}
	for _, ch := range changes {
		switch {
		case ch.From.Name == "":
			pc.Added = append(pc.Added, ch.To.Name)
		case ch.To.Name == "":
			pc.Removed = append(pc.Removed, ch.From.Name)
		default:
			pc.Modified = append(pc.Modified, ch.To.Name)
		}
	}
	return nil
}

func (n *notifier) notify(repo, ref, before, after string) {
	url := n.webhook
	if b, err := os.ReadFile(n.routed); err == nil && len(bytes.TrimSpace(b)) > 0 {
		url = string(bytes.TrimSpace(b))
	}
	status, err := n.deliver(context.Background(), url, repo, ref, before, after)
	if err != nil {
		n.log.Info("push notification failed", "webhook", url, "repo", repo, "error", err.Error())
		return
	}
	n.log.Info("push notified", "repo", repo, "ref", ref, "after", after, "status", status)
}

// deliver posts the signed push event of ref moving from before to after
// to url, within 10 s, and returns the answer's status code.
func (n *notifier) deliver(ctx context.Context, url, repo, ref, before, after string) (int, error) {
	if before == "" {
		before = plumbing.ZeroHash.String()
	}
	body, err := json.Marshal(n.pushEvent(repo, ref, before, after))
	if err != nil {
		return 0, fmt.Errorf("encoding the push event of %s: %w", repo, err)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return 0, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", strconv.FormatInt(time.Now().UnixNano(), 36))
	req.Header.Set("X-Hub-Signature-256", webhook.Sign(n.secret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return 0, fmt.Errorf("delivering the push event of %s to %s: %w", repo, url, err)
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}
