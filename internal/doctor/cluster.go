package doctor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/config"
	"slipway.dev/slipway/internal/version"
)

// scheme holds what the checks read.
func scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, slipwayv1.AddToScheme, apiextensionsv1.AddToScheme} {
		if err := add(s); err != nil {
			panic(err)
		}
	}
	return s
}

// client is the run's client, made once: each new one would discover the
// API server's resources again.
func (r *run) client() (client.Client, error) {
	r.clientOnce.Do(func() { r.c, r.clientErr = client.New(r.Config, client.Options{Scheme: scheme()}) })
	return r.c, r.clientErr
}

// supportedMinors are the Kubernetes minor versions Slipway is built and
// tested against, and one on each side (client-go's supported skew).
func supportedMinors() (lowest, highest int) {
	v := strings.TrimPrefix(version.Kubernetes, "v")
	parts := strings.Split(v, ".")
	minor, _ := strconv.Atoi(parts[1])
	return minor - 1, minor + 1
}

// checkCluster reaches the API server as the kubeconfig says, and reads
// its version (and its clock).
func checkCluster(ctx context.Context, r *run) []Result {
	target := r.Config.Host
	return []Result{step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "cluster", Target: target}
		hc, err := rest.HTTPClientFor(r.Config)
		if err != nil {
			res.Status, res.Message, res.Action = Fail, "the kubeconfig cannot be used: "+err.Error(), "fix the kubeconfig (--kubeconfig, --context)"
			return res
		}
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(r.Config.Host, "/")+"/version", nil)
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		sent := time.Now()
		resp, err := hc.Do(req)
		if err != nil {
			res.Status, res.Message = Fail, cause(ctx, err, "the API server", r.StepTimeout)
			res.Action = "check the kubeconfig's server address and that the API server runs; from a machine outside the network, the route or VPN to it"
			return res
		}
		defer resp.Body.Close()
		r.readClock("the API server "+target, resp.Header.Get("Date"), sent, time.Now())
		switch resp.StatusCode {
		case http.StatusOK:
		case http.StatusUnauthorized:
			res.Status, res.Message, res.Action = Fail, "the API server refused the kubeconfig's credentials (HTTP 401)", "renew the credentials of the kubeconfig's user"
			return res
		default:
			res.Status, res.Message, res.Action = Fail, "the API server answered "+resp.Status+" to GET /version", "see the API server's log"
			return res
		}
		var v struct{ GitVersion, Major, Minor string }
		if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&v); err != nil {
			res.Status, res.Message = Fail, "the API server's /version is not JSON: "+err.Error()
			return res
		}
		lowest, highest := supportedMinors()
		minor, _ := strconv.Atoi(strings.TrimRight(v.Minor, "+"))
		if v.Major != "1" || minor < lowest || minor > highest {
			res.Status = Warn
			res.Message = fmt.Sprintf("Kubernetes %s: Slipway is tested with %s and supports 1.%d to 1.%d", v.GitVersion, version.Kubernetes, lowest, highest)
			res.Action = "upgrade the cluster, or use a Slipway built for it"
			return res
		}
		res.Status, res.Message = Pass, fmt.Sprintf("reachable, Kubernetes %s (supported: 1.%d to 1.%d)", v.GitVersion, lowest, highest)
		return res
	})}
}

// checkCRDs compares the installed CustomResourceDefinitions with the ones
// this build ships: present, established and with the same schemas.
func checkCRDs(ctx context.Context, r *run) []Result {
	var out []Result
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "crds", Status: Pass}
		c, err := r.client()
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		want, err := embeddedCRDs()
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		var names []string
		for _, crd := range want {
			names = append(names, crd.Name)
			problem := crdProblem(ctx, c, crd)
			if problem == "" {
				continue
			}
			if ctx.Err() != nil {
				res.Status, res.Message = Fail, cause(ctx, ctx.Err(), "reading the CRDs", r.StepTimeout)
				return res
			}
			out = append(out, Result{Check: "crds", Target: crd.Name, Status: Fail, Message: problem,
				Action: "run `slipway install` with the slipway of the server's version: it applies the CRDs this build ships"})
		}
		res.Target = fmt.Sprintf("%d CRDs", len(want))
		if len(out) > 0 {
			res.Status, res.Message = Fail, fmt.Sprintf("%d of %d of Slipway's CRDs are missing or differ from this build's", len(out), len(want))
			res.Action = "see the lines below"
			return res
		}
		res.Message = "installed, established and the same as this build's: " + strings.Join(names, ", ")
		return res
	})
	if res.Status == Pass {
		return []Result{res}
	}
	for i := range out {
		out[i].Duration, out[i].Deadline = res.Duration, res.Deadline
	}
	if len(out) > 0 {
		return out
	}
	return []Result{res}
}

