package cli

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// runSlipway runs the root command as the binary would.
func runSlipway(t *testing.T, args ...string) (string, string, int) {
	t.Helper()
	cmd := NewRootCommand()
	var out, errOut bytes.Buffer
	cmd.SetOut(&out)
	cmd.SetErr(&errOut)
	cmd.SetIn(strings.NewReader(""))
	cmd.SetArgs(args)
	err := cmd.Execute()
	if err != nil {
		errOut.WriteString(err.Error())
	}
	return out.String(), errOut.String(), ExitCode(err)
}

const testImage = "registry.slipway.internal/slipway/server@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

// dryRun prints the installation's manifests without a cluster.
func dryRun(t *testing.T, format string) string {
	t.Helper()
	out, errOut, code := runSlipway(t, "install", "--dry-run", "-o", format, "--image", testImage,
		"--api-server-cidr", "10.0.0.1", "--kubeconfig", filepath.Join(t.TempDir(), "none"))
	if code != ExitOK {
		t.Fatalf("install --dry-run: exit %d: %s", code, errOut)
	}
	if !strings.Contains(errOut, "slipway-webhook") {
		t.Errorf("the dry run does not say the webhook Secret is not printed: %q", errOut)
	}
	return out
}

type checkSummary struct {
	Summary struct{ Objects, Checks, Passed, Failed, Waived, Errors int }
	Results []struct {
		Checked  []string
		Findings []struct{ Rule, Outcome string }
	}
}

// policyCheck runs `slipway policy check` (the fin-kr profile, failing on
// any severity, by default) on manifests.
func policyCheck(t *testing.T, manifests string, flags ...string) (checkSummary, int) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "slipway.yaml")
	if err := os.WriteFile(file, []byte(manifests), 0o644); err != nil {
		t.Fatal(err)
	}
	out, errOut, code := runSlipway(t, append(append([]string{"policy"}, flags...), "check", "-o", "json", file)...)
	var s checkSummary
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("policy check output: %v\n%s%s", err, out, errOut)
	}
	return s, code
}

// platformParameters declare Slipway's installation the platform's own to
// fin-kr (its server impersonates ServiceAccounts and reads Secrets by
// name; its admission policy enforces separation of duties).
const platformParameters = "../../config/policy/platform-parameters.yaml"

// TestInstallManifestsPassFinKR: everything `slipway install` applies
// passes Slipway's own fin-kr profile with zero findings, once the
// organisation declares Slipway its platform.
func TestInstallManifestsPassFinKR(t *testing.T) {
	declared, err := os.ReadFile(platformParameters)
	if err != nil {
		t.Fatal(err)
	}
	// Slipway's namespaces counted as production too: digest pinning, two
	// replicas spread across nodes.
	production := filepath.Join(t.TempDir(), "params.yaml")
	if err := os.WriteFile(production, append(declared, "  productionNamespaces: [slipway-system, slipway-runs]\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, c := range map[string]struct {
		format string
		params string
	}{"yaml": {"yaml", platformParameters}, "json": {"json", platformParameters}, "as production": {"yaml", production}} {
		t.Run(name, func(t *testing.T) {
			s, code := policyCheck(t, dryRun(t, c.format), "--params", c.params)
			if code != ExitOK || s.Summary.Failed != 0 || s.Summary.Waived != 0 || s.Summary.Errors != 0 {
				t.Fatalf("exit %d, summary %+v", code, s.Summary)
			}
			// 8 CRDs, 2 namespaces, 4 ClusterRoles and 2 Roles, the
			// admission policy and its binding, ServiceAccount, 3 bindings,
			// 4 NetworkPolicies, Service, PodDisruptionBudget, Deployment.
			if s.Summary.Objects != 29 || s.Summary.Checks == 0 {
				t.Fatalf("checked %d objects with %d checks, want the 29 installed", s.Summary.Objects, s.Summary.Checks)
			}
			for _, r := range s.Results {
				if len(r.Findings) > 0 {
					t.Errorf("findings: %+v", r.Findings)
				}
			}
		})
	}
	// Undeclared, the server's rights and the admission policy are exactly
	// what fin-kr reports.
	s, code := policyCheck(t, dryRun(t, "yaml"))
	var got []string
	for _, r := range s.Results {
		for _, f := range r.Findings {
			got = append(got, f.Rule)
		}
	}
	slices.Sort(got)
	if want := []string{"FIN-ADM-002", "FIN-ADM-002", "FIN-IAM-009", "FIN-IAM-010"}; code != ExitFailure || !slices.Equal(got, want) {
		t.Fatalf("undeclared: exit %d, findings %v, want %v", code, got, want)
	}
}

// TestInstallPolicyCheckSeesTheObjects is the control of the test above:
// without its NetworkPolicies, the same output fails.
func TestInstallPolicyCheckSeesTheObjects(t *testing.T) {
	var kept []string
	for _, doc := range strings.Split(dryRun(t, "yaml"), "---\n") {
		if !strings.Contains(doc, "\nkind: NetworkPolicy\n") {
			kept = append(kept, doc)
		}
	}
	s, code := policyCheck(t, strings.Join(kept, "---\n"))
	failed := map[string]bool{}
	for _, r := range s.Results {
		for _, f := range r.Findings {
			if f.Outcome == "fail" {
				failed[f.Rule] = true
			}
		}
	}
	if code != ExitFailure || !failed["FIN-NET-001"] || !failed["FIN-NET-002"] {
		t.Fatalf("exit %d, failed rules %v: want FIN-NET-001 and FIN-NET-002", code, failed)
	}
}

func TestInstallRefusesBadFlags(t *testing.T) {
	cases := map[string]struct {
		args []string
		want string
	}{
		"tag":                  {[]string{"install", "--dry-run", "--image", "registry.example.com/slipway:v1", "--api-server-cidr", "10.0.0.1"}, "not pinned by digest"},
		"server without image": {[]string{"install", "--dry-run", "--test-image", "golang:1.26"}, "give --image too"},
		"output":               {[]string{"install", "--dry-run", "-o", "xml", "--image", testImage, "--api-server-cidr", "10.0.0.1"}, "unknown output format"},
		"empty secret file":    {[]string{"install", "--image", testImage, "--webhook-secret-file", os.DevNull}, "is empty"},
		"crds unconfirmed":     {[]string{"uninstall", "--crds"}, "--crds needs --yes"},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			_, errOut, code := runSlipway(t, append(c.args, "--kubeconfig", filepath.Join(t.TempDir(), "none"))...)
			if code != ExitUsage || !strings.Contains(errOut, c.want) {
				t.Fatalf("exit %d, %q: want exit 2 saying %q", code, errOut, c.want)
			}
		})
	}
}
