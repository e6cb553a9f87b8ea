package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	git "github.com/go-git/go-git/v5"
	"github.com/go-git/go-git/v5/plumbing"
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
	if err := srv.CreateRepo(ctx, OpsRepo); err != nil {
		return err
	}
	secret, err := os.ReadFile(l.WebhookSecretFile())
	if err != nil {
		return fmt.Errorf("reading the webhook secret: %w", err)
	}
	n := &notifier{
		root: root, secret: bytes.TrimSpace(secret), log: log,
		webhook: "http://127.0.0.1:" + strconv.Itoa(st.Ports.Server) + "/hooks/git",
		baseURL: "http://127.0.0.1:" + strconv.Itoa(st.Ports.Git),
		next:    srv.Handler(),
	}
	addr := "127.0.0.1:" + strconv.Itoa(st.Ports.Git)
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

type notifier struct {
	root, webhook, baseURL string
	secret                 []byte
	log                    logr.Logger
	next                   http.Handler
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
			go n.notify(repo, ref, sha)
		}
	}
}

// heads reads the repository's branches straight from disk.
func (n *notifier) heads(repo string) map[string]string {
	out := map[string]string{}
	if strings.Contains(repo, "..") {
		return out
	}
	r, err := git.PlainOpen(n.root + "/" + repo)
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

func (n *notifier) notify(repo, ref, sha string) {
	body, _ := json.Marshal(map[string]any{
		"ref": ref, "after": sha,
		"repository": map[string]string{"clone_url": n.baseURL + "/" + repo},
	})
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, n.webhook, bytes.NewReader(body))
	if err != nil {
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-GitHub-Event", "push")
	req.Header.Set("X-GitHub-Delivery", strconv.FormatInt(time.Now().UnixNano(), 36))
	req.Header.Set("X-Hub-Signature-256", webhook.Sign(n.secret, body))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		n.log.Info("push notification failed", "webhook", n.webhook, "repo", repo, "error", err.Error())
		return
	}
	resp.Body.Close()
	n.log.Info("push notified", "repo", repo, "ref", ref, "after", sha, "status", resp.StatusCode)
}
