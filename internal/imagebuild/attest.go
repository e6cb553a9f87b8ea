package imagebuild

import (
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"runtime/debug"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Predicate types of the statements the pipeline attaches, as cosign
// names them (cosign attest --type spdxjson, slsaprovenance1).
const (
	PredicateSPDX           = "https://spdx.dev/Document"
	PredicateSLSAProvenance = "https://slsa.dev/provenance/v1"
)

// DefaultGoBuildType identifies, in provenance, the build BuildGo does;
// its parameters are GoResult.Parameters.
const DefaultGoBuildType = "https://slipway.dev/buildtypes/go/v1"

// Statement returns an in-toto Statement v1 about the image digest (its
// repository as the subject name) carrying predicate.
func Statement(subjectName string, digest v1.Hash, predicateType string, predicate any) ([]byte, error) {
	if digest.Algorithm == "" || digest.Hex == "" {
		return nil, errors.New("in-toto statement: the subject digest is empty")
	}
	return json.Marshal(struct {
		Type          string `json:"_type"`
		Subject       []any  `json:"subject"`
		PredicateType string `json:"predicateType"`
		Predicate     any    `json:"predicate"`
	}{
		Type:          "https://in-toto.io/Statement/v1",
		Subject:       []any{map[string]any{"name": subjectName, "digest": map[string]string{digest.Algorithm: digest.Hex}}},
		PredicateType: predicateType,
		Predicate:     predicate,
	})
}

// SPDX types: the subset of SPDX 2.3 a Go binary's build information
// fills.
type (
	SPDXDocument struct {
		SPDXVersion       string             `json:"spdxVersion"`
		DataLicense       string             `json:"dataLicense"`
		SPDXID            string             `json:"SPDXID"`
		Name              string             `json:"name"`
		DocumentNamespace string             `json:"documentNamespace"`
		CreationInfo      SPDXCreationInfo   `json:"creationInfo"`
		Packages          []SPDXPackage      `json:"packages"`
		Relationships     []SPDXRelationship `json:"relationships"`
	}
	SPDXCreationInfo struct {
		Created  string   `json:"created"`
		Creators []string `json:"creators"`
	}
	SPDXPackage struct {
		Name             string            `json:"name"`
		SPDXID           string            `json:"SPDXID"`
		VersionInfo      string            `json:"versionInfo,omitempty"`
		Supplier         string            `json:"supplier"`
		DownloadLocation string            `json:"downloadLocation"`
		FilesAnalyzed    bool              `json:"filesAnalyzed"`
		LicenseConcluded string            `json:"licenseConcluded"`
		LicenseDeclared  string            `json:"licenseDeclared"`
		CopyrightText    string            `json:"copyrightText"`
		Checksums        []SPDXChecksum    `json:"checksums,omitempty"`
		ExternalRefs     []SPDXExternalRef `json:"externalRefs,omitempty"`
	}
	SPDXChecksum struct {
		Algorithm     string `json:"algorithm"`
		ChecksumValue string `json:"checksumValue"`
	}
	SPDXExternalRef struct {
		ReferenceCategory string `json:"referenceCategory"`
		ReferenceType     string `json:"referenceType"`
		ReferenceLocator  string `json:"referenceLocator"`
	}
	SPDXRelationship struct {
		Element string `json:"spdxElementId"`
		Type    string `json:"relationshipType"`
		Related string `json:"relatedSpdxElement"`
	}
)

// SPDX describes, as an SPDX 2.3 document, what went into a Go binary:
// its main module, the Go standard library, and every module it links,
// as the binary itself records them (debug/buildinfo), so that the SBOM
// lists what was built rather than what go.mod asked for. created is the
// document's creation time; pass the build's SOURCE_DATE_EPOCH to keep
// the document reproducible. imageDigest makes the namespace unique.
func SPDX(info *debug.BuildInfo, imageDigest v1.Hash, created time.Time, tool string) (*SPDXDocument, error) {
	if info == nil || info.Main.Path == "" {
		return nil, errors.New("SPDX document: build information without a main module")
	}
	doc := &SPDXDocument{
		SPDXVersion:       "SPDX-2.3",
		DataLicense:       "CC0-1.0",
		SPDXID:            "SPDXRef-DOCUMENT",
		Name:              info.Path,
		DocumentNamespace: "https://slipway.dev/spdx/" + url.PathEscape(info.Path) + "/" + imageDigest.Hex,
		CreationInfo: SPDXCreationInfo{
			Created:  created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: " + tool},
		},
	}
	add := func(m debug.Module) string {
		if m.Replace != nil {
			m = *m.Replace
		}
		id := fmt.Sprintf("SPDXRef-Package-%d-%s", len(doc.Packages), spdxIDPart(m.Path))
		p := SPDXPackage{
			Name:             m.Path,
			SPDXID:           id,
			Supplier:         "NOASSERTION",
			DownloadLocation: "NOASSERTION",
			LicenseConcluded: "NOASSERTION",
			LicenseDeclared:  "NOASSERTION",
			CopyrightText:    "NOASSERTION",
		}
		if m.Version != "" && m.Version != "(devel)" {
			p.VersionInfo = m.Version
		}
		p.ExternalRefs = []SPDXExternalRef{{
			ReferenceCategory: "PACKAGE-MANAGER",
			ReferenceType:     "purl",
			ReferenceLocator:  GoPURL(m.Path, p.VersionInfo),
		}}
		if sum, ok := h1ToHex(m.Sum); ok {
			p.Checksums = []SPDXChecksum{{Algorithm: "SHA256", ChecksumValue: sum}}
		}
		doc.Packages = append(doc.Packages, p)
		return id
	}
	mainID := add(info.Main)
	doc.Relationships = append(doc.Relationships, SPDXRelationship{"SPDXRef-DOCUMENT", "DESCRIBES", mainID})
	stdID := add(debug.Module{Path: "stdlib", Version: info.GoVersion})
	doc.Relationships = append(doc.Relationships, SPDXRelationship{mainID, "DEPENDS_ON", stdID})
	for _, dep := range info.Deps {
		doc.Relationships = append(doc.Relationships, SPDXRelationship{mainID, "DEPENDS_ON", add(*dep)})
	}
	return doc, nil
}

// spdxIDPart keeps the characters SPDX allows in an identifier.
func spdxIDPart(s string) string {
	return strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, s)
}

