package signing

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/static"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// The names cosign gives to the parts of its on-registry layout.
const (
	SimpleSigningMediaType  types.MediaType = "application/vnd.dev.cosign.simplesigning.v1+json"
	DSSEMediaType           types.MediaType = "application/vnd.dsse.envelope.v1+json"
	SignatureAnnotation                     = "dev.cosignproject.cosign/signature"
	PredicateTypeAnnotation                 = "predicateType"
	InTotoPayloadType                       = "application/vnd.in-toto+json"
	simpleSigningType                       = "cosign container image signature"
	signatureTagSuffix                      = ".sig"
	attestationTagSuffix                    = ".att"
)

// maxLayerBytes bounds what is read of one signature or attestation layer;
// an SBOM of a large service is a few MB, and a registry serving more is
// not to be believed.
const maxLayerBytes = 64 << 20

// SignatureTag returns the tag cosign stores the signatures of the image
// at digest under: <repo>:sha256-<hex>.sig.
func SignatureTag(digest name.Digest) (name.Tag, error) {
	return derivedTag(digest, signatureTagSuffix)
}

// AttestationTag returns the tag cosign stores attestations under:
// <repo>:sha256-<hex>.att.
func AttestationTag(digest name.Digest) (name.Tag, error) {
	return derivedTag(digest, attestationTagSuffix)
}

func derivedTag(digest name.Digest, suffix string) (name.Tag, error) {
	algo, hex, ok := strings.Cut(digest.DigestStr(), ":")
	if !ok {
		return name.Tag{}, fmt.Errorf("image reference %s is not pinned by digest", digest)
	}
	return digest.Context().Tag(algo + "-" + hex + suffix), nil
}

// simpleSigning is the payload cosign signs for an image: the "critical"
// section binds the signature to the repository and the manifest digest.
type simpleSigning struct {
	Critical struct {
		Identity struct {
			DockerReference string `json:"docker-reference"`
		} `json:"identity"`
		Image struct {
			DockerManifestDigest string `json:"docker-manifest-digest"`
		} `json:"image"`
		Type string `json:"type"`
	} `json:"critical"`
	Optional map[string]any `json:"optional"`
}

func simpleSigningPayload(digest name.Digest) ([]byte, error) {
	var p simpleSigning
	p.Critical.Identity.DockerReference = digest.Context().Name()
	p.Critical.Image.DockerManifestDigest = digest.DigestStr()
	p.Critical.Type = simpleSigningType
	return json.Marshal(p)
}

// dsseEnvelope is a DSSE envelope as cosign stores attestations.
type dsseEnvelope struct {
	PayloadType string          `json:"payloadType"`
	Payload     string          `json:"payload"`
	Signatures  []dsseSignature `json:"signatures"`
}

type dsseSignature struct {
	KeyID string `json:"keyid"`
	Sig   string `json:"sig"`
}

// pae is DSSE's pre-authentication encoding, what is actually signed, so
// that a signature over one payload type cannot be replayed as another.
func pae(payloadType string, payload []byte) []byte {
	var b bytes.Buffer
	b.WriteString("DSSEv1 ")
	b.WriteString(strconv.Itoa(len(payloadType)))
	b.WriteByte(' ')
	b.WriteString(payloadType)
	b.WriteByte(' ')
	b.WriteString(strconv.Itoa(len(payload)))
	b.WriteByte(' ')
	b.Write(payload)
	return b.Bytes()
}

func sign(key *ecdsa.PrivateKey, msg []byte) ([]byte, error) {
	h := sha256.Sum256(msg)
	return ecdsa.SignASN1(rand.Reader, key, h[:])
}

func verify(pub *ecdsa.PublicKey, msg, sig []byte) bool {
	h := sha256.Sum256(msg)
	return ecdsa.VerifyASN1(pub, h[:], sig)
}

// entry is one layer of a signature or attestation image: its bytes and
// the annotations of its descriptor.
type entry struct {
	mediaType   types.MediaType
	data        []byte
	annotations map[string]string
}

