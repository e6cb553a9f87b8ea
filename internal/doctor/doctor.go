// Package doctor is `slipway doctor`: it checks, step by step and each step
// under a deadline of its own, what Slipway depends on (the cluster and its
// version, Slipway's CRDs, the server's rights, every git remote and
// registry the Applications and Pipelines name, the webhook, Prometheus,
// the clocks, the signing keys, the audit trail and the nodes) and says for each what is
// wrong, why, and what to do. A remote that accepts connections and never
// answers, like the reference environment's hanging `git push`, is
// reported as such within its step's deadline.
package doctor

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Status is a check's verdict.
type Status string

// Statuses, from best to worst.
const (
	Pass Status = "pass"
	Warn Status = "warn"
	Fail Status = "fail"
)

// Result is one line of the report.
type Result struct {
	// Check names what was checked: cluster, crds, rbac, git.dns,
	// git.tcp, git.tls, git.auth, git.read, git.write, registry.*,
	// webhook, prometheus, prometheus.targets, clock, keys, nodes.
	Check string `json:"check"`
	// Target is what it was checked on: a URL, a CRD, an identity.
	Target string `json:"target,omitempty"`
	Status Status `json:"status"`
	// Message says what was found: the state when it passes, the cause
	// in plain words when it does not.
	Message string `json:"message"`
	// Action says what to do; empty when the check passes.
	Action string `json:"action,omitempty"`
	// Duration is how long the check took, Deadline how long it could.
	Duration float64 `json:"durationSeconds"`
	Deadline float64 `json:"deadlineSeconds"`
}

// Options configure a run.
type Options struct {
	// Config reaches the API server as the caller.
	Config *rest.Config
	// ServerURL is slipway server's HTTP address (its /metrics); empty
	// reaches the installed server through the API server's service proxy.
	ServerURL string
	// PrometheusURL is the Prometheus that scrapes Slipway; empty skips
	// the Prometheus checks with a warning.
	PrometheusURL string
	// ServerIdentity is the user the server runs as, whose rights the rbac
	// check asks about by impersonating it; DefaultServerIdentity when
	// empty.
	ServerIdentity string
	// StepTimeout is the deadline of each step; DefaultStepTimeout when 0.
	StepTimeout time.Duration
	// Timeout bounds the whole run; DefaultTimeout when 0.
	Timeout time.Duration
}

// Defaults of Options.
const (
	DefaultServerIdentity = "system:serviceaccount:slipway-system:slipway-server"
	DefaultStepTimeout    = 5 * time.Second
	DefaultTimeout        = time.Minute
)

// run is one doctor run: the options and what checks learn for others
// (the clocks of the servers they reached).
type run struct {
	Options
	mu     sync.Mutex
	clocks []clockReading

	clientOnce sync.Once
	c          client.Client
	clientErr  error
}

// task is a group of checks that runs on its own; its steps each have
// their own deadline.
type task struct {
	name string
	do   func(ctx context.Context, r *run) []Result
}

// Run runs every check and returns the results in the checks' order. It
// returns when every check has finished or
// opts.Timeout has passed, whichever comes first; a check still running
// then is reported as failed.
func Run(ctx context.Context, opts Options) []Result {
	if opts.StepTimeout <= 0 {
		opts.StepTimeout = DefaultStepTimeout
	}
	if opts.Timeout <= 0 {
		opts.Timeout = DefaultTimeout
	}
	if opts.ServerIdentity == "" {
		opts.ServerIdentity = DefaultServerIdentity
	}
	// The checks run at once: the default client rate (5 requests a
	// second) would make them wait on each other, not on what they check.
	opts.Config = rest.CopyConfig(opts.Config)
	opts.Config.QPS, opts.Config.Burst = 50, 100
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	r := &run{Options: opts}
	tasks := []task{
		{"cluster", checkCluster},
		{"crds", checkCRDs},
		{"rbac", checkRBAC},
		{"git", checkGitRemotes},
		{"registry", checkRegistries},
		{"webhook", checkWebhook},
		{"prometheus", checkPrometheus},
		{"keys", checkKeys},
		{"audit", checkAudit},
		{"nodes", checkNodes},
	}
	type finished struct {
		i       int
		results []Result
	}
	results := make([][]Result, len(tasks)+1)
	// Buffered: a task that ends after the run's bound still has somewhere
	// to put its results, which nobody reads.
	done := make(chan finished, len(tasks))
	for i, t := range tasks {
		go func() { done <- finished{i, t.do(ctx, r)} }()
	}
	seen := map[int]bool{}
	for len(seen) < len(tasks) {
		select {
		case f := <-done:
			seen[f.i], results[f.i] = true, f.results
		case <-ctx.Done():
			for i, t := range tasks {
				if !seen[i] {
					results[i] = []Result{{Check: t.name, Status: Fail, Deadline: opts.Timeout.Seconds(), Duration: opts.Timeout.Seconds(),
						Message: fmt.Sprintf("not finished within the run's bound (%s)", opts.Timeout),
						Action:  "raise --timeout, or look at the checks that did finish: one of them waits on what this one needs"}}
				}
			}
			return flatten(results)
		}
	}
	// The clocks are compared last: the other checks read them.
	results[len(tasks)] = checkClocks(ctx, r)
	return flatten(results)
}

