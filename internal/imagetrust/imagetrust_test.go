package imagetrust

import (
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/registry"
	"slipway.dev/slipway/internal/signing"
)

const (
	builder = "https://slipway.example.com/pipelines/cafe/tea"
	source  = "https://git.example.com/cafe/tea.git"
)

var creds = authn.Basic{Username: "reader", Password: "registry-pass"}

type lab struct {
	reg     *registry.Server
	trusted *ecdsa.PrivateKey
	other   *ecdsa.PrivateKey
}

func newLab(t *testing.T) *lab {
	t.Helper()
	reg, err := registry.New(registry.Config{Dir: t.TempDir(), Username: creds.Username, Password: creds.Password})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Close() })
	l := &lab{reg: reg}
	if l.trusted, err = signing.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	if l.other, err = signing.GenerateKey(); err != nil {
		t.Fatal(err)
	}
	return l
}

// push writes a random image and returns its digest reference.
func (l *lab) push(t *testing.T, repo string) name.Digest {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(l.reg.Host() + "/" + repo + ":latest")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, remote.WithAuth(&creds)); err != nil {
		t.Fatal(err)
	}
	d, _ := img.Digest()
	return tag.Context().Digest(d.String())
}

// sign signs digest with key and, when builderID is set, attests SLSA
// provenance naming builderID and repo.
func (l *lab) sign(t *testing.T, digest name.Digest, key *ecdsa.PrivateKey, builderID, repo string) {
	t.Helper()
	ctx := context.Background()
	if err := signing.SignImage(ctx, digest, key, remote.WithAuth(&creds)); err != nil {
		t.Fatal(err)
	}
	if builderID == "" {
		return
	}
	pred, err := imagebuild.Provenance(imagebuild.ProvenanceInput{BuilderID: builderID, SourceRepo: repo, SourceCommit: strings.Repeat("a", 40), SourceRef: "main"})
	if err != nil {
		t.Fatal(err)
	}
	h, _ := v1.NewHash(digest.DigestStr())
	stmt, err := imagebuild.Statement(digest.Context().Name(), h, imagebuild.PredicateSLSAProvenance, pred)
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.Attest(ctx, digest, key, stmt, remote.WithAuth(&creds)); err != nil {
		t.Fatal(err)
	}
}

func (l *lab) policy() *Policy {
	return &Policy{
		Keys: []*ecdsa.PublicKey{&l.trusted.PublicKey}, Builders: []string{"https://slipway.example.com/pipelines/cafe"},
		SourceRepositories: []string{"https://git.example.com/cafe/"}, Credentials: map[string]authn.Basic{l.reg.Host(): creds},
		Timeout: 5 * time.Second,
	}
}

// TestVerify: each way an image can fail to be one the organisation built
// is refused with its own reason; the image the pipeline would have built
// passes.
func TestVerify(t *testing.T) {
	l := newLab(t)
	good := l.push(t, "cafe/tea")
	l.sign(t, good, l.trusted, builder, source)
	unsigned := l.push(t, "cafe/unsigned")
	foreign := l.push(t, "cafe/foreign")
	l.sign(t, foreign, l.other, builder, source)
	bare := l.push(t, "cafe/bare")
	l.sign(t, bare, l.trusted, "", "")
	otherBuilder := l.push(t, "cafe/laptop")
	l.sign(t, otherBuilder, l.trusted, "https://laptop.example.com/build", source)
	otherSource := l.push(t, "cafe/fork")
	l.sign(t, otherSource, l.trusted, builder, "https://git.example.com/cafe-fork/tea.git")
	tagged := l.reg.Host() + "/cafe/tea:latest"

	cases := map[string]string{
		good.String():         "",
		unsigned.String():     "not signed by a trusted key",
		foreign.String():      "not signed by a trusted key",
		bare.String():         "without SLSA provenance",
		otherBuilder.String(): `builder "https://laptop.example.com/build"`,
		otherSource.String():  `source "https://git.example.com/cafe-fork/tea.git"`,
		tagged:                "not pinned by digest",
	}
	var images []string
	for image := range cases {
		images = append(images, image)
	}
	failures := NewVerifier(time.Minute).Check(context.Background(), l.policy(), "p1", images)
	got := map[string]string{}
	for _, f := range failures {
		got[f.Image] = f.Reason
		if f.Unreachable {
			t.Errorf("%s reported unreachable: %s", f.Image, f.Reason)
		}
	}
	for image, want := range cases {
		switch reason, failed := got[image]; {
		case want == "" && failed:
			t.Errorf("%s refused: %s", image, reason)
		case want != "" && !strings.Contains(reason, want):
			t.Errorf("%s: reason %q, want it to contain %q", image, reason, want)
		}
	}
}

