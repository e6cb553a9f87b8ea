package imagebuild

import (
	"context"
	"encoding/json"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"slipway.dev/slipway/internal/signing"
)

func TestGoPURL(t *testing.T) {
	for _, tc := range []struct{ path, version, want string }{
		{"github.com/google/go-cmp", "v0.7.0", "pkg:golang/github.com/google/go-cmp@v0.7.0"},
		{"github.com/Azure/go-autorest", "v14.2.0+incompatible", "pkg:golang/github.com/Azure/go-autorest@v14.2.0%2Bincompatible"},
		{"example.com/tea", "", "pkg:golang/example.com/tea"},
		{"stdlib", "go1.26.8", "pkg:golang/stdlib@go1.26.8"},
	} {
		if got := GoPURL(tc.path, tc.version); got != tc.want {
			t.Errorf("GoPURL(%q, %q) = %q, want %q", tc.path, tc.version, got, tc.want)
		}
	}
}

func TestSPDXFromBuildInfo(t *testing.T) {
	info := &debug.BuildInfo{
		GoVersion: "go1.26.8",
		Path:      "example.com/tea/cmd/tea",
		Main:      debug.Module{Path: "example.com/tea", Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "github.com/google/go-cmp", Version: "v0.7.0", Sum: "h1:wk8382ETsv4JYUZwIsn6YpYiWiBsYLSJiTsyBybVuN8="},
			{Path: "example.com/old", Version: "v1.0.0", Replace: &debug.Module{Path: "example.com/new", Version: "v1.1.0", Sum: "h1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA="}},
		},
	}
	digest := v1.Hash{Algorithm: "sha256", Hex: strings.Repeat("0f", 32)}
	epoch := time.Unix(1700000000, 0)
	doc, err := SPDX(info, digest, epoch, "slipway-test")
	if err != nil {
		t.Fatal(err)
	}
	again, _ := SPDX(info, digest, epoch, "slipway-test")
	a, _ := json.Marshal(doc)
	b, _ := json.Marshal(again)
	if string(a) != string(b) {
		t.Fatal("the same build information gave two documents")
	}
	if doc.SPDXVersion != "SPDX-2.3" || doc.CreationInfo.Created != "2023-11-14T22:13:20Z" || !strings.HasSuffix(doc.DocumentNamespace, digest.Hex) {
		t.Fatalf("document header %+v", doc)
	}
	byName := map[string]SPDXPackage{}
	for _, p := range doc.Packages {
		byName[p.Name] = p
	}
	cmp := byName["github.com/google/go-cmp"]
	if cmp.VersionInfo != "v0.7.0" || cmp.ExternalRefs[0].ReferenceLocator != "pkg:golang/github.com/google/go-cmp@v0.7.0" {
		t.Errorf("go-cmp package %+v", cmp)
	}
	if len(cmp.Checksums) != 1 || cmp.Checksums[0].Algorithm != "SHA256" || cmp.Checksums[0].ChecksumValue != "c24f37f36113b2fe0961467022c9fa6296225a206c60b489893b320726d5b8df" {
		t.Errorf("go-cmp checksum %+v", cmp.Checksums)
	}
	if _, ok := byName["example.com/old"]; ok || byName["example.com/new"].VersionInfo != "v1.1.0" {
		t.Error("a replaced module is listed under its original name, not what was built")
	}
	if byName["stdlib"].VersionInfo != "go1.26.8" || byName["example.com/tea"].VersionInfo != "" {
		t.Errorf("stdlib %+v main %+v", byName["stdlib"], byName["example.com/tea"])
	}
	if len(doc.Relationships) != 1+1+2 || doc.Relationships[0].Type != "DESCRIBES" {
		t.Errorf("relationships %+v", doc.Relationships)
	}
	for _, p := range doc.Packages {
		if strings.Trim(p.SPDXID, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-") != "" {
			t.Errorf("SPDXID %q has characters SPDX does not allow", p.SPDXID)
		}
	}
}

func TestProvenanceRefusesCredentials(t *testing.T) {
	_, err := Provenance(ProvenanceInput{BuilderID: "b", SourceRepo: "https://dev:hunter2@git.example.com/tea.git", SourceCommit: "abc"})
	if err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Fatalf("want a refusal that does not quote the password, got %v", err)
	}
}

