package lab

import (
	"bytes"
	"context"
	"embed"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"text/template"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/wait"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/upstream"
)

//go:embed addons/*.yaml
var addonFiles embed.FS

// Namespaces and names of the add-ons the real-node lab runs.
const (
	IngressNamespace = "traefik"
	IngressService   = "traefik"
	metallbNamespace = "metallb-system"
)

// addonValues fill the add-on manifests' templates.
type addonValues struct {
	CoreDNS, Traefik, ClusterDNS, Pool string
	IngressNodePort                    int
}

// ensureAddons applies CoreDNS, MetalLB (its own manifests from the module
// the binaries were built from, with the lab's images and without its
// admission webhook) and Traefik, and waits until DNS answers, the ingress
// controller is ready on every worker and its Service has an address from
// the pool.
func (l *Lab) ensureAddons(ctx context.Context, st *State) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	start := time.Now()
	values := addonValues{CoreDNS: st.Images[imageCoreDNS], Traefik: st.Images[imageTraefik], ClusterDNS: clusterDNSIP,
		Pool: st.Network.LoadBalancerPool, IngressNodePort: IngressNodePort}
	coredns, err := renderAddon("coredns.yaml", values)
	if err != nil {
		return err
	}
	metallb, err := l.metallbObjects(st)
	if err != nil {
		return err
	}
	pool, err := renderAddon("metallb-pool.yaml", values)
	if err != nil {
		return err
	}
	traefik, err := renderAddon("traefik.yaml", values)
	if err != nil {
		return err
	}
	if err := applyAll(ctx, c, coredns); err != nil {
		return fmt.Errorf("applying CoreDNS: %w", err)
	}
	if err := applyAll(ctx, c, metallb); err != nil {
		return fmt.Errorf("applying MetalLB: %w", err)
	}
	if err := waitCRDsEstablished(ctx, c, metallb); err != nil {
		return err
	}
	if err := applyAll(ctx, c, pool); err != nil {
		return fmt.Errorf("applying MetalLB's address pool: %w", err)
	}
	if err := applyAll(ctx, c, traefik); err != nil {
		return fmt.Errorf("applying Traefik: %w", err)
	}
	waits := []struct {
		what  string
		ready func(context.Context) (bool, error)
	}{
		{"CoreDNS", deploymentAvailable(c, "kube-system", "coredns")},
		{"MetalLB's controller", deploymentAvailable(c, metallbNamespace, "controller")},
		{"MetalLB's speakers", daemonSetReady(c, metallbNamespace, "speaker", len(st.Network.Nodes))},
		{"Traefik", daemonSetReady(c, IngressNamespace, "traefik", len(st.Network.Nodes))},
		{"an address for Traefik's LoadBalancer Service", func(ctx context.Context) (bool, error) {
			var svc corev1.Service
			if err := c.Get(ctx, client.ObjectKey{Namespace: IngressNamespace, Name: IngressService}, &svc); err != nil {
				return false, nil
			}
			return len(svc.Status.LoadBalancer.Ingress) > 0, nil
		}},
	}
	for _, w := range waits {
		if err := wait.PollUntilContextTimeout(ctx, 500*time.Millisecond, 3*time.Minute, true, w.ready); err != nil {
			return fmt.Errorf("waiting for %s (see `kubectl get pods -A -o wide` with --kubeconfig %s): %w", w.what, l.Kubeconfig(), err)
		}
	}
	l.progress("CoreDNS, MetalLB and Traefik ready in %.1fs", time.Since(start).Seconds())
	return nil
}

func renderAddon(file string, values addonValues) ([]*unstructured.Unstructured, error) {
	src, err := addonFiles.ReadFile("addons/" + file)
	if err != nil {
		return nil, err
	}
	t, err := template.New(file).Option("missingkey=error").Parse(string(src))
	if err != nil {
		return nil, fmt.Errorf("parsing add-on %s: %w", file, err)
	}
	var out bytes.Buffer
	if err := t.Execute(&out, values); err != nil {
		return nil, fmt.Errorf("rendering add-on %s: %w", file, err)
	}
	return decodeObjects(file, out.Bytes())
}

func decodeObjects(source string, data []byte) ([]*unstructured.Unstructured, error) {
	dec := utilyaml.NewYAMLOrJSONDecoder(bytes.NewReader(data), 4096)
	var objs []*unstructured.Unstructured
	for {
		u := &unstructured.Unstructured{}
		if err := dec.Decode(&u.Object); err != nil {
			if errors.Is(err, io.EOF) {
				return objs, nil
			}
			return nil, fmt.Errorf("decoding %s: %w", source, err)
		}
		if len(u.Object) > 0 {
			objs = append(objs, u)
		}
	}
}

