// Package server runs `slipway server`: the controllers (with leader
// election) and the HTTP endpoints /healthz, /readyz, /metrics and /hooks/git.
package server

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/pipeline"
	"slipway.dev/slipway/internal/promotion"
	"slipway.dev/slipway/internal/webhook"
)

// Options configure the server.
type Options struct {
	Config *rest.Config
	// Addr is the HTTP listen address.
	Addr string
	// WebhookSecret verifies /hooks/git deliveries for the Applications
	// and the Pipelines without a secret of their own; when empty, only
	// deliveries a Pipeline's own secret verifies are accepted.
	WebhookSecret []byte
	// WebhookSecretFile, when set, holds the secret instead; it is read at
	// each delivery, so a mounted Secret can appear or rotate later.
	WebhookSecretFile string
	// LeaderElection makes only one replica reconcile at a time.
	LeaderElection          bool
	LeaderElectionNamespace string
	// LeaseDuration is how long a lease stays the leader's without renewal:
	// how soon another replica takes over from a leader that died. The
	// leader gives up after two thirds of it without renewing, so a busy
	// API server must not take that long to answer.
	LeaseDuration time.Duration
	GitCacheDir   string
	// RunDir holds each pipeline run's workspace (removed when it ends) and
	// logs, by namespace, and the local executor's containers (.sandbox).
	RunDir string
	// CacheDir holds each Pipeline's test caches, by namespace; RunDir/.caches
	// when empty.
	CacheDir string
	// Executor runs the test step: "local" (a container per command on
	// this host) or "kubernetes" (a Pod per command in RunNamespace:
	// checked out with `slipway checkout` in RunnerImage when set, run in
	// TestImage, else RunnerImage, else pipeline.DefaultKubeImage).
	Executor string
	// AllowUnisolatedTests lets the local executor run test commands as
	// the server's own children where this host cannot isolate them.
	AllowUnisolatedTests bool
	// SandboxPaths are more host directories the local executor's
	// containers see read-only (a toolchain outside /usr).
	SandboxPaths []string
	RunNamespace string
	RunnerImage  string
	TestImage    string
	// TestCPU (thousandths of a core) and TestMemory (bytes) bound each
	// test step in place of pipeline.DefaultLimits' when not zero.
	TestCPU, TestMemory int64
	Concurrency         int
	// DefaultServiceAccount is what Applications apply as when neither
	// they nor their Tenant name a ServiceAccount; empty refuses them.
	DefaultServiceAccount string
	// AllowUnscopedCredentials sends git credentials from Secrets that do
	// not list the URLs they are for.
	AllowUnscopedCredentials bool
	// PolicyPacks are extra policy pack files for the sync gate.
	PolicyPacks []string
	// Audit configures the audit trail; its zero value records nothing.
	Audit AuditOptions
	// Started, when set, receives the bound HTTP address once the server listens.
	Started func(addr string)
}

// DefaultLeaseDuration is twice client-go's usual 15 s: a leader whose
// API server answers slowly under a burst of syncs keeps its lease rather
// than exiting, at the price of a slower takeover when it really dies (a
// leader that stops cleanly releases its lease at once).
const DefaultLeaseDuration = 30 * time.Second

// Scheme has the types the server reads and writes.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, slipwayv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// testLimits are pipeline.DefaultLimits with the CPU and memory opts give.
func testLimits(opts Options) pipeline.Limits {
	l := pipeline.DefaultLimits
	if opts.TestCPU > 0 {
		l.CPU = opts.TestCPU
	}
	if opts.TestMemory > 0 {
		l.Memory = opts.TestMemory
	}
	return l
}

// newExecutor builds the test step's executor that opts name.
func newExecutor(ctx context.Context, opts Options) (pipeline.Executor, error) {
	switch opts.Executor {
	case "", "local":
		e := pipeline.NewLocalExecutor(ctx, pipeline.LocalOptions{
			Dir: sandboxDir(opts), AllowUnisolated: opts.AllowUnisolatedTests, ReadOnlyPaths: opts.SandboxPaths,
		})
		if err := e.Unisolated(); err != nil {
			if opts.AllowUnisolatedTests {
				ctrl.Log.WithName("server").Info("WARNING: test commands run UNISOLATED, as the server's user (--allow-unisolated-tests)", "reason", err.Error())
			} else {
				ctrl.Log.WithName("server").Info("the local executor cannot isolate test commands on this host: runs with a test command fail until it can (or see --executor, --allow-unisolated-tests)", "reason", err.Error())
			}
		}
		return e, nil
	case "kubernetes":
		// Uncached: a manager-cached client would list and watch every Pod
		// of the cluster for the few the executor creates.
		c, err := client.New(opts.Config, client.Options{Scheme: Scheme()})
		if err != nil {
			return nil, fmt.Errorf("creating the Kubernetes executor's client: %w", err)
		}
		e, err := pipeline.NewKubeExecutor(c, opts.Config, opts.RunNamespace, opts.TestImage)
		if err != nil {
			return nil, err
		}
		e.RunnerImage = opts.RunnerImage
		return e, nil
	}
	return nil, fmt.Errorf("unknown executor %q: use local or kubernetes", opts.Executor)
}

// sandboxDir holds the local executor's containers; "" when there is no
// run directory to put it in.
func sandboxDir(opts Options) string {
	if opts.RunDir == "" {
		return ""
	}
	return filepath.Join(opts.RunDir, ".sandbox")
}