// TestBuildSignAttestVerify runs the build half of a pipeline run: build
// the Go service, push it, sign it, attach its SBOM and provenance, and
// verify all of it from the registry with the public key.
func TestBuildSignAttestVerify(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	epoch := time.Unix(1700000000, 0)
	started := time.Now()
	res := buildTea(t, ctx, writeModule(t), epoch)
	reg := startRegistry(t)
	ref, err := Push(ctx, res.Image, reg.Host()+"/demo/tea:main", reg.auth())
	if err != nil {
		t.Fatal(err)
	}
	imgDigest := digest(t, res.Image)

	doc, err := SPDX(res.BuildInfo, imgDigest, epoch, "slipway-test")
	if err != nil {
		t.Fatal(err)
	}
	sbom, err := Statement(ref.Context().Name(), imgDigest, PredicateSPDX, doc)
	if err != nil {
		t.Fatal(err)
	}
	pred, err := Provenance(ProvenanceInput{
		BuilderID:    "https://slipway.dev/lab/pipelines/demo/tea",
		SourceRepo:   "http://127.0.0.1:9418/dev/tea.git",
		SourceCommit: "0123456789abcdef0123456789abcdef01234567",
		SourceRef:    "refs/heads/main",
		Parameters:   res.Parameters,
		BaseImage:    reg.Host() + "/base/static@sha256:" + strings.Repeat("ab", 32),
		InvocationID: "run-1",
		StartedOn:    started,
		FinishedOn:   time.Now(),
	})
	if err != nil {
		t.Fatal(err)
	}
	prov, err := Statement(ref.Context().Name(), imgDigest, PredicateSLSAProvenance, pred)
	if err != nil {
		t.Fatal(err)
	}

	key, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	if err := signing.SignImage(ctx, ref, key, reg.auth()); err != nil {
		t.Fatal(err)
	}
	for _, s := range [][]byte{sbom, prov} {
		if err := signing.Attest(ctx, ref, key, s, reg.auth()); err != nil {
			t.Fatal(err)
		}
	}
	v, err := signing.Verify(ctx, ref, &key.PublicKey, []string{PredicateSPDX, PredicateSLSAProvenance}, reg.auth())
	if err != nil {
		t.Fatal(err)
	}

	var gotSBOM struct {
		Subject []struct {
			Digest map[string]string `json:"digest"`
		} `json:"subject"`
		Predicate SPDXDocument `json:"predicate"`
	}
	var gotProv struct {
		Predicate struct {
			BuildDefinition struct {
				BuildType          string         `json:"buildType"`
				ExternalParameters map[string]any `json:"externalParameters"`
			} `json:"buildDefinition"`
			RunDetails struct {
				Builder struct {
					ID string `json:"id"`
				} `json:"builder"`
			} `json:"runDetails"`
		} `json:"predicate"`
	}
	for _, a := range v.Attestations {
		target := any(&gotProv)
		if a.PredicateType == PredicateSPDX {
			target = &gotSBOM
		}
		if err := json.Unmarshal(a.Statement, target); err != nil {
			t.Fatal(err)
		}
	}
	if gotSBOM.Subject[0].Digest["sha256"] != imgDigest.Hex {
		t.Errorf("SBOM subject %v", gotSBOM.Subject)
	}
	found := false
	for _, p := range gotSBOM.Predicate.Packages {
		if p.ExternalRefs[0].ReferenceLocator == "pkg:golang/github.com/google/go-cmp@v0.7.0" && len(p.Checksums) == 1 {
			found = true
		}
	}
	if !found {
		t.Errorf("the verified SBOM lacks go-cmp with its checksum: %+v", gotSBOM.Predicate.Packages)
	}
	bd := gotProv.Predicate.BuildDefinition
	if bd.BuildType != DefaultGoBuildType || bd.ExternalParameters["package"] != "./cmd/tea" || gotProv.Predicate.RunDetails.Builder.ID != "https://slipway.dev/lab/pipelines/demo/tea" {
		t.Errorf("provenance %+v", gotProv.Predicate)
	}
	src := bd.ExternalParameters["source"].(map[string]any)
	if src["uri"] != "git+http://127.0.0.1:9418/dev/tea.git@refs/heads/main" {
		t.Errorf("provenance source %v", src)
	}
}
