package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/server"
)

// kubeFlags are kubectl's connection flags: --kubeconfig (then KUBECONFIG,
// then ~/.kube/config), --context, -n/--namespace and, where it makes sense, -A.
type kubeFlags struct {
	kubeconfig    string
	context       string
	namespace     string
	allNamespaces bool
	timeout       time.Duration
}

func (k *kubeFlags) addTo(fs *pflag.FlagSet, allNamespaces bool) {
	fs.StringVar(&k.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config)")
	fs.StringVar(&k.context, "context", "", "kubeconfig context to use")
	fs.StringVarP(&k.namespace, "namespace", "n", "", "namespace (default: the context's namespace, else default)")
	fs.DurationVar(&k.timeout, "request-timeout", 30*time.Second, "deadline of each request to the API server")
	if allNamespaces {
		fs.BoolVarP(&k.allNamespaces, "all-namespaces", "A", false, "list across all namespaces")
	}
}

func (k *kubeFlags) loader() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if k.kubeconfig != "" {
		rules.ExplicitPath = k.kubeconfig
	}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: k.context})
}

func (k *kubeFlags) restConfig() (*rest.Config, error) {
	cfg, err := k.loader().ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading kubeconfig: %w", err)
	}
	cfg.Timeout = k.timeout
	cfg.UserAgent = "slipway"
	return cfg, nil
}

func (k *kubeFlags) client() (client.Client, error) {
	cfg, err := k.restConfig()
	if err != nil {
		return nil, err
	}
	c, err := client.New(cfg, client.Options{Scheme: server.Scheme()})
	if err != nil {
		return nil, fmt.Errorf("connecting to %s: %w", cfg.Host, err)
	}
	return c, nil
}

// ns returns the namespace to act in.
func (k *kubeFlags) ns() (string, error) {
	if k.namespace != "" {
		return k.namespace, nil
	}
	ns, _, err := k.loader().Namespace()
	if err != nil {
		return "", fmt.Errorf("reading the namespace from kubeconfig: %w", err)
	}
	return ns, nil
}

// list fills list with the objects of the namespace, or of all with -A;
// what names them in errors.
func (k *kubeFlags) list(ctx context.Context, list client.ObjectList, what string) error {
	c, err := k.client()
	if err != nil {
		return err
	}
	opts, err := k.listOptions()
	if err != nil {
		return err
	}
	if err := c.List(ctx, list, opts...); err != nil {
		return fmt.Errorf("listing %s: %w", what, err)
	}
	return nil
}

// listOptions scope a list to the namespace, or to none with -A.
func (k *kubeFlags) listOptions() ([]client.ListOption, error) {
	if k.allNamespaces {
		return nil, nil
	}
	ns, err := k.ns()
	if err != nil {
		return nil, err
	}
	return []client.ListOption{client.InNamespace(ns)}, nil
}

func withKube(cmd *cobra.Command, allNamespaces bool) *kubeFlags {
	k := &kubeFlags{}
	k.addTo(cmd.Flags(), allNamespaces)
	return k
}
