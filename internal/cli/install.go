package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/yaml"

	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/webhook"
)

func newInstallCommand() *cobra.Command {
	opts := install.ApplyOptions{}
	var secretFile string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install Slipway into the cluster: CRDs, RBAC and, with --image, the server (idempotent)",
		Long: `Install (or update) Slipway in the cluster of the kubeconfig, with server-side
apply (field manager slipway-install). Running it again changes only what differs.

Always installed:
  - the CRDs (Application, Pipeline, PipelineRun, Tenant, PolicyProfile,
    PolicyWaiver, Delivery, Promotion) and the admission policy that enforces
    separation of duties on promotions
  - namespaces slipway-system (the server) and slipway-runs (pipeline test Pods),
    both enforcing the restricted Pod Security Standard
  - ServiceAccount slipway-system/slipway-server and its RBAC, generated from the
    controllers' code: a ClusterRole (no wildcards, Secrets get only, never list),
    a Role for the leader-election Lease in slipway-system and one for test Pods
    in slipway-runs, and their bindings
  - ClusterRole slipway-tenant, which teams bind to the ServiceAccounts their
    Applications apply as, and the promotion requester and approver roles

With --image, the server itself:
  - Deployment slipway-server: two replicas with leader election, spread across
    nodes, /healthz and /readyz probes, restricted security context with a
    read-only root filesystem, requests and limits, emptyDirs for its caches,
    test steps run as Pods in slipway-runs (--executor kubernetes)
  - PodDisruptionBudget (one replica down at a time), Service slipway-server on
    port 9443 (/hooks/git, /metrics)
  - NetworkPolicies: default deny in both namespaces; the server accepts only
    port 9443 and reaches only DNS, the API server (--api-server-cidr, found in
    the cluster by default) and --egress-cidr (private ranges by default: your
    git server, registry and module proxy); test Pods reach DNS and --egress-cidr

The image must be pinned by digest. The webhook secret goes into Secret
slipway-system/slipway-webhook (key "secret"), never on a command line or in the
printed manifests; the server reads it at each delivery, so it can be created or
rotated later.

--dry-run prints every object instead of applying it (YAML by default), exactly
what install applies, for a GitOps repository. Secrets are not printed: create
them with your secret store. Everything printed passes 'slipway policy check'
with the fin-kr profile and zero findings once Slipway is declared the
platform's (config/policy/platform-parameters.yaml: its server impersonates
ServiceAccounts and reads Secrets by name, its admission policy enforces
separation of duties):

  slipway install --image IMAGE --dry-run | \
    slipway policy --params config/policy/platform-parameters.yaml check -`,
		Example: `  # the server, with the image Slipway's builder pushed
  slipway install --image registry.example.com/slipway/server@sha256:<digest> \
    --webhook-secret-file ./webhook-secret

  # the manifests, for a GitOps repository
  slipway install --image registry.example.com/slipway/server@sha256:<digest> \
    --api-server-cidr 10.0.0.10 --dry-run > slipway.yaml

  # only CRDs and RBAC, for a server running outside the cluster
  slipway install`,
		Args: cobra.NoArgs,
	}
	kube := withKube(cmd, false)
	_ = cmd.Flags().MarkHidden("namespace") // install chooses its namespaces
	f := cmd.Flags()
	f.StringVar(&opts.Image, "image", "", "server image, pinned by digest (REPOSITORY@sha256:HEX); without it only the CRDs and RBAC are installed")
	f.Int32Var(&opts.Replicas, "replicas", 2, "server replicas (one reconciles, elected; all serve webhooks)")
	f.StringVar(&secretFile, "webhook-secret-file", "", "file holding the webhook HMAC secret, written to Secret "+install.Namespace+"/"+install.WebhookSecretName)
	f.StringVar(&opts.ImagePullSecret, "image-pull-secret", "", "Secret in "+install.Namespace+" the kubelet pulls the image with")
	f.StringSliceVar(&opts.APIServerCIDRs, "api-server-cidr", nil, "API server address or CIDR the server may reach (repeatable; default: the endpoints of Service default/kubernetes)")
	f.StringSliceVar(&opts.EgressCIDRs, "egress-cidr", nil, "CIDR the server and test Pods may reach: git, registry, module proxy (repeatable; default "+strings.Join(install.DefaultEgressCIDRs, ",")+")")
	f.StringArrayVar(&opts.Env, "env", nil, "KEY=VALUE for the server's environment, e.g. GOPROXY=https://proxy.internal (repeatable; never credentials)")
	f.StringVar(&opts.RunnerImage, "runner-image", "", "Slipway's runner image, REPOSITORY@sha256:HEX (slipway lab image builds it): test Pods check out with slipway checkout in it and run tests in it unless --test-image or slipway.yaml names another")
	f.StringVar(&opts.TestCPU, "test-cpu", "", "CPU of each pipeline test Pod, request and limit (default 2): it must fit on a node")
	f.StringVar(&opts.TestMemory, "test-memory", "", "memory of each pipeline test Pod, request and limit (default 8Gi): it must fit on a node")
	f.StringVar(&opts.TestImage, "test-image", "", "default image of pipeline test Pods (pin it by digest; default: the runner image, else the server's)")
	f.StringVar(&opts.DefaultServiceAccount, "default-service-account", "", "ServiceAccount Applications apply as when neither they nor their Tenant name one (default: none, refused)")
	f.BoolVar(&dryRun, "dry-run", false, "print the objects (-o yaml or json) instead of applying them")
	f.DurationVar(&opts.Timeout, "timeout", install.DefaultTimeout, "deadline of the whole installation")
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		stderr := cmd.ErrOrStderr()
		if secretFile != "" {
			secret, err := webhook.ReadSecretFile(secretFile)
			if err != nil {
				return usageError(err)
			}
			if len(secret) == 0 {
				return usageError(fmt.Errorf("%s is empty", secretFile))
			}
			opts.WebhookSecret = secret
		}
		if opts.Image == "" && (opts.ImagePullSecret != "" || len(opts.Env) > 0 || opts.TestImage != "" || opts.RunnerImage != "" || opts.TestCPU != "" || opts.TestMemory != "" || opts.DefaultServiceAccount != "" || secretFile != "") {
			return usageError(errors.New("--image-pull-secret, --env, --test-image, --runner-image, --test-cpu, --test-memory, --default-service-account and --webhook-secret-file configure the server: give --image too"))
		}
		if dryRun {
			if opts.Image != "" && len(opts.APIServerCIDRs) == 0 {
				c, err := kube.client()
				if err != nil {
					return fmt.Errorf("%w (or give --api-server-cidr to print without a cluster)", err)
				}
				ctx, cancel := context.WithTimeout(cmd.Context(), opts.Timeout)
				defer cancel()
				if opts.APIServerCIDRs, err = install.APIServerCIDRs(ctx, c); err != nil {
					return err
				}
			}
			objs, err := install.Manifests(opts.Options)
			if err != nil {
				return usageError(err)
			}
			if opts.Image != "" && len(opts.WebhookSecret) == 0 {
				fmt.Fprintf(stderr, "note: Secret %s/%s (key %q) is not among the objects: create it with your secret store, or webhooks are refused\n",
					install.Namespace, install.WebhookSecretName, install.WebhookSecretKey)
			} else if len(opts.WebhookSecret) > 0 {
				fmt.Fprintf(stderr, "note: the webhook secret is not printed: create Secret %s/%s (key %q) with your secret store\n",
					install.Namespace, install.WebhookSecretName, install.WebhookSecretKey)
			}
			return printManifests(cmd.OutOrStdout(), *out, objs)
		}
		if err := validateOutput(*out); err != nil {
			return err
		}
		if _, err := install.Manifests(withPlaceholderCIDR(opts.Options)); err != nil {
			return usageError(err) // bad flags, before touching the cluster
		}
		c, err := kube.client()
		if err != nil {
			return err
		}
		res, err := install.Apply(cmd.Context(), c, opts)
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, res); done {
			return err
		}
		for _, o := range res.Objects {
			fmt.Fprintf(cmd.OutOrStdout(), "%s applied\n", strings.ToLower(o.String()))
		}
		if opts.Image != "" && len(opts.WebhookSecret) == 0 {
			fmt.Fprintf(stderr, "note: no --webhook-secret-file: webhooks are refused until Secret %s/%s (key %q) exists\n",
				install.Namespace, install.WebhookSecretName, install.WebhookSecretKey)
		}
		return nil
	}
	return cmd
}

