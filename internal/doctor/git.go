package doctor

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	neturl "net/url"
	"sort"
	"strings"
	"sync"
	"time"

	gittransport "github.com/go-git/go-git/v5/plumbing/transport"
	gitclient "github.com/go-git/go-git/v5/plumbing/transport/client"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
)

// gitRemote is one repository and the credential Slipway uses for it, with
// everything that uses them: what refs they need and whether anything
// pushes there.
type gitRemote struct {
	url    string
	secret *client.ObjectKey // nil: anonymous
	refs   map[string]bool   // refs/heads/main, refs/tags/v1
	write  bool
	users  []string
}

func (g *gitRemote) secretName() string {
	if g.secret == nil {
		return "(none named)"
	}
	return g.secret.String()
}

func (g *gitRemote) target() string {
	t := gitsource.RedactURL(g.url)
	if g.secret != nil {
		t += " (Secret " + g.secret.String() + ")"
	}
	return t
}

// gitRemotes lists every repository the Applications, Pipelines and
// Deliveries name, with the credentials they name.
func gitRemotes(ctx context.Context, c client.Client) ([]*gitRemote, error) {
	byKey := map[string]*gitRemote{}
	add := func(url, namespace string, ref *slipwayv1.LocalObjectReference, gitRef string, write bool, user string) {
		var secret *client.ObjectKey
		key := url + "\x00"
		if ref != nil {
			secret = &client.ObjectKey{Namespace: namespace, Name: ref.Name}
			key += secret.String()
		}
		g := byKey[key]
		if g == nil {
			g = &gitRemote{url: url, secret: secret, refs: map[string]bool{}}
			byKey[key] = g
		}
		if gitRef != "" {
			g.refs[gitRef] = true
		}
		g.write = g.write || write
		g.users = append(g.users, user)
	}
	var apps slipwayv1.ApplicationList
	if err := c.List(ctx, &apps); err != nil {
		return nil, fmt.Errorf("listing Applications: %w", err)
	}
	appsByKey := map[client.ObjectKey]*slipwayv1.Application{}
	for i := range apps.Items {
		a := &apps.Items[i]
		appsByKey[client.ObjectKeyFromObject(a)] = a
		add(a.Spec.Source.URL, a.Namespace, a.Spec.Source.SecretRef, applicationRef(a), false, "Application "+a.Namespace+"/"+a.Name)
	}
	var pipes slipwayv1.PipelineList
	if err := c.List(ctx, &pipes); err != nil {
		return nil, fmt.Errorf("listing Pipelines: %w", err)
	}
	for i := range pipes.Items {
		p := &pipes.Items[i]
		name := "Pipeline " + p.Namespace + "/" + p.Name
		for _, b := range p.WatchedBranches() {
			add(p.Spec.Source.URL, p.Namespace, p.Spec.Source.SecretRef, "refs/heads/"+b, false, name)
		}
		if pr := p.Spec.Promotion; pr != nil {
			add(pr.URL, p.Namespace, pr.SecretRef, "refs/heads/"+orMain(pr.Branch), true, name+" (promotion)")
		}
	}
	var deliveries slipwayv1.DeliveryList
	err := c.List(ctx, &deliveries)
	switch {
	case apimeta.IsNoMatchError(err):
		// The crds check reports the missing CRD.
	case err != nil:
		return nil, fmt.Errorf("listing Deliveries: %w", err)
	}
	for _, d := range deliveries.Items {
		for _, s := range d.Spec.Stages[min(1, len(d.Spec.Stages)):] {
			if a := appsByKey[client.ObjectKey{Namespace: d.Namespace, Name: s.Application}]; a != nil {
				add(a.Spec.Source.URL, d.Namespace, d.Spec.SecretRef, applicationRef(a), true, "Delivery "+d.Namespace+"/"+d.Name+" (stage "+s.Name+")")
			}
		}
	}
	out := make([]*gitRemote, 0, len(byKey))
	for _, g := range byKey {
		out = append(out, g)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].target() < out[j].target() })
	return out, nil
}

func applicationRef(a *slipwayv1.Application) string {
	switch r := a.Spec.Source.Ref; {
	case r.Commit != "":
		return ""
	case r.Tag != "":
		return "refs/tags/" + r.Tag
	default:
		return "refs/heads/" + orMain(r.Branch)
	}
}

func orMain(branch string) string {
	if branch == "" {
		return gitsource.DefaultBranch
	}
	return branch
}