// h1ToHex turns a go.sum "h1:" hash (base64 SHA-256 of the module's file
// list) into the hex form SPDX checksums take.
func h1ToHex(sum string) (string, bool) {
	b64, ok := strings.CutPrefix(sum, "h1:")
	if !ok {
		return "", false
	}
	raw, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(raw) != 32 {
		return "", false
	}
	return hex.EncodeToString(raw), true
}

// GoPURL returns the package URL of a Go module: pkg:golang/<path>@<version>,
// each part percent-encoded as the purl specification asks ("+incompatible"
// becomes "%2Bincompatible"). The version is left out when empty.
func GoPURL(modulePath, version string) string {
	segs := strings.Split(modulePath, "/")
	for i, s := range segs {
		segs[i] = purlEscape(s)
	}
	p := "pkg:golang/" + strings.Join(segs, "/")
	if version != "" {
		p += "@" + purlEscape(version)
	}
	return p
}

func purlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '-' || c == '_' || c == '~' {
			b.WriteByte(c)
		} else {
			b.WriteString("%" + strings.ToUpper(strconv.FormatInt(int64(c)|0x100, 16)[1:]))
		}
	}
	return b.String()
}

// ProvenanceInput is what a SLSA v1 provenance statement records about a
// build.
type ProvenanceInput struct {
	// BuilderID names the builder that ran the build: the Slipway
	// installation and its pipeline, e.g.
	// "https://slipway.example.com/pipelines/shop/tea".
	BuilderID string
	// BuildType says how to read Parameters; DefaultGoBuildType when empty.
	BuildType string
	// SourceRepo is the clone URL of the source; it must not carry
	// credentials. SourceCommit is the full commit id built.
	SourceRepo   string
	SourceCommit string
	// SourceRef is the branch or tag that triggered the build, if any.
	SourceRef string
	// Parameters are the build's external parameters (GoResult.Parameters).
	Parameters map[string]any
	// BaseImage, when not empty, is the base image pinned by digest
	// ("registry/repo@sha256:…"), recorded as a resolved dependency.
	BaseImage string
	// InvocationID identifies the run (the PipelineRun's UID).
	InvocationID          string
	StartedOn, FinishedOn time.Time
}

// Provenance returns the SLSA v1 provenance predicate for the image.
func Provenance(in ProvenanceInput) (map[string]any, error) {
	if in.BuilderID == "" || in.SourceRepo == "" || in.SourceCommit == "" {
		return nil, errors.New("SLSA provenance: builder id, source repository and commit are required")
	}
	u, err := url.Parse(in.SourceRepo)
	if err != nil {
		// url.Error quotes the URL, which may hold credentials.
		return nil, errors.New("SLSA provenance: the source repository URL does not parse")
	}
	if u.User != nil {
		return nil, fmt.Errorf("SLSA provenance: the source repository URL %s carries credentials; pass it without them", u.Redacted())
	}
	buildType := in.BuildType
	if buildType == "" {
		buildType = DefaultGoBuildType
	}
	sourceURI := "git+" + in.SourceRepo
	if in.SourceRef != "" {
		sourceURI += "@" + in.SourceRef
	}
	external := map[string]any{
		"source": map[string]any{"uri": sourceURI, "digest": map[string]string{"gitCommit": in.SourceCommit}},
	}
	for k, v := range in.Parameters {
		external[k] = v
	}
	deps := []any{map[string]any{"uri": sourceURI, "digest": map[string]string{"gitCommit": in.SourceCommit}}}
	if in.BaseImage != "" {
		repo, digest, ok := strings.Cut(in.BaseImage, "@")
		algo, hexDigest, ok2 := strings.Cut(digest, ":")
		if !ok || !ok2 {
			return nil, fmt.Errorf("SLSA provenance: base image %q is not pinned by digest", in.BaseImage)
		}
		imageName := repo[strings.LastIndexByte(repo, '/')+1:]
		deps = append(deps, map[string]any{
			"uri":    "pkg:oci/" + purlEscape(imageName) + "@" + purlEscape(digest) + "?repository_url=" + url.QueryEscape(repo),
			"digest": map[string]string{algo: hexDigest},
		})
	}
	metadata := map[string]any{}
	if in.InvocationID != "" {
		metadata["invocationId"] = in.InvocationID
	}
	if !in.StartedOn.IsZero() {
		metadata["startedOn"] = in.StartedOn.UTC().Format(time.RFC3339)
	}
	if !in.FinishedOn.IsZero() {
		metadata["finishedOn"] = in.FinishedOn.UTC().Format(time.RFC3339)
	}
	return map[string]any{
		"buildDefinition": map[string]any{
			"buildType":            buildType,
			"externalParameters":   external,
			"resolvedDependencies": deps,
		},
		"runDetails": map[string]any{
			"builder":  map[string]any{"id": in.BuilderID},
			"metadata": metadata,
		},
	}, nil
}