// withPlaceholderCIDR lets flags be checked before the API server's
// addresses are looked up in the cluster.
func withPlaceholderCIDR(o install.Options) install.Options {
	if o.Image != "" && len(o.APIServerCIDRs) == 0 {
		o.APIServerCIDRs = []string{"127.0.0.1"}
	}
	return o
}

func validateOutput(format string) error {
	switch format {
	case outputHuman, outputJSON, outputYAML:
		return nil
	}
	return usageError(fmt.Errorf("unknown output format %q: use json or yaml", format))
}

// printManifests writes objects as a YAML stream (the default) or a JSON
// List, which kubectl apply -f and slipway policy check both read.
func printManifests(w io.Writer, format string, objs []*unstructured.Unstructured) error {
	switch format {
	case outputHuman, outputYAML:
		for _, o := range objs {
			b, err := yaml.Marshal(o.Object)
			if err != nil {
				return err
			}
			if _, err := fmt.Fprintf(w, "---\n%s", b); err != nil {
				return err
			}
		}
		return nil
	case outputJSON:
		items := make([]any, len(objs))
		for i, o := range objs {
			items[i] = o.Object
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(map[string]any{"apiVersion": "v1", "kind": "List", "items": items})
	}
	return usageError(fmt.Errorf("unknown output format %q: use yaml or json", format))
}

func newUninstallCommand() *cobra.Command {
	opts := install.UninstallOptions{}
	var yes bool
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove the Slipway server and its RBAC and namespaces; with --crds, every Slipway resource too",
		Long: `Remove what 'slipway install' installed: first the server's bindings (so a
replica still running can no longer act), then its Deployment, Service,
PodDisruptionBudget, NetworkPolicies, ServiceAccount, roles, Secrets, and the
namespaces slipway-system and slipway-runs.

The CRDs, and so every Application, Pipeline, Tenant, PolicyProfile and
PolicyWaiver, and the slipway-tenant ClusterRole that tenants' RoleBindings
name, are kept unless --crds is given. --crds ` + install.CRDWarning + `.
It asks for confirmation on a terminal; scripts pass --yes.`,
		Args: cobra.NoArgs,
	}
	kube := withKube(cmd, false)
	_ = cmd.Flags().MarkHidden("namespace")
	cmd.Flags().BoolVar(&opts.CRDs, "crds", false, "also remove the CRDs and every Slipway resource in the cluster")
	cmd.Flags().BoolVar(&yes, "yes", false, "do not ask before removing the CRDs")
	cmd.Flags().DurationVar(&opts.Timeout, "timeout", install.DefaultTimeout, "deadline of the whole removal")
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if err := validateOutput(*out); err != nil {
			return err
		}
		if opts.CRDs && !yes {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %s.\n", install.CRDWarning)
			if !isTerminalReader(cmd.InOrStdin()) {
				return usageError(errors.New("--crds needs --yes when not run from a terminal"))
			}
			fmt.Fprint(cmd.ErrOrStderr(), "Type yes to continue: ")
			answer, _ := bufio.NewReader(cmd.InOrStdin()).ReadString('\n')
			if strings.TrimSpace(answer) != "yes" {
				return errors.New("nothing removed")
			}
		}
		c, err := kube.client()
		if err != nil {
			return err
		}
		res, err := install.Uninstall(cmd.Context(), c, opts)
		if res != nil && *out == outputHuman {
			for _, o := range res.Objects {
				fmt.Fprintf(cmd.OutOrStdout(), "%s deleted\n", strings.ToLower(o.String()))
			}
		}
		if err != nil {
			return err
		}
		_, err = printStructured(cmd.OutOrStdout(), *out, res)
		return err
	}
	return cmd
}

// isTerminalReader reports whether r is an interactive terminal.
func isTerminalReader(r io.Reader) bool {
	f, ok := r.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}
