package policy

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"
)

// FuzzReader feeds arbitrary bytes to the manifest reader and evaluates whatever
// it accepts: neither may panic, and every accepted object has apiVersion and kind.
func FuzzReader(f *testing.F) {
	for _, file := range []string{"testdata/corpus/ingress-nginx.yaml", "testdata/corpus/monitoring.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Add([]byte(`{"apiVersion":"v1","kind":"List","items":[{"apiVersion":"v1","kind":"Pod","spec":{"containers":[{"securityContext":{"privileged":"yes"}}]}}]}`))
	f.Add([]byte("a: &a [*a, *a]\n---\n--- #\n...\n"))
	f.Add([]byte("apiVersion: v1\nkind: Pod\nspec: {containers: [{ports: [{hostPort: 1.5}]}], volumes: 7}\n"))
	pol, err := mustCatalog(f).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ctx := context.Background()
		_ = ReadManifests(ctx, []string{StdinPath}, ReadOptions{Stdin: bytes.NewReader(data), MaxDocumentSize: 64 << 10}, func(m Manifest) error {
			if m.Object["apiVersion"] == nil || m.Object["kind"] == nil {
				t.Fatalf("accepted an object without apiVersion or kind: %v", m.Object)
			}
			pol.EvaluateObject(ctx, m.Object, m.Ref, time.Now())
			return nil
		})
	})
}

// FuzzWaivers checks that the waiver parser never panics and that every waiver it
// accepts carries what makes it evidence.
func FuzzWaivers(f *testing.F) {
	f.Add([]byte(waiverYAML))
	f.Add([]byte("apiVersion: slipway.dev/v1alpha1\nkind: PolicyWaiver\nmetadata: {name: w}\nspec: {rule: FIN-WL-001, scope: {selector: {matchExpressions: [{key: a, operator: In, values: [b]}]}}, reason: r, approver: a, expires: '2030-01-01'}\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		ws, err := ParseWaivers(data, "fuzz.yaml")
		if err != nil {
			return
		}
		for _, w := range ws {
			if w.Name == "" || w.Reason == "" || w.Approver == "" || w.Expires.IsZero() {
				t.Fatalf("accepted an incomplete waiver %+v", w)
			}
		}
	})
}

// FuzzDecodeYAMLEquivalent holds decodeYAML, its fast path and its general path
// to the reference conversion (sigs.k8s.io/yaml.YAMLToJSONStrict, then JSON with
// integers kept) on arbitrary input: the same object, or an error from both.
func FuzzDecodeYAMLEquivalent(f *testing.F) {
	for _, doc := range trickyYAML {
		if len(doc) <= 4<<10 {
			f.Add([]byte(doc))
		}
	}
	streams := [][]byte{benchManifestStream(10)}
	for _, file := range []string{"testdata/corpus/ingress-nginx.yaml", "testdata/corpus/monitoring.yaml", "testdata/corpus/hardened.yaml"} {
		data, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		streams = append(streams, data)
	}
	for _, s := range streams {
		if err := splitDocuments(bytes.NewReader(s), "seed", DefaultMaxDocumentSize, func(d rawDocument) error {
			f.Add(bytes.Clone(d.data))
			return nil
		}); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) > 64<<10 {
			return
		}
		checkDecodersAgree(t, data)
		// Mutated bytes are rarely YAML; documents generated from them keep most
		// inputs valid and close to the edges of the fast path.
		checkDecodersAgree(t, yamlFromChoices(data))
	})
}

// yamlFromChoices generates a YAML document in which each choice (block or
// flow, key, scalar, indentation, spacing, comment) is taken from the next
// input byte; some choices inject fragments the fast path must refuse.
func yamlFromChoices(data []byte) []byte {
	g := &yamlGen{data: data}
	g.mapping(0, 0)
	return g.out.Bytes()
}

type yamlGen struct {
	data []byte
	out  bytes.Buffer
}

// next returns the next choice; once the input is used up, always 0, the
// simplest option, so generation ends.
func (g *yamlGen) next(n int) int {
	if len(g.data) == 0 {
		return 0
	}
	c := int(g.data[0])
	g.data = g.data[1:]
	return c % n
}

func (g *yamlGen) pick(list []string) string { return list[g.next(len(list))] }

// pickMostly picks from usual, and from odd one time in eight.
func (g *yamlGen) pickMostly(usual, odd []string) string {
	if g.next(8) == 7 {
		return g.pick(odd)
	}
	return g.pick(usual)
}