// readEntries returns the layers stored under tag, or none when the tag
// does not exist yet.
func readEntries(tag name.Tag, opts []remote.Option) ([]entry, error) {
	img, err := remote.Image(tag, opts...)
	var terr *transport.Error
	if errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", tag, err)
	}
	m, err := img.Manifest()
	if err != nil {
		return nil, fmt.Errorf("read manifest of %s: %w", tag, err)
	}
	entries := make([]entry, 0, len(m.Layers))
	for _, desc := range m.Layers {
		if desc.Size > maxLayerBytes {
			return nil, fmt.Errorf("read %s: layer %s is %d bytes, over the %d byte limit", tag, desc.Digest, desc.Size, maxLayerBytes)
		}
		l, err := img.LayerByDigest(desc.Digest)
		if err != nil {
			return nil, fmt.Errorf("read layer %s of %s: %w", desc.Digest, tag, err)
		}
		rc, err := l.Compressed()
		if err != nil {
			return nil, fmt.Errorf("read layer %s of %s: %w", desc.Digest, tag, err)
		}
		data, err := io.ReadAll(io.LimitReader(rc, maxLayerBytes))
		rc.Close()
		if err != nil {
			return nil, fmt.Errorf("read layer %s of %s: %w", desc.Digest, tag, err)
		}
		entries = append(entries, entry{mediaType: desc.MediaType, data: data, annotations: desc.Annotations})
	}
	return entries, nil
}

// writeEntries stores entries under tag as cosign does: an OCI image with
// an empty config whose layers are the entries, uncompressed.
func writeEntries(tag name.Tag, entries []entry, opts []remote.Option) error {
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	adds := make([]mutate.Addendum, 0, len(entries))
	for _, e := range entries {
		adds = append(adds, mutate.Addendum{Layer: static.NewLayer(e.data, e.mediaType), Annotations: e.annotations})
	}
	img, err := mutate.Append(img, adds...)
	if err != nil {
		return fmt.Errorf("assemble %s: %w", tag, err)
	}
	if err := remote.Write(tag, img, opts...); err != nil {
		return fmt.Errorf("push %s: %w", tag, err)
	}
	return nil
}

// checkImage makes sure the digest names an image in its repository, so
// that nothing is signed or trusted for a manifest the registry lacks.
func checkImage(digest name.Digest, opts []remote.Option) error {
	if _, err := remote.Head(digest, opts...); err != nil {
		return fmt.Errorf("look up %s: %w", digest, err)
	}
	return nil
}

// SignImage signs the image at digest with key and stores the signature
// under its .sig tag, keeping signatures already there. Signing again
// with the same key does nothing.
func SignImage(ctx context.Context, digest name.Digest, key *ecdsa.PrivateKey, opts ...remote.Option) error {
	opts = append(opts, remote.WithContext(ctx))
	tag, err := SignatureTag(digest)
	if err != nil {
		return fmt.Errorf("sign: %w", err)
	}
	if err := checkImage(digest, opts); err != nil {
		return fmt.Errorf("sign %s: %w", digest, err)
	}
	payload, err := simpleSigningPayload(digest)
	if err != nil {
		return fmt.Errorf("sign %s: build payload: %w", digest, err)
	}
	entries, err := readEntries(tag, opts)
	if err != nil {
		return fmt.Errorf("sign %s: %w", digest, err)
	}
	for _, e := range entries {
		if bytes.Equal(e.data, payload) && validSimpleSignature(&key.PublicKey, e) {
			return nil
		}
	}
	sig, err := sign(key, payload)
	if err != nil {
		return fmt.Errorf("sign %s: %w", digest, err)
	}
	entries = append(entries, entry{
		mediaType:   SimpleSigningMediaType,
		data:        payload,
		annotations: map[string]string{SignatureAnnotation: base64.StdEncoding.EncodeToString(sig)},
	})
	if err := writeEntries(tag, entries, opts); err != nil {
		return fmt.Errorf("sign %s: %w", digest, err)
	}
	return nil
}

