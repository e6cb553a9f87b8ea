// Package install puts Slipway into a cluster and takes it out again: its
// CRDs, the slipway-system and slipway-runs namespaces, the server's
// ServiceAccount and the RBAC generated from the controllers'
// +kubebuilder:rbac markers, the slipway-tenant ClusterRole, and (given an
// image) the server's Deployment, Service, PodDisruptionBudget and
// NetworkPolicies. Manifests is what Apply applies, object for object.
package install

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"sort"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// FieldOwner is the server-side apply field manager of everything
// installed, and the value of the app.kubernetes.io/managed-by label.
const FieldOwner = "slipway-install"

// DefaultTimeout bounds Apply and Uninstall when their options give none.
const DefaultTimeout = 2 * time.Minute

// ApplyOptions are Options plus what Apply writes besides the manifests.
type ApplyOptions struct {
	Options
	// WebhookSecret, when set, is written to the Secret WebhookSecretName
	// that the server reads push webhooks' HMAC secret from.
	WebhookSecret []byte
	// RegistryCredentials, when set, are written to the Secret
	// ImagePullSecret names ("slipway-registry" when empty).
	RegistryCredentials *RegistryCredentials
	// Timeout bounds Apply; DefaultTimeout when zero.
	Timeout time.Duration
}

// DefaultPullSecret names the image pull Secret Apply writes from
// RegistryCredentials when Options.ImagePullSecret is empty.
const DefaultPullSecret = "slipway-registry"

// Object names one applied or deleted object.
type Object struct {
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
}

func (o Object) String() string {
	if o.Namespace != "" {
		return fmt.Sprintf("%s/%s/%s", o.Kind, o.Namespace, o.Name)
	}
	return o.Kind + "/" + o.Name
}

func objectOf(u *unstructured.Unstructured) Object {
	return Object{Kind: u.GetKind(), Namespace: u.GetNamespace(), Name: u.GetName()}
}

// Result lists what was applied or deleted, in order.
type Result struct {
	Objects []Object `json:"objects"`
}

// Apply server-side applies Manifests(opts) and the Secrets opts carry
// (idempotent), and waits until the CRDs are Established, so callers can
// create Slipway's resources at once. With an image and no API server
// addresses, it finds them in the cluster.
func Apply(ctx context.Context, c client.Client, opts ApplyOptions) (*Result, error) {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	if opts.RegistryCredentials != nil && opts.ImagePullSecret == "" {
		opts.ImagePullSecret = DefaultPullSecret
	}
	if opts.Image != "" && len(opts.APIServerCIDRs) == 0 {
		cidrs, err := APIServerCIDRs(ctx, c)
		if err != nil {
			return nil, err
		}
		opts.APIServerCIDRs = cidrs
	}
	objs, err := Manifests(opts.Options)
	if err != nil {
		return nil, err
	}
	secrets, err := secrets(opts)
	if err != nil {
		return nil, err
	}
	// The Secrets go in before the Deployment, so its first Pods find them.
	var ordered []*unstructured.Unstructured
	for _, o := range objs {
		if o.GetKind() == "Deployment" {
			ordered = append(ordered, secrets...)
			secrets = nil
		}
		ordered = append(ordered, o)
	}
	ordered = append(ordered, secrets...)

	res := &Result{}
	var crds []string
	for _, o := range ordered {
		if err := c.Patch(ctx, o, client.Apply, client.FieldOwner(FieldOwner), client.ForceOwnership); err != nil {
			// Never the object itself: it may be a Secret.
			return res, fmt.Errorf("applying %s: %w", objectOf(o), err)
		}
		res.Objects = append(res.Objects, objectOf(o))
		if o.GetKind() == "CustomResourceDefinition" {
			crds = append(crds, o.GetName())
		}
	}
	for _, name := range crds {
		if err := waitEstablished(ctx, c, name); err != nil {
			return res, err
		}
	}
	return res, nil
}

// secrets are the Secrets opts carry; never in Manifests.
func secrets(opts ApplyOptions) ([]*unstructured.Unstructured, error) {
	var out []*unstructured.Unstructured
	add := func(name string, typ corev1.SecretType, data map[string][]byte) error {
		u, err := toUnstructured(&corev1.Secret{
			TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
			ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: Namespace, Labels: labels("server")},
			Type:       typ, Data: data,
		})
		if err != nil {
			return errors.New("encoding a Secret")
		}
		out = append(out, u)
		return nil
	}
	if len(opts.WebhookSecret) > 0 {
		if err := add(WebhookSecretName, corev1.SecretTypeOpaque, map[string][]byte{WebhookSecretKey: opts.WebhookSecret}); err != nil {
			return nil, err
		}
	}
	if rc := opts.RegistryCredentials; rc != nil {
		if rc.Server == "" || rc.Username == "" {
			return nil, errors.New("registry credentials need a server and a username")
		}
		auth := base64.StdEncoding.EncodeToString([]byte(rc.Username + ":" + rc.Password))
		cfg, err := json.Marshal(map[string]any{"auths": map[string]any{rc.Server: map[string]string{
			"username": rc.Username, "password": rc.Password, "auth": auth,
		}}})
		if err != nil {
			return nil, errors.New("encoding the registry credentials")
		}
		if err := add(opts.ImagePullSecret, corev1.SecretTypeDockerConfigJson, map[string][]byte{corev1.DockerConfigJsonKey: cfg}); err != nil {
			return nil, err
		}
	}
	return out, nil
}

func waitEstablished(ctx context.Context, c client.Client, name string) error {
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		// Unstructured, so any client's scheme will do.
		crd := &unstructured.Unstructured{}
		crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
		if err := c.Get(ctx, client.ObjectKey{Name: name}, crd); err != nil {
			return false, nil
		}
		conds, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
		for _, raw := range conds {
			cond, _ := raw.(map[string]any)
			if cond["type"] == string(apiextensionsv1.Established) && cond["status"] == string(apiextensionsv1.ConditionTrue) {
				return true, nil
			}
		}
		return false, nil
	})
	if err != nil {
		return fmt.Errorf("waiting for CRD %s to be established: %w", name, err)
	}
	return nil
}

// APIServerCIDRs returns the addresses behind the cluster's `kubernetes`
// Service (default namespace), each as a single-address CIDR: where Pods'
// connections to the API server go once the Service address is translated,
// which is what NetworkPolicies see.
func APIServerCIDRs(ctx context.Context, c client.Reader) ([]string, error) {
	var slices discoveryv1.EndpointSliceList
	if err := c.List(ctx, &slices, client.InNamespace(metav1.NamespaceDefault), client.MatchingLabels{discoveryv1.LabelServiceName: "kubernetes"}); err != nil {
		return nil, fmt.Errorf("finding the API server's addresses (EndpointSlices of Service default/kubernetes): %w; give them with --api-server-cidr", err)
	}
	seen := map[string]bool{}
	for _, s := range slices.Items {
		for _, e := range s.Endpoints {
			for _, a := range e.Addresses {
				if addr, err := netip.ParseAddr(a); err == nil {
					seen[netip.PrefixFrom(addr, addr.BitLen()).String()] = true
				}
			}
		}
	}
	if len(seen) == 0 {
		return nil, errors.New("the Service default/kubernetes has no endpoint addresses, so the API server's cannot be found: give them with --api-server-cidr")
	}
	out := make([]string, 0, len(seen))
	for a := range seen {
		out = append(out, a)
	}
	sort.Strings(out)
	return out, nil
}
