package lab

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"slipway.dev/slipway/internal/pipeline"
)

// TestServerSeesSecretsOnlyAsFiles starts nothing: it checks what the lab
// would give `slipway server`. Secrets are files only the lab's user
// reads, named on its command line; its environment is its own.
func TestServerSeesSecretsOnlyAsFiles(t *testing.T) {
	t.Setenv("AWS_SECRET_ACCESS_KEY", "cloud-secret-of-the-shell")
	t.Setenv("SLIPWAY_WEBHOOK_SECRET", "webhook-secret-of-the-shell")
	for _, kv := range serverEnvironment(os.Environ()) {
		if strings.Contains(kv, "secret-of-the-shell") {
			t.Errorf("the server's environment holds %s", kv)
		}
	}
	if !slices.ContainsFunc(serverEnvironment(os.Environ()), func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		t.Error("the server's environment lost PATH")
	}

	l := &Lab{Dir: t.TempDir(), Slipway: "/bin/true"}
	st, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	if err := l.writeCredentials(st); err != nil {
		t.Fatal(err)
	}
	webhookSecret, err := os.ReadFile(l.WebhookSecretFile())
	if err != nil {
		t.Fatal(err)
	}
	// The audit store in PostgreSQL, whose passwords and the witness
	// repository's credential are secrets too.
	st.Audit = &AuditState{Mode: AuditPostgres, Witness: GitCredentials{Username: "slipway-audit", Password: "witness-" + randomHex(8)},
		PostgresPort: 5999, PostgresDir: t.TempDir(), PostgresPassword: "super-" + randomHex(8), WriterPassword: "writer-" + randomHex(8)}
	if err := l.writeAuditSecrets(st); err != nil {
		t.Fatal(err)
	}
	for _, c := range l.components(st) {
		if c.name != compServer {
			continue
		}
		if !c.ownEnv {
			t.Error("the server inherits the environment of the shell that started the lab")
		}
		args := strings.Join(c.args, " ")
		if !strings.Contains(args, "--audit-store-password-file") || !strings.Contains(args, "--audit-witness-credentials-file") {
			t.Errorf("the server is not given the audit store's secrets as files: %s", args)
		}
		for _, secret := range []string{st.Git.Password, st.Registry.Password, string(webhookSecret),
			st.Audit.Witness.Password, st.Audit.PostgresPassword, st.Audit.WriterPassword} {
			if strings.Contains(args, secret) {
				t.Errorf("a secret is on the server's command line: %s", args)
			}
		}
	}
	for _, f := range []string{l.Kubeconfig(), l.WebhookSecretFile(), l.path(witnessSecret), l.path(writerPassword)} {
		info, err := os.Stat(f)
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode().Perm() != 0o600 {
			t.Errorf("%s has mode %o, want 0600", f, info.Mode().Perm())
		}
	}
}

// TestDemoServicesPassTheirTestsIsolated runs each demo service's test
// command as the pipeline does: in a container, without network.
func TestDemoServicesPassTheirTestsIsolated(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Minute)
	defer cancel()
	e := pipeline.NewLocalExecutor(ctx, pipeline.LocalOptions{Dir: t.TempDir()})
	if err := e.Unisolated(); err != nil {
		t.Fatalf("the demo runs its tests isolated, which needs root and runc (make deps installs it): %v", err)
	}
	cache := t.TempDir()
	for _, app := range DemoApps {
		t.Run(app, func(t *testing.T) {
			files, err := DemoSource(app)
			if err != nil {
				t.Fatal(err)
			}
			ws := t.TempDir()
			for name, b := range files {
				if err := os.WriteFile(filepath.Join(ws, name), b, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cfg, err := pipeline.ParseConfig(files[pipeline.ConfigFile])
			if err != nil {
				t.Fatal(err)
			}
			var out bytes.Buffer
			err = e.Exec(ctx, pipeline.Command{Script: cfg.Test.Command, Workspace: ws, Dir: ws, Output: &out,
				Limits: pipeline.DefaultLimits, Temp: t.TempDir(), Cache: cache})
			t.Logf("%s\n%s", cfg.Test.Command, out.String())
			if err != nil || !strings.Contains(out.String(), "ok  \texample.com/"+app) {
				t.Fatalf("the %s tests did not pass in the sandbox: %v", app, err)
			}
		})
	}
}
