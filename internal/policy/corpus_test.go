package policy

import (
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// TestCorpus runs fin-kr over realistic manifests, each file one set (as one
// `slipway policy check FILE` sees it), and compares every finding with
// testdata/corpus/*.golden (regenerate with -update, then review the diff).
func TestCorpus(t *testing.T) {
	pol, err := mustCatalog(t).Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	files, err := filepath.Glob("testdata/corpus/*.yaml")
	if err != nil || len(files) == 0 {
		t.Fatalf("no corpus: %v", err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			var b strings.Builder
			ctx := context.Background()
			set := pol.NewSetEvaluator(time.Now())
			err := ReadManifests(ctx, []string{file}, ReadOptions{}, func(m Manifest) error {
				set.Add(ctx, m.Object, m.Ref)
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			results, err := set.Results(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, res := range results {
				for _, f := range res.Findings {
					fmt.Fprintf(&b, "%s %s %s %s\n", res.Object, f.Rule, f.Outcome, f.Path)
				}
			}
			golden := strings.TrimSuffix(file, ".yaml") + ".golden"
			if *update {
				if err := os.WriteFile(golden, []byte(b.String()), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatal(err)
			}
			if got := b.String(); got != string(want) {
				t.Errorf("findings differ from %s:\n--- got\n%s--- want\n%s", golden, got, want)
			}
		})
	}
}