func embeddedCRDs() ([]*apiextensionsv1.CustomResourceDefinition, error) {
	entries, err := fs.ReadDir(config.CRDs, "crd")
	if err != nil {
		return nil, err
	}
	var out []*apiextensionsv1.CustomResourceDefinition
	for _, e := range entries {
		b, err := fs.ReadFile(config.CRDs, "crd/"+e.Name())
		if err != nil {
			return nil, err
		}
		crd := &apiextensionsv1.CustomResourceDefinition{}
		if err := yaml.Unmarshal(b, crd); err != nil {
			return nil, fmt.Errorf("reading the embedded CRD %s: %w", e.Name(), err)
		}
		out = append(out, crd)
	}
	return out, nil
}

// crdProblem says what is wrong with the installed copy of want, or "".
func crdProblem(ctx context.Context, c client.Client, want *apiextensionsv1.CustomResourceDefinition) string {
	got := &apiextensionsv1.CustomResourceDefinition{}
	if err := c.Get(ctx, client.ObjectKey{Name: want.Name}, got); err != nil {
		if apierrors.IsNotFound(err) {
			return "not installed: the " + want.Spec.Names.Kind + " objects cannot exist and the server's controllers fail"
		}
		return "cannot be read: " + err.Error()
	}
	if !got.DeletionTimestamp.IsZero() {
		return "being deleted: its " + got.Spec.Names.Kind + " objects are going with it"
	}
	established := false
	for _, cond := range got.Status.Conditions {
		if cond.Type == apiextensionsv1.Established && cond.Status == apiextensionsv1.ConditionTrue {
			established = true
		}
	}
	if !established {
		return "installed but not established: the API server does not serve it yet"
	}
	for _, v := range want.Spec.Versions {
		i := -1
		for j := range got.Spec.Versions {
			if got.Spec.Versions[j].Name == v.Name {
				i = j
			}
		}
		if i < 0 {
			return "installed without version " + v.Name + ", which this build uses"
		}
		g := got.Spec.Versions[i]
		if g.Served != v.Served || g.Storage != v.Storage || !equality.Semantic.DeepEqual(g.Schema, v.Schema) {
			return "version " + v.Name + " differs from this build's (an older or newer install): fields this build writes may be dropped or refused"
		}
	}
	return ""
}

// permission is one right of the server's generated roles.
type permission struct {
	attrs authorizationv1.ResourceAttributes
	role  string
}

func (p permission) String() string {
	resource := p.attrs.Resource
	if p.attrs.Subresource != "" {
		resource += "/" + p.attrs.Subresource
	}
	if p.attrs.Group != "" {
		resource += "." + p.attrs.Group
	}
	if p.attrs.Name != "" {
		resource += " " + p.attrs.Name
	}
	where := "cluster-wide"
	if p.attrs.Namespace != "" {
		where = "in " + p.attrs.Namespace
	}
	return p.attrs.Verb + " " + resource + " " + where
}

// serverPermissions reads every right of the roles generated for the server
// (config/rbac/slipway-server.yaml).
func serverPermissions() ([]permission, error) {
	b, err := fs.ReadFile(config.RBAC, "rbac/slipway-server.yaml")
	if err != nil {
		return nil, fmt.Errorf("this build ships no server role: %w", err)
	}
	dec := utilyaml.NewYAMLOrJSONDecoder(strings.NewReader(string(b)), 4096)
	var out []permission
	for {
		var role struct {
			Kind     string
			Metadata struct{ Name, Namespace string }
			Rules    []rbacv1.PolicyRule
		}
		if err := dec.Decode(&role); errors.Is(err, io.EOF) {
			break
		} else if err != nil {
			return nil, fmt.Errorf("reading the server's role: %w", err)
		}
		if role.Kind == "" {
			continue
		}
		for _, rule := range role.Rules {
			names := rule.ResourceNames
			if len(names) == 0 {
				names = []string{""}
			}
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					resource, sub, _ := strings.Cut(res, "/")
					for _, verb := range rule.Verbs {
						for _, n := range names {
							out = append(out, permission{role: role.Kind + " " + role.Metadata.Name, attrs: authorizationv1.ResourceAttributes{
								Namespace: role.Metadata.Namespace, Verb: verb, Group: g, Resource: resource, Subresource: sub, Name: n,
							}})
						}
					}
				}
			}
		}
	}
	return out, nil
}