func validSimpleSignature(pub *ecdsa.PublicKey, e entry) bool {
	if e.mediaType != SimpleSigningMediaType {
		return false
	}
	sig, err := base64.StdEncoding.DecodeString(e.annotations[SignatureAnnotation])
	return err == nil && verify(pub, e.data, sig)
}

// statement is the part of an in-toto Statement that signing relies on.
type statement struct {
	Type          string `json:"_type"`
	PredicateType string `json:"predicateType"`
	Subject       []struct {
		Name   string            `json:"name"`
		Digest map[string]string `json:"digest"`
	} `json:"subject"`
}

func parseStatement(payload []byte) (*statement, error) {
	var s statement
	if err := json.Unmarshal(payload, &s); err != nil {
		return nil, fmt.Errorf("parse in-toto statement: %w", err)
	}
	if !strings.HasPrefix(s.Type, "https://in-toto.io/Statement/") {
		return nil, fmt.Errorf("parse in-toto statement: _type %q is not an in-toto statement", s.Type)
	}
	if s.PredicateType == "" {
		return nil, errors.New("parse in-toto statement: predicateType is empty")
	}
	return &s, nil
}

// about reports whether the statement has the image digest as a subject.
func (s *statement) about(digest name.Digest) bool {
	algo, hex, _ := strings.Cut(digest.DigestStr(), ":")
	for _, sub := range s.Subject {
		if sub.Digest[algo] == hex {
			return true
		}
	}
	return false
}

// Attest signs an in-toto statement about the image at digest as a DSSE
// envelope and stores it under the image's .att tag, as `cosign attest`
// does. An attestation of the same predicate type signed by the same key
// is replaced (as `cosign attest --replace`), so that a retried pipeline
// step leaves one SBOM, not two; others are kept.
func Attest(ctx context.Context, digest name.Digest, key *ecdsa.PrivateKey, stmt []byte, opts ...remote.Option) error {
	opts = append(opts, remote.WithContext(ctx))
	tag, err := AttestationTag(digest)
	if err != nil {
		return fmt.Errorf("attest: %w", err)
	}
	s, err := parseStatement(stmt)
	if err != nil {
		return fmt.Errorf("attest %s: %w", digest, err)
	}
	if !s.about(digest) {
		return fmt.Errorf("attest %s: the %s statement has no subject with that digest", digest, s.PredicateType)
	}
	if err := checkImage(digest, opts); err != nil {
		return fmt.Errorf("attest %s: %w", digest, err)
	}
	sig, err := sign(key, pae(InTotoPayloadType, stmt))
	if err != nil {
		return fmt.Errorf("attest %s: %w", digest, err)
	}
	env, err := json.Marshal(dsseEnvelope{
		PayloadType: InTotoPayloadType,
		Payload:     base64.StdEncoding.EncodeToString(stmt),
		Signatures:  []dsseSignature{{Sig: base64.StdEncoding.EncodeToString(sig)}},
	})
	if err != nil {
		return fmt.Errorf("attest %s: encode envelope: %w", digest, err)
	}
	existing, err := readEntries(tag, opts)
	if err != nil {
		return fmt.Errorf("attest %s: %w", digest, err)
	}
	entries := make([]entry, 0, len(existing)+1)
	for _, e := range existing {
		if e.annotations[PredicateTypeAnnotation] == s.PredicateType {
			if _, ok := openEnvelope(&key.PublicKey, e); ok {
				continue
			}
		}
		entries = append(entries, e)
	}
	entries = append(entries, entry{
		mediaType: DSSEMediaType,
		data:      env,
		// cosign keeps an empty signature annotation on attestation
		// layers; the signature itself is in the envelope.
		annotations: map[string]string{SignatureAnnotation: "", PredicateTypeAnnotation: s.PredicateType},
	})
	if err := writeEntries(tag, entries, opts); err != nil {
		return fmt.Errorf("attest %s: %w", digest, err)
	}
	return nil
}

