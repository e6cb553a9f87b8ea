package gitops

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/imagetrust"
	"slipway.dev/slipway/internal/signing"
)

// ruleImageTrust is the rule a violation names when an image of the
// revision fails the profile's image verification.
const ruleImageTrust = "IMAGE-TRUST"

// trustedFor is how long an image found trusted is not read again.
const trustedFor = 10 * time.Minute

// checkImages verifies every image the revision runs against the profile's
// imageVerification, adding a violation per image that fails. It returns an
// error when a registry did not answer: the revision stays blocked, and is
// tried again with backoff rather than only on the next commit.
func (g *PolicyGate) checkImages(ctx context.Context, profile *slipwayv1.PolicyProfile, desired *Desired, st *slipwayv1.PolicyStatus) error {
	iv := profile.Spec.ImageVerification
	if iv == nil {
		return nil
	}
	fail := func(subject, msg string) {
		st.Failed++
		st.Passed = false
		policyViolations.WithLabelValues(ruleImageTrust, "critical", "fail").Inc()
		st.Violations = append(st.Violations, slipwayv1.PolicyViolation{Rule: ruleImageTrust, Severity: "critical", Object: subject, Message: msg})
	}
	pol, fingerprint, err := g.imagePolicy(ctx, profile)
	if err != nil {
		fail("PolicyProfile/"+profile.Name, err.Error())
		return nil
	}
	objs := make([]map[string]any, len(desired.Objects))
	for i, o := range desired.Objects {
		objs[i] = o.Object
	}
	images, users := imagetrust.Images(objs)
	var unreachable error
	for _, f := range g.verifier().Check(ctx, pol, fingerprint, images) {
		fail(joinLimited(users[f.Image], 3), fmt.Sprintf("image %s: %s", f.Image, f.Reason))
		if f.Unreachable && unreachable == nil {
			unreachable = f
		}
	}
	return unreachable
}

// imagePolicy reads the profile's keys and registry credentials. The
// fingerprint changes with the profile and with every Secret it reads.
func (g *PolicyGate) imagePolicy(ctx context.Context, profile *slipwayv1.PolicyProfile) (*imagetrust.Policy, string, error) {
	iv := profile.Spec.ImageVerification
	pol := &imagetrust.Policy{Builders: iv.Builders, SourceRepositories: iv.SourceRepositories, Credentials: map[string]authn.Basic{}}
	if iv.Timeout != nil {
		pol.Timeout = iv.Timeout.Duration
	}
	fingerprint := []string{string(profile.UID), profile.ResourceVersion}
	for i, pem := range iv.PublicKeys {
		key, err := signing.DecodePublicKey([]byte(pem))
		if err != nil {
			return nil, "", fmt.Errorf("imageVerification.publicKeys[%d] of PolicyProfile %s: %w", i, profile.Name, err)
		}
		pol.Keys = append(pol.Keys, key)
	}
	for _, rc := range iv.RegistryCredentials {
		var secret corev1.Secret
		key := client.ObjectKey{Namespace: rc.SecretRef.Namespace, Name: rc.SecretRef.Name}
		if err := g.Client.Get(ctx, key, &secret); err != nil {
			return nil, "", fmt.Errorf("reading the credentials of registry %s from Secret %s: %w", rc.Host, key, err)
		}
		pol.Credentials[rc.Host] = authn.Basic{Username: string(secret.Data["username"]), Password: string(secret.Data["password"])}
		fingerprint = append(fingerprint, string(secret.UID), secret.ResourceVersion)
	}
	return pol, strings.Join(fingerprint, "/"), nil
}

func (g *PolicyGate) verifier() *imagetrust.Verifier {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.images == nil {
		g.images = imagetrust.NewVerifier(trustedFor)
	}
	return g.images
}
