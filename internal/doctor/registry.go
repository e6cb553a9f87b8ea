package doctor

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
)

// imageTarget is one image repository Pipelines push to, with the Secret
// they push with.
type imageTarget struct {
	repository string
	secret     *client.ObjectKey
	users      []string
}

func (t *imageTarget) target() string {
	s := t.repository
	if t.secret != nil {
		s += " (Secret " + t.secret.String() + ")"
	}
	return s
}

// checkRegistries checks every image repository a Pipeline pushes to:
// reachable, the credentials accepted, and allowed to push.
func checkRegistries(ctx context.Context, r *run) []Result {
	var targets []*imageTarget
	list := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		c, err := r.client()
		if err != nil {
			return Result{Check: "registry", Status: Fail, Message: err.Error()}
		}
		var pipes slipwayv1.PipelineList
		if err := c.List(ctx, &pipes); err != nil {
			return Result{Check: "registry", Status: Fail, Message: cause(ctx, err, "listing Pipelines", r.StepTimeout), Action: "see the cluster and crds checks"}
		}
		byKey := map[string]*imageTarget{}
		for _, p := range pipes.Items {
			var secret *client.ObjectKey
			key := p.Spec.Image.Repository + "\x00"
			if ref := p.Spec.Image.SecretRef; ref != nil {
				secret = &client.ObjectKey{Namespace: p.Namespace, Name: ref.Name}
				key += secret.String()
			}
			t := byKey[key]
			if t == nil {
				t = &imageTarget{repository: p.Spec.Image.Repository, secret: secret}
				byKey[key] = t
				targets = append(targets, t)
			}
			t.users = append(t.users, "Pipeline "+p.Namespace+"/"+p.Name)
		}
		sort.Slice(targets, func(i, j int) bool { return targets[i].target() < targets[j].target() })
		return Result{Check: "registry", Status: Pass}
	})
	if list.Status != Pass {
		return []Result{list}
	}
	if len(targets) == 0 {
		list.Message = "no Pipeline pushes images yet"
		return []Result{list}
	}
	results := make([][]Result, len(targets))
	var wg sync.WaitGroup
	for i, t := range targets {
		wg.Go(func() { results[i] = r.checkRegistry(ctx, t) })
	}
	wg.Wait()
	var out []Result
	for _, rs := range results {
		out = append(out, rs...)
	}
	return out
}

func (r *run) checkRegistry(ctx context.Context, t *imageTarget) []Result {
	var out []Result
	users := "used by " + joinLimited(t.users, 4)
	add := func(res Result) bool {
		res.Target = t.target()
		if res.Status == Pass {
			res.Message += "; " + users
		}
		out = append(out, res)
		return res.Status == Pass
	}
	repo, err := name.NewRepository(t.repository)
	if err != nil {
		add(Result{Check: "registry.auth", Status: Fail, Message: "not an image repository: " + err.Error(), Action: "correct spec.image.repository"})
		return out
	}
	reg := repo.Registry
	host, port, err := net.SplitHostPort(reg.RegistryStr())
	if err != nil {
		host, port = reg.RegistryStr(), map[string]string{"https": "443", "http": "80"}[reg.Scheme()]
	}
	if !add(r.dnsStep(ctx, "registry.dns", host)) || !add(r.tcpStep(ctx, "registry.tcp", net.JoinHostPort(host, port))) {
		return out
	}
	if reg.Scheme() == "https" && !add(r.tlsStep(ctx, "registry.tls", host, net.JoinHostPort(host, port))) {
		return out
	}
	auth, res := r.registryCredentials(ctx, t, repo)
	if res != nil {
		add(*res)
		return out
	}
	var tr http.RoundTripper
	if !add(step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "registry.auth", Status: Fail}
		var err error
		// The token exchange (for registries that use tokens) asks for the
		// right to push to the repository.
		tr, err = transport.NewWithContext(ctx, reg, auth, httpClient.Transport, []string{repo.Scope(transport.PushScope)})
		if err != nil {
			res.Message, res.Action = registryCause(ctx, err, t, "authenticating to "+reg.RegistryStr(), r)
			return res
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, reg.Scheme()+"://"+reg.RegistryStr()+"/v2/", nil)
		if err != nil {
			res.Message = err.Error()
			return res
		}
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			res.Message, res.Action = registryCause(ctx, err, t, "GET /v2/ of "+reg.RegistryStr(), r)
			return res
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			res.Message, res.Action = registryCause(ctx, transport.CheckError(resp, http.StatusOK), t, "GET /v2/ of "+reg.RegistryStr(), r)
			return res
		}
		res.Status, res.Message = Pass, "the registry accepted "+authName(t)
		return res
	})) {
		return out
	}
	add(step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "registry.push", Status: Fail}
		// An upload started and cancelled: what a push begins with,
		// leaving nothing behind.
		start, err := http.NewRequestWithContext(ctx, http.MethodPost, reg.Scheme()+"://"+reg.RegistryStr()+"/v2/"+repo.RepositoryStr()+"/blobs/uploads/", nil)
		if err != nil {
			res.Message = err.Error()
			return res
		}
		hc := &http.Client{Transport: tr, CheckRedirect: httpClient.CheckRedirect}
		resp, err := hc.Do(start)
		if err != nil {
			res.Message, res.Action = registryCause(ctx, err, t, "starting an upload to "+t.repository, r)
			return res
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			res.Message, res.Action = registryCause(ctx, transport.CheckError(resp, http.StatusAccepted), t, "starting an upload to "+t.repository, r)
			return res
		}
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		if loc, err := resp.Location(); err == nil {
			if cancel, err := http.NewRequestWithContext(ctx, http.MethodDelete, loc.String(), nil); err == nil {
				if resp, err := hc.Do(cancel); err == nil {
					resp.Body.Close()
				}
			}
		}
		res.Status, res.Message = Pass, "may push: an upload to "+t.repository+" was started and cancelled"
		return res
	}))
	return out
}

