package policy

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"
)

type ruleCase struct {
	rule   string
	params map[string]json.RawMessage
	pass   map[string]any
	fail   map[string]any
	want   []string
}

func loadRuleCases(t *testing.T) []ruleCase {
	t.Helper()
	f, err := os.Open("testdata/rules.yaml")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var cases []ruleCase
	err = splitDocuments(f, "testdata/rules.yaml", DefaultMaxDocumentSize, func(doc rawDocument) error {
		m, err := decodeYAML(doc.data)
		if err != nil {
			t.Fatalf("document %d: %v", doc.index, err)
		}
		c := ruleCase{rule: m["rule"].(string), pass: m["pass"].(map[string]any), fail: m["fail"].(map[string]any)}
		for _, w := range m["want"].([]any) {
			c.want = append(c.want, w.(string))
		}
		if p, ok := m["params"].(map[string]any); ok {
			c.params = map[string]json.RawMessage{}
			for k, v := range p {
				c.params[k], _ = json.Marshal(v)
			}
		}
		cases = append(cases, c)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return cases
}

// TestRules checks every rule of every embedded pack against a passing and a
// failing object, with the exact field paths and message of the failure.
func TestRules(t *testing.T) {
	cat := mustCatalog(t)
	cases := map[string]ruleCase{}
	for _, c := range loadRuleCases(t) {
		if _, dup := cases[c.rule]; dup {
			t.Fatalf("two cases for %s", c.rule)
		}
		cases[c.rule] = c
	}
	for _, name := range cat.PackNames() {
		pack, _ := cat.Pack(name)
		for i := range pack.Rules {
			rule := &pack.Rules[i]
			t.Run(rule.ID, func(t *testing.T) {
				c, ok := cases[rule.ID]
				if !ok {
					t.Fatalf("no pass/fail case for %s in testdata/rules.yaml", rule.ID)
				}
				pol, err := cat.Compile(Profile{Packs: []string{pack.Name}, Parameters: c.params})
				if err != nil {
					t.Fatal(err)
				}
				if got := findingsOf(pol, c.pass, rule.ID); len(got) != 0 {
					t.Errorf("passing object: got findings %+v", got)
				}
				got := findingsOf(pol, c.fail, rule.ID)
				var paths []string
				for _, f := range got {
					if f.Outcome != OutcomeFail || f.Message != rule.Message || f.Severity != rule.Severity {
						t.Errorf("failing object: finding %+v, want outcome fail, severity %s, message %q", f, rule.Severity, rule.Message)
					}
					paths = append(paths, f.Path)
				}
				if !slices.Equal(paths, c.want) {
					t.Errorf("failing object: paths\n got %q\nwant %q", paths, c.want)
				}
			})
		}
	}
}

func findingsOf(pol *Policy, obj map[string]any, rule string) []Finding {
	res := pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now())
	var out []Finding
	for _, f := range res.Findings {
		if f.Rule == rule {
			out = append(out, f)
		}
	}
	return out
}

func mustCatalog(t testing.TB) *Catalog {
	t.Helper()
	cat, err := NewCatalog()
	if err != nil {
		t.Fatal(err)
	}
	return cat
}