// TestStalledRegistryFailsWithinItsDeadline: a registry that accepts
// connections and never answers fails the check, as unreachable, within the
// timeout; it never passes.
func TestStalledRegistryFailsWithinItsDeadline(t *testing.T) {
	staller, err := gitserver.NewStaller()
	if err != nil {
		t.Fatal(err)
	}
	defer staller.Close()
	host := strings.TrimPrefix(staller.URL(), "http://")
	image := host + "/cafe/tea@sha256:" + strings.Repeat("b", 64)
	p := &Policy{Keys: []*ecdsa.PublicKey{&mustKey(t).PublicKey}, Timeout: 2 * time.Second}
	done := make(chan []Failure, 1)
	go func() { done <- NewVerifier(time.Minute).Check(context.Background(), p, "p", []string{image}) }()
	select {
	case failures := <-done:
		if len(failures) != 1 || !failures[0].Unreachable || !strings.Contains(failures[0].Reason, "did not answer within 2s") {
			t.Fatalf("failures = %+v", failures)
		}
	case <-time.After(time.Minute):
		t.Fatal("verification still waiting on a stalled registry after a minute")
	}
}

// TestCredentialsStayWithTheirRegistry: a registry gets its own
// credentials and no other's.
func TestCredentialsStayWithTheirRegistry(t *testing.T) {
	k := keychain{"registry.example.com": creds}
	for host, want := range map[string]authn.Authenticator{"registry.example.com": &creds, "attacker.example.net": authn.Anonymous} {
		reg, _ := name.NewRegistry(host)
		got, _ := k.Resolve(reg)
		gc, _ := got.Authorization()
		wc, _ := want.Authorization()
		if *gc != *wc {
			t.Errorf("%s got %+v", host, gc)
		}
	}
}

func TestImages(t *testing.T) {
	objs := []map[string]any{
		{"kind": "Deployment", "metadata": map[string]any{"name": "web", "namespace": "cafe"}, "spec": map[string]any{"template": map[string]any{"spec": map[string]any{
			"initContainers": []any{map[string]any{"image": "r/init@sha256:1"}},
			"containers":     []any{map[string]any{"image": "r/web@sha256:2"}, map[string]any{"image": "r/sidecar:1"}},
		}}}},
		{"kind": "CronJob", "metadata": map[string]any{"name": "job", "namespace": "cafe"}, "spec": map[string]any{"jobTemplate": map[string]any{"spec": map[string]any{"template": map[string]any{"spec": map[string]any{
			"containers": []any{map[string]any{"image": "r/web@sha256:2"}},
		}}}}}},
		{"kind": "PodTemplate", "metadata": map[string]any{"name": "t"}, "template": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"image": "r/t:2"}}}}},
		{"kind": "ConfigMap", "metadata": map[string]any{"name": "c"}, "data": map[string]any{"image": "not/an:image"}},
	}
	images, users := Images(objs)
	if strings.Join(images, ",") != "r/init@sha256:1,r/web@sha256:2,r/sidecar:1,r/t:2" {
		t.Fatalf("images = %v", images)
	}
	if strings.Join(users["r/web@sha256:2"], ",") != "Deployment/cafe/web,CronJob/cafe/job" {
		t.Fatalf("users = %v", users)
	}
}

func mustKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// FuzzProvenance: whatever a registry returns as a signed statement, the
// check never panics, and it trusts only a statement whose builder and
// source, read independently, are allowed.
func FuzzProvenance(f *testing.F) {
	f.Add(`{"predicate":{"buildDefinition":{"externalParameters":{"source":{"uri":"git+https://git.example.com/cafe/tea.git@main"}}},"runDetails":{"builder":{"id":"https://slipway.example.com/pipelines/cafe/tea"}}}}`)
	f.Add(`{"predicate":{"runDetails":{"builder":{"id":"https://slipway.example.com/pipelines/cafe-evil"}}}}`)
	f.Add(`{"predicate":{"buildDefinition":{"externalParameters":{"source":{"uri":"git+https://git.example.com/cafe@x/../y"}}}}}`)
	p := &Policy{Builders: []string{"https://slipway.example.com/pipelines/cafe"}, SourceRepositories: []string{"https://git.example.com/cafe/"}}
	f.Fuzz(func(t *testing.T, statement string) {
		ver := &signing.Verification{Attestations: []signing.Attestation{{PredicateType: imagebuild.PredicateSLSAProvenance, Statement: []byte(statement)}}}
		if p.checkProvenance("img", ver) != nil {
			return
		}
		var st map[string]any
		if err := json.Unmarshal([]byte(statement), &st); err != nil {
			t.Fatalf("trusted a statement that is not JSON: %q", statement)
		}
		builderID, _ := dig(st, "predicate", "runDetails", "builder", "id").(string)
		uri, _ := dig(st, "predicate", "buildDefinition", "externalParameters", "source", "uri").(string)
		if !strings.HasPrefix(builderID, "https://slipway.example.com/pipelines/cafe/") && builderID != "https://slipway.example.com/pipelines/cafe" {
			t.Fatalf("trusted builder %q", builderID)
		}
		if !strings.HasPrefix(strings.TrimPrefix(uri, "git+"), "https://git.example.com/cafe/") {
			t.Fatalf("trusted source %q", uri)
		}
	})
}

func dig(m map[string]any, path ...string) any {
	var cur any = m
	for _, p := range path {
		mm, _ := cur.(map[string]any)
		cur = mm[p]
	}
	return cur
}
