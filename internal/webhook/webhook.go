// Package webhook receives git push notifications (GitHub and Gitea
// payloads), verifies their HMAC-SHA256 signature, asks the controllers to
// reconcile the Applications that follow the pushed repository at once,
// and starts a PipelineRun per Pipeline and commit. A Pipeline can have a
// webhook secret of its own, as GitHub and Gitea keep one per repository:
// then only that secret starts its runs.
package webhook

import (
	"bytes"
	"cmp"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
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
	// nil when the payload does not tell them all (no commit list, one the
	// sender may have truncated, a new branch or a forced push), in which
	// case every file counts as changed.
	ChangedFiles []string
}

// Limits of the senders' commit lists. GitHub lists at most 20 commits of
// a push in its timeline events and documents 2048 for webhooks; a list
// of 20 or more is taken as possibly truncated. Gitea lists at most
// [ui] FEED_MAX_COMMIT_NUM (5 by default) and says how many there were in
// total_commits, which decides. GitHub lists at most 3000 files of one
// commit.
const (
	maxListedCommits = 20
	maxListedFiles   = 3000
)

// zeroSHA is the before of a push that created the branch.
var zeroSHA = strings.Repeat("0", 40)

type pushPayload struct {
	Ref     string `json:"ref"`
	Before  string `json:"before"`
	After   string `json:"after"`
	Created bool   `json:"created"`
	Forced  bool   `json:"forced"`
	// TotalCommits is Gitea's count of the pushed commits, of which it
	// lists at most its limit.
	TotalCommits *int `json:"total_commits"`
	HeadCommit   struct {
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
	Repository repository `json:"repository"`
}

type repository struct {
	CloneURL string `json:"clone_url"`
	HTMLURL  string `json:"html_url"`
	SSHURL   string `json:"ssh_url"`
	GitURL   string `json:"git_url"`
	URL      string `json:"url"`
}

func (r repository) urls() []string {
	var out []string
	for _, u := range []string{r.CloneURL, r.HTMLURL, r.SSHURL, r.GitURL, r.URL} {
		if u != "" {
			out = append(out, u)
		}
	}
	return out
}

// ParsePush decodes a GitHub or Gitea push payload.
func ParsePush(body []byte) (*Push, error) {
	var p pushPayload
	if err := json.Unmarshal(body, &p); err != nil {
		return nil, fmt.Errorf("push payload is not valid JSON: %w", err)
	}
	push := &Push{Ref: p.Ref, After: p.After, Author: p.HeadCommit.Author.Name, RepoURLs: p.Repository.urls()}
	if p.commitsComplete() {
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

// commitsComplete reports whether the commit list is the whole change the
// push made to the branch, within what its sender can say: not when the
// branch is new (the list is not a change against anything built) or was
// forced (commits it dropped changed files too), nor when the list may
// have been cut at the sender's limit.
func (p *pushPayload) commitsComplete() bool {
	n := len(p.Commits)
	switch {
	case n == 0, p.Created, p.Forced, p.Before == "" || p.Before == zeroSHA:
		return false
	case p.TotalCommits != nil:
		if n != *p.TotalCommits {
			return false
		}
	case n >= maxListedCommits:
		return false
	}
	for _, c := range p.Commits {
		if len(c.Added) >= maxListedFiles || len(c.Removed) >= maxListedFiles || len(c.Modified) >= maxListedFiles {
			return false
		}
	}
	return true
}

// RepositoryURLs returns the URLs a payload gives for its repository,
// push or ping, before its signature is checked: they say which
// Pipelines' secrets may verify it.
func RepositoryURLs(body []byte) []string {
	var p pushPayload
	if json.Unmarshal(body, &p) != nil {
		return nil
	}
	return p.Repository.urls()
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

// A push annotates the Applications that follow the repository and
// creates PipelineRuns for the Pipelines that build it (config/rbac is
// generated from these lines by `make generate`).
//
// +kubebuilder:rbac:groups=slipway.dev,resources=applications;pipelines,verbs=list;watch
// +kubebuilder:rbac:groups=slipway.dev,resources=applications,verbs=patch
// +kubebuilder:rbac:groups=slipway.dev,resources=pipelineruns,verbs=create

// SecretKey is the key of a Pipeline's webhook Secret that holds the
// secret (spec.source.webhookSecretRef).
const SecretKey = "webhook-secret"

// Handler serves POST /hooks/git. A delivery is accepted when the server's
// secret verifies it, or the secret of a Pipeline of the repository it
// names does; a delivery nothing verifies is refused: an unauthenticated
// trigger would let anyone force reconciliations and builds.
type Handler struct {
	// Secret is the server's webhook secret: it starts runs of the
	// Pipelines without a secret of their own. Empty for none.
	Secret []byte
	// SecretFile, when set, holds the server's secret instead and is read
	// at each delivery, so that a Secret mounted into the Pod can be
	// created or rotated without a restart.
	SecretFile string
	Client     client.Client
	Log        logr.Logger
	// Audit records refused deliveries; nil records nothing.
	Audit audit.Recorder

	refused refusals
}

// secret returns the secret deliveries are verified with.
func (h *Handler) secret() ([]byte, error) {
	if h.SecretFile == "" {
		return h.Secret, nil
	}
	b, err := ReadSecretFile(h.SecretFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return b, err
}

// maxSecretBytes bounds what is read of a secret file.
const maxSecretBytes = 64 << 10

// ReadSecretFile reads a webhook secret, without the surrounding
// whitespace editors and `echo` add. Its errors name the file, never the
// content.
func ReadSecretFile(name string) ([]byte, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("reading the webhook secret: %w", err)
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxSecretBytes+1))
	if err != nil {
		return nil, fmt.Errorf("reading the webhook secret from %s: %w", name, err)
	}
	if len(b) > maxSecretBytes {
		return nil, fmt.Errorf("the webhook secret in %s is over %d bytes", name, maxSecretBytes)
	}
	return bytes.TrimSpace(b), nil
}

type response struct {
	Applications []string `json:"applications"`
	PipelineRuns []string `json:"pipelineRuns"`
}

func (h *Handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	event := r.Header.Get("X-GitHub-Event")
	if event == "" {
		event = r.Header.Get("X-Gitea-Event")
	}
	observeDelivery(event, h.serve(w, r, event))
}

// serve answers one delivery and returns its result.
func (h *Handler) serve(w http.ResponseWriter, r *http.Request, event string) string {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "use POST", http.StatusMethodNotAllowed)
		return ResultBadRequest
	}
	log := h.Log.WithValues("remote", r.RemoteAddr, "delivery", delivery(r.Header))
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPayloadBytes))
	if err != nil {
		http.Error(w, fmt.Sprintf("payload over %d bytes", MaxPayloadBytes), http.StatusRequestEntityTooLarge)
		return ResultBadRequest
	}
	ctx, cancel := context.WithTimeout(r.Context(), 10*time.Second)
	defer cancel()
	v, err := h.verify(ctx, body, r.Header, log)
	if err != nil {
		log.Error(err, "listing Pipelines")
		http.Error(w, "could not list Pipelines: "+err.Error(), http.StatusInternalServerError)
		return ResultError
	}
	if !v.any() {
		// Never log the payload of an unverified delivery.
		log.Info("refused webhook: bad signature", "reason", v.reason)
		if err := h.recordRefusal(ctx, r, body, v.reason); err != nil {
			log.Error(err, "recording the refused webhook in the audit trail")
		}
		http.Error(w, "invalid signature", http.StatusUnauthorized)
		return ResultInvalidSignature
	}
	switch event {
	case "ping":
		w.WriteHeader(http.StatusOK)
		return ResultAccepted
	case "push":
	default:
		http.Error(w, fmt.Sprintf("event %q is not handled; send push events", event), http.StatusAccepted)
		return ResultIgnored
	}
	push, err := ParsePush(body)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return ResultBadRequest
	}
	apps, err := h.following(ctx, push)
	if err != nil {
		log.Error(err, "listing Applications")
		http.Error(w, "could not list Applications: "+err.Error(), http.StatusInternalServerError)
		return ResultError
	}
	runs, err := h.startRuns(ctx, push, v)
	if err != nil {
		log.Error(err, "starting pipeline runs")
		http.Error(w, "could not start pipeline runs: "+err.Error(), http.StatusInternalServerError)
		return ResultError
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
	return ResultAccepted
}

