package policy

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	yamlv2 "go.yaml.in/yaml/v2"
	"sigs.k8s.io/yaml"
)

// referenceDecodeYAML is the conversion decodeYAML must agree with: what
// kubectl does to a manifest (sigs.k8s.io/yaml.YAMLToJSONStrict), then the
// API machinery's JSON decoding with integers kept as int64.
func referenceDecodeYAML(data []byte) (obj map[string]any, err error) {
	defer func() {
		if r := recover(); r != nil {
			obj, err = nil, fmt.Errorf("the YAML parser failed on this document: %v", r)
		}
	}()
	js, err := yaml.YAMLToJSONStrict(data)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	return decodeJSON(js)
}

// checkDecodersAgree compares decodeYAML, its fast path and its general path
// with the reference on data. It returns whether the fast path took it.
func checkDecodersAgree(t *testing.T, data []byte) bool {
	t.Helper()
	want, wantErr := referenceDecodeYAML(data)

	fast, fastOK := decodeYAMLFast(data) // no recover: a panic here is a bug to see
	if fastOK {
		if wantErr != nil {
			t.Fatalf("fast path accepted what the reference refuses (%v):\n%q\ngot %#v", wantErr, data, fast)
		}
		if !reflect.DeepEqual(fast, want) {
			t.Fatalf("fast path differs from the reference on\n%q\ngot  %#v\nwant %#v", data, fast, want)
		}
	}

	full, fullErr := decodeYAMLFull(data)
	switch {
	case errors.Is(fullErr, errKeyCollision):
		// The reference keeps one of the colliding values at random; show that
		// it lost an entry.
		if wantErr == nil {
			var tree any
			if err := yamlv2.UnmarshalStrict(data, &tree); err != nil {
				t.Fatalf("reference accepted what yaml.v2 refuses: %v", err)
			}
			if countEntries(tree) == countEntries(want) {
				t.Fatalf("key collision reported on\n%q\nbut the reference kept every entry: %#v", data, want)
			}
		}
	case wantErr != nil:
		if fullErr == nil {
			t.Fatalf("general path accepted what the reference refuses (%v):\n%q\ngot %#v", wantErr, data, full)
		}
		// With several keys that cannot be converted, the reference reports
		// whichever map iteration meets first.
		if fullErr.Error() != wantErr.Error() && !strings.Contains(wantErr.Error(), "unsupported map key") {
			t.Fatalf("general path error differs on\n%q\ngot  %v\nwant %v", data, fullErr, wantErr)
		}
	case fullErr != nil:
		t.Fatalf("general path refuses what the reference accepts (%#v):\n%q\n%v", want, data, fullErr)
	case !reflect.DeepEqual(full, want):
		t.Fatalf("general path differs from the reference on\n%q\ngot  %#v\nwant %#v", data, full, want)
	}

	got, err := decodeYAML(data)
	if fastOK {
		if err != nil || !reflect.DeepEqual(got, fast) {
			t.Fatalf("decodeYAML did not return the fast path's result on %q", data)
		}
	} else if (err == nil) != (fullErr == nil) || !reflect.DeepEqual(got, full) {
		t.Fatalf("decodeYAML did not return the general path's result on %q", data)
	}
	return fastOK
}

// countEntries counts the entries of all mappings in a decoded value.
func countEntries(v any) int {
	n := 0
	switch v := v.(type) {
	case map[any]any:
		for _, e := range v {
			n += 1 + countEntries(e)
		}
	case map[string]any:
		for _, e := range v {
			n += 1 + countEntries(e)
		}
	case []any:
		for _, e := range v {
			n += countEntries(e)
		}
	}
	return n
}

