// Package install applies Slipway's own resources to a cluster: its CRDs,
// the ClusterRole tenants bind to their ServiceAccounts, and the namespace
// its server uses for leader election.
package install

import (
	"context"
	"fmt"
	"io/fs"
	"strings"
	"time"

	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	"slipway.dev/slipway/config"
)

// Namespace is where Slipway's server keeps its leader-election lease.
const Namespace = "slipway-system"

// Result lists what was applied.
type Result struct {
	CRDs         []string `json:"crds"`
	ClusterRoles []string `json:"clusterRoles"`
	Namespace    string   `json:"namespace"`
}

// Apply server-side applies the CRDs and the namespace (idempotent) and
// waits until the CRDs are Established, so callers can create resources at once.
func Apply(ctx context.Context, c client.Client, timeout time.Duration) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res := &Result{Namespace: Namespace}
	objs, err := manifests()
	if err != nil {
		return nil, err
	}
	ns := &unstructured.Unstructured{}
	ns.SetAPIVersion("v1")
	ns.SetKind("Namespace")
	ns.SetName(Namespace)
	objs = append(objs, ns)
	for _, o := range objs {
		if err := c.Patch(ctx, o, client.Apply, client.FieldOwner("slipway-install"), client.ForceOwnership); err != nil {
			return nil, fmt.Errorf("applying %s %s: %w", o.GetKind(), o.GetName(), err)
		}
		switch o.GetKind() {
		case "CustomResourceDefinition":
			res.CRDs = append(res.CRDs, o.GetName())
		case "ClusterRole":
			res.ClusterRoles = append(res.ClusterRoles, o.GetName())
		}
	}
	for _, name := range res.CRDs {
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
			return nil, fmt.Errorf("waiting for CRD %s to be established: %w", name, err)
		}
	}
	return res, nil
}

func manifests() ([]*unstructured.Unstructured, error) {
	var objs []*unstructured.Unstructured
	for dir, files := range map[string]fs.FS{"crd": config.CRDs, "rbac": config.RBAC, "admission": config.Admission} {
		err := fs.WalkDir(files, dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".yaml") {
				return err
			}
			b, err := fs.ReadFile(files, path)
			if err != nil {
				return err
			}
			o := &unstructured.Unstructured{}
			if err := yaml.Unmarshal(b, &o.Object); err != nil {
				return fmt.Errorf("decoding embedded %s: %w", path, err)
			}
			objs = append(objs, o)
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return objs, nil
}
