package audit_test

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"os"
	"sync/atomic"
	"testing"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/signing"
)

// pg is the package's one PostgreSQL server; nil, with pgMissing saying
// why, where it cannot run.
var (
	pg        *postgres.Server
	pgMissing string
	dbSeq     atomic.Int64
	testCtx   = context.Background()
)

// The insert-only role the stores write as.
const (
	writerRole     = "slipway_audit"
	writerPassword = "audit-writer-password-7f3a"
)

func TestMain(m *testing.M) { os.Exit(run(m)) }

func run(m *testing.M) int {
	dir, err := os.MkdirTemp("", "slipway-audit-pg-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(dir)
	if _, err := postgres.BinDir(); err != nil {
		// `make test` installs it (make deps); only a machine that cannot
		// gets here.
		pgMissing = err.Error()
		fmt.Fprintln(os.Stderr, "PostgreSQL tests skipped:", pgMissing)
	} else if pg, err = postgres.Start(testCtx, dir); err != nil {
		fmt.Fprintln(os.Stderr, "starting PostgreSQL:", err)
		return 1
	} else {
		defer pg.Stop()
	}
	return m.Run()
}

// requirePostgres skips, saying why, where PostgreSQL cannot run.
func requirePostgres(t testing.TB) {
	t.Helper()
	if pg == nil {
		t.Skip("PostgreSQL is not available: " + pgMissing)
	}
}

// pgDatabase creates a database with the audit tables and returns the
// owner's and the writer's connection strings.
func pgDatabase(t testing.TB) (owner, writer string) {
	t.Helper()
	requirePostgres(t)
	name := fmt.Sprintf("audit_%d", dbSeq.Add(1))
	if err := pg.CreateDatabase(testCtx, name); err != nil {
		t.Fatal(err)
	}
	owner = pg.SuperDSN(name)
	if err := audit.SetupPostgres(testCtx, owner, writerRole, writerPassword); err != nil {
		t.Fatal(err)
	}
	return owner, pg.DSN(writerRole, writerPassword, name)
}

func newKey(t testing.TB) *ecdsa.PrivateKey {
	t.Helper()
	k, err := signing.GenerateKey()
	if err != nil {
		t.Fatal(err)
	}
	return k
}