// openEnvelope returns the statement in e when e is a DSSE envelope with a
// signature by pub.
func openEnvelope(pub *ecdsa.PublicKey, e entry) ([]byte, bool) {
	if e.mediaType != DSSEMediaType {
		return nil, false
	}
	var env dsseEnvelope
	if err := json.Unmarshal(e.data, &env); err != nil || env.PayloadType != InTotoPayloadType {
		return nil, false
	}
	payload, err := base64.StdEncoding.DecodeString(env.Payload)
	if err != nil {
		return nil, false
	}
	msg := pae(env.PayloadType, payload)
	for _, s := range env.Signatures {
		sig, err := base64.StdEncoding.DecodeString(s.Sig)
		if err == nil && verify(pub, msg, sig) {
			return payload, true
		}
	}
	return nil, false
}

// Attestation is a verified in-toto statement about an image.
type Attestation struct {
	PredicateType string
	// Statement is the signed in-toto statement, as JSON.
	Statement []byte
}

// Verification is what Verify found valid.
type Verification struct {
	// Signatures counts the valid signatures by the key.
	Signatures int
	// Attestations lists the statements signed by the key whose subject is
	// the image, in the order they are stored.
	Attestations []Attestation
}

// ErrNotSigned is returned (wrapped) by Verify when no valid signature by
// the key is found for the image.
var ErrNotSigned = errors.New("no valid signature by the key")

// Verify checks, as `cosign verify --key` and `cosign verify-attestation
// --key` do, that the image at digest carries a signature by pub and
// returns the attestations pub signed about it. requiredPredicates lists
// predicate types (SPDX, SLSA provenance) that must be among them.
// Entries signed by other keys are ignored; an attestation signed by pub
// about another image is an error, since it can only come from tampering
// or a mix-up.
func Verify(ctx context.Context, digest name.Digest, pub *ecdsa.PublicKey, requiredPredicates []string, opts ...remote.Option) (*Verification, error) {
	opts = append(opts, remote.WithContext(ctx))
	if err := checkImage(digest, opts); err != nil {
		return nil, fmt.Errorf("verify %s: %w", digest, err)
	}
	sigTag, err := SignatureTag(digest)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	sigs, err := readEntries(sigTag, opts)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", digest, err)
	}
	v := &Verification{}
	for _, e := range sigs {
		if !validSimpleSignature(pub, e) {
			continue
		}
		var p simpleSigning
		if err := json.Unmarshal(e.data, &p); err != nil {
			return nil, fmt.Errorf("verify %s: signed payload does not parse: %w", digest, err)
		}
		if p.Critical.Type != simpleSigningType || p.Critical.Image.DockerManifestDigest != digest.DigestStr() {
			return nil, fmt.Errorf("verify %s: a signature by the key is for %q (%s), not this image", digest, p.Critical.Image.DockerManifestDigest, p.Critical.Type)
		}
		v.Signatures++
	}
	if v.Signatures == 0 {
		return nil, fmt.Errorf("verify %s: %w among %d entries under %s", digest, ErrNotSigned, len(sigs), sigTag.TagStr())
	}

	attTag, err := AttestationTag(digest)
	if err != nil {
		return nil, fmt.Errorf("verify: %w", err)
	}
	atts, err := readEntries(attTag, opts)
	if err != nil {
		return nil, fmt.Errorf("verify %s: %w", digest, err)
	}
	for _, e := range atts {
		payload, ok := openEnvelope(pub, e)
		if !ok {
			continue
		}
		s, err := parseStatement(payload)
		if err != nil {
			return nil, fmt.Errorf("verify %s: %w", digest, err)
		}
		if !s.about(digest) {
			return nil, fmt.Errorf("verify %s: a %s attestation signed by the key is about another image", digest, s.PredicateType)
		}
		v.Attestations = append(v.Attestations, Attestation{PredicateType: s.PredicateType, Statement: payload})
	}
	for _, want := range requiredPredicates {
		found := false
		for _, a := range v.Attestations {
			found = found || a.PredicateType == want
		}
		if !found {
			return nil, fmt.Errorf("verify %s: no %s attestation signed by the key under %s", digest, want, attTag.TagStr())
		}
	}
	return v, nil
}