// checkRBAC asks the API server, as the server's identity (impersonated),
// whether it may do each thing its generated roles grant: a
// SelfSubjectAccessReview per right.
func checkRBAC(ctx context.Context, r *run) []Result {
	deadline := 2 * r.StepTimeout
	return []Result{step(ctx, deadline, func(ctx context.Context) Result {
		res := Result{Check: "rbac", Target: r.ServerIdentity}
		perms, err := serverPermissions()
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		cfg := rest.CopyConfig(r.Config)
		cfg.Impersonate = rest.ImpersonationConfig{UserName: r.ServerIdentity}
		// One review per right, a few dozen at once: the default client
		// rate (5 per second) would make them wait on each other.
		cfg.QPS, cfg.Burst = 100, 100
		cs, err := kubernetes.NewForConfig(cfg)
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		var (
			mu       sync.Mutex
			missing  []string
			firstErr error
			wg       sync.WaitGroup
			slots    = make(chan struct{}, 8)
		)
		for _, p := range perms {
			wg.Add(1)
			slots <- struct{}{}
			go func() {
				defer wg.Done()
				defer func() { <-slots }()
				attrs := p.attrs
				review, err := cs.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
					&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: &attrs}}, metav1.CreateOptions{})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err != nil:
					if firstErr == nil {
						firstErr = err
					}
				case !review.Status.Allowed:
					missing = append(missing, p.String())
				}
			}()
		}
		wg.Wait()
		switch {
		case apierrors.IsForbidden(firstErr):
			res.Status = Warn
			res.Message = "cannot ask: the caller may not impersonate " + r.ServerIdentity
			res.Action = "run slipway doctor as a cluster administrator (it impersonates the server's ServiceAccount), or give --server-identity"
		case firstErr != nil:
			res.Status, res.Message = Fail, cause(ctx, firstErr, "asking the API server about the server's rights", deadline)
			res.Action = "see the cluster check"
		case len(missing) == len(perms):
			res.Status = Fail
			res.Message = fmt.Sprintf("has none of the %d rights its roles grant: its roles or bindings are not installed", len(perms))
			res.Action = "run `slipway install`: it creates the server's ServiceAccount, roles and bindings"
		case len(missing) > 0:
			sort.Strings(missing)
			res.Status = Fail
			res.Message = fmt.Sprintf("lacks %d of the %d rights its generated roles grant: %s", len(missing), len(perms), joinLimited(missing, 8))
			res.Action = "run `slipway install` to restore the roles and bindings (config/rbac/slipway-server.yaml), or restore the right by hand"
		default:
			res.Status, res.Message = Pass, fmt.Sprintf("has every one of the %d rights its generated roles grant", len(perms))
		}
		return res
	})}
}

// checkNodes reports the nodes' readiness and, on nodes with a kubelet,
// the CNI's.
func checkNodes(ctx context.Context, r *run) []Result {
	var extra []Result
	res := step(ctx, r.StepTimeout, func(ctx context.Context) Result {
		res := Result{Check: "nodes"}
		c, err := r.client()
		if err != nil {
			res.Status, res.Message = Fail, err.Error()
			return res
		}
		var nodes corev1.NodeList
		if err := c.List(ctx, &nodes); err != nil {
			res.Status, res.Message = Fail, cause(ctx, err, "listing the nodes", r.StepTimeout)
			return res
		}
		if len(nodes.Items) == 0 {
			res.Status, res.Message, res.Action = Warn, "the cluster has no nodes: nothing can run", "add nodes"
			return res
		}
		simulated, real := 0, 0
		for _, n := range nodes.Items {
			_, isSimulated := n.Annotations["kwok.x-k8s.io/node"]
			if isSimulated {
				simulated++
			} else {
				real++
			}
			if msg := nodeProblem(&n, !isSimulated); msg != "" {
				extra = append(extra, Result{Check: "nodes", Target: n.Name, Status: Fail, Message: msg,
					Action: "on the node: `journalctl -u kubelet` (or the kubelet's log) and the CNI's configuration in /etc/cni/net.d"})
			}
		}
		if len(extra) > 0 {
			res.Status, res.Message = Fail, fmt.Sprintf("%d of %s not ready", len(extra), plural(len(nodes.Items), "node", "nodes"))
			res.Action = "see the lines below"
			return res
		}
		res.Status = Pass
		res.Message = fmt.Sprintf("%s Ready", plural(len(nodes.Items), "node", "nodes"))
		switch {
		case simulated > 0 && real == 0:
			res.Message += " (simulated by KWOK: no kubelet, no CNI to check)"
		case real > 0:
			res.Message += fmt.Sprintf("; the CNI of %s is ready", plural(real, "node", "nodes"))
			if simulated > 0 {
				res.Message += fmt.Sprintf(" (%d simulated)", simulated)
			}
		}
		return res
	})
	for i := range extra {
		extra[i].Duration, extra[i].Deadline = res.Duration, res.Deadline
	}
	return append([]Result{res}, extra...)
}

// nodeProblem says why a node is not ready, naming the CNI when the
// kubelet blames the network.
func nodeProblem(n *corev1.Node, hasKubelet bool) string {
	var ready *corev1.NodeCondition
	for i, c := range n.Status.Conditions {
		switch c.Type {
		case corev1.NodeReady:
			ready = &n.Status.Conditions[i]
		case corev1.NodeNetworkUnavailable:
			if c.Status == corev1.ConditionTrue {
				return "its network is unavailable (" + c.Reason + "): " + c.Message
			}
		}
	}
	switch {
	case ready == nil:
		return "it reports no Ready condition: its kubelet never registered"
	case ready.Status == corev1.ConditionTrue:
		return ""
	case hasKubelet && (strings.Contains(strings.ToLower(ready.Message), "cni") || strings.Contains(strings.ToLower(ready.Message), "network plugin")):
		return "the CNI is not ready: " + ready.Message
	}
	return fmt.Sprintf("not Ready (%s) since %s: %s", ready.Reason, ready.LastTransitionTime.UTC().Format(time.RFC3339), ready.Message)
}
