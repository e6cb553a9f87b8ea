package install

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// UninstallOptions choose what Uninstall removes.
type UninstallOptions struct {
	// CRDs removes the CustomResourceDefinitions, and with them every
	// Application, Pipeline, PipelineRun, Tenant, PolicyProfile and
	// PolicyWaiver in the cluster, and the slipway-tenant ClusterRole.
	// The workloads Applications deployed are left running, unmanaged.
	CRDs bool
	// Timeout bounds Uninstall; DefaultTimeout when zero.
	Timeout time.Duration
}

// CRDWarning is what a user must read before Uninstall with CRDs.
const CRDWarning = "removing the CRDs deletes every Application, Pipeline, PipelineRun, Tenant, PolicyProfile and PolicyWaiver in the cluster (their workloads stay, no longer managed)"

// Uninstall deletes what Apply installed. The server's bindings go first,
// so a replica still running can no longer act; the namespaces last, which
// takes whatever else is in them. Without opts.CRDs the CRDs, every
// Slipway resource and the slipway-tenant ClusterRole tenants' bindings
// name are kept, so a later install finds them again.
func Uninstall(ctx context.Context, c client.Client, opts UninstallOptions) (*Result, error) {
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// Every object an installation with a server can have; only kinds and
	// names matter here.
	all, err := Manifests(Options{Image: "uninstall.invalid/slipway@sha256:" + strings.Repeat("0", 64), APIServerCIDRs: []string{"127.0.0.1"}})
	if err != nil {
		return nil, err
	}
	var bindings, rest, crds []*unstructured.Unstructured
	for _, o := range all {
		switch o.GetKind() {
		case "ClusterRoleBinding", "RoleBinding":
			bindings = append(bindings, o)
		case "CustomResourceDefinition":
			crds = append(crds, o)
		case "ClusterRole":
			if o.GetName() == TenantRole {
				crds = append(crds, o)
				continue
			}
			rest = append(rest, o)
		case "Namespace":
		default:
			rest = append(rest, o)
		}
	}
	slices.Reverse(rest)
	order := append(bindings, rest...)
	for _, name := range []string{WebhookSecretName, DefaultPullSecret} {
		s := &unstructured.Unstructured{}
		s.SetAPIVersion("v1")
		s.SetKind("Secret")
		s.SetNamespace(Namespace)
		s.SetName(name)
		order = append(order, s)
	}
	for _, ns := range []string{RunNamespace, Namespace} {
		n := &unstructured.Unstructured{}
		n.SetAPIVersion("v1")
		n.SetKind("Namespace")
		n.SetName(ns)
		order = append(order, n)
	}

	res := &Result{}
	remove := func(o *unstructured.Unstructured) error {
		err := c.Delete(ctx, o, client.PropagationPolicy(metav1.DeletePropagationBackground))
		switch {
		case apierrors.IsNotFound(err) || apimeta.IsNoMatchError(err):
			return nil
		case err != nil:
			return fmt.Errorf("deleting %s: %w", objectOf(o), err)
		}
		res.Objects = append(res.Objects, objectOf(o))
		return nil
	}
	for _, o := range order {
		if err := remove(o); err != nil {
			return res, err
		}
	}
	if !opts.CRDs {
		return res, nil
	}
	// The server is gone: nothing would remove its finalizer, and deleting
	// the CRD would wait for every Application forever. Without the
	// server, no Application's workloads are pruned.
	if err := releaseApplications(ctx, c); err != nil {
		return res, err
	}
	for _, o := range crds {
		if o.GetKind() == "CustomResourceDefinition" {
			if err := listInstances(ctx, c, o); err != nil {
				return res, err
			}
		}
	}
	for _, o := range crds {
		if err := remove(o); err != nil {
			return res, err
		}
	}
	for _, o := range crds {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		var state string
		err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(o.GroupVersionKind())
			err := c.Get(ctx, client.ObjectKeyFromObject(o), live)
			state = conditions(live)
			return apierrors.IsNotFound(err), nil
		})
		if err != nil {
			return res, fmt.Errorf("waiting for CRD %s to be deleted (%s): %w", o.GetName(), state, err)
		}
	}
	return res, nil
}

// listInstances reads the CRD's resources once through the API server
// before the CRD is deleted. The API server deletes a CRD's resources
// itself, listing them from its watch cache; a cache that no request has
// started yet answers "storage is (re)initializing", and the deletion
// then backs off for minutes. A list first makes it ready.
func listInstances(ctx context.Context, c client.Client, crd *unstructured.Unstructured) error {
	group, _, _ := unstructured.NestedString(crd.Object, "spec", "group")
	kind, _, _ := unstructured.NestedString(crd.Object, "spec", "names", "kind")
	versions, _, _ := unstructured.NestedSlice(crd.Object, "spec", "versions")
	version := ""
	for _, raw := range versions {
		if v, _ := raw.(map[string]any); v["storage"] == true {
			version, _ = v["name"].(string)
		}
	}
	list := &unstructured.UnstructuredList{}
	list.SetAPIVersion(group + "/" + version)
	list.SetKind(kind + "List")
	var last error
	err := wait.PollUntilContextCancel(ctx, 200*time.Millisecond, true, func(ctx context.Context) (bool, error) {
		last = c.List(ctx, list, client.Limit(1))
		return last == nil || apimeta.IsNoMatchError(last) || apierrors.IsNotFound(last), nil
	})
	if err != nil {
		return fmt.Errorf("listing %s before deleting its CRD: %w (last: %v)", kind, err, last)
	}
	return nil
}

// finalizer is the one the Application controller adds.
const finalizer = "slipway.dev/finalizer"

// releaseApplications removes the controller's finalizer from every
// Application.
func releaseApplications(ctx context.Context, c client.Client) error {
	list := &unstructured.UnstructuredList{}
	list.SetGroupVersionKind(slipwayv1.GroupVersion.WithKind("ApplicationList"))
	if err := c.List(ctx, list); err != nil {
		if apimeta.IsNoMatchError(err) || apierrors.IsNotFound(err) {
			return nil
		}
		return fmt.Errorf("listing Applications to release them: %w", err)
	}
	for i := range list.Items {
		app := &list.Items[i]
		if !slices.Contains(app.GetFinalizers(), finalizer) {
			continue
		}
		patch := client.MergeFrom(app.DeepCopy())
		app.SetFinalizers(slices.DeleteFunc(app.GetFinalizers(), func(f string) bool { return f == finalizer }))
		if err := c.Patch(ctx, app, patch); client.IgnoreNotFound(err) != nil {
			return fmt.Errorf("removing the finalizer of Application %s/%s: %w", app.GetNamespace(), app.GetName(), err)
		}
	}
	return nil
}

// conditions summarises an object's status conditions, for messages.
func conditions(o *unstructured.Unstructured) string {
	conds, _, _ := unstructured.NestedSlice(o.Object, "status", "conditions")
	var out []string
	for _, raw := range conds {
		c, _ := raw.(map[string]any)
		out = append(out, fmt.Sprintf("%v=%v %v", c["type"], c["status"], c["message"]))
	}
	return strings.Join(out, "; ")
}
