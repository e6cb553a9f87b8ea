package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/apimachinery/pkg/api/resource"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/pipeline"
	"slipway.dev/slipway/internal/server"
	"slipway.dev/slipway/internal/upstream"
)

func newServerCommand() *cobra.Command {
	opts := server.Options{}
	var secretFile string
	var development bool
	var qps int
	cmd := &cobra.Command{
		Use:   "server",
		Short: "Run the controllers and the HTTP endpoints (/healthz, /readyz, /metrics, /hooks/git)",
		Long: `Run Slipway's controllers against the cluster of the kubeconfig, and serve:
  /healthz     liveness
  /readyz      readiness (caches synced)
  /metrics     Prometheus metrics
  /hooks/git   git push webhooks (GitHub/Gitea payloads, HMAC-SHA256 signed)

The server's webhook secret is read from --webhook-secret-file at each
delivery (so a mounted Secret can be created or rotated while the server
runs), else from SLIPWAY_WEBHOOK_SECRET. It triggers Applications and starts runs of the
Pipelines without a secret of their own (spec.source.webhookSecretRef, one
per repository, as GitHub and Gitea keep them); a Pipeline with one starts
runs only for deliveries its own secret verifies. A delivery no secret
verifies is refused.

Test commands come from source repositories and are untrusted. The local
executor runs each in a container of its own (runc, as root): its own
unprivileged user, mount, PID and network namespaces, no view of the
server's files, environment or processes, limits, and every process killed
at the end. Where this host cannot isolate (no runc, not root), runs with a
test command fail, unless --allow-unisolated-tests accepts running them as
the server's own user; every such run's status says so.

Inside a cluster (no kubeconfig), the server uses its Pod's ServiceAccount.`,
		Args: cobra.NoArgs,
	}
	kube := withKube(cmd, false)
	cmd.Flags().StringVar(&opts.Addr, "addr", "127.0.0.1:9443", "HTTP listen address")
	cmd.Flags().StringVar(&secretFile, "webhook-secret-file", "", "file holding the webhook HMAC secret")
	cmd.Flags().BoolVar(&opts.LeaderElection, "leader-elect", true, "elect a leader so only one replica reconciles")
	cmd.Flags().StringVar(&opts.LeaderElectionNamespace, "leader-election-namespace", install.Namespace, "namespace of the leader-election lease")
	cmd.Flags().DurationVar(&opts.LeaseDuration, "leader-elect-lease-duration", server.DefaultLeaseDuration,
		"how long the leader's lease lasts without renewal: another replica takes over a dead leader after it (the leader renews within two thirds of it)")
	cmd.Flags().StringVar(&opts.GitCacheDir, "git-cache-dir", filepath.Join(upstream.CacheDir(), "git"), "directory for cached clones")
	cmd.Flags().StringVar(&opts.RunDir, "run-dir", filepath.Join(upstream.CacheDir(), "runs"), "directory for pipeline run workspaces and logs (by namespace) and the local executor's containers")
	cmd.Flags().StringVar(&opts.CacheDir, "cache-dir", filepath.Join(upstream.CacheDir(), "pipeline-caches"), "directory for each Pipeline's test caches (Go build and module caches), by namespace; builds never read them")
	cmd.Flags().StringVar(&opts.Executor, "executor", "local", "where pipeline test commands run: local (a runc container per command on this host) or kubernetes (a Pod per command)")
	cmd.Flags().BoolVar(&opts.AllowUnisolatedTests, "allow-unisolated-tests", false, "where this host cannot isolate test commands (no runc, not root), run them as the server's own user anyway: they can then read what the server can. Every run's status says so")
	cmd.Flags().StringArrayVar(&opts.SandboxPaths, "sandbox-path", nil, "extra host directory the local executor's containers see read-only, e.g. a toolchain outside /usr (repeatable)")
	cmd.Flags().StringVar(&opts.RunNamespace, "run-namespace", install.RunNamespace, "namespace of the kubernetes executor's Pods and Secrets")
	cmd.Flags().StringVar(&opts.RunnerImage, "runner-image", "", "Slipway's runner image (slipway, a static sh, the Go toolchain; pin it by digest): the kubernetes executor's Pods check out with `slipway checkout` in it, so no image needs git, and run the test command in it when neither --test-image nor slipway.yaml names another")
	cmd.Flags().StringVar(&opts.TestImage, "test-image", "", "image of the kubernetes executor's Pods when slipway.yaml names none (pin it by digest); default: --runner-image, else "+pipeline.DefaultKubeImage+", which also runs the checkout with git")
	var testCPU, testMemory string
	cmd.Flags().StringVar(&testCPU, "test-cpu", "", "CPU of each test step, as a Kubernetes quantity (e.g. 1 or 500m): the test Pod's request and limit, or the local container's limit (default 2)")
	cmd.Flags().StringVar(&testMemory, "test-memory", "", "memory of each test step, as a Kubernetes quantity (e.g. 3Gi): the test Pod's request and limit, or the local container's limit, and each process's address space (default 8Gi)")
	cmd.Flags().IntVar(&opts.Concurrency, "concurrency", 16, "Applications reconciled in parallel")
	cmd.Flags().StringVar(&opts.DefaultServiceAccount, "default-service-account", "",
		"ServiceAccount (in each Application's namespace) that Applications apply as when neither they nor their Tenant name one; empty refuses them")
	cmd.Flags().BoolVar(&opts.AllowUnscopedCredentials, "allow-unscoped-credentials", false,
		"send git credentials from Secrets without the "+gitsource.AllowedURLsAnnotation+" annotation to any URL (by default they are refused)")
	cmd.Flags().StringArrayVar(&opts.PolicyPacks, "policy-pack", nil, "extra PolicyPack file for the sync gate (repeatable); PolicyProfiles select it by name")
	var retentionDays int
	cmd.Flags().StringVar(&opts.Audit.Store, "audit-store", defaultAuditStore(), "audit trail: a directory (the append-only file store) or a postgres:// connection string (user, host, database; password from --audit-store-password-file or PGPASSWORD); \"none\" records nothing")
	cmd.Flags().StringVar(&opts.Audit.StorePasswordFile, "audit-store-password-file", "", "file holding the audit store's PostgreSQL password")
	cmd.Flags().StringVar(&opts.Audit.KeyFile, "audit-key-file", "", "audit key (PKCS#8 PEM, ECDSA P-256) that signs checkpoints; default for a file store: DIR/audit.key, created with DIR/audit.pub when missing")
	cmd.Flags().StringVar(&opts.Audit.WitnessURL, "audit-witness-url", "", "git repository that receives every audit checkpoint, which the audit store's owner cannot rewrite (fast-forward pushes only)")
	cmd.Flags().StringVar(&opts.Audit.WitnessCredentialsFile, "audit-witness-credentials-file", "", "file holding username:password for --audit-witness-url")
	cmd.Flags().IntVar(&retentionDays, "audit-retention-days", int(server.DefaultAuditRetention/(24*time.Hour)), "days audit records stay in the live store before they move to its archive (never deleted)")
	cmd.Flags().DurationVar(&opts.Audit.CheckpointInterval, "audit-checkpoint-interval", 0, "how often a signed checkpoint is made while records arrive (default 1m)")
	cmd.Flags().DurationVar(&opts.Audit.WitnessInterval, "audit-witness-interval", 0, "how often the newest checkpoint is committed to the witness (default 10m)")
	cmd.Flags().IntVar(&qps, "kube-api-qps", 500, "client-side limit of requests per second to the API server (burst: twice this)")
	cmd.Flags().BoolVar(&development, "log-development", false, "human-friendly console logs instead of JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctrl.SetLogger(zap.New(zap.UseDevMode(development)))
		var err error
		if opts.TestCPU, opts.TestMemory, err = testResources(testCPU, testMemory); err != nil {
			return usageError(err)
		}
		if secretFile != "" {
			opts.WebhookSecretFile = secretFile
		} else {
			opts.WebhookSecret = []byte(os.Getenv("SLIPWAY_WEBHOOK_SECRET"))
		}
		if opts.Audit.Store == "none" {
			opts.Audit = server.AuditOptions{}
		} else if retentionDays < 366 {
			return usageError(fmt.Errorf("--audit-retention-days %d: records must stay at least a year (366 days)", retentionDays))
		}
		opts.Audit.Retention = time.Duration(retentionDays) * 24 * time.Hour
		if opts.Config, err = kube.restConfig(); err != nil {
			return err
		}
		opts.Config.Timeout = 0 // watches are long-lived; each request has its own context
		// One controller for many Applications: the API server's priority and
		// fairness protects it, a low client-side limit would only queue work.
		opts.Config.QPS, opts.Config.Burst = float32(qps), 2*qps
		opts.Started = func(addr string) { fmt.Fprintf(cmd.ErrOrStderr(), "slipway server listening on http://%s\n", addr) }
		return server.Run(cmd.Context(), opts)
	}
	return cmd
}

// defaultAuditStore is ${XDG_STATE_HOME:-~/.local/state}/slipway/audit:
// state to keep, not a cache.
func defaultAuditStore() string {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "slipway", "audit")
	}
	if home, err := os.UserHomeDir(); err == nil {
		return filepath.Join(home, ".local", "state", "slipway", "audit")
	}
	return "none"
}

// testResources parses --test-cpu (to thousandths of a core) and
// --test-memory (to bytes); empty gives zero, the default.
func testResources(cpu, memory string) (int64, int64, error) {
	var milli, bytes int64
	if cpu != "" {
		q, err := resource.ParseQuantity(cpu)
		if err != nil || q.Sign() <= 0 {
			return 0, 0, fmt.Errorf("--test-cpu %q: want a positive quantity such as 1 or 500m", cpu)
		}
		milli = q.MilliValue()
	}
	if memory != "" {
		q, err := resource.ParseQuantity(memory)
		if err != nil || q.Sign() <= 0 {
			return 0, 0, fmt.Errorf("--test-memory %q: want a positive quantity such as 3Gi", memory)
		}
		bytes = q.Value()
	}
	return milli, bytes, nil
}
