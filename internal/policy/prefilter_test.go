package policy

import (
	"regexp"
	"testing"
)

// prefilterPatterns are the packs' default patterns and patterns of every shape
// required handles (and some it must refuse).
func prefilterPatterns(t testing.TB) []string {
	t.Helper()
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, p := range pol.params {
		if s, ok := p.value.(string); ok {
			out = append(out, s)
		}
	}
	if len(out) < 3 {
		t.Fatalf("fin-kr has %d string parameters, want its three patterns", len(out))
	}
	return append(out,
		"(^|/)(docker|containerd|crio|cri-dockerd|podman|dockershim)[.]sock$",
		"abc", "a(b|c)d", "(?i)kelvin|sess", "x+y{2,}", "(ab)*c", "a?", "(?i)a|b", "a|(?i)b", "[a-z]+", "^$", "(?i)straße", "a{0}b")
}

// FuzzLiteralPrefilter: the prefilter never rejects a string the pattern matches.
func FuzzLiteralPrefilter(f *testing.F) {
	for _, s := range []string{"", "registry.slipway.internal/prometheus:2", "DB_PASSWORD", "api-Key", "\u212aelvin", "ſess", "/var/run/docker.sock", "STRASSE", "ab", "xyy"} {
		f.Add(s)
	}
	var patterns []*regexp.Regexp
	var filters []func(string) bool
	f.Fuzz(func(t *testing.T, s string) {
		if patterns == nil {
			for _, p := range prefilterPatterns(t) {
				patterns = append(patterns, regexp.MustCompile(p))
				filters = append(filters, literalPrefilter(p))
			}
		}
		for i, re := range patterns {
			if filters[i] != nil && !filters[i](s) && re.MatchString(s) {
				t.Errorf("pattern %q matches %q, but the prefilter rejected it", re, s)
			}
		}
	})
}

// TestLiteralPrefilter pins which patterns get a prefilter and what it rejects.
func TestLiteralPrefilter(t *testing.T) {
	for _, c := range []struct {
		pattern       string
		reject, allow []string // nil reject: no prefilter expected
	}{
		{pattern: "(^|/)(prometheus|alertmanager|grafana|loki|thanos|elasticsearch|opensearch)(:|@|$)",
			reject: []string{"registry.slipway.internal/team-1/app:1.0", ""}, allow: []string{"grafana/grafana:11", "x/lokiz"}},
		{pattern: "(?i)(passw(or)?d|secret|token|api[-_]?key|private[-_]?key|credential|access[-_]?key)",
			reject: []string{"MODE", "DB_HOST"}, allow: []string{"DB_PASSWORD", "Token", "API_KEY", "to\u212aen"}},
		{pattern: "a?"},
		{pattern: "[a-z]+"},
		{pattern: "a|(?i)b"},
	} {
		mayMatch := literalPrefilter(c.pattern)
		if (mayMatch == nil) != (c.reject == nil) {
			t.Errorf("%q: prefilter present %v, want %v", c.pattern, mayMatch != nil, c.reject != nil)
			continue
		}
		for _, s := range c.reject {
			if mayMatch(s) {
				t.Errorf("%q: prefilter passes %q, want it rejected", c.pattern, s)
			}
		}
		for _, s := range c.allow {
			if !mayMatch(s) {
				t.Errorf("%q: prefilter rejects %q", c.pattern, s)
			}
		}
	}
}
