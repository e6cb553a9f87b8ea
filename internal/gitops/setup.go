package gitops

import (
	"fmt"

	ctrl "sigs.k8s.io/controller-runtime"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/policy"
)

// Options configure the GitOps engine.
type Options struct {
	// GitCacheDir holds the cached clones.
	GitCacheDir string
	// Concurrency is how many Applications are reconciled in parallel.
	Concurrency int
	// PolicyPacks are pack files added to the embedded ones, so an
	// organisation's own rules gate syncs without a rebuild; PolicyProfiles
	// select them by name.
	PolicyPacks []string
	// DefaultServiceAccount is the ServiceAccount Applications apply as
	// when neither they nor their Tenant name one; empty refuses them.
	DefaultServiceAccount string
	// AllowUnscopedCredentials sends credentials from Secrets that do not
	// list the URLs they are for (gitsource.AllowedURLsAnnotation).
	AllowUnscopedCredentials bool
	// Audit records syncs and policy changes; nil records nothing.
	Audit audit.Recorder
}

// Setup registers the Application controller with mgr.
func Setup(mgr ctrl.Manager, opts Options) (*ApplicationReconciler, error) {
	catalog, err := policy.NewCatalog()
	if err != nil {
		return nil, fmt.Errorf("loading the policy packs: %w", err)
	}
	for _, file := range opts.PolicyPacks {
		if err := catalog.AddFile(file); err != nil {
			return nil, fmt.Errorf("loading policy pack %s: %w", file, err)
		}
	}
	fetcher := gitsource.NewFetcher(opts.GitCacheDir)
	// A host that is slow or never answers holds at most half the workers.
	fetcher.SetPerHost(max(1, opts.Concurrency/2))
	impersonator, err := NewImpersonator(mgr.GetConfig(), mgr.GetScheme(), mgr.GetRESTMapper())
	if err != nil {
		return nil, err
	}
	r := &ApplicationReconciler{
		Impersonator:          impersonator,
		Clusters:              NewClusters(mgr.GetScheme()),
		DefaultServiceAccount: opts.DefaultServiceAccount,
		Policy:                &PolicyGate{Client: mgr.GetClient(), Catalog: catalog, Mapper: mgr.GetRESTMapper()},
		Client:                mgr.GetClient(),
		Loader: &Loader{
			Client:  mgr.GetClient(),
			Mapper:  mgr.GetRESTMapper(),
			Fetcher: fetcher,

			AllowUnscopedCredentials: opts.AllowUnscopedCredentials,
		},
		Recorder:    mgr.GetEventRecorderFor("slipway"),
		Concurrency: opts.Concurrency,
		Audit:       opts.Audit,
	}
	if err := r.SetupWithManager(mgr); err != nil {
		return nil, fmt.Errorf("setting up the Application controller: %w", err)
	}
	if opts.Audit != nil {
		pa := &PolicyAuditReconciler{Client: mgr.GetClient(), Audit: opts.Audit}
		if err := pa.SetupWithManager(mgr); err != nil {
			return nil, fmt.Errorf("setting up the policy audit controllers: %w", err)
		}
	}
	return r, nil
}
