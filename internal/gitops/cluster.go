package gitops

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// KubeconfigKey is the key of a cluster Secret holding the kubeconfig.
const KubeconfigKey = "kubeconfig"

// ReasonClusterUnreachable is the Ready reason when the destination
// cluster's kubeconfig is unusable.
const ReasonClusterUnreachable = "ClusterUnreachable"

// remoteTimeout bounds every request to another cluster.
const remoteTimeout = 30 * time.Second

// Cluster is where an Application's objects live: the cluster Slipway runs
// in, or another one named by spec.destination.clusterRef.
type Cluster struct {
	// Name describes it in messages.
	Name string
	// Reader reads live objects (health, ownership, neighbours).
	Reader client.Reader
	// Mapper resolves kinds as this cluster serves them.
	Mapper apimeta.RESTMapper
	// Client acts with the cluster's own credentials; in the local cluster
	// applies go through the Application's ServiceAccount instead.
	Client client.Client
	// Remote is true for a cluster reached with a kubeconfig.
	Remote bool
}

// Clusters builds and caches clients for the clusters Applications name, by
// Secret, rebuilt when the Secret changes.
type Clusters struct {
	scheme *runtime.Scheme

	mu    sync.Mutex
	byKey map[client.ObjectKey]cachedCluster
}

type cachedCluster struct {
	version string
	cluster *Cluster
}

// NewClusters caches remote cluster clients using scheme.
func NewClusters(scheme *runtime.Scheme) *Clusters {
	return &Clusters{scheme: scheme, byKey: map[client.ObjectKey]cachedCluster{}}
}

// For returns the cluster of the kubeconfig in secret. A kubeconfig that
// would run a program (exec credential plugins, auth providers) is refused:
// its author would run code on the server. Error messages never carry the
// kubeconfig's credentials.
func (cs *Clusters) For(secret *corev1.Secret) (*Cluster, error) {
	key := client.ObjectKeyFromObject(secret)
	name := fmt.Sprintf("the cluster of Secret %s", key)
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if c, ok := cs.byKey[key]; ok && c.version == secret.ResourceVersion {
		return c.cluster, nil
	}
	raw := secret.Data[KubeconfigKey]
	if len(raw) == 0 {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("no %q key holding a kubeconfig in Secret %s", KubeconfigKey, key))
	}
	parsed, err := clientcmd.Load(raw)
	if err != nil {
		// clientcmd's errors name fields and files, never their values.
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("reading the kubeconfig in Secret %s: %w", key, err))
	}
	if err := selfContained(parsed); err != nil {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("the kubeconfig in Secret %s %w", key, err))
	}
	cfg, err := clientcmd.NewDefaultClientConfig(*parsed, nil).ClientConfig()
	if err != nil {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("reading the kubeconfig in Secret %s: %w", key, err))
	}
	cfg.Timeout = remoteTimeout
	cfg.QPS, cfg.Burst = 50, 100
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("building a client for %s: %w", name, err))
	}
	mapper, err := apiutil.NewDynamicRESTMapper(cfg, hc)
	if err != nil {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("building a client for %s: %w", name, err))
	}
	c, err := client.New(cfg, client.Options{Scheme: cs.scheme, Mapper: mapper, HTTPClient: hc})
	if err != nil {
		return nil, stalled(ReasonClusterUnreachable, fmt.Errorf("building a client for %s: %w", name, err))
	}
	cluster := &Cluster{Name: name + " (" + cfg.Host + ")", Reader: c, Mapper: mapper, Client: c, Remote: true}
	cs.byKey[key] = cachedCluster{version: secret.ResourceVersion, cluster: cluster}
	return cluster, nil
}

// selfContained refuses what would make the server run a program or read
// its own files for a kubeconfig a tenant wrote: credential plugins, and
// paths (a tokenFile naming the server's own ServiceAccount token would
// lend its rights to whoever wrote the Secret).
func selfContained(cfg *clientcmdapi.Config) error {
	for _, user := range cfg.AuthInfos {
		switch {
		case user.Exec != nil || user.AuthProvider != nil:
			return errors.New("runs a credential plugin: use a token or a client certificate")
		case user.TokenFile != "" || user.ClientCertificate != "" || user.ClientKey != "":
			return errors.New("names files of the server: embed the token, certificate and key instead")
		}
	}
	for _, cluster := range cfg.Clusters {
		if cluster.CertificateAuthority != "" {
			return errors.New("names files of the server: embed the certificate authority instead")
		}
	}
	return nil
}

// Forget drops the cached client of a Secret.
func (cs *Clusters) Forget(key client.ObjectKey) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	delete(cs.byKey, key)
}

// clusterFor resolves where app deploys: this cluster, or the one its
// clusterRef Secret names.
func (r *ApplicationReconciler) clusterFor(ctx context.Context, app *slipwayv1.Application) (*Cluster, error) {
	ref := app.Spec.Destination.ClusterRef
	if ref == nil {
		return &Cluster{Name: "this cluster", Reader: r.Client, Mapper: r.Loader.Mapper, Client: r.Client}, nil
	}
	if r.Clusters == nil {
		return nil, stalled(ReasonClusterUnreachable, errors.New("this server does not deploy to other clusters"))
	}
	var secret corev1.Secret
	if err := r.Get(ctx, client.ObjectKey{Namespace: app.Namespace, Name: ref.Name}, &secret); err != nil {
		return nil, fmt.Errorf("reading the destination cluster's kubeconfig from Secret %s/%s: %w", app.Namespace, ref.Name, err)
	}
	return r.Clusters.For(&secret)
}