// Leader election keeps its Lease in slipway-system, the namespace `slipway
// install` creates (config/rbac is generated from these lines by `make
// generate`).
//
// +kubebuilder:rbac:groups=coordination.k8s.io,namespace=slipway-system,resources=leases,verbs=get;create;update

// Run serves until ctx is cancelled.
func Run(ctx context.Context, opts Options) error {
	log := ctrl.Log.WithName("server")
	lease := cmp.Or(opts.LeaseDuration, DefaultLeaseDuration)
	renew, retry := lease*2/3, lease/8
	mgr, err := ctrl.NewManager(opts.Config, ctrl.Options{
		Scheme:                        Scheme(),
		Metrics:                       metricsserver.Options{BindAddress: "0"}, // served on our own listener
		HealthProbeBindAddress:        "0",
		LeaderElection:                opts.LeaderElection,
		LeaderElectionID:              "slipway-controller",
		LeaderElectionNamespace:       opts.LeaderElectionNamespace,
		LeaderElectionReleaseOnCancel: true,
		LeaseDuration:                 &lease,
		RenewDeadline:                 &renew,
		RetryPeriod:                   &retry,
		Client: client.Options{Cache: &client.CacheOptions{
			// Read Secrets, ConfigMaps and Namespaces on demand, by name:
			// caching them would need cluster-wide list and watch of every
			// one, for the few the controllers name.
			DisableFor: []client.Object{&corev1.Secret{}, &corev1.ConfigMap{}, &corev1.Namespace{}},
		}},
	})
	if err != nil {
		return fmt.Errorf("creating the controller manager: %w", err)
	}
	gate, err := setupAudit(mgr, opts.Audit)
	if err != nil {
		return err
	}
	recorder := auditRecorder(gate)
	if _, err := gitops.Setup(mgr, gitops.Options{
		GitCacheDir: opts.GitCacheDir, Concurrency: opts.Concurrency, PolicyPacks: opts.PolicyPacks, DefaultServiceAccount: opts.DefaultServiceAccount,
		AllowUnscopedCredentials: opts.AllowUnscopedCredentials, Audit: recorder,
	}); err != nil {
		return err
	}
	executor, err := newExecutor(ctx, opts)
	if err != nil {
		return err
	}
	runs := &pipeline.RunReconciler{
		Client:    mgr.GetClient(),
		APIReader: mgr.GetAPIReader(),
		Engine:    &pipeline.Engine{Dir: opts.RunDir, Executor: executor, CacheDir: opts.CacheDir, Limits: testLimits(opts)},
		Recorder:  mgr.GetEventRecorderFor("slipway-pipeline"),

		AllowUnscopedCredentials: opts.AllowUnscopedCredentials,
		Audit:                    recorder,
	}
	if err := runs.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the PipelineRun controller: %w", err)
	}
	promotions := &promotion.Reconciler{
		Client:    mgr.GetClient(),
		Fetcher:   gitsource.NewFetcher(filepath.Join(opts.GitCacheDir, "promotions")),
		Recorder:  mgr.GetEventRecorderFor("slipway-promotion"),
		Namespace: cmp.Or(opts.LeaderElectionNamespace, install.Namespace),
		Audit:     recorder,
	}
	if err := promotions.SetupWithManager(mgr); err != nil {
		return fmt.Errorf("setting up the Promotion controller: %w", err)
	}

	var ready atomic.Bool
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok\n")) })
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		if !ready.Load() {
			http.Error(w, "caches not synced yet", http.StatusServiceUnavailable)
			return
		}
		if err := healthz.Ping(r); err != nil {
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.Handle("/metrics", promhttp.HandlerFor(ctrlmetrics.Registry, promhttp.HandlerOpts{}))
	hooks := &webhook.Handler{
		Secret: opts.WebhookSecret, SecretFile: opts.WebhookSecretFile, Client: mgr.GetClient(), Log: ctrl.Log.WithName("webhook"), Audit: recorder,
	}
	hooks.ExportSecretConfigured()
	mux.Handle("/hooks/git", hooks)
	switch {
	case opts.WebhookSecretFile != "":
		if s, err := webhook.ReadSecretFile(opts.WebhookSecretFile); err != nil || len(s) == 0 {
			log.Info("the webhook secret file is missing or empty: /hooks/git refuses deliveries until it is written", "file", opts.WebhookSecretFile)
		}
	case len(opts.WebhookSecret) == 0:
		log.Info("no webhook secret configured: /hooks/git accepts only deliveries a Pipeline's own webhook secret verifies")
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, WriteTimeout: 30 * time.Second}
	httpErr := make(chan error, 1)
	go func() { httpErr <- srv.Serve(ln) }()
	log.Info("serving", "addr", ln.Addr().String())
	if opts.Started != nil {
		opts.Started(ln.Addr().String())
	}

	go func() {
		if mgr.GetCache().WaitForCacheSync(ctx) {
			ready.Store(true)
		}
	}()
	leader.Set(0)
	go func() {
		select {
		case <-mgr.Elected():
			leader.Set(1)
		case <-ctx.Done():
		}
	}()
	mgrErr := make(chan error, 1)
	go func() { mgrErr <- mgr.Start(ctx) }()

	select {
	case err = <-mgrErr:
	case err = <-httpErr:
	}
	// Losing the lease ends Start: this replica leads no more.
	leader.Set(0)
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = srv.Shutdown(shutdownCtx)
	if errors.Is(err, http.ErrServerClosed) {
		err = nil
	}
	return err
}
