package signing

import (
	"context"
	"crypto/ecdsa"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"slipway.dev/slipway/internal/registry"
)

var auth = remote.WithAuth(&authn.Basic{Username: "signer", Password: "signer-pass"})

// pushImage starts a registry and pushes a random image to it, returning
// the image's digest reference.
func pushImage(t *testing.T, ctx context.Context) name.Digest {
	t.Helper()
	s, err := registry.New(registry.Config{Dir: t.TempDir(), Username: "signer", Password: "signer-pass"})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(s.Host() + "/demo/tea:v1")
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, auth, remote.WithContext(ctx)); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return tag.Context().Digest(d.String())
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func statementFor(t *testing.T, digest name.Digest, predicateType string, predicate any) []byte {
	t.Helper()
	hex := strings.TrimPrefix(digest.DigestStr(), "sha256:")
	b, err := json.Marshal(map[string]any{
		"_type":         "https://in-toto.io/Statement/v1",
		"subject":       []map[string]any{{"name": digest.Context().Name(), "digest": map[string]string{"sha256": hex}}},
		"predicateType": predicateType,
		"predicate":     predicate,
	})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

const (
	spdxType = "https://spdx.dev/Document"
	slsaType = "https://slsa.dev/provenance/v1"
)

func TestSignAndVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	digest := pushImage(t, ctx)
	key := newKey(t)

	if _, err := Verify(ctx, digest, &key.PublicKey, nil, auth); !errors.Is(err, ErrNotSigned) {
		t.Fatalf("verify before signing: want ErrNotSigned, got %v", err)
	}
	if err := SignImage(ctx, digest, key, auth); err != nil {
		t.Fatal(err)
	}
	// A retried pipeline step signs again: nothing is added.
	if err := SignImage(ctx, digest, key, auth); err != nil {
		t.Fatal(err)
	}
	v, err := Verify(ctx, digest, &key.PublicKey, nil, auth)
	if err != nil {
		t.Fatal(err)
	}
	if v.Signatures != 1 {
		t.Fatalf("%d signatures after signing twice with one key", v.Signatures)
	}

	other := newKey(t)
	if _, err := Verify(ctx, digest, &other.PublicKey, nil, auth); !errors.Is(err, ErrNotSigned) {
		t.Fatalf("verify with another key: want ErrNotSigned, got %v", err)
	}
	// A second signer adds its signature beside the first.
	if err := SignImage(ctx, digest, other, auth); err != nil {
		t.Fatal(err)
	}
	for _, k := range []*ecdsa.PrivateKey{key, other} {
		if v, err := Verify(ctx, digest, &k.PublicKey, nil, auth); err != nil || v.Signatures != 1 {
			t.Fatalf("verify after two signers: %+v, %v", v, err)
		}
	}
}

