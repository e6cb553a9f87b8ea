package policy

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

type ruleCase struct {
	rule   string
	params map[string]json.RawMessage
	pass   map[string]any
	fail   map[string]any
	want   []string
	// passWith and failWith are checked in one set with pass and fail: the
	// neighbours cross-object rules read.
	passWith, failWith []map[string]any
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
		for key, dst := range map[string]*[]map[string]any{"passWith": &c.passWith, "failWith": &c.failWith} {
			l, _ := m[key].([]any)
			for _, o := range l {
				*dst = append(*dst, o.(map[string]any))
			}
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
				if got := findingsInSet(t, pol, c.pass, c.passWith, rule.ID); len(got) != 0 {
					t.Errorf("passing object: got findings %+v", got)
				}
				got := findingsInSet(t, pol, c.fail, c.failWith, rule.ID)
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

// findingsInSet returns the findings of rule on obj checked in one set with
// neighbours, which are checked too but whose findings are not returned.
func findingsInSet(t *testing.T, pol *Policy, obj map[string]any, neighbours []map[string]any, rule string) []Finding {
	t.Helper()
	objs := []*unstructured.Unstructured{{Object: obj}}
	for _, n := range neighbours {
		objs = append(objs, &unstructured.Unstructured{Object: n})
	}
	results, err := pol.Evaluate(context.Background(), objs, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	var out []Finding
	for _, f := range results[0].Findings {
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
