package gitops_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
)

// TestImageVerificationGate: with a profile that verifies images, a
// revision running an unsigned image, one signed by another key, or one
// referenced by tag is blocked before anything is applied; the image the
// pipeline signed and attested deploys; a registry that never answers
// blocks the revision too, and is retried.
func TestImageVerificationGate(t *testing.T) {
	ctx := context.Background()
	regCreds := authn.Basic{Username: "puller", Password: "registry-secret-pass"}
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Username: regCreds.Username, Password: regCreds.Password})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	defer reg.Close()
	trusted, _ := signing.GenerateKey()
	other, _ := signing.GenerateKey()
	push := func(repo string) name.Digest {
		img, _ := random.Image(128, 1)
		tag, _ := name.NewTag(reg.Host() + "/" + repo + ":v1")
		if err := remote.Write(tag, img, remote.WithAuth(&regCreds)); err != nil {
			t.Fatal(err)
		}
		d, _ := img.Digest()
		return tag.Context().Digest(d.String())
	}
	signAndAttest := func(d name.Digest, builder string) {
		k := trusted
		if builder == "" {
			k = other
			builder = "https://slipway.example.com/pipelines/cafe/tea"
		}
		if err := signing.SignImage(ctx, d, k, remote.WithAuth(&regCreds)); err != nil {
			t.Fatal(err)
		}
		pred, _ := imagebuild.Provenance(imagebuild.ProvenanceInput{BuilderID: builder, SourceRepo: "https://git.example.com/cafe/tea.git", SourceCommit: strings.Repeat("c", 40)})
		h, _ := v1.NewHash(d.DigestStr())
		stmt, _ := imagebuild.Statement(d.Context().Name(), h, imagebuild.PredicateSLSAProvenance, pred)
		if err := signing.Attest(ctx, d, k, stmt, remote.WithAuth(&regCreds)); err != nil {
			t.Fatal(err)
		}
	}
	good := push("cafe/tea")
	signAndAttest(good, "https://slipway.example.com/pipelines/cafe/tea")
	unsigned := push("cafe/unsigned")
	foreign := push("cafe/foreign")
	signAndAttest(foreign, "")

	ns := env.TenantNamespace(t)
	credsSecret := &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "registry"},
		Data: map[string][]byte{"username": []byte(regCreds.Username), "password": []byte(regCreds.Password)}}
	if err := env.Client.Create(ctx, credsSecret); err != nil {
		t.Fatal(err)
	}
	pub, _ := signing.EncodePublicKey(&trusted.PublicKey)
	staller, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	profile := createProfile(t, "signed-"+ns, slipwayv1.PolicyProfileSpec{
		Packs: []string{"pss-baseline"}, Mode: slipwayv1.PolicyModeEnforce, FailOn: "critical",
		ImageVerification: &slipwayv1.ImageVerification{
			PublicKeys: []string{string(pub)}, Builders: []string{"https://slipway.example.com/pipelines/cafe"},
			SourceRepositories:  []string{"https://git.example.com/cafe/"},
			RegistryCredentials: []slipwayv1.RegistryCredential{{Host: reg.Host(), SecretRef: slipwayv1.NamespacedReference{Namespace: ns, Name: credsSecret.Name}}},
			Timeout:             &metav1.Duration{Duration: 2 * time.Second},
		},
	})
	deploy := func(image string) string {
		return fmt.Sprintf("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tea\nspec:\n  selector: {matchLabels: {app: tea}}\n  template:\n    metadata: {labels: {app: tea}}\n    spec:\n      containers: [{name: tea, image: %q}]\n", image)
	}
	url := newRepo(t, map[string]string{"deploy/cm.yaml": configMap("settings", "v1"), "deploy/tea.yaml": deploy(unsigned.String())})
	app := newApp(t, ns, url, func(a *slipwayv1.Application) { a.Spec.PolicyProfile = profile.Name })

	blockedWith := func(reason, part string) {
		t.Helper()
		waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
			return hasCondition(a, slipwayv1.ConditionReady, metav1.ConditionFalse, reason, part)
		})
		if _, err := getConfigMap(t, ns, "settings"); !apierrors.IsNotFound(err) {
			t.Fatalf("a revision with an untrusted image was applied: %v", err)
		}
	}
	blockedWith("PolicyViolation", "IMAGE-TRUST (critical) Deployment/"+ns+"/tea")
	blockedWith("PolicyViolation", "not signed by a trusted key")
	commit(t, url, map[string]string{"deploy/tea.yaml": deploy(foreign.String())}, nil)
	blockedWith("PolicyViolation", "image "+foreign.String()+": not signed by a trusted key")
	commit(t, url, map[string]string{"deploy/tea.yaml": deploy(reg.Host() + "/cafe/tea:v1")}, nil)
	blockedWith("PolicyViolation", "not pinned by digest")
	stalledImage := strings.TrimPrefix(staller.URL(), "http://") + "/cafe/tea@" + good.DigestStr()
	commit(t, url, map[string]string{"deploy/tea.yaml": deploy(stalledImage)}, nil)
	blockedWith("ImageUnverified", "did not answer within 2s")

	rev := commit(t, url, map[string]string{"deploy/tea.yaml": deploy(good.String())}, nil)
	waitFor(t, app, syncTimeout, func(a *slipwayv1.Application) error {
		if a.Status.LastAppliedRevision != rev {
			return fmt.Errorf("not applied: %s", conditionMessage(a, slipwayv1.ConditionReady))
		}
		return nil
	})
	if logs := logs.String(); strings.Contains(logs, regCreds.Password) {
		t.Fatal("the registry password reached the logs")
	}
}