// checkGitRemotes checks every remote, several at a time.
func checkGitRemotes(ctx context.Context, r *run) []Result {
	var remotes []*gitRemote
	list := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		c, err := r.client()
		if err == nil {
			remotes, err = gitRemotes(ctx, c)
		}
		if err != nil {
			return Result{Check: "git", Status: Fail, Message: cause(ctx, err, "finding the git remotes", r.StepTimeout), Action: "see the cluster and crds checks"}
		}
		return Result{Check: "git", Status: Pass}
	})
	if list.Status != Pass {
		return []Result{list}
	}
	if len(remotes) == 0 {
		list.Message = "no Application or Pipeline names a git repository yet"
		return []Result{list}
	}
	results := make([][]Result, len(remotes))
	var wg sync.WaitGroup
	slots := make(chan struct{}, 4)
	for i, g := range remotes {
		wg.Add(1)
		go func() {
			defer wg.Done()
			slots <- struct{}{}
			defer func() { <-slots }()
			results[i] = r.checkGitRemote(ctx, g)
		}()
	}
	wg.Wait()
	var out []Result
	for _, rs := range results {
		out = append(out, rs...)
	}
	return out
}

// checkGitRemote runs the remote's steps in order, each under its own
// deadline, and stops at the first that fails: the later ones depend on it.
func (r *run) checkGitRemote(ctx context.Context, g *gitRemote) []Result {
	u, err := neturl.Parse(g.url)
	scpLike := err != nil || u.Host == ""
	if scpLike {
		// git@host:org/repo.git is ssh.
		u = &neturl.URL{Scheme: "ssh", Host: gitsource.RemoteHost(g.url)}
	}
	users := "used by " + joinLimited(g.users, 4)
	var out []Result
	add := func(res Result) bool {
		res.Target = g.target()
		if res.Status == Pass {
			res.Message += "; " + users
		}
		out = append(out, res)
		return res.Status == Pass
	}
	port := u.Port()
	if port == "" {
		port = map[string]string{"https": "443", "http": "80", "ssh": "22"}[u.Scheme]
	}
	host := u.Hostname()
	if !add(r.dnsStep(ctx, "git.dns", host)) || !add(r.tcpStep(ctx, "git.tcp", net.JoinHostPort(host, port))) {
		return out
	}
	if u.Scheme == "https" && !add(r.tlsStep(ctx, "git.tls", host, net.JoinHostPort(host, port))) {
		return out
	}
	if u.Scheme == "http" && !isLoopback(host) {
		add(step(ctx, r.StepTimeout, func(context.Context) Result {
			return Result{Check: "git.tls", Status: Warn,
				Message: "plain HTTP: the credentials and the code cross the network unencrypted", Action: "serve the repository over https"}
		}))
	}
	creds, res := r.gitCredentials(ctx, g)
	if res != nil {
		add(*res)
		return out
	}
	switch u.Scheme {
	case "http", "https":
		refs, ok := r.httpAdvertisement(ctx, g, creds, "git-upload-pack", "git.auth", add)
		if !ok || !add(r.readStep(ctx, g, refs)) || !g.write {
			return out
		}
		if _, ok := r.httpAdvertisement(ctx, g, creds, "git-receive-pack", "git.write", add); ok {
			add(step(ctx, r.StepTimeout, func(ctx context.Context) Result { return r.pushNothing(ctx, g, creds) }))
		}
	case "ssh":
		refs, ok := r.sshAdvertisement(ctx, g, creds, false, add)
		if !ok || !add(r.readStep(ctx, g, refs)) || !g.write {
			return out
		}
		r.sshAdvertisement(ctx, g, creds, true, add)
	default:
		add(step(ctx, r.StepTimeout, func(context.Context) Result {
			return Result{Check: "git.auth", Status: Warn, Message: "the " + u.Scheme + " scheme is not checked", Action: "use https or ssh"}
		}))
	}
	return out
}

func isLoopback(host string) bool {
	if host == "localhost" {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

func (r *run) dnsStep(ctx context.Context, check, host string) Result {
	return step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		if ip := net.ParseIP(host); ip != nil {
			return Result{Check: check, Status: Pass, Message: host + " is an address: nothing to resolve"}
		}
		addrs, err := net.DefaultResolver.LookupHost(ctx, host)
		if err != nil {
			return Result{Check: check, Status: Fail, Message: cause(ctx, err, "resolving "+host, r.StepTimeout),
				Action: "check the name and this machine's (or the cluster's) DNS servers"}
		}
		return Result{Check: check, Status: Pass, Message: host + " resolves to " + joinLimited(addrs, 3)}
	})
}

