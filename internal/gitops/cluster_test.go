package gitops_test

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/testenv"
)

// TestDeploysToAnotherCluster: an Application whose destination names a
// kubeconfig Secret syncs, repairs drift and prunes in that cluster, not in
// the one Slipway runs in, and its status shows nothing of the credentials.
func TestDeploysToAnotherCluster(t *testing.T) {
	prod, err := testenv.Start()
	if err != nil {
		t.Fatal(err)
	}
	defer prod.Stop()
	ns := env.TenantNamespace(t)
	if err := prod.Client.Create(testCtx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
		t.Fatal(err)
	}
	kubeconfig, err := prod.Kubeconfig()
	if err != nil {
		t.Fatal(err)
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "prod-cluster"}, Data: map[string][]byte{gitops.KubeconfigKey: kubeconfig}}
	if err := env.Client.Create(testCtx, secret); err != nil {
		t.Fatal(err)
	}
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "prod"), "deploy/b.yaml": configMap("extra", "x")})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) {
		a.Spec.Destination.ClusterRef = &slipwayv1.LocalObjectReference{Name: secret.Name}
	})
	got := waitFor(t, app, syncTimeout, readyAtAny)
	inProd := func(name string) (*corev1.ConfigMap, error) {
		cm := &corev1.ConfigMap{}
		return cm, prod.Client.Get(testCtx, client.ObjectKey{Namespace: ns, Name: name}, cm)
	}
	if cm, err := inProd("settings"); err != nil || cm.Data["value"] != "prod" {
		t.Fatalf("the ConfigMap in the destination cluster: %v %+v", err, cm)
	}
	if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
		t.Fatalf("the Application deployed to its own cluster too: %v", err)
	}
	status, _ := json.Marshal(got.Status)
	for _, part := range [][]byte{prod.Config.KeyData, prod.Config.CertData} {
		if len(part) > 80 && strings.Contains(string(status), string(part[40:80])) {
			t.Fatalf("status carries the kubeconfig's credentials: %s", status)
		}
	}

	// Drift there is repaired; a file leaving git is pruned there.
	cm, _ := inProd("settings")
	cm.Data["value"] = "edited in prod"
	if err := prod.Client.Update(testCtx, cm); err != nil {
		t.Fatal(err)
	}
	waitFor(t, app, syncTimeout, func(*slipwayv1.Application) error {
		if cm, err := inProd("settings"); err != nil || cm.Data["value"] != "prod" {
			return fmt.Errorf("drift not repaired: %v %+v", err, cm)
		}
		return nil
	})
	rev := commit(t, url, nil, []string{"deploy/b.yaml"})
	waitFor(t, app, syncTimeout, readyAt(rev))
	if _, err := inProd("extra"); !apierrors.IsNotFound(err) {
		t.Fatalf("an object that left git was not pruned in the destination cluster: %v", err)
	}
}

// TestHostileKubeconfigsRefused: a kubeconfig that would run a program on
// the server, or read the server's own files (its ServiceAccount token, to
// act with its rights), is refused, naming the Secret only.
func TestHostileKubeconfigsRefused(t *testing.T) {
	ns := env.TenantNamespace(t)
	url := newRepo(t, map[string]string{"deploy/a.yaml": configMap("settings", "x")})
	for i, tc := range []struct{ user, cluster, want string }{
		{`{exec: {apiVersion: client.authentication.k8s.io/v1, command: /bin/sh, args: ["-c", "touch /tmp/pwned"], interactiveMode: Never}}`, `{server: "https://127.0.0.1:1"}`, "runs a credential plugin"},
		{`{tokenFile: /var/run/secrets/kubernetes.io/serviceaccount/token}`, `{server: "https://127.0.0.1:1"}`, "names files of the server"},
		{`{token: abc}`, `{server: "https://127.0.0.1:1", certificate-authority: /etc/kubernetes/pki/ca.crt}`, "names files of the server"},
	} {
		kubeconfig := fmt.Sprintf("apiVersion: v1\nkind: Config\nclusters: [{name: c, cluster: %s}]\nusers: [{name: u, user: %s}]\ncontexts: [{name: c, context: {cluster: c, user: u}}]\ncurrent-context: c\n", tc.cluster, tc.user)
		name := fmt.Sprintf("evil-cluster-%d", i)
		secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name}, Data: map[string][]byte{gitops.KubeconfigKey: []byte(kubeconfig)}}
		if err := env.Client.Create(testCtx, secret); err != nil {
			t.Fatal(err)
		}
		app := newApp(t, ns, url, func(a *slipwayv1.Application) {
			a.Name = name
			a.Spec.Destination.ClusterRef = &slipwayv1.LocalObjectReference{Name: secret.Name}
		})
		waitFor(t, app, syncTimeout, stalledWith(gitops.ReasonClusterUnreachable, "Secret "+ns+"/"+name, tc.want))
	}
}