func authName(t *imageTarget) string {
	if t.secret == nil {
		return "anonymous access"
	}
	return "the credentials of Secret " + t.secret.String()
}

// registryCredentials reads the target's Secret (username and password)
// and checks that it may be sent to the registry.
func (r *run) registryCredentials(ctx context.Context, t *imageTarget, repo name.Repository) (authn.Authenticator, *Result) {
	if t.secret == nil {
		return authn.Anonymous, nil
	}
	var auth authn.Authenticator
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "registry.auth", Status: Fail}
		c, err := r.client()
		if err != nil {
			res.Message = err.Error()
			return res
		}
		secret := &corev1.Secret{}
		if err := c.Get(ctx, *t.secret, secret); err != nil {
			res.Message = cause(ctx, err, "reading Secret "+t.secret.String(), r.StepTimeout)
			res.Action = "create the Secret " + joinLimited(t.users, 2) + " names, or run doctor with the right to read it"
			return res
		}
		if err := gitsource.CheckCredentialScope(t.secret.String(), secret.Annotations, repo.Name(), true); err != nil {
			res.Status, res.Message = Warn, "not checked: "+err.Error()
			res.Action = "annotate the Secret " + gitsource.AllowedURLsAnnotation + " with the repository's host/path prefix"
			return res
		}
		auth = &authn.Basic{Username: string(secret.Data["username"]), Password: string(secret.Data["password"])}
		res.Status = Pass
		return res
	})
	if res.Status != Pass {
		return nil, &res
	}
	return auth, nil
}

// registryCause explains a registry's refusal or a network failure.
func registryCause(ctx context.Context, err error, t *imageTarget, what string, r *run) (msg, action string) {
	var terr *transport.Error
	if errors.As(err, &terr) {
		switch terr.StatusCode {
		case http.StatusUnauthorized:
			return fmt.Sprintf("%s: the registry refused %s (HTTP 401)", what, authName(t)),
				"put a valid username and password (or token) in the Secret spec.image.secretRef names"
		case http.StatusForbidden:
			return fmt.Sprintf("%s: %s may not push to %s (HTTP 403)", what, authName(t), t.repository),
				"give the credentials push access to the repository"
		case http.StatusNotFound:
			return fmt.Sprintf("%s: not found (HTTP 404): the repository or its namespace does not exist", what), "create the repository, or correct spec.image.repository"
		}
		return fmt.Sprintf("%s: the registry answered HTTP %d: %s", what, terr.StatusCode, strings.TrimSpace(terr.Error())), "see the registry's log"
	}
	return cause(ctx, err, what, r.StepTimeout), "check that the registry runs and this machine reaches it"
}
