package policy_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client/apiutil"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/policy"
	"slipway.dev/slipway/internal/testenv"
)

// One API server serves every test of the package that needs one; it starts
// with the first of them, so that -short runs start none.
var (
	envOnce sync.Once
	env     *testenv.Env
	envErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if env != nil {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stopping the API server:", err)
		}
	}
	os.Exit(code)
}

// apiServer returns the package's API server, starting it if need be.
func apiServer(t *testing.T) *testenv.Env {
	t.Helper()
	if testing.Short() {
		t.Skip("starts etcd and kube-apiserver")
	}
	envOnce.Do(func() { env, envErr = testenv.Start() })
	if envErr != nil {
		t.Fatal(envErr)
	}
	return env
}

// TestBuiltinScopeMatchesDiscovery: the scope BuiltinScope gives every kind
// a v1.34 API server serves is the one the server reports, and the kinds of
// CustomResourceDefinitions (Slipway's own) are left to the cluster, where
// MapperScope finds them.
func TestBuiltinScopeMatchesDiscovery(t *testing.T) {
	env := apiServer(t)
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	lists, err := dc.ServerPreferredResources()
	if err != nil {
		t.Fatal(err)
	}
	httpClient, err := rest.HTTPClientFor(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	mapper, err := apiutil.NewDynamicRESTMapper(env.Config, httpClient)
	if err != nil {
		t.Fatal(err)
	}
	mapperScope := policy.MapperScope(mapper)
	builtins := 0
	for _, list := range lists {
		group, _, _ := strings.Cut(list.GroupVersion, "/")
		if !strings.Contains(list.GroupVersion, "/") {
			group = ""
		}
		for _, r := range list.APIResources {
			if strings.Contains(r.Name, "/") {
				continue // a subresource
			}
			kind := r.Kind
			if group != "" {
				kind += "." + group
			}
			want := policy.ScopeCluster
			if r.Namespaced {
				want = policy.ScopeNamespaced
			}
			if got := mapperScope(kind); got != want {
				t.Errorf("%s: MapperScope %q, the API server says %q", kind, got, want)
			}
			if strings.HasSuffix(group, "slipway.dev") {
				if got := policy.BuiltinScope(kind); got != policy.ScopeUnknown {
					t.Errorf("%s is a CRD's kind, BuiltinScope says %q", kind, got)
				}
				continue
			}
			builtins++
			if got := policy.BuiltinScope(kind); got != want {
				t.Errorf("%s: BuiltinScope %q, the API server says %q", kind, got, want)
			}
		}
	}
	if builtins < 50 {
		t.Errorf("only %d built-in kinds discovered", builtins)
	}
}

// TestPolicyProfileUnchecked: the API server keeps a profile's choice about
// unchecked kinds, defaults it to allow, and refuses a kind not written
// Kind.group or a choice other than allow and refuse.
func TestPolicyProfileUnchecked(t *testing.T) {
	env := apiServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	profile := func(name string, u *slipwayv1.UncheckedKinds) *slipwayv1.PolicyProfile {
		return &slipwayv1.PolicyProfile{ObjectMeta: metav1.ObjectMeta{Name: name}, Spec: slipwayv1.PolicyProfileSpec{Packs: []string{"pss-restricted"}, Unchecked: u}}
	}
	good := profile("unchecked-refuse", &slipwayv1.UncheckedKinds{ClusterScoped: slipwayv1.UncheckedRefuse, Allowed: []string{"Namespace", "StorageClass.storage.k8s.io"}})
	if err := env.Client.Create(ctx, good); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), good) })
	defaulted := profile("unchecked-default", &slipwayv1.UncheckedKinds{})
	if err := env.Client.Create(ctx, defaulted); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = env.Client.Delete(context.Background(), defaulted) })
	if defaulted.Spec.Unchecked.ClusterScoped != slipwayv1.UncheckedAllow {
		t.Errorf("clusterScoped defaulted to %q", defaulted.Spec.Unchecked.ClusterScoped)
	}
	for name, u := range map[string]*slipwayv1.UncheckedKinds{
		"unchecked-resource-name": {Allowed: []string{"storageclasses"}},
		"unchecked-bad-choice":    {ClusterScoped: "ignore"},
	} {
		if err := env.Client.Create(ctx, profile(name, u)); !apierrors.IsInvalid(err) {
			t.Errorf("%s: created, or refused for another reason: %v", name, err)
		}
	}
}