// verified is what a delivery's signature proved: the server's secret
// verified it, or the secrets of these Pipelines of its repository did.
type verified struct {
	server    bool
	pipelines []slipwayv1.Pipeline // of the repository the payload names
	own       map[types.NamespacedName]bool
	reason    string
}

func (v *verified) any() bool { return v.server || len(v.own) > 0 }

// starts reports whether the delivery may start runs of p: a Pipeline with
// a secret of its own listens to it alone.
func (v *verified) starts(p *slipwayv1.Pipeline) bool {
	if p.Spec.Source.WebhookSecretRef != nil {
		return v.own[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}]
	}
	return v.server
}

// verify checks the delivery against the server's secret and the secrets
// of the Pipelines of the repository the payload names.
func (h *Handler) verify(ctx context.Context, body []byte, header http.Header, log logr.Logger) (*verified, error) {
	v := &verified{own: map[types.NamespacedName]bool{}, reason: "no secret verifies it"}
	secret, err := h.secret()
	if err != nil {
		log.Info("the server's webhook secret cannot be read", "reason", err.Error())
	}
	if len(secret) > 0 {
		err := Verify(secret, body, header)
		v.server = err == nil
		if err != nil {
			v.reason = err.Error()
		}
	}
	repos := map[string]bool{}
	for _, u := range RepositoryURLs(body) {
		repos[NormalizeURL(u)] = true
	}
	if len(repos) == 0 {
		return v, nil
	}
	var list slipwayv1.PipelineList
	if err := h.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing Pipelines: %w", err)
	}
	for _, p := range list.Items {
		if !repos[NormalizeURL(p.Spec.Source.URL)] {
			continue
		}
		v.pipelines = append(v.pipelines, p)
		ref := p.Spec.Source.WebhookSecretRef
		if ref == nil {
			continue
		}
		secret := &corev1.Secret{}
		if err := h.Client.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: ref.Name}, secret); err != nil {
			log.Info("cannot read a Pipeline's webhook secret", "pipeline", p.Namespace+"/"+p.Name, "secret", ref.Name, "error", err.Error())
			continue
		}
		key := bytes.TrimSpace(secret.Data[SecretKey])
		if len(key) == 0 {
			log.Info("a Pipeline's webhook secret has no key "+SecretKey, "pipeline", p.Namespace+"/"+p.Name, "secret", ref.Name)
			continue
		}
		if Verify(key, body, header) == nil {
			v.own[types.NamespacedName{Namespace: p.Namespace, Name: p.Name}] = true
		}
	}
	return v, nil
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
	wakeOrder(apps, push.ChangedFiles)
	return apps, nil
}

// wakeOrder puts the Applications whose path holds a changed file first:
// the others only move to the new revision, and thousands of them queued
// ahead would delay the deployments the push is for. Nil changed files (the
// sender did not list them all) leave the order as it is.
func wakeOrder(apps []slipwayv1.Application, changed []string) {
	if changed == nil {
		return
	}
	rank := func(app slipwayv1.Application) int {
		for _, f := range changed {
			if app.Spec.Source.HoldsFile(f) {
				return 0
			}
		}
		return 1
	}
	slices.SortStableFunc(apps, func(a, b slipwayv1.Application) int { return cmp.Compare(rank(a), rank(b)) })
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
