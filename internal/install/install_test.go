package install_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/testenv"
)

var env *testenv.Env

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	var err error
	// Start installs the definitions through install.Apply already.
	if env, err = testenv.Start(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer env.Stop()
	return m.Run()
}

const image = "registry.example.com/slipway/server@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

func TestManifestsRefuseBadOptions(t *testing.T) {
	cases := map[string]struct {
		opts install.Options
		want string
	}{
		"tag only":             {install.Options{Image: "registry.example.com/slipway/server:v1", APIServerCIDRs: []string{"10.0.0.1"}}, "not pinned by digest"},
		"latest":               {install.Options{Image: "slipway:latest", APIServerCIDRs: []string{"10.0.0.1"}}, "not pinned by digest"},
		"bad digest":           {install.Options{Image: "r.example/s@sha256:abc", APIServerCIDRs: []string{"10.0.0.1"}}, "not pinned by digest"},
		"no API server":        {install.Options{Image: image}, "--api-server-cidr"},
		"bad CIDR":             {install.Options{Image: image, APIServerCIDRs: []string{"10.0.0.1"}, EgressCIDRs: []string{"10.0.0.0/33"}}, "neither an address nor a CIDR"},
		"bad env":              {install.Options{Image: image, APIServerCIDRs: []string{"10.0.0.1"}, Env: []string{"GOPROXY"}}, "KEY=VALUE"},
		"server without image": {install.Options{TestImage: "golang:1.26"}, "need an image"},
		"runner without image": {install.Options{RunnerImage: image}, "need an image"},
		"bad test memory":      {install.Options{Image: image, APIServerCIDRs: []string{"10.0.0.1"}, TestMemory: "lots"}, "test memory"},
		"runner by tag":        {install.Options{Image: image, APIServerCIDRs: []string{"10.0.0.1"}, RunnerImage: "registry.example.com/slipway/runner:v1"}, "runner image"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := install.Manifests(c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("got %v, want an error saying %q", err, c.want)
			}
		})
	}
}

func TestManifestsWithoutImageAreTheDefinitions(t *testing.T) {
	objs, err := install.Manifests(install.Options{})
	if err != nil {
		t.Fatal(err)
	}
	kinds := map[string]int{}
	for _, o := range objs {
		kinds[o.GetKind()]++
	}
	if kinds["CustomResourceDefinition"] != 8 || kinds["Namespace"] != 2 || kinds["ServiceAccount"] != 1 || kinds["ClusterRole"] != 4 ||
		kinds["Role"] != 2 || kinds["ClusterRoleBinding"] != 1 || kinds["RoleBinding"] != 2 ||
		kinds["ValidatingAdmissionPolicy"] != 1 || kinds["ValidatingAdmissionPolicyBinding"] != 1 || kinds["Deployment"] != 0 || kinds["Secret"] != 0 {
		t.Fatalf("kinds %v", kinds)
	}
}

