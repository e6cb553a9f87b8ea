// Package webhook receives git push notifications (GitHub and Gitea
// payloads), verifies their HMAC-SHA256 signature and asks the controllers to
// reconcile the Applications that follow the pushed repository at once.
package webhook

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// MaxPayloadBytes bounds a delivery; GitHub caps its own at 25 MB, but a push
// payload big enough to matter here is far smaller.
const MaxPayloadBytes = 5 << 20

// Push is what Slipway needs from a push event.
type Push struct {
	// Ref is the pushed ref, e.g. refs/heads/main.
	Ref string
	// After is the new head commit.
	After string
	// RepoURLs are every URL the payload gives for the repository.
	RepoURLs []string
	// Author of the head commit, when the payload names one.
	Author string
	// ChangedFiles are the paths the pushed commits add, modify or remove;
	// nil when the payload does not tell them all (no commit list, or one
	// the sender truncated), in which case every file counts as changed.
	ChangedFiles []string
}

// maxListedCommits is how many commits GitHub lists in a push payload; a
// list that long may have been truncated, so its files are not the push's
// whole change.
const maxListedCommits = 20

type pushPayload struct {
	Ref        string `json:"ref"`
	After      string `json:"after"`
	HeadCommit struct {
		Author struct {
			Name  string `json:"name"`
			Email string `json:"email"`
		} `json:"author"`
	} `json:"head_commit"`
	Commits []struct {
		Added    []string `json:"added"`
		Removed  []string `json:"removed"`
		Modified []string `json:"modified"`
	} `json:"commits"`
	Repository struct {
		CloneURL string `json:"clone_url"`
		HTMLURL  string `json:"html_url"`
		SSHURL   string `json:"ssh_url"`
		GitURL   string `json:"git_url"`
		URL      string `json:"url"`
	} `json:"repository"`
}

// ParsePush decodes a GitHub or Gitea push payload.
func ParsePush(body []byte) (*Push, error) {
	var p pushPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("push payload is not valid JSON: %w", err)
	}
	push := &Push{Ref: p.Ref, After: p.After, Author: p.HeadCommit.Author.Name}
	for _, u := range []string{p.Repository.CloneURL, p.Repository.HTMLURL, p.Repository.SSHURL, p.Repository.GitURL, p.Repository.URL} {
		if u != "" {
			push.RepoURLs = append(push.RepoURLs, u)
		}
	}
	if n := len(p.Commits); n > 0 && n < maxListedCommits {
		push.ChangedFiles = []string{}
		for _, c := range p.Commits {
			push.ChangedFiles = append(push.ChangedFiles, c.Added...)
			push.ChangedFiles = append(push.ChangedFiles, c.Removed...)
			push.ChangedFiles = append(push.ChangedFiles, c.Modified...)
		}
	}
	if len(push.RepoURLs) == 0 {
		return nil, errors.New("push payload names no repository URL")
	}
	if !strings.HasPrefix(push.Ref, "refs/") {
		return nil, fmt.Errorf("push payload has no valid ref (got %q)", push.Ref)
	}
	return push, nil
}