// TestCosignLayout reads back what SignImage and Attest stored and checks
// it against cosign's layout, field by field, with the signatures checked
// independently of Verify.
func TestCosignLayout(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	digest := pushImage(t, ctx)
	key := newKey(t)
	if err := SignImage(ctx, digest, key, auth); err != nil {
		t.Fatal(err)
	}
	stmt := statementFor(t, digest, slsaType, map[string]any{"buildDefinition": map[string]any{}})
	if err := Attest(ctx, digest, key, stmt, auth); err != nil {
		t.Fatal(err)
	}

	hex := strings.TrimPrefix(digest.DigestStr(), "sha256:")
	sigImg, err := remote.Image(digest.Context().Tag("sha256-"+hex+".sig"), auth, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	m, err := sigImg.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if m.MediaType != types.OCIManifestSchema1 || m.Config.MediaType != types.OCIConfigJSON || len(m.Layers) != 1 {
		t.Fatalf("signature manifest: %s, config %s, %d layers", m.MediaType, m.Config.MediaType, len(m.Layers))
	}
	l := m.Layers[0]
	if l.MediaType != "application/vnd.dev.cosign.simplesigning.v1+json" {
		t.Fatalf("signature layer media type %s", l.MediaType)
	}
	layer, err := sigImg.LayerByDigest(l.Digest)
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layer.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	var payload map[string]any
	if err := json.NewDecoder(rc).Decode(&payload); err != nil {
		t.Fatal(err)
	}
	rc.Close()
	critical := payload["critical"].(map[string]any)
	if critical["type"] != "cosign container image signature" ||
		critical["image"].(map[string]any)["docker-manifest-digest"] != digest.DigestStr() ||
		critical["identity"].(map[string]any)["docker-reference"] != digest.Context().Name() {
		t.Fatalf("simple signing payload %v", payload)
	}
	if _, ok := payload["optional"]; !ok {
		t.Error("payload lacks the optional section")
	}
	sig, err := base64.StdEncoding.DecodeString(l.Annotations["dev.cosignproject.cosign/signature"])
	if err != nil || len(sig) == 0 {
		t.Fatalf("signature annotation: %q, %v", l.Annotations["dev.cosignproject.cosign/signature"], err)
	}

	attImg, err := remote.Image(digest.Context().Tag("sha256-"+hex+".att"), auth, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	am, err := attImg.Manifest()
	if err != nil {
		t.Fatal(err)
	}
	if len(am.Layers) != 1 || am.Layers[0].MediaType != "application/vnd.dsse.envelope.v1+json" || am.Layers[0].Annotations["predicateType"] != slsaType {
		t.Fatalf("attestation manifest layers %+v", am.Layers)
	}
	al, err := attImg.LayerByDigest(am.Layers[0].Digest)
	if err != nil {
		t.Fatal(err)
	}
	arc, err := al.Compressed()
	if err != nil {
		t.Fatal(err)
	}
	defer arc.Close()
	var env struct {
		PayloadType string `json:"payloadType"`
		Payload     string `json:"payload"`
		Signatures  []struct {
			Sig string `json:"sig"`
		} `json:"signatures"`
	}
	if err := json.NewDecoder(arc).Decode(&env); err != nil {
		t.Fatal(err)
	}
	body, _ := base64.StdEncoding.DecodeString(env.Payload)
	if env.PayloadType != "application/vnd.in-toto+json" || string(body) != string(stmt) || len(env.Signatures) != 1 {
		t.Fatalf("envelope %+v", env)
	}
	dsseSig, _ := base64.StdEncoding.DecodeString(env.Signatures[0].Sig)
	msg := "DSSEv1 28 application/vnd.in-toto+json " + strconv.Itoa(len(body)) + " " + string(body)
	if !verify(&key.PublicKey, []byte(msg), dsseSig) {
		t.Fatal("envelope signature does not verify over the DSSE pre-authentication encoding")
	}
}

func TestAttestAndVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	digest := pushImage(t, ctx)
	key := newKey(t)
	if err := SignImage(ctx, digest, key, auth); err != nil {
		t.Fatal(err)
	}
	sbom := statementFor(t, digest, spdxType, map[string]any{"spdxVersion": "SPDX-2.3"})
	prov := statementFor(t, digest, slsaType, map[string]any{"run": 1})
	for _, s := range [][]byte{sbom, prov} {
		if err := Attest(ctx, digest, key, s, auth); err != nil {
			t.Fatal(err)
		}
	}
	// A rerun replaces the provenance rather than piling up copies.
	prov2 := statementFor(t, digest, slsaType, map[string]any{"run": 2})
	if err := Attest(ctx, digest, key, prov2, auth); err != nil {
		t.Fatal(err)
	}
	v, err := Verify(ctx, digest, &key.PublicKey, []string{spdxType, slsaType}, auth)
	if err != nil {
		t.Fatal(err)
	}
	if len(v.Attestations) != 2 || v.Attestations[0].PredicateType != spdxType || string(v.Attestations[1].Statement) != string(prov2) {
		t.Fatalf("attestations %+v", v.Attestations)
	}

	// Another key's attestations do not count for this key.
	other := newKey(t)
	if _, err := Verify(ctx, digest, &key.PublicKey, []string{"https://example.com/other"}, auth); err == nil || !strings.Contains(err.Error(), "no https://example.com/other attestation") {
		t.Fatalf("missing predicate: %v", err)
	}
	if err := SignImage(ctx, digest, other, auth); err != nil {
		t.Fatal(err)
	}
	if v, err := Verify(ctx, digest, &other.PublicKey, nil, auth); err != nil || len(v.Attestations) != 0 {
		t.Fatalf("other key sees %+v, %v", v, err)
	}
	if _, err := Verify(ctx, digest, &other.PublicKey, []string{spdxType}, auth); err == nil {
		t.Fatal("an SBOM signed by one key verified with another")
	}

	// A statement about another image is refused before anything is signed.
	elsewhere := digest.Context().Digest("sha256:" + strings.Repeat("ab", 32))
	if err := Attest(ctx, digest, key, statementFor(t, elsewhere, spdxType, nil), auth); err == nil || !strings.Contains(err.Error(), "no subject with that digest") {
		t.Fatalf("attest about another image: %v", err)
	}
	if err := Attest(ctx, digest, key, []byte(`{"predicateType":"x"}`), auth); err == nil {
		t.Fatal("attest accepted a document that is not an in-toto statement")
	}
}

func TestTamperedAttestationIsRejected(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	digest := pushImage(t, ctx)
	key := newKey(t)
	if err := SignImage(ctx, digest, key, auth); err != nil {
		t.Fatal(err)
	}
	if err := Attest(ctx, digest, key, statementFor(t, digest, spdxType, map[string]any{"packages": 1}), auth); err != nil {
		t.Fatal(err)
	}
	tag, err := AttestationTag(digest)
	if err != nil {
		t.Fatal(err)
	}
	opts := []remote.Option{auth, remote.WithContext(ctx)}
	entries, err := readEntries(tag, opts)
	if err != nil || len(entries) != 1 {
		t.Fatalf("entries %d, %v", len(entries), err)
	}
	var env dsseEnvelope
	if err := json.Unmarshal(entries[0].data, &env); err != nil {
		t.Fatal(err)
	}
	env.Payload = base64.StdEncoding.EncodeToString(statementFor(t, digest, spdxType, map[string]any{"packages": 0}))
	entries[0].data, _ = json.Marshal(env)
	if err := writeEntries(tag, entries, opts); err != nil {
		t.Fatal(err)
	}
	if _, err := Verify(ctx, digest, &key.PublicKey, []string{spdxType}, auth); err == nil {
		t.Fatal("a tampered SBOM verified")
	}
}

func TestVerifyUnknownImage(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	digest := pushImage(t, ctx)
	missing := digest.Context().Digest("sha256:" + strings.Repeat("cd", 32))
	key := newKey(t)
	if err := SignImage(ctx, missing, key, auth); err == nil || !strings.Contains(err.Error(), "look up") {
		t.Fatalf("signing an image the registry lacks: %v", err)
	}
	if _, err := Verify(ctx, missing, &key.PublicKey, nil, auth); err == nil {
		t.Fatal("verified an image the registry lacks")
	}
}
