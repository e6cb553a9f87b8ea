package config_test

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"testing"
	"time"
)

// TestServerRBACIsGenerated fails when config/rbac/slipway-server.yaml
// differs from what controller-gen makes of the +kubebuilder:rbac markers:
// run `make generate` and commit the result. The generator's arguments are
// read from the Makefile, so the test and `make generate` cannot drift apart.
func TestServerRBACIsGenerated(t *testing.T) {
	if testing.Short() {
		t.Skip("builds controller-gen")
	}
	makefile, err := os.ReadFile("../Makefile")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^RBAC_GEN := (\S+)$`).FindSubmatch(makefile)
	if m == nil {
		t.Fatal("the Makefile has no `RBAC_GEN := ...` line")
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "tool", "controller-gen", string(m[1]), "paths=./internal/...", "output:rbac:artifacts:config="+out)
	cmd.Dir = ".."
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("controller-gen failed: %v\n%s", err, b)
	}
	want, err := os.ReadFile(filepath.Join(out, "slipway-server.yaml"))
	if err != nil {
		t.Fatalf("controller-gen wrote no slipway-server.yaml: %v", err)
	}
	have, err := os.ReadFile("rbac/slipway-server.yaml")
	if err != nil {
		t.Fatal("config/rbac/slipway-server.yaml is missing: run `make generate`")
	}
	if !bytes.Equal(want, have) {
		t.Fatal("config/rbac/slipway-server.yaml is stale: run `make generate`")
	}
}