var (
	genKeys    = []string{"a", "b", "c", "key", "name", "x y", "a#b", "a:b", "é", "'q'", `"d"`, `"a b"`, "2001-12-14", ".x", "a "}
	genOddKeys = []string{`"e\x41"`, `''`, "'it''s'", "1", "yes", "~", "null", "<<", "1.5", "-a", "?a", "'a' ", `"<<"`, "k\u00a0", "a\tb", "[a]", "{a: 1}"}
	genScalars = []string{"v", "x y", "1", "0", "-1", "+1", "0755", "0o17", "0x1F", "0b101", "0b-1", "1_000", "1.0", "1.5", ".5",
		"1e3", "1e21", "1e-7", "-0.0", "9223372036854775807", "9223372036854775808", "18446744073709551616", "1e400",
		"yes", "No", "on", "OFF", "y", "n", "True", "~", "null", "2001-12-14", "2001-12-14 21:59:43.10 -5",
		"1:30", "100m", "128Mi", "nginx:1.2", "http://x/#y", "a #c", "a#b", "-", "--flag", "<<", "'q'", "''", "'it''s'",
		`"q"`, `""`, `"a\tb"`, `"\x41\u00e9\U0001F600"`, `"\N\_\L\P"`, `"a\"b"`, "é", "x\u00a0y", `"\x00"`}
	genOddScalars = []string{"", ".inf", ".NaN", `"\ud800"`, `"\/"`, "&a v", "*a", "!!str 1", "!!binary aGk=", "!!binary /w==",
		"|\n  text", ">-\n  text", "a: b", ": x", "? x", "'multi\n  line'", "plain\n  continued", "x\ty", "x\r",
		"v\ufeff", "x\u2028y", "- x", "'open", `"open`, "%x", "@x", "`x", "[x", "{x: 1"}
	genSpace    = []string{" ", " ", "  ", ""}
	genTail     = []string{"", "", " # c", "  #c", " "}
	genOddTails = []string{"#c", "\t", "\r", " x", ":"}
	genOdd      = []string{"\n---\n", "\n...\n", "\t", "\r\n", "\ufeff", "\n#c\n", "\n  \n", "\x00", "\xff", "\n ", "%", "<<: {z: 1}\n"}
)

func (g *yamlGen) indent(n int) { g.out.WriteString(strings.Repeat(" ", max(n, 0))) }

func (g *yamlGen) odd() {
	if g.next(16) == 15 {
		g.out.WriteString(g.pick(genOdd))
	}
}

// mapping writes a block mapping at column ind; the first key goes where the
// output is (after "- " for a sequence entry).
func (g *yamlGen) mapping(ind, depth int) {
	n := 1 + g.next(4)
	for i := range n {
		if i > 0 {
			g.indent(ind + []int{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, -1}[g.next(16)])
		}
		g.out.WriteString(g.pickMostly(genKeys, genOddKeys))
		g.out.WriteString(g.pickMostly([]string{": ", ": ", ":  ", " : "}, []string{":", ":x", " :"}))
		g.value(ind, depth)
		g.odd()
	}
}

// value writes what follows "key:" and ends the line.
func (g *yamlGen) value(ind, depth int) {
	choice := g.next(10)
	if depth >= 4 && choice >= 6 {
		choice = 0
	}
	switch choice {
	case 0, 1, 2:
		g.out.WriteString(g.pickMostly(genScalars, genOddScalars))
	case 3, 4:
		g.flow(depth)
	case 5:
		// null
	case 6, 7:
		g.out.WriteString(g.pickMostly(genTail, genOddTails) + "\n")
		nested := ind + []int{2, 1, 4, 2}[g.next(4)]
		g.indent(nested)
		g.mapping(nested, depth+1)
		return
	case 8, 9:
		g.out.WriteString(g.pickMostly(genTail, genOddTails) + "\n")
		g.sequence(ind+[]int{0, 2, 0, 1}[g.next(4)], depth+1)
		return
	}
	g.out.WriteString(g.pickMostly(genTail, genOddTails) + "\n")
}

func (g *yamlGen) sequence(ind, depth int) {
	n := 1 + g.next(3)
	for range n {
		g.indent(ind)
		dash := g.pickMostly([]string{"- ", "- ", "-   "}, []string{"-", "- - ", "-\n  "})
		g.out.WriteString(dash)
		switch g.next(5) {
		case 0, 1:
			g.out.WriteString(g.pickMostly(genScalars, genOddScalars) + g.pickMostly(genTail, genOddTails) + "\n")
		case 2:
			g.flow(depth)
			g.out.WriteString(g.pickMostly(genTail, genOddTails) + "\n")
		default:
			if depth >= 4 {
				g.out.WriteString("v\n")
				continue
			}
			// A mapping whose keys line up after the dash.
			g.mapping(ind+len(dash), depth+1)
		}
		g.odd()
	}
}

func (g *yamlGen) flow(depth int) {
	sp := func() { g.out.WriteString(g.pick(genSpace)) }
	if g.next(2) == 0 {
		g.out.WriteString("{")
		n := g.next(4)
		for i := range n {
			if i > 0 {
				g.out.WriteString(",")
				sp()
			}
			g.out.WriteString(g.pickMostly(genKeys, genOddKeys))
			g.out.WriteString(g.pickMostly([]string{": ", " : ", ":  "}, []string{":", ": ,"}))
			g.flowValue(depth)
		}
		sp()
		g.out.WriteString(g.pickMostly([]string{"}"}, []string{",}", "", "\n}"}))
		return
	}
	g.out.WriteString("[")
	n := g.next(4)
	for i := range n {
		if i > 0 {
			g.out.WriteString(",")
			sp()
		}
		g.flowValue(depth)
	}
	sp()
	g.out.WriteString(g.pickMostly([]string{"]"}, []string{",]", "", "\n]"}))
}

func (g *yamlGen) flowValue(depth int) {
	if depth < 4 && g.next(4) == 0 {
		g.flow(depth + 1)
		return
	}
	g.out.WriteString(g.pickMostly(genScalars, genOddScalars))
}