func (r *run) tcpStep(ctx context.Context, check, addr string) Result {
	return step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", addr)
		if err != nil {
			return Result{Check: check, Status: Fail, Message: cause(ctx, err, "connecting to "+addr, r.StepTimeout),
				Action: "start the server, or open the route and firewall between this machine and " + addr}
		}
		conn.Close()
		return Result{Check: check, Status: Pass, Message: "connected to " + addr}
	})
}

// certificateWarning is how close to its expiry a certificate is reported.
const certificateWarning = 14 * 24 * time.Hour

func (r *run) tlsStep(ctx context.Context, check, host, addr string) Result {
	return step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		d := &tls.Dialer{Config: &tls.Config{ServerName: host, MinVersion: tls.VersionTLS12}}
		conn, err := d.DialContext(ctx, "tcp", addr)
		if err != nil {
			return Result{Check: check, Status: Fail, Message: cause(ctx, err, "the TLS handshake with "+addr, r.StepTimeout),
				Action: "serve a certificate for " + host + " from an authority this machine trusts, or add that authority to the trusted ones"}
		}
		defer conn.Close()
		cert := conn.(*tls.Conn).ConnectionState().PeerCertificates[0]
		left := time.Until(cert.NotAfter)
		msg := fmt.Sprintf("certificate for %s from %s, valid until %s (%d days)", host, cert.Issuer.CommonName, cert.NotAfter.UTC().Format("2006-01-02"), int(left.Hours()/24))
		if left < certificateWarning {
			return Result{Check: check, Status: Warn, Message: msg + ": it expires soon", Action: "renew the certificate of " + host}
		}
		return Result{Check: check, Status: Pass, Message: msg}
	})
}

// gitCredentials reads the remote's Secret and checks that its credentials
// may be sent there; nil credentials mean anonymous.
func (r *run) gitCredentials(ctx context.Context, g *gitRemote) (*gitsource.Credentials, *Result) {
	if g.secret == nil {
		return nil, nil
	}
	var creds *gitsource.Credentials
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "git.auth", Status: Fail}
		c, err := r.client()
		if err != nil {
			res.Message = err.Error()
			return res
		}
		secret := &corev1.Secret{}
		if err := c.Get(ctx, *g.secret, secret); err != nil {
			res.Message = cause(ctx, err, "reading Secret "+g.secret.String(), r.StepTimeout)
			res.Action = "create the Secret the " + joinLimited(g.users, 2) + " names, or run doctor with the right to read it"
			return res
		}
		if err := gitsource.CheckCredentialScope(g.secret.String(), secret.Annotations, g.url, true); err != nil {
			res.Status, res.Message = Warn, "not checked: "+err.Error()
			res.Action = "annotate the Secret " + gitsource.AllowedURLsAnnotation + " with the repository's URL prefix (the server refuses it otherwise, unless it runs with --allow-unscoped-credentials)"
			return res
		}
		creds, err = gitsource.CredentialsFromSecretData(secret.Data)
		if err != nil {
			res.Message = "Secret " + g.secret.String() + ": " + err.Error()
			res.Action = "give the Secret username and password, or identity and known_hosts"
			return res
		}
		res.Status = Pass
		return res
	})
	if res.Status != Pass {
		return nil, &res
	}
	return creds, nil
}

// httpAdvertisement asks for the refs advertisement of service with the
// credentials (what a fetch, or a push, starts with) and reports it as
// check; it returns the refs advertised.
func (r *run) httpAdvertisement(ctx context.Context, g *gitRemote, creds *gitsource.Credentials, service, check string, add func(Result) bool) (map[string]string, bool) {
	var refs map[string]string
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: check, Status: Fail}
		url := strings.TrimSuffix(g.url, "/") + "/info/refs?service=" + service
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			res.Message = err.Error()
			return res
		}
		setBasicAuth(req, creds)
		req.Header.Set("User-Agent", "git/2.39 (slipway doctor)")
		sent := time.Now()
		resp, err := httpClient.Do(req)
		if err != nil {
			res.Message = cause(ctx, err, "asking for the "+service+" advertisement", r.StepTimeout)
			if errors.Is(ctx.Err(), context.DeadlineExceeded) {
				res.Message += ": the server accepted the connection and sent nothing back, which is how a git " + map[string]string{"git-upload-pack": "fetch", "git-receive-pack": "push"}[service] + " hangs"
				res.Action = "the git server (or a proxy in front of it) is stuck or overloaded: look at its load and logs; every Slipway git operation gives up at its own deadline"
			}
			return res
		}
		defer resp.Body.Close()
		r.readClock("the git server "+gitsource.RemoteHost(g.url), resp.Header.Get("Date"), sent, time.Now())
		if msg, action := httpRefusal(resp, g, service); msg != "" {
			res.Message, res.Action = msg, action
			return res
		}
		refs, err = parseAdvertisement(io.LimitReader(resp.Body, 8<<20))
		if err != nil {
			res.Message = cause(ctx, err, "reading the "+service+" advertisement", r.StepTimeout)
			return res
		}
		res.Status = Pass
		switch service {
		case "git-upload-pack":
			res.Message = fmt.Sprintf("%s accepted; %s advertised", credentialName(creds), plural(len(refs), "ref", "refs"))
		default:
			res.Message = credentialName(creds) + " may push: the server advertised receive-pack"
		}
		return res
	})
	return refs, add(res)
}