// TestInstallLifecycle installs the server, checks that the cluster holds
// exactly the printed manifests, installs again (nothing changes), then
// uninstalls, first keeping the CRDs and then removing them. It runs last:
// the namespaces it deletes stay Terminating without a namespace
// controller.
func TestInstallLifecycle(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	c := env.Client
	hookSecret := []byte("lifecycle-hook-secret-5f1c")
	registryPassword := "lifecycle-registry-password-9d2e"
	opts := install.ApplyOptions{
		Options:             install.Options{Image: image, Env: []string{"GOPROXY=https://proxy.example.com"}},
		WebhookSecret:       hookSecret,
		RegistryCredentials: &install.RegistryCredentials{Server: "registry.example.com", Username: "puller", Password: registryPassword},
	}

	// The API server's addresses come from the cluster.
	cidrs, err := install.APIServerCIDRs(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if len(cidrs) == 0 || !strings.HasSuffix(cidrs[0], "/32") {
		t.Fatalf("API server CIDRs %v", cidrs)
	}

	res, err := install.Apply(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	printed := opts.Options
	printed.APIServerCIDRs = cidrs
	printed.ImagePullSecret = install.DefaultPullSecret
	want, err := install.Manifests(printed)
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Objects) != len(want)+2 {
		t.Fatalf("applied %d objects, the manifests have %d (+2 Secrets): %v", len(res.Objects), len(want), res.Objects)
	}
	versions := map[string]string{}
	for _, w := range want {
		live := &unstructured.Unstructured{}
		live.SetGroupVersionKind(w.GroupVersionKind())
		if err := c.Get(ctx, client.ObjectKeyFromObject(w), live); err != nil {
			t.Fatalf("%s %s: %v", w.GetKind(), w.GetName(), err)
		}
		if path := missing(viaJSON(t, w.Object), viaJSON(t, live.Object), ""); path != "" {
			t.Errorf("%s %s/%s: the cluster does not hold the printed %s", w.GetKind(), w.GetNamespace(), w.GetName(), path)
		}
		versions[w.GetKind()+"/"+w.GetNamespace()+"/"+w.GetName()] = live.GetResourceVersion()
		if w.GetKind() == "Secret" {
			t.Errorf("Secret %s is among the printed manifests", w.GetName())
		}
	}

	// The Secrets are there, and only there.
	hook := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: install.Namespace, Name: install.WebhookSecretName}, hook); err != nil {
		t.Fatal(err)
	}
	if string(hook.Data[install.WebhookSecretKey]) != string(hookSecret) {
		t.Fatal("the webhook Secret does not hold the secret")
	}
	pull := &corev1.Secret{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: install.Namespace, Name: install.DefaultPullSecret}, pull); err != nil {
		t.Fatal(err)
	}
	var dockercfg struct {
		Auths map[string]struct{ Username, Password string }
	}
	if err := json.Unmarshal(pull.Data[corev1.DockerConfigJsonKey], &dockercfg); err != nil || dockercfg.Auths["registry.example.com"].Password != registryPassword {
		t.Fatalf("pull Secret type %s: %v", pull.Type, err)
	}
	all, _ := json.Marshal(want)
	for _, secret := range []string{string(hookSecret), registryPassword} {
		if strings.Contains(string(all), secret) {
			t.Fatal("a secret is in the printed manifests")
		}
	}

	t.Run("again changes nothing", func(t *testing.T) {
		if _, err := install.Apply(ctx, c, opts); err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(w.GroupVersionKind())
			if err := c.Get(ctx, client.ObjectKeyFromObject(w), live); err != nil {
				t.Fatal(err)
			}
			if key := w.GetKind() + "/" + w.GetNamespace() + "/" + w.GetName(); live.GetResourceVersion() != versions[key] {
				t.Errorf("%s changed on a second install", key)
			}
		}
	})

	// An Application with the controller's finalizer, as a running server
	// leaves it: removing the CRDs would wait for it forever if Uninstall
	// did not release it.
	app := &slipwayv1.Application{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "kept", Finalizers: []string{gitops.Finalizer}},
		Spec: slipwayv1.ApplicationSpec{
			Source:      slipwayv1.ApplicationSource{URL: "https://git.example.com/ops.git"},
			Destination: slipwayv1.ApplicationDestination{Namespace: "default"},
		},
	}
	if err := c.Create(ctx, app); err != nil {
		t.Fatal(err)
	}

	t.Run("uninstall keeps the CRDs", func(t *testing.T) {
		res, err := install.Uninstall(ctx, c, install.UninstallOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if first := res.Objects[0]; first.Kind != "ClusterRoleBinding" {
			t.Errorf("the server's rights are not removed first: %v", res.Objects)
		}
		for _, w := range want {
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(w.GroupVersionKind())
			err := c.Get(ctx, client.ObjectKeyFromObject(w), live)
			switch {
			case w.GetKind() == "CustomResourceDefinition" || w.GetName() == install.TenantRole:
				if err != nil {
					t.Errorf("%s %s removed without --crds: %v", w.GetKind(), w.GetName(), err)
				}
			case w.GetKind() == "Namespace":
				if err == nil && live.GetDeletionTimestamp() == nil {
					t.Errorf("namespace %s is not being deleted", w.GetName())
				}
			case !apierrors.IsNotFound(err):
				t.Errorf("%s %s/%s is still there (%v)", w.GetKind(), w.GetNamespace(), w.GetName(), err)
			}
		}
		if err := c.Get(ctx, client.ObjectKeyFromObject(app), &slipwayv1.Application{}); err != nil {
			t.Fatalf("the Application is gone without --crds: %v", err)
		}
	})

	t.Run("uninstall --crds", func(t *testing.T) {
		if _, err := install.Uninstall(ctx, c, install.UninstallOptions{CRDs: true}); err != nil {
			t.Fatal(err)
		}
		for _, w := range want {
			if w.GetKind() != "CustomResourceDefinition" && w.GetName() != install.TenantRole {
				continue
			}
			live := &unstructured.Unstructured{}
			live.SetGroupVersionKind(w.GroupVersionKind())
			if err := c.Get(ctx, client.ObjectKeyFromObject(w), live); !apierrors.IsNotFound(err) {
				t.Errorf("%s %s is still there (%v)", w.GetKind(), w.GetName(), err)
			}
		}
	})
}

// viaJSON makes numbers comparable: decoded YAML and API responses give
// different Go types for the same number.
func viaJSON(t *testing.T, o map[string]any) any {
	t.Helper()
	b, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	var out any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// missing returns the path of the first field of want that have lacks or
// holds differently; "" when have holds all of want.
func missing(want, have any, path string) string {
	switch w := want.(type) {
	case map[string]any:
		h, ok := have.(map[string]any)
		if !ok {
			return path
		}
		for k, v := range w {
			if p := missing(v, h[k], path+"."+k); p != "" {
				return p
			}
		}
		return ""
	case []any:
		h, ok := have.([]any)
		if !ok || len(h) != len(w) {
			return path
		}
		for i := range w {
			if p := missing(w[i], h[i], fmt.Sprintf("%s[%d]", path, i)); p != "" {
				return p
			}
		}
		return ""
	default:
		if !reflect.DeepEqual(want, have) {
			return fmt.Sprintf("%s (%v, live %v)", path, want, have)
		}
		return ""
	}
}

// TestManifestsPassTheRunnerImage: the server in the cluster is told the
// runner image, so that test Pods check out with it, and the test Pods'
// resources.
func TestManifestsPassTheRunnerImage(t *testing.T) {
	runner := strings.Replace(image, "/server@", "/runner@", 1)
	objs, err := install.Manifests(install.Options{Image: image, RunnerImage: runner, TestCPU: "1", TestMemory: "3Gi", APIServerCIDRs: []string{"10.0.0.1"}})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		if o.GetKind() != "Deployment" {
			continue
		}
		containers, _, _ := unstructured.NestedSlice(o.Object, "spec", "template", "spec", "containers")
		args, _, _ := unstructured.NestedStringSlice(containers[0].(map[string]any), "args")
		for _, want := range []string{"--runner-image=" + runner, "--test-cpu=1", "--test-memory=3Gi"} {
			if !slices.Contains(args, want) {
				t.Fatalf("the server's arguments %v lack %s", args, want)
			}
		}
		return
	}
	t.Fatal("no Deployment among the manifests")
}
