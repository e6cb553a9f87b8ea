package policy

import (
	"bytes"
	"context"
	"os"
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
