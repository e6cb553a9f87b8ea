package audit_test

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
)

// pg is the package's one PostgreSQL server, started by the first test
// that needs it (fuzzing workers never do); nil, with pgMissing saying
// why, where it cannot run.
var (
	pg        *postgres.Server
	pgMissing string
	pgOnce    sync.Once
	pgDir     string
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
	defer func() {
		if pg != nil {
			pg.Stop()
		}
		if pgDir != "" {
			os.RemoveAll(pgDir)
		}
	}()
	return m.Run()
}

// requirePostgres starts the package's PostgreSQL, or skips saying why it
// cannot run here. `make test` installs it (make deps).
func requirePostgres(t testing.TB) {
	t.Helper()
	pgOnce.Do(func() {
		if _, err := postgres.BinDir(); err != nil {
			pgMissing = err.Error()
			fmt.Fprintln(os.Stderr, "PostgreSQL tests skipped:", pgMissing)
			return
		}
		var err error
		if pgDir, err = os.MkdirTemp("", "slipway-audit-pg-"); err != nil {
			pgMissing = err.Error()
			return
		}
		if pg, err = postgres.Start(testCtx, pgDir); err != nil {
			pgMissing = "starting it failed: " + err.Error()
		}
	})
	if pg == nil {
		if strings.HasPrefix(pgMissing, "starting it failed") {
			t.Fatal(pgMissing)
		}
		testenv.MissingDependency(t, "PostgreSQL is not available: %s", pgMissing)
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