// Verify checks a delivery's signature: GitHub sends "sha256=<hex>" in
// X-Hub-Signature-256, Gitea sends "<hex>" in X-Gitea-Signature.
func Verify(secret, body []byte, header http.Header) error {
	sig := header.Get("X-Hub-Signature-256")
	if sig != "" {
		var ok bool
		if sig, ok = strings.CutPrefix(sig, "sha256="); !ok {
			return errors.New("X-Hub-Signature-256 is not of the form sha256=<hex>")
		}
	} else if sig = header.Get("X-Gitea-Signature"); sig == "" {
		return errors.New("no X-Hub-Signature-256 or X-Gitea-Signature header")
	}
	got, err := hex.DecodeString(sig)
	if err != nil {
		return errors.New("signature is not hex")
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	if !hmac.Equal(got, mac.Sum(nil)) {
		return errors.New("signature does not match the payload")
	}
	return nil
}

// Sign returns the X-Hub-Signature-256 value for body, for senders and tests.
func Sign(secret, body []byte) string {
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return "sha256=" + hex.EncodeToString(mac.Sum(nil))
}

// NormalizeURL reduces a repository URL to scheme-less host/path form, so
// https://Git.example.com/org/repo.git and http://git.example.com/org/repo
// match. User information is dropped.
func NormalizeURL(raw string) string {
	u, err := url.Parse(strings.TrimSpace(raw))
	if err != nil || u.Host == "" {
		// scp-like ssh: git@host:org/repo.git
		if at := strings.Index(raw, "@"); at >= 0 && strings.Contains(raw[at:], ":") {
			hostPath := strings.Replace(raw[at+1:], ":", "/", 1)
			return strings.ToLower(strings.TrimSuffix(strings.TrimSuffix(hostPath, "/"), ".git"))
		}
		return strings.TrimSuffix(strings.TrimSuffix(raw, "/"), ".git")
	}
	p := strings.TrimSuffix(strings.TrimSuffix(u.Path, "/"), ".git")
	return strings.ToLower(u.Hostname()) + p
}

// Handler serves POST /hooks/git.
type Handler struct {
	// Secret verifies signatures. Without one every delivery is refused:
	// an unauthenticated trigger would let anyone force reconciliations.
	Secret []byte
	Client client.Client
	Log    logr.Logger
}

type response struct {
	Applications []string `json:"applications"`
	PipelineRuns []string `json:"pipelineRuns"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return
	}
	log := h.Log.WithValues("remote", r.RemoteAddr, "delivery", delivery(r.Header))
	if len(h.Secret) == 0 {
		log.Info("refused webhook: no webhook secret is configured")
		http.Error(w, "webhooks are disabled: no secret configured", http.StatusServiceUnavailable)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPayloadBytes))
	if err != nil {
		http.Error(w, fmt.Sprintf("payload over %d bytes", MaxPayloadBytes), http.StatusRequestEntityTooLarge)
		return
	}
	if err := Verify(h.Secret, body, r.Header); err != nil {
		// Never log the payload of an unverified delivery.
		log.Info("refused webhook: bad signature", "reason", err.Error())
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return
	}
	event := r.Header.Get("X-GitHub-Event")
	if event == "" {
		event = r.Header.Get("X-Gitea-Event")
	}
	switch event {
	case "ping":
		w.WriteHeader(http.StatusOK)
		return
	case "push":
	default:
		http.Error(w, fmt.Sprintf("event %q is not handled; send push events", event), http.StatusAccepted)
		return
	}
	push, err := ParsePush(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	apps, err := h.following(ctx, push)
	if err != nil {
		log.Error(err, "listing Applications")
		http.Error(w, "could not list Applications: "+err.Error(), http.StatusInternalServerError)
		return
	}
	runs, err := h.startRuns(ctx, push, delivery(r.Header))
	if err != nil {
		log.Error(err, "starting pipeline runs")
		http.Error(w, "could not start pipeline runs: "+err.Error(), http.StatusInternalServerError)
		return
	}
	// Senders give up after about ten seconds (GitHub does), and annotating
	// hundreds of Applications can take longer: answer now, finish in the
	// background under a deadline of its own.
	go h.trigger(apps, log)
	names := make([]string, 0, len(apps))
	for _, a := range apps {
		names = append(names, a.Namespace+"/"+a.Name)
	}
	log.Info("push received", "ref", push.Ref, "after", push.After, "applications", len(names), "pipelineRuns", runs)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusAccepted)
	_ = json.NewEncoder(w).Encode(response{Applications: names, PipelineRuns: runs})
}

// following lists the Applications whose source is the pushed repository.
func (h *Handler) following(ctx context.Context, push *Push) ([]slipwayv1.Application, error) {
	repos := map[string]bool{}
	for _, u := range push.RepoURLs {
		repos[NormalizeURL(u)] = true
	}
	var list slipwayv1.ApplicationList
	if err := h.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing Applications: %w", err)
	}
	var apps []slipwayv1.Application
	for _, app := range list.Items {
		if repos[NormalizeURL(app.Spec.Source.URL)] {
			apps = append(apps, app)
		}
	}
	return apps, nil
}

// triggerWorkers bounds the parallel annotation patches.
const triggerWorkers = 8

// trigger annotates each Application so every replica's controller
// reconciles it at once.
func (h *Handler) trigger(apps []slipwayv1.Application, log logr.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	token := time.Now().UTC().Format(time.RFC3339Nano)
	work := make(chan *slipwayv1.Application)
	var wg sync.WaitGroup
	for i := 0; i < triggerWorkers; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for app := range work {
				patch := client.MergeFrom(app.DeepCopy())
				if app.Annotations == nil {
					app.Annotations = map[string]string{}
				}
				app.Annotations[slipwayv1.ReconcileRequestAnnotation] = token
				if err := h.Client.Patch(ctx, app, patch); err != nil {
					log.Error(err, "requesting reconciliation", "application", app.Namespace+"/"+app.Name)
				}
			}
		}()
	}
	for i := range apps {
		work <- &apps[i]
	}
	close(work)
	wg.Wait()
}

func delivery(h http.Header) string {
	if d := h.Get("X-GitHub-Delivery"); d != "" {
		return d
	}
	return h.Get("X-Gitea-Delivery")
}
