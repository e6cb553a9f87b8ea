package config_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"
)

// TestCRDsAreGenerated fails when config/crd differs from what controller-gen
// produces from api/: run `make generate` and commit the result.
func TestCRDsAreGenerated(t *testing.T) {
	if testing.Short() {
		t.Skip("builds controller-gen")
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "tool", "controller-gen", "crd:crdVersions=v1", "paths=./api/...", "output:crd:artifacts:config="+out)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen failed: %v\n%s", err, b)
	}
	generated, err := filepath.Glob(filepath.Join(out, "*.yaml"))
	if err != nil || len(generated) == 0 {
		t.Fatalf("controller-gen wrote no CRDs: %v", err)
	}
	checkedIn, _ := filepath.Glob("crd/*.yaml")
	if len(checkedIn) != len(generated) {
		t.Fatalf("config/crd has %d CRDs, the API defines %d: run `make generate`", len(checkedIn), len(generated))
	}
	for _, g := range generated {
		want, _ := os.ReadFile(g)
		have, err := os.ReadFile(filepath.Join("crd", filepath.Base(g)))
		if err != nil {
			t.Fatalf("%s is missing: run `make generate`", filepath.Base(g))
		}
		if !bytes.Equal(want, have) {
			t.Errorf("config/crd/%s is stale: run `make generate`", filepath.Base(g))
		}
	}
}
