package gitops

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/transport"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// AdoptAnnotation, set on a live object to "NAMESPACE/NAME" of an
// Application, hands the object over to that Application. Without it, an
// object that exists and is not the Application's is never changed, taken
// over or pruned: whoever owns the live object decides to give it away.
const AdoptAnnotation = "slipway.dev/adopt"

// ReasonTenancyViolation is the Ready reason when an Application asks for
// what its tenancy does not allow (an object in a namespace it may not
// deploy to, a cluster-scoped kind, another owner's object).
const ReasonTenancyViolation = "TenancyViolation"

// ReasonForbidden is the Ready reason when the Kubernetes API refuses the
// Application's ServiceAccount.
const ReasonForbidden = "Forbidden"

// Tenancy is what one Application may do, from its namespace's Tenant or
// the server's defaults.
type Tenancy struct {
	// Tenant names the Tenant that governs the namespace; empty for the
	// server's defaults.
	Tenant string
	// ServiceAccount is the ServiceAccount of the Application's namespace
	// that applies; empty with ServerRights.
	ServiceAccount string
	// ServerRights applies with the server's own identity.
	ServerRights bool
	// Destinations are the namespaces objects may land in.
	Destinations []string
	// ClusterResources are the cluster-scoped kinds allowed.
	ClusterResources []metav1.GroupKind
	// PolicyProfile is the administrator's profile for the namespace; empty
	// means the "default" profile, when it exists.
	PolicyProfile string
}

// Identity describes who applies, for messages.
func (t *Tenancy) Identity(namespace string) string {
	if t.ServerRights {
		return "slipway server's own identity (Tenant " + t.Tenant + " grants server rights)"
	}
	return fmt.Sprintf("ServiceAccount %s/%s", namespace, t.ServiceAccount)
}

// TenancyFor resolves the tenancy of app: the Tenant naming its namespace,
// if any, else defaultServiceAccount with the Application's own namespace as
// its only destination.
func TenancyFor(ctx context.Context, c client.Reader, app *slipwayv1.Application, defaultServiceAccount string) (*Tenancy, error) {
	var tenants slipwayv1.TenantList
	if err := c.List(ctx, &tenants); err != nil {
		return nil, fmt.Errorf("listing Tenants: %w", err)
	}
	var mine []*slipwayv1.Tenant
	for i := range tenants.Items {
		if slices.Contains(tenants.Items[i].Spec.Namespaces, app.Namespace) {
			mine = append(mine, &tenants.Items[i])
		}
	}
	t := &Tenancy{Destinations: []string{app.Namespace}, ServiceAccount: defaultServiceAccount}
	switch len(mine) {
	case 0:
	case 1:
		spec := mine[0].Spec
		t.Tenant = mine[0].Name
		t.ServerRights = spec.ServerRights
		if spec.ServiceAccountName != "" {
			t.ServiceAccount = spec.ServiceAccountName
		}
		t.Destinations = append(t.Destinations, spec.Destinations...)
		t.ClusterResources = spec.ClusterResources
		t.PolicyProfile = spec.PolicyProfile
	default:
		names := make([]string, len(mine))
		for i, m := range mine {
			names[i] = m.Name
		}
		return nil, stalled(ReasonTenancyViolation, fmt.Errorf("namespace %s is claimed by Tenants %s: a cluster administrator must leave it in one",
			app.Namespace, strings.Join(names, ", ")))
	}
	if app.Spec.ServiceAccountName != "" {
		t.ServiceAccount = app.Spec.ServiceAccountName
	}
	if t.ServerRights {
		t.ServiceAccount = ""
	} else if t.ServiceAccount == "" {
		return nil, stalled(ReasonTenancyViolation, fmt.Errorf(
			"no ServiceAccount to apply as: set spec.serviceAccountName to a ServiceAccount of namespace %s that RBAC allows to manage the Application's objects, or ask a cluster administrator for a Tenant naming one",
			app.Namespace))
	}
	return t, nil
}

// CheckPlacement refuses objects outside what the tenancy allows: the
// destination, namespaced objects elsewhere than the allowed namespaces,
// and cluster-scoped kinds not granted. It names the file of each object.
func (t *Tenancy) CheckPlacement(app *slipwayv1.Application, desired *Desired) error {
	if dest := app.Spec.Destination.Namespace; !slices.Contains(t.Destinations, dest) {
		return stalled(ReasonTenancyViolation, fmt.Errorf("destination namespace %s is not allowed: Applications of namespace %s may deploy to %s%s",
			dest, app.Namespace, strings.Join(t.Destinations, ", "), t.grantedBy()))
	}
	var problems []string
	for _, o := range desired.Objects {
		where := desired.Sources[objectID(o)]
		if where != "" {
			where += ": "
		}
		switch ns := o.GetNamespace(); {
		case ns == "" && !t.allowsClusterKind(o):
			problems = append(problems, fmt.Sprintf("%scluster-scoped %s is not allowed%s", where, describe(o), t.grantedBy()))
		case ns != "" && !slices.Contains(t.Destinations, ns):
			problems = append(problems, fmt.Sprintf("%s%s is in namespace %s, outside the allowed %s", where, describe(o), ns, strings.Join(t.Destinations, ", ")))
		}
	}
	if len(problems) > 0 {
		return stalled(ReasonTenancyViolation, fmt.Errorf("revision refused: %s", joinLimited(problems, 5)))
	}
	return nil
}