// trickyYAML are documents where YAML 1.1, yaml.v2, sigs.k8s.io/yaml and the
// JSON round trip each have a say.
var trickyYAML = []string{
	// YAML 1.1 booleans and nulls, as kubectl sends them.
	"a: yes\nb: no\nc: on\nd: off\ne: y\nf: n\ng: Y\nh: N\ni: True\nj: TRUE\nk: tRUE\nl: YES\nm: oN\n",
	"privileged: yes\n", "privileged: 'yes'\n", "privileged: \"true\"\n", "privileged: On\n", "privileged: Off\n",
	"a:\nb: ~\nc: null\nd: Null\ne: NULL\nf: nULL\ng: ''\n",
	// Integers: octal, hex, binary, signs, underscores, the edges of int64 and uint64.
	"a: 0755\nb: 0o755\nc: 0x1F\nd: -0x1F\ne: +12\nf: 1_000\ng: 0b101\nh: -0b101\ni: 0b-1\nj: 0b+1\nk: 08\nl: 0x\n",
	"a: 9223372036854775807\nb: 9223372036854775808\nc: -9223372036854775808\nd: -9223372036854775809\n",
	"a: 18446744073709551615\nb: 18446744073709551616\nc: 99999999999999999999999\nd: 0xFFFFFFFFFFFFFFFFF\ne: 0xFFFFFFFFFFFFFFFF\n",
	"a: 0b1111111111111111111111111111111111111111111111111111111111111111\nb: -0b1111111111111111111111111111111111111111111111111111111111111111\n",
	"a: 1__0\nb: _1\nc: 1_\nd: 0x_1F\ne: +\nf: '-'\ng: -\n",
	// Floats: integral ones become int64 after the JSON round trip.
	"a: 1e3\nb: 1E3\nc: 1.0\nd: 1.5\ne: .5\nf: -.5\ng: 1.\nh: 1e21\ni: 1e20\nj: 1e-7\nk: -0.0\nl: -0\nm: 0.1\n",
	"a: 1e400\nb: 6.02e23\nc: 9.223372036854775807e18\nd: -9.223372036854775808e18\ne: 1e+3\nf: .5e1\ng: 1.5_0\nh: .5_0\ni: 0x1p-2\n",
	"a: .inf\n", "a: -.Inf\n", "a: +.INF\n", "a: .NaN\n", "a: [.nan]\n", "a: {b: -.inf}\n", "a: infinity\nb: nan\nc: .infinity\n",
	"a: 1:30\nb: 12:30:00\nc: 190:20:30.15\n",
	// Strings that look like other things, quoting and escapes.
	"a: \"1\"\nb: '1.5'\nc: \"yes\"\nd: 'null'\ne: \"\"\n",
	`a: "a\tb\n\\ \"q\" \' \x41 \u00e9 \U0001F600 \0 \a \b \v \f \r \e \N \_ \L \P \ "` + "\n",
	`a: "\ud800"` + "\n", `a: "\/"` + "\n", `a: "\x4"` + "\n", `a: "\U00110000"` + "\n", `a: "\q"` + "\n",
	"a: 'it''s'\nb: ''''\nc: 'a\\n'\n",
	"a: \"a # b\"\nb: a #b\nc: a#b\nd: http://x:80/y#z\ne: nginx:1.2\nf: -1\ng: --verbose\nh: a  b   \ni: ~x\nj: .x\n",
	"a: - b\n", "a: -\n", "a: b: c\n", "a: b:\n", "a: :b\n", "a: ?b\n", "a: b ? c\n", "a:b\n", "a :b\n", "a : b\n", "a   : b\n",
	"a: <<\n", "a: =\n", "a: [<<]\n", "a: %x\n", "a: @x\n", "a: `x\n", "a: !x\n", "a: &x\n", "a: *x\n", "a: |x\n",
	// Timestamps stay the text they were written as.
	"a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\nc: 2001-12-14 21:59:43.10 -5\nd: 2001-13-14\ne: 2001-1-1\nf: 12001-12-14\n",
	"2001-12-14: a\n", "a: !!timestamp 2001-12-14\n",
	// Tags.
	"a: !!binary aGVsbG8=\n", "a: !!binary /w==\n", "!!binary /w==: a\n!!binary /g==: b\n", "a: !!binary '%%'\n",
	"a: !!str 1\nb: !!int \"1\"\nc: !!float 1\nd: !foo bar\ne: !!null ''\nf: !!bool yes\ng: !!float '1e3'\n",
	"a: !!int 1.5\n", "a: !!map {b: 1}\n", "a: !!seq [1]\n", "a: !!set {b}\n",
	// Anchors, aliases, merge keys.
	"a: &x {b: 1}\nc: *x\n", "<<: {a: 1}\nb: 2\n", "<<: [{a: 1}, {a: 2}]\n", "a: 1\n<<: {a: 2}\n", "<<: {a: 2}\na: 1\n",
	"<<: a\n", "\"<<\": {a: 1}\n", "'<<': 1\n", "a: &a [*a]\n", "a: *nope\n",
	"a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n",
	// Duplicate keys, also across quoting and styles.
	"a: 1\na: 2\n", "a: 1\n\"a\": 2\n", "a: {b: 1, b: 2}\n", "a:\n  b: 1\n  'b': 2\n", "0x10: a\n16: b\n",
	// Keys that are not strings; some collide once converted.
	"1: a\n", "1: a\n\"1\": b\n", "true: a\n", "yes: a\n\"true\": b\n", "~: a\n", "null: a\n", "1.5: a\n", ".inf: a\n",
	".nan: a\n.nan: b\n", "18446744073709551615: a\n", "[a]: b\n", "{a: 1}: b\n", "? a\n: b\n", "? [a]\n: b\n",
	"a: {1: b}\n", "a: {y: b}\n", "1e3: a\n1000: b\n", "0.1: a\n",
	// Not mappings, empty.
	"", "# only a comment\n", "---\n", "a\n", "[a]\n", "\"a\"\n", "null\n", "~\n", "- a\n- b\n", "1\n", "...\n", "a: b\n...\n",
	"--- a\n", "--- {a: b}\n", "%YAML 1.1\n---\na: b\n", "a: b\n---\nc: d\n", "---a: b\n", "...a: b\n",
	// Multi-line scalars.
	"a: |\n  x\n  y\n", "a: >\n  x\n\n  y\n", "a: |-\n x\n", "a: |+\n x\n\n", "a: b\n  c\n", "a: b\n\n  c\n", "a: \"b\n  c\"\n",
	"a: 'b\n\n  c'\n", "a: \"b\\\n  c\"\n", "- a\n  b\n", "a:\n- b\n c\n", "a: b\n# c\n  d: e\n", "a:\n  b\n",
	// Structure.
	"a:\n- b\n- c\nd: e\n", "a:\n  - b\n  - c\nd: e\n", "a:\n    b: 1\n    c: 2\nd: 3\n", "a:\n  b: 1\n c: 2\n",
	"a:\n  - x\n  b: 1\n", "a:\n  - x\n - y\n", "a:\n- b:\n  - c\n", "a:\n- b:\n  c: 1\n", "a:\n- b:\n- c\n",
	"a:\n-   b: 1\n    c: 2\n", "a:\n- b: 1\n c: 2\n", "a:\n- b: 1\n   c: 2\n", "a:\n- - b\n", "a:\n-\n  b: 1\n", "a:\n- # c\n  b\n",
	"a:\n- b\n-\n", "a:\n- 'b': c\n", "a:\n- 'b' c\n", "a:\n- [b]: c\n", "a:\n- {b: c}\n- [d, e]\n", "a:\n- b: c\n  - d\n",
	"a:\n  b:\n  c:\n", "a:\n\n\n  # x\n  b: 1\n", " a: 1\n", "a: 1\n b: 2\n", "a: 1\n- b\n",
	"a: [1, 2,]\n", "a: {b: 1,}\n", "a: [b: 1]\n", "a: [\"b\": 1]\n", "a: {b}\n", "a: {b:c}\n", "a: {\"b\":c}\n", "a: {'b':c, d: e}\n",
	"a: [a, [b, {c: d}]]\n", "a: {}\nb: []\nc: [{}, []]\n", "a: {b: }\n", "a: {b: ,c: d}\n", "a: [b, , c]\n", "a: [,]\n",
	"a: {b: c: d}\n", "a: [b, c]d\n", "a: {b: 'c'd}\n", "a: [b\n  , c]\n", "a: {b: c\n  }\n", "a: [b #c\n  ]\n",
	"a: [b c, d  e ]\n", "a: [-b, -, --c]\n", "a: [- b]\n", "a: {? b: c}\n", "a: [b?c]\n", "a: [b:c]\n", "a: [b:]\n",
	"a: {b:: c}\n", "a: {b: :c}\n", "a: {\"b\" : c}\n", "\"a\" : b\n", "'a' :b\n", "\"a\":b\n", "a: {b: [c]}: d\n",
	// Comments.
	"a: b # c\n", "a: 'b'# c\n", "a: [b]# c\n", "a: {b: c} # d\n", "a: # c\n  b: 1\n", "# c\na: b\n  # c\n# c\n",
	"a: b\n#c\n", "a: b #c\n  #d\nc: d\n",
	// Tabs, CR, BOM, control and non-ASCII characters.
	"a:\tb\n", "a: b\tc\n", "\ta: b\n", "a:\n\t- b\n", "a: b\r\nc: d\r\n", "a: b\rc: d\n", "\ufeffa: b\n", "a: \ufeffb\n",
	"a: é\n", "é: a\n", "a: x\u2028y\n", "a: x\u0085y\n", "a: \u00a0\n", "a: \U0001F600\n", "a: \x7f\n", "a: \x00\n",
	"a: \xff\n", "a: \"\xff\"\n", "a: \ufffe\n", "a: \uffff\n", "a: \ud7ff\ue000\n",
	// The 1024-character limit on implicit keys.
	strings.Repeat("k", 1000) + ": a\n", strings.Repeat("k", 1023) + ": a\n", strings.Repeat("k", 1024) + ": a\n",
	strings.Repeat("k", 1025) + ": a\n", "a: {" + strings.Repeat("k", 1030) + ": b}\n",
	"\"" + strings.Repeat("k", 1022) + "\": a\n", "\"" + strings.Repeat("k", 1030) + "\": a\n",
	"a: " + strings.Repeat("v", 5000) + "\n",
	// Nesting.
	"a: " + strings.Repeat("[", 150) + strings.Repeat("]", 150) + "\n",
	"a: " + strings.Repeat("[", 250) + strings.Repeat("]", 250) + "\n",
	"a: " + strings.Repeat("[", 10001) + strings.Repeat("]", 10001) + "\n",
	"a: " + strings.Repeat("{a: ", 9999) + "1" + strings.Repeat("}", 9999) + "\n",
}

