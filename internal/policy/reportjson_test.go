package policy

import (
	"bytes"
	"encoding/json"
	"testing"
	"time"
)

// encoderJSON is what WriteJSON must reproduce byte for byte.
func encoderJSON(t testing.TB, r *Report) []byte {
	t.Helper()
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetIndent("", "  ")
	if err := enc.Encode(r); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func checkWriteJSON(t *testing.T, name string, r *Report) {
	t.Helper()
	var got bytes.Buffer
	if err := r.WriteJSON(&got); err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	if want := encoderJSON(t, r); !bytes.Equal(got.Bytes(), want) {
		t.Errorf("%s: WriteJSON differs from encoding/json\n got:\n%s\nwant:\n%s", name, got.Bytes(), want)
	}
}

func TestWriteJSONMatchesEncoder(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	// The corpus with waivers: every field of a finding, waived ones included.
	checkWriteJSON(t, "corpus", corpusReport(t))

	odd := "a\"b\\c<d>e&f\x00\x01\x1f\b\f\n\r\t\u2028\u2029\xff\xc3 é 한글 😀\x7f"
	waiver := &Waiver{Name: "w<1>", Rule: "FIN-WL-001", Scope: WaiverScope{Namespace: "ns"}, Reason: odd, Approver: "a&b", Expires: time.Date(2027, 1, 2, 3, 4, 5, 0, time.UTC)}
	checkWriteJSON(t, "odd", NewReport(pol, []ObjectResult{
		{Object: ObjectRef{APIVersion: odd, Kind: "Pod", Name: odd, Namespace: odd, File: odd, Document: 3, Line: 12}, Checked: []string{"FIN-WL-001", odd},
			Findings: []Finding{{Rule: "FIN-WL-001", Severity: SeverityCritical, Outcome: OutcomeFail, Path: odd, Message: odd}, {Rule: odd, Severity: SeverityLow, Outcome: OutcomeError, Message: ""}}},
		{Object: ObjectRef{Kind: "Service"}, Checked: []string{}},
		{Object: ObjectRef{Kind: "ConfigMap", Document: 1}},
		{Object: ObjectRef{Kind: "Pod", Name: "p"}, Checked: []string{"FIN-WL-001"}, Findings: []Finding{}},
		{Object: ObjectRef{Kind: "Pod", Name: "w"}, Checked: []string{"FIN-WL-001"},
			Findings: []Finding{{Rule: "FIN-WL-001", Severity: SeverityCritical, Outcome: OutcomeWaived, Path: "spec", Message: "m", Waiver: waiver}}},
	}))
	checkWriteJSON(t, "no results", NewReport(pol, nil))
	checkWriteJSON(t, "empty results", NewReport(pol, []ObjectResult{}))
}

// FuzzJSONString compares appendJSONString with encoding/json on any string.
func FuzzJSONString(f *testing.F) {
	for _, s := range []string{"", "plain", "<&>", "\u2028\xff\x00", "é한😀\"\\"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		want, err := json.Marshal(s)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendJSONString(nil, s); !bytes.Equal(got, want) {
			t.Errorf("%q: got %s, want %s", s, got, want)
		}
	})
}
