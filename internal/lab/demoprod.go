package lab

import (
	"context"
	"fmt"
	"strings"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitserver"
)

// ProdCluster is the name of the lab's production cluster, a control plane
// of its own that the demo's prod stage deploys to.
const ProdCluster = "prod"

// ProdStageApp is the Application of tea's prod stage, in the demo namespace
// of the lab's own cluster, deploying into the prod cluster.
const ProdStageApp = "tea-prod"

// prodPath is the ops repository path of tea's prod stage.
const prodPath = "apps-prod/tea"

// prodClusterSecret holds the prod cluster's kubeconfig for the stage.
const prodClusterSecret = "prod-cluster"

// tokenLifetime is how long the prod stage's token lasts; each demo run
// issues a new one.
const tokenLifetime = 7 * 24 * time.Hour

// setUpProdStage makes tea a delivery of two stages: the lab's own cluster
// (where the Pipeline promotes) and the prod cluster, entered only through
// a Promotion a release approver other than its requester and the code's
// authors approves. In the prod cluster a ServiceAccount bound to the
// slipway-tenant role applies the stage, through a kubeconfig Secret with a
// token of its own.
func (l *Lab) setUpProdStage(ctx context.Context, c client.Client, info *Info, auth gitserver.BasicAuth) error {
	prod := info.Cluster(ProdCluster)
	if prod == nil {
		return nil
	}
	pc, _, err := l.Cluster(ProdCluster).Client()
	if err != nil {
		return err
	}
	kubeconfig, err := l.prodKubeconfig(ctx, pc, prod)
	if err != nil {
		return err
	}
	if err := l.pushProdManifests(ctx, info, auth); err != nil {
		return err
	}
	secret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: prodClusterSecret}}
	gitSecret := &slipwayv1.LocalObjectReference{Name: "git"}
	app := &slipwayv1.Application{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: ProdStageApp}}
	delivery := &slipwayv1.Delivery{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: "tea"}}
	for _, step := range []struct {
		obj    client.Object
		mutate func() error
	}{
		{secret, func() error {
			secret.Data = map[string][]byte{gitops.KubeconfigKey: kubeconfig}
			return nil
		}},
		{app, func() error {
			app.Spec = slipwayv1.ApplicationSpec{
				Source:      slipwayv1.ApplicationSource{URL: info.Git.OpsRepo, Ref: slipwayv1.GitRef{Branch: "main"}, Path: prodPath, SecretRef: gitSecret},
				Destination: slipwayv1.ApplicationDestination{Namespace: DemoNamespace, ClusterRef: &slipwayv1.LocalObjectReference{Name: prodClusterSecret}},
				SyncPolicy:  slipwayv1.SyncPolicy{Automated: true, Prune: true, SelfHeal: true},
				Interval:    &metav1.Duration{Duration: 30 * time.Second},
			}
			return nil
		}},
		{delivery, func() error {
			delivery.Spec = slipwayv1.DeliverySpec{Image: "tea", SecretRef: gitSecret, Stages: []slipwayv1.DeliveryStage{
				{Name: "dev", Application: "tea"},
				{Name: ProdCluster, Application: ProdStageApp, Approvals: &slipwayv1.ApprovalRule{Count: 1, Groups: []string{"release-approvers"}}},
			}}
			return nil
		}},
	} {
		if _, err := upsert(ctx, c, step.obj, step.mutate); err != nil {
			return fmt.Errorf("setting up tea's prod stage (%T %s): %w", step.obj, step.obj.GetName(), err)
		}
	}
	l.progress("tea's prod stage deploys to cluster %s (%s) through Promotions", ProdCluster, prod.APIServer)
	return waitApplicationReady(ctx, c, ProdStageApp)
}

// prodKubeconfig sets up the prod cluster's side: the namespace, a
// ServiceAccount bound to slipway-tenant there, and a kubeconfig with a
// fresh token for it.
func (l *Lab) prodKubeconfig(ctx context.Context, pc client.Client, prod *ClusterInfo) ([]byte, error) {
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: DemoNamespace}}
	sa := &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: DemoServiceAccount}}
	binding := &rbacv1.RoleBinding{ObjectMeta: metav1.ObjectMeta{Namespace: DemoNamespace, Name: DemoServiceAccount}}
	for _, step := range []struct {
		obj    client.Object
		mutate func() error
	}{
		{ns, func() error { return nil }},
		{sa, func() error { return nil }},
		{binding, func() error {
			binding.RoleRef = rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-tenant"}
			binding.Subjects = []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: DemoNamespace, Name: DemoServiceAccount}}
			return nil
		}},
	} {
		if _, err := upsert(ctx, pc, step.obj, step.mutate); err != nil {
			return nil, fmt.Errorf("setting up namespace %s in cluster %s (%T %s): %w", DemoNamespace, ProdCluster, step.obj, step.obj.GetName(), err)
		}
	}
	tr := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{ExpirationSeconds: ptr.To(int64(tokenLifetime.Seconds()))}}
	if err := pc.SubResource("token").Create(ctx, sa, tr); err != nil {
		return nil, fmt.Errorf("issuing a token for ServiceAccount %s/%s in cluster %s: %w", DemoNamespace, DemoServiceAccount, ProdCluster, err)
	}
	adminCfg, err := clientcmd.LoadFromFile(prod.Kubeconfig)
	if err != nil {
		return nil, err
	}
	var ca []byte
	for _, cl := range adminCfg.Clusters {
		ca = cl.CertificateAuthorityData
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters[ProdCluster] = &clientcmdapi.Cluster{Server: prod.APIServer, CertificateAuthorityData: ca}
	cfg.AuthInfos[DemoServiceAccount] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts[ProdCluster] = &clientcmdapi.Context{Cluster: ProdCluster, AuthInfo: DemoServiceAccount, Namespace: DemoNamespace}
	cfg.CurrentContext = ProdCluster
	return clientcmd.Write(*cfg)
}

// pushProdManifests adds the prod stage's path to the ops repository: the
// same service as the dev stage, its image written only by Promotions.
func (l *Lab) pushProdManifests(ctx context.Context, info *Info, auth gitserver.BasicAuth) error {
	if commit, err := l.headCommit(info.Git.OpsRepo); err == nil {
		if _, err := commit.File(prodPath + "/kustomization.yaml"); err == nil {
			return nil // a promotion may have written it since
		}
	}
	files, err := demoTree("demo")
	if err != nil {
		return err
	}
	prod := map[string][]byte{}
	for p, content := range files {
		if rest, ok := strings.CutPrefix(p, "apps/tea/"); ok {
			prod[prodPath+"/"+rest] = content
		}
	}
	_, err = l.commit(ctx, info.Git.OpsRepo, auth, prod, "Add tea's prod stage")
	return err
}

// waitApplicationReady waits until the Application of the demo namespace is Ready.
func waitApplicationReady(ctx context.Context, c client.Client, name string) error {
	ctx, cancel := context.WithTimeout(ctx, demoTimeout)
	defer cancel()
	for {
		app := &slipwayv1.Application{}
		err := c.Get(ctx, client.ObjectKey{Namespace: DemoNamespace, Name: name}, app)
		if err == nil && apimeta.IsStatusConditionTrue(app.Status.Conditions, slipwayv1.ConditionReady) {
			return nil
		}
		select {
		case <-ctx.Done():
			msg := "not found"
			if ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady); ready != nil {
				msg = ready.Reason + ": " + ready.Message
			}
			return fmt.Errorf("the Application %s/%s is not Ready within %s: %s", DemoNamespace, name, demoTimeout, msg)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