func setBasicAuth(req *http.Request, creds *gitsource.Credentials) {
	if creds == nil {
		return
	}
	user := creds.Username
	if user == "" {
		user = "git"
	}
	req.SetBasicAuth(user, creds.Password)
}

func credentialName(creds *gitsource.Credentials) string {
	if creds == nil {
		return "anonymous access"
	}
	return "the credentials (" + creds.String() + ")"
}

// httpRefusal explains a git server's refusal, or returns "".
func httpRefusal(resp *http.Response, g *gitRemote, service string) (msg, action string) {
	secret := "the remote names no Secret"
	if g.secret != nil {
		secret = "Secret " + g.secret.String()
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		return "", ""
	case resp.StatusCode == http.StatusUnauthorized && g.secret == nil:
		return "the server asks for credentials (HTTP 401) and " + secret, "name a Secret with the repository's credentials (spec.source.secretRef)"
	case resp.StatusCode == http.StatusUnauthorized:
		return "the server refused the credentials of " + secret + " (HTTP 401)", "put a valid username and password (or token) in " + secret
	case resp.StatusCode == http.StatusForbidden && service == "git-receive-pack":
		return "the credentials of " + secret + " may read but not push (HTTP 403)", "give the credentials write access to the repository: promotions push to it"
	case resp.StatusCode == http.StatusForbidden:
		return "the credentials of " + secret + " may not read the repository (HTTP 403)", "give the credentials read access to the repository"
	case resp.StatusCode == http.StatusNotFound:
		return "the repository does not exist at this URL, or the credentials may not see it (HTTP 404)", "check the URL and the credentials' access"
	case resp.StatusCode >= 300 && resp.StatusCode < 400:
		return "the server redirects (" + resp.Status + ") to " + resp.Header.Get("Location"), "use the URL it redirects to"
	}
	return "the server answered " + resp.Status, "see the git server's log"
}

// parseAdvertisement reads the refs of a smart HTTP advertisement (pkt-lines).
func parseAdvertisement(r io.Reader) (map[string]string, error) {
	br := bufio.NewReader(r)
	refs := map[string]string{}
	flushes := 0
	for flushes < 2 {
		var n [4]byte
		if _, err := io.ReadFull(br, n[:]); err != nil {
			if errors.Is(err, io.EOF) && flushes == 1 {
				return refs, nil
			}
			return nil, fmt.Errorf("truncated advertisement: %w", err)
		}
		var size [2]byte
		if _, err := hex.Decode(size[:], n[:]); err != nil {
			return nil, fmt.Errorf("not a git advertisement (bad pkt-line length %q)", n)
		}
		length := int(size[0])<<8 | int(size[1])
		if length == 0 {
			flushes++
			continue
		}
		if length < 4 {
			return nil, fmt.Errorf("bad pkt-line length %d", length)
		}
		line := make([]byte, length-4)
		if _, err := io.ReadFull(br, line); err != nil {
			return nil, fmt.Errorf("truncated advertisement: %w", err)
		}
		if bytes.HasPrefix(line, []byte("# service=")) {
			continue
		}
		line, _, _ = bytes.Cut(line, []byte{0})
		sha, ref, ok := strings.Cut(strings.TrimSpace(string(line)), " ")
		if ok && ref != "capabilities^{}" {
			refs[ref] = sha
		}
	}
	return refs, nil
}

// readStep checks that the refs the users follow exist in the
// advertisement the auth step read.
func (r *run) readStep(ctx context.Context, g *gitRemote, refs map[string]string) Result {
	return step(ctx, r.StepTimeout, func(context.Context) Result { return readRefs(g, refs) })
}