// flatten keeps the checks' order, and within a check its steps' order:
// the step that failed comes after those it needed.
func flatten(groups [][]Result) []Result {
	var out []Result
	for _, g := range groups {
		out = append(out, g...)
	}
	return out
}

// Failed reports whether any result failed.
func Failed(results []Result) bool {
	for _, r := range results {
		if r.Status == Fail {
			return true
		}
	}
	return false
}

// step runs fn under a deadline of its own and fills the result's timing;
// fn returns the result without them.
func step(ctx context.Context, deadline time.Duration, fn func(ctx context.Context) Result) Result {
	ctx, cancel := context.WithTimeout(ctx, deadline)
	defer cancel()
	start := time.Now()
	res := fn(ctx)
	res.Duration = time.Since(start).Seconds()
	res.Deadline = deadline.Seconds()
	return res
}

// bounded runs fn, which may not honour ctx (a library dial without a
// context), and returns ctx's error if the deadline passes first; fn then
// finishes in the background and its result is dropped.
func bounded(ctx context.Context, fn func() error) error {
	errc := make(chan error, 1)
	go func() { errc <- fn() }()
	select {
	case err := <-errc:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// cause explains a network error in plain words: which of refused,
// unresolved, unanswered or untrusted it is.
func cause(ctx context.Context, err error, what string, deadline time.Duration) string {
	var dnsErr *net.DNSError
	var unknownAuthority x509.UnknownAuthorityError
	var hostname x509.HostnameError
	var invalid x509.CertificateInvalidError
	var netErr net.Error
	switch {
	case errors.Is(ctx.Err(), context.DeadlineExceeded) || errors.Is(err, context.DeadlineExceeded) || errors.As(err, &netErr) && netErr.Timeout():
		return fmt.Sprintf("%s: no answer within %s", what, deadline)
	case errors.Is(err, syscall.ECONNREFUSED):
		return fmt.Sprintf("%s: connection refused (nothing listens there)", what)
	case errors.Is(err, syscall.EHOSTUNREACH), errors.Is(err, syscall.ENETUNREACH):
		return fmt.Sprintf("%s: no route to the host", what)
	case errors.As(err, &dnsErr) && dnsErr.IsNotFound:
		return fmt.Sprintf("%s: the name %s does not resolve", what, dnsErr.Name)
	case errors.As(err, &unknownAuthority):
		return fmt.Sprintf("%s: its certificate is signed by an authority this machine does not trust", what)
	case errors.As(err, &hostname):
		return fmt.Sprintf("%s: its certificate is not for this host name (%v)", what, hostname.Error())
	case errors.As(err, &invalid):
		return fmt.Sprintf("%s: its certificate is not valid: %v", what, invalid.Error())
	}
	return fmt.Sprintf("%s: %v", what, err)
}

// httpClient makes requests whose every phase is bound by the request's
// context; it follows no redirect (a redirect is reported, not followed,
// so credentials never travel to another host).
var httpClient = &http.Client{
	Transport: &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{}).DialContext,
		TLSHandshakeTimeout:   DefaultStepTimeout,
		ResponseHeaderTimeout: 0, // the context bounds it
		MaxIdleConns:          16,
		IdleConnTimeout:       30 * time.Second,
	},
	CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}

func joinLimited(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}