func (t *Tenancy) grantedBy() string {
	if t.Tenant == "" {
		return " (no Tenant names this namespace)"
	}
	return " (Tenant " + t.Tenant + ")"
}

func (t *Tenancy) allowsClusterKind(o *unstructured.Unstructured) bool {
	gk := o.GroupVersionKind().GroupKind()
	for _, allowed := range t.ClusterResources {
		if (allowed.Group == "*" || allowed.Group == gk.Group) && (allowed.Kind == "*" || allowed.Kind == gk.Kind) {
			return true
		}
	}
	return false
}

// checkOwnership refuses to apply over live objects that are not the
// Application's: owned by another Application, or created by anyone else,
// unless the live object carries AdoptAnnotation naming this Application.
// Objects already in the inventory were applied by this Application, so
// only new entries are read.
func checkOwnership(ctx context.Context, c client.Reader, identity string, app *slipwayv1.Application, objs []*unstructured.Unstructured) error {
	known := map[string]bool{}
	for _, e := range app.Status.Inventory {
		known[e.ID] = true
	}
	mine := resourceManager(nil, nil).GetOwnerLabels(app.Name, app.Namespace)
	self := app.Namespace + "/" + app.Name
	var problems []string
	for _, o := range objs {
		if known[objectID(o)] {
			continue
		}
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(o.GroupVersionKind())
		err := c.Get(ctx, client.ObjectKeyFromObject(o), live)
		if apierrors.IsNotFound(err) || apimeta.IsNoMatchError(err) {
			continue // created by this sync (or by a CRD of this revision)
		}
		if err != nil {
			return forbiddenStalled(fmt.Errorf("reading %s as %s to check who owns it: %w", describe(o), identity, err))
		}
		if ownedBy(live, mine) || live.GetAnnotations()[AdoptAnnotation] == self {
			continue
		}
		held := "not created by Slipway"
		labels := live.GetLabels()
		if name := labels[owner.Group+"/name"]; name != "" {
			held = fmt.Sprintf("owned by Application %s/%s", labels[owner.Group+"/namespace"], name)
		}
		problems = append(problems, fmt.Sprintf("%s already exists, %s", describe(o), held))
	}
	if len(problems) > 0 {
		return stalled(ReasonTenancyViolation, fmt.Errorf("%s; to hand an object over, annotate it %s=%s",
			joinLimited(problems, 5), AdoptAnnotation, self))
	}
	return nil
}

// forbiddenStalled turns the API server's refusal of the Application's
// identity into a stalled error: retrying cannot help until a cluster
// administrator changes RBAC or the Tenant, which is a spec-level change.
func forbiddenStalled(err error) error {
	if apierrors.IsForbidden(err) {
		return stalled(ReasonForbidden, err)
	}
	return err
}

// applyTimeout bounds each API request made as an Application's
// ServiceAccount.
const applyTimeout = time.Minute

// Impersonator gives clients that act as a ServiceAccount, sharing the
// server's connection pool and RESTMapper.
type Impersonator struct {
	config *rest.Config
	scheme *runtime.Scheme
	mapper apimeta.RESTMapper
	base   http.RoundTripper

	mu      sync.Mutex
	clients map[string]client.Client
}

// NewImpersonator prepares clients from the server's config.
func NewImpersonator(cfg *rest.Config, scheme *runtime.Scheme, mapper apimeta.RESTMapper) (*Impersonator, error) {
	base, err := rest.TransportFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("building the API transport for impersonation: %w", err)
	}
	return &Impersonator{config: cfg, scheme: scheme, mapper: mapper, base: base, clients: map[string]client.Client{}}, nil
}

// ServiceAccount returns a client that acts as namespace/name. The API
// server adds the ServiceAccount's groups itself.
func (im *Impersonator) ServiceAccount(namespace, name string) (client.Client, error) {
	user := "system:serviceaccount:" + namespace + ":" + name
	im.mu.Lock()
	defer im.mu.Unlock()
	if c, ok := im.clients[user]; ok {
		return c, nil
	}
	// These clients never watch: every request can have a deadline.
	hc := &http.Client{Timeout: applyTimeout, Transport: transport.NewImpersonatingRoundTripper(transport.ImpersonationConfig{UserName: user}, im.base)}
	c, err := client.New(im.config, client.Options{HTTPClient: hc, Scheme: im.scheme, Mapper: im.mapper})
	if err != nil {
		return nil, fmt.Errorf("creating a client acting as %s: %w", user, err)
	}
	im.clients[user] = c
	return c, nil
}