func TestDecodeYAMLMatchesReference(t *testing.T) {
	for _, doc := range trickyYAML {
		checkDecodersAgree(t, []byte(doc))
	}
}

// TestDecodeYAMLValues pins what the checker sees for values that matter to
// rules, independently of the reference.
func TestDecodeYAMLValues(t *testing.T) {
	for _, tc := range []struct {
		doc  string
		want any
	}{
		{"v: yes", true}, {"v: on", true}, {"v: No", false}, {"v: 'yes'", "yes"}, {"v: ~", nil},
		{"v: 0755", int64(493)}, {"v: 1.0", int64(1)}, {"v: 1e3", int64(1000)}, {"v: 1.5", 1.5},
		{"v: 9223372036854775808", 9223372036854775808.0}, {"v: 2001-12-14", "2001-12-14"}, {"v: \"8080\"", "8080"},
		{"v: [a, 1]", []any{"a", int64(1)}}, {"v: {}", map[string]any{}}, {"v: []", []any{}},
	} {
		obj, err := decodeYAML([]byte(tc.doc))
		if err != nil {
			t.Errorf("%q: %v", tc.doc, err)
			continue
		}
		if !reflect.DeepEqual(obj["v"], tc.want) {
			t.Errorf("%q: got %#v, want %#v", tc.doc, obj["v"], tc.want)
		}
	}
	for _, doc := range []string{"a: 1\na: 2\n", "privileged: true\nprivileged: false\n", "1: a\n\"1\": b\n", "a: .nan\n"} {
		if _, err := decodeYAML([]byte(doc)); err == nil {
			t.Errorf("%q: accepted", doc)
		}
	}
}

// TestDecodeYAMLFastPathCoverage checks that manifests as people write them
// take the fast path, and agree with the reference: the speed of reading
// depends on it.
func TestDecodeYAMLFastPathCoverage(t *testing.T) {
	streams := map[string][]byte{"bench": benchManifestStream(50)}
	files, _ := filepath.Glob("testdata/corpus/*.yaml")
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		streams[f] = data
	}
	for name, data := range streams {
		docs, fast := 0, 0
		err := splitDocuments(bytes.NewReader(data), name, DefaultMaxDocumentSize, func(d rawDocument) error {
			docs++
			if checkDecodersAgree(t, d.data) {
				fast++
			} else {
				t.Logf("%s: document %d (line %d) takes the general path", name, d.index, d.line)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("%s: %d of %d documents on the fast path", name, fast, docs)
		if name == "bench" && fast != docs {
			t.Errorf("%s: only %d of %d documents on the fast path", name, fast, docs)
		}
	}
}
