// Package imagetrust decides, before a revision is applied, whether every
// image it runs is one the organisation built: pinned by digest, signed by
// a trusted key, and carrying SLSA provenance that names an allowed builder
// and source repository. It reads the same cosign-compatible signatures and
// attestations the pipeline writes, from the registry, under a deadline: a
// registry that does not answer fails the check, it never passes it.
package imagetrust

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/signing"
)

// DefaultTimeout bounds the verification of one image.
const DefaultTimeout = 30 * time.Second

// Policy is what a trusted image must show.
type Policy struct {
	// Keys are the trusted public keys; a signature by any of them counts.
	Keys []*ecdsa.PublicKey
	// Builders are the allowed SLSA builder ids, as prefixes that match on
	// whole path elements; empty allows any builder.
	Builders []string
	// SourceRepositories are the allowed source repository URLs, as
	// prefixes that match on whole path elements; empty allows any.
	SourceRepositories []string
	// Credentials holds registry credentials by host; a registry gets only
	// its own, others are read anonymously.
	Credentials map[string]authn.Basic
	// Timeout bounds the verification of one image; DefaultTimeout when zero.
	Timeout time.Duration
}

// Failure is why one image is not trusted.
type Failure struct {
	Image  string
	Reason string
	// Unreachable is true when the registry did not answer: trying again
	// later may succeed, unlike a missing or wrong signature.
	Unreachable bool
}

func (f Failure) Error() string { return f.Image + ": " + f.Reason }

// Verifier checks images against a Policy, remembering images already
// found trusted (a digest's content cannot change) for a while, so a sync
// loop does not read the registry every interval.
type Verifier struct {
	mu      sync.Mutex
	trusted map[string]time.Time // key: policy fingerprint + image
	ttl     time.Duration
}

// NewVerifier remembers positive results for ttl.
func NewVerifier(ttl time.Duration) *Verifier {
	return &Verifier{trusted: map[string]time.Time{}, ttl: ttl}
}

// Check verifies each image and returns a Failure for each one that is not
// trusted, in the order given. fingerprint identifies the policy, so a
// change of keys or allowed builders is never answered from memory.
func (v *Verifier) Check(ctx context.Context, p *Policy, fingerprint string, images []string) []Failure {
	var failures []Failure
	for _, image := range images {
		key := fingerprint + "\x00" + image
		v.mu.Lock()
		until, ok := v.trusted[key]
		v.mu.Unlock()
		if ok && time.Now().Before(until) {
			continue
		}
		if f := p.verify(ctx, image); f != nil {
			failures = append(failures, *f)
			continue
		}
		v.mu.Lock()
		v.trusted[key] = time.Now().Add(v.ttl)
		v.mu.Unlock()
	}
	return failures
}

func (p *Policy) verify(ctx context.Context, image string) *Failure {
	fail := func(format string, args ...any) *Failure {
		return &Failure{Image: image, Reason: fmt.Sprintf(format, args...)}
	}
	if !strings.Contains(image, "@") {
		return fail("not pinned by digest: a tag can move; pin it as repository@sha256:…")
	}
	digest, err := name.NewDigest(image)
	if err != nil {
		return fail("not a valid image reference pinned by digest: %v", err)
	}
	timeout := p.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	opts := []remote.Option{remote.WithAuthFromKeychain(keychain(p.Credentials))}
	var lastErr error
	start := time.Now()
	for _, key := range p.Keys {
		ver, err := signing.Verify(ctx, digest, key, []string{imagebuild.PredicateSLSAProvenance}, opts...)
		if err != nil {
			lastErr = err
			if ctx.Err() != nil {
				break
			}
			continue
		}
		imagebuild.ObserveRegistryOperation(imagebuild.RegistryVerify, digest.RegistryStr(), start, nil)
		return p.checkProvenance(image, ver)
	}
	imagebuild.ObserveRegistryOperation(imagebuild.RegistryVerify, digest.RegistryStr(), start, registryErr(ctx, lastErr))
	switch {
	case ctx.Err() != nil:
		return &Failure{Image: image, Unreachable: true,
			Reason: fmt.Sprintf("registry %s did not answer within %s: the image cannot be verified", digest.RegistryStr(), timeout)}
	case errors.Is(lastErr, signing.ErrNotSigned):
		return fail("not signed by a trusted key")
	case lastErr != nil && strings.Contains(lastErr.Error(), "attestation"):
		return fail("signed, but without SLSA provenance signed by the same trusted key")
	default:
		return fail("cannot be verified: %v", lastErr)
	}
}

// registryErr is what the registry did wrong while verifying, if anything:
// an image found unsigned was read without error.
func registryErr(ctx context.Context, err error) error {
	switch {
	case ctx.Err() != nil:
		return ctx.Err()
	case errors.Is(err, signing.ErrNotSigned), err != nil && strings.Contains(err.Error(), "attestation"):
		return nil
	}
	return err
}

