package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
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

The webhook secret is read from --webhook-secret-file or SLIPWAY_WEBHOOK_SECRET;
without one every webhook delivery is refused.`,
		Args: cobra.NoArgs,
	}
	kube := withKube(cmd, false)
	cmd.Flags().StringVar(&opts.Addr, "addr", "127.0.0.1:9443", "HTTP listen address")
	cmd.Flags().StringVar(&secretFile, "webhook-secret-file", "", "file holding the webhook HMAC secret")
	cmd.Flags().BoolVar(&opts.LeaderElection, "leader-elect", true, "elect a leader so only one replica reconciles")
	cmd.Flags().StringVar(&opts.LeaderElectionNamespace, "leader-election-namespace", install.Namespace, "namespace of the leader-election lease")
	cmd.Flags().StringVar(&opts.GitCacheDir, "git-cache-dir", filepath.Join(upstream.CacheDir(), "git"), "directory for cached clones")
	cmd.Flags().StringVar(&opts.RunDir, "run-dir", filepath.Join(upstream.CacheDir(), "runs"), "directory for pipeline run workspaces and logs")
	cmd.Flags().StringVar(&opts.Executor, "executor", "local", "where pipeline test commands run: local (child processes with resource limits) or kubernetes (a Pod per command)")
	cmd.Flags().StringVar(&opts.RunNamespace, "run-namespace", install.Namespace, "namespace of the kubernetes executor's Pods and Secrets")
	cmd.Flags().StringVar(&opts.TestImage, "test-image", pipeline.DefaultKubeImage, "image of the kubernetes executor's Pods when slipway.yaml names none (pin it by digest)")
	cmd.Flags().IntVar(&opts.Concurrency, "concurrency", 16, "Applications reconciled in parallel")
	cmd.Flags().StringVar(&opts.DefaultServiceAccount, "default-service-account", "",
		"ServiceAccount (in each Application's namespace) that Applications apply as when neither they nor their Tenant name one; empty refuses them")
	cmd.Flags().BoolVar(&opts.AllowUnscopedCredentials, "allow-unscoped-credentials", false,
		"send git credentials from Secrets without the "+gitsource.AllowedURLsAnnotation+" annotation to any URL (by default they are refused)")
	cmd.Flags().StringArrayVar(&opts.PolicyPacks, "policy-pack", nil, "extra PolicyPack file for the sync gate (repeatable); PolicyProfiles select it by name")
	cmd.Flags().IntVar(&qps, "kube-api-qps", 500, "client-side limit of requests per second to the API server (burst: twice this)")
	cmd.Flags().BoolVar(&development, "log-development", false, "human-friendly console logs instead of JSON")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctrl.SetLogger(zap.New(zap.UseDevMode(development)))
		secret, err := webhookSecret(secretFile)
		if err != nil {
			return usageError(err)
		}
		opts.WebhookSecret = secret
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

func webhookSecret(file string) ([]byte, error) {
	if file == "" {
		return []byte(os.Getenv("SLIPWAY_WEBHOOK_SECRET")), nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("reading the webhook secret: %w", err)
	}
	return []byte(strings.TrimSpace(string(b))), nil
}

func newInstallCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Apply Slipway's CRDs, the slipway-tenant ClusterRole and namespace to the cluster (idempotent)",
		Args:  cobra.NoArgs,
	}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		c, err := kube.client()
		if err != nil {
			return err
		}
		res, err := install.Apply(cmd.Context(), c, 2*kube.timeout)
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, res); done {
			return err
		}
		for _, crd := range res.CRDs {
			fmt.Fprintf(cmd.OutOrStdout(), "customresourcedefinition/%s applied\n", crd)
		}
		for _, role := range res.ClusterRoles {
			fmt.Fprintf(cmd.OutOrStdout(), "clusterrole/%s applied\n", role)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "namespace/%s applied\n", res.Namespace)
		return nil
	}
	return cmd
}