func readRefs(g *gitRemote, refs map[string]string) Result {
	res := Result{Check: "git.read", Status: Pass}
	var missing, found []string
	for ref := range g.refs {
		if sha, ok := refs[ref]; ok {
			found = append(found, strings.TrimPrefix(ref, "refs/heads/")+" at "+sha[:min(12, len(sha))])
		} else {
			missing = append(missing, ref)
		}
	}
	sort.Strings(missing)
	sort.Strings(found)
	switch {
	case len(missing) > 0:
		res.Status = Fail
		res.Message = "the repository has no " + strings.Join(missing, ", ")
		if len(refs) == 0 {
			res.Message += " (it is empty)"
		}
		res.Action = "push the branch or tag, or correct the ref " + joinLimited(g.users, 2) + " names"
	case len(found) == 0:
		res.Message = "readable (the users pin commits)"
	default:
		res.Message = "readable: " + strings.Join(found, ", ")
	}
	return res
}

// pushNothing sends a push that updates no ref (a lone flush-pkt): the
// server runs receive-pack with the credentials and changes nothing.
func (r *run) pushNothing(ctx context.Context, g *gitRemote, creds *gitsource.Credentials) Result {
	res := Result{Check: "git.push", Target: g.target(), Status: Fail}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, strings.TrimSuffix(g.url, "/")+"/git-receive-pack", strings.NewReader("0000"))
	if err != nil {
		res.Message = err.Error()
		return res
	}
	setBasicAuth(req, creds)
	req.Header.Set("Content-Type", "application/x-git-receive-pack-request")
	req.Header.Set("Accept", "application/x-git-receive-pack-result")
	resp, err := httpClient.Do(req)
	if err != nil {
		res.Message = cause(ctx, err, "pushing no refs", r.StepTimeout)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			res.Message += ": the server took the push and never answered, which is how a git push hangs"
			res.Action = "the git server (or a proxy in front of it) is stuck or overloaded: look at its load and logs"
		}
		return res
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	if msg, action := httpRefusal(resp, g, "git-receive-pack"); msg != "" {
		res.Message, res.Action = msg, action
		return res
	}
	res.Status, res.Message = Pass, "a push of no refs was accepted: nothing changed"
	return res
}

// sshAdvertisement opens an upload-pack (or receive-pack, for write)
// session over SSH and reads its advertisement.
func (r *run) sshAdvertisement(ctx context.Context, g *gitRemote, creds *gitsource.Credentials, write bool, add func(Result) bool) (map[string]string, bool) {
	check := "git.auth"
	if write {
		check = "git.write"
	}
	var refs map[string]string
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: check, Status: Fail}
		auth, err := creds.AuthMethod()
		if err != nil {
			res.Message = err.Error()
			return res
		}
		ep, err := gittransport.NewEndpoint(g.url)
		if err != nil {
			res.Message = err.Error()
			return res
		}
		cl, err := gitclient.NewClient(ep)
		if err != nil {
			res.Message = err.Error()
			return res
		}
		// go-git's ssh sessions dial without a context: bound them here.
		// refs is read only once the session returned: a session abandoned
		// at the deadline writes to got alone.
		got := map[string]string{}
		err = bounded(ctx, func() error {
			if write {
				s, err := cl.NewReceivePackSession(ep, auth)
				if err != nil {
					return err
				}
				defer s.Close()
				_, err = s.AdvertisedReferencesContext(ctx)
				return err
			}
			s, err := cl.NewUploadPackSession(ep, auth)
			if err != nil {
				return err
			}
			defer s.Close()
			ar, err := s.AdvertisedReferencesContext(ctx)
			if err != nil {
				return err
			}
			all, err := ar.AllReferences()
			if err != nil {
				return err
			}
			for name, ref := range all {
				got[name.String()] = ref.Hash().String()
			}
			return nil
		})
		if err == nil {
			refs = got
		}
		switch {
		case errors.Is(err, gittransport.ErrAuthenticationRequired), errors.Is(err, gittransport.ErrAuthorizationFailed):
			res.Message = "the server refused the SSH key of Secret " + g.secretName()
			if write {
				res.Message = "the SSH key of Secret " + g.secretName() + " may not push"
			}
			res.Action = "register the key with write access (a deploy key that allows writes)"
		case err != nil:
			res.Message = cause(ctx, err, "the SSH session", r.StepTimeout)
		case write:
			res.Status, res.Message = Pass, credentialName(creds)+" may push: the server advertised receive-pack"
		default:
			res.Status, res.Message = Pass, fmt.Sprintf("%s accepted; %s advertised", credentialName(creds), plural(len(refs), "ref", "refs"))
		}
		return res
	})
	return refs, add(res)
}