// checkProvenance reads the builder and source from the verified SLSA
// statements; one that names an allowed builder and source suffices.
func (p *Policy) checkProvenance(image string, ver *signing.Verification) *Failure {
	var seen []string
	for _, a := range ver.Attestations {
		if a.PredicateType != imagebuild.PredicateSLSAProvenance {
			continue
		}
		// Field names are matched exactly (encoding/json would also take
		// "Predicate" or "BUILDER"), so the statement reads the same here as
		// in any other verifier.
		var st map[string]any
		if err := json.Unmarshal(a.Statement, &st); err != nil {
			continue
		}
		builder, _ := field(st, "predicate", "runDetails", "builder", "id").(string)
		uri, _ := field(st, "predicate", "buildDefinition", "externalParameters", "source", "uri").(string)
		source := sourceRepository(uri)
		if matchesAny(p.Builders, builder) && matchesAny(p.SourceRepositories, source) {
			return nil
		}
		seen = append(seen, fmt.Sprintf("builder %q, source %q", builder, source))
	}
	return &Failure{Image: image, Reason: fmt.Sprintf("its provenance (%s) names no allowed builder and source repository", strings.Join(seen, "; "))}
}

// field follows path through nested JSON objects.
func field(v any, path ...string) any {
	for _, p := range path {
		m, _ := v.(map[string]any)
		v = m[p]
	}
	return v
}

// sourceRepository turns an SLSA source URI ("git+https://host/repo.git@main")
// back into the repository URL,
// with its path cleaned, so "cafe/../evil" cannot pass for "cafe/".
func sourceRepository(uri string) string {
	uri = strings.TrimPrefix(uri, "git+")
	if i := strings.LastIndex(uri, "@"); i > strings.Index(uri, "://")+3 && !strings.Contains(uri[i:], "/") {
		uri = uri[:i]
	}
	u, err := url.Parse(uri)
	if err != nil || u.Path == "" {
		return uri
	}
	u.Path = path.Clean(u.Path)
	return u.String()
}

// matchesAny reports whether s starts with one of prefixes on a whole path
// element (or equals it); an empty list allows anything.
func matchesAny(prefixes []string, s string) bool {
	if len(prefixes) == 0 {
		return true
	}
	for _, p := range prefixes {
		if s == p || strings.HasPrefix(s, strings.TrimSuffix(p, "/")+"/") {
			return true
		}
	}
	return false
}

// keychain gives each registry host only its own credentials.
type keychain map[string]authn.Basic

func (k keychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if c, ok := k[r.RegistryStr()]; ok {
		return &c, nil
	}
	return authn.Anonymous, nil
}

// podSpecPaths gives, per kind that carries pods, where its pod spec is.
var podSpecPaths = map[string][]string{
	"Pod":                   {"spec"},
	"PodTemplate":           {"template", "spec"},
	"ReplicationController": {"spec", "template", "spec"},
	"Deployment":            {"spec", "template", "spec"},
	"ReplicaSet":            {"spec", "template", "spec"},
	"StatefulSet":           {"spec", "template", "spec"},
	"DaemonSet":             {"spec", "template", "spec"},
	"Job":                   {"spec", "template", "spec"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template", "spec"},
}

// Images lists the distinct images the pod carriers among objs run, in
// containers, init containers and ephemeral containers, each with the
// objects that run it ("Deployment/ns/name").
func Images(objs []map[string]any) (images []string, users map[string][]string) {
	users = map[string][]string{}
	for _, o := range objs {
		kind, _ := o["kind"].(string)
		path, ok := podSpecPaths[kind]
		if !ok {
			continue
		}
		spec := nested(o, path...)
		meta, _ := o["metadata"].(map[string]any)
		ns, _ := meta["namespace"].(string)
		name, _ := meta["name"].(string)
		subject := kind + "/" + name
		if ns != "" {
			subject = kind + "/" + ns + "/" + name
		}
		for _, field := range []string{"initContainers", "containers", "ephemeralContainers"} {
			list, _ := spec[field].([]any)
			for _, c := range list {
				cm, _ := c.(map[string]any)
				image, _ := cm["image"].(string)
				if image == "" {
					continue
				}
				if _, seen := users[image]; !seen {
					images = append(images, image)
				}
				users[image] = append(users[image], subject)
			}
		}
	}
	return images, users
}

func nested(o map[string]any, path ...string) map[string]any {
	cur := o
	for _, p := range path {
		next, _ := cur[p].(map[string]any)
		if next == nil {
			return map[string]any{}
		}
		cur = next
	}
	return cur
}