// metallbObjects are MetalLB's native-mode manifests with the lab's images.
// The lab runs the controller without its validating webhook (whose
// certificates it would otherwise have to rotate), so the webhook's
// configuration is left out, and probes its pods every 2 seconds from the
// start instead of every 10 after 10: `lab up` waits for them.
func (l *Lab) metallbObjects(st *State) ([]*unstructured.Unstructured, error) {
	path := filepath.Join(upstream.NodeBinDir(), upstream.MetalLBManifests)
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading MetalLB's manifests: %w", err)
	}
	objs, err := decodeObjects(path, data)
	if err != nil {
		return nil, err
	}
	var out []*unstructured.Unstructured
	for _, o := range objs {
		switch {
		case o.GetKind() == "ValidatingWebhookConfiguration":
			continue
		case o.GetKind() == "Deployment" && o.GetName() == "controller":
			if err := setContainer(o, "controller", st.Images[imageMetalLBController], "--webhook-mode=disabled"); err != nil {
				return nil, err
			}
		case o.GetKind() == "DaemonSet" && o.GetName() == "speaker":
			if err := setContainer(o, "speaker", st.Images[imageMetalLBSpeaker]); err != nil {
				return nil, err
			}
		}
		out = append(out, o)
	}
	return out, nil
}

// setContainer sets the image of a workload's container, appends args and
// makes its readiness probe start at once and repeat every 2 seconds.
func setContainer(o *unstructured.Unstructured, name, image string, args ...string) error {
	containers, _, err := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
	if err != nil {
		return err
	}
	found := false
	for i, raw := range containers {
		ctr, ok := raw.(map[string]any)
		if !ok || ctr["name"] != name {
			continue
		}
		found = true
		ctr["image"] = image
		existing, _, _ := unstructured.NestedStringSlice(ctr, "args")
		if err := unstructured.SetNestedStringSlice(ctr, append(existing, args...), "args"); err != nil {
			return err
		}
		if probe, ok := ctr["readinessProbe"].(map[string]any); ok {
			probe["initialDelaySeconds"], probe["periodSeconds"] = int64(0), int64(2)
		}
		containers[i] = ctr
	}
	if !found {
		return fmt.Errorf("%s %s has no container %s", o.GetKind(), o.GetName(), name)
	}
	return unstructured.SetNestedSlice(o.Object, containers, "spec", "template", "spec", "containers")
}

// applyAll server-side applies objects in order, as the lab's field manager.
func applyAll(ctx context.Context, c client.Client, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		o = o.DeepCopy()
		o.SetManagedFields(nil)
		applyCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.Patch(applyCtx, o, client.Apply, client.FieldOwner("slipway-lab"), client.ForceOwnership)
		cancel()
		if err != nil {
			return fmt.Errorf("%s %s/%s: %w", o.GetKind(), o.GetNamespace(), o.GetName(), err)
		}
	}
	return nil
}

func waitCRDsEstablished(ctx context.Context, c client.Client, objs []*unstructured.Unstructured) error {
	for _, o := range objs {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		var last error
		err := wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, time.Minute, true, func(ctx context.Context) (bool, error) {
			// Unstructured: the lab's client scheme does not know CRDs.
			crd := &unstructured.Unstructured{}
			crd.SetGroupVersionKind(apiextensionsv1.SchemeGroupVersion.WithKind("CustomResourceDefinition"))
			if last = c.Get(ctx, client.ObjectKey{Name: o.GetName()}, crd); last != nil {
				return false, nil
			}
			conditions, _, _ := unstructured.NestedSlice(crd.Object, "status", "conditions")
			for _, raw := range conditions {
				if cond, ok := raw.(map[string]any); ok && cond["type"] == string(apiextensionsv1.Established) && cond["status"] == "True" {
					return true, nil
				}
			}
			return false, nil
		})
		if err != nil {
			return fmt.Errorf("CRD %s not established within 1m: %w (last error: %v)", o.GetName(), err, last)
		}
	}
	return nil
}

func deploymentAvailable(c client.Client, ns, name string) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		var d appsv1.Deployment
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
			return false, nil
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		return d.Status.ObservedGeneration >= d.Generation && d.Status.UpdatedReplicas == want && d.Status.AvailableReplicas == want, nil
	}
}

func daemonSetReady(c client.Client, ns, name string, nodes int) func(context.Context) (bool, error) {
	return func(ctx context.Context) (bool, error) {
		var ds appsv1.DaemonSet
		if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, &ds); err != nil {
			return false, nil
		}
		return ds.Status.ObservedGeneration >= ds.Generation && ds.Status.UpdatedNumberScheduled >= int32(nodes) &&
			ds.Status.NumberReady >= int32(nodes) && ds.Status.NumberUnavailable == 0, nil
	}
}
