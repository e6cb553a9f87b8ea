package lab

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/signing"
)

// Audit stores the lab can run with.
const (
	AuditFile     = "file"
	AuditPostgres = "postgres"
)

// AuditRepo is the git repository of the lab's git server that witnesses
// the audit checkpoints: it has a credential of its own, which only
// `slipway server` holds, and refuses forced pushes.
const AuditRepo = "audit.git"

const (
	compPostgres   = "postgres"
	auditDatabase  = "slipway_audit"
	auditWriter    = "slipway_audit"
	auditKeyFile   = "audit.key"
	auditPubFile   = "audit.pub"
	auditStoreDir  = "audit"
	witnessSecret  = "audit-witness"
	writerPassword = "audit-postgres-password"
)

// AuditState is the lab's audit trail: which store, and its secrets.
type AuditState struct {
	Mode string `json:"mode"`
	// Witness is the credential of the witness repository.
	Witness GitCredentials `json:"witness"`
	// Postgres, in postgres mode: its port, data directory and passwords.
	PostgresPort     int    `json:"postgresPort,omitempty"`
	PostgresDir      string `json:"postgresDir,omitempty"`
	PostgresPassword string `json:"postgresPassword,omitempty"`
	WriterPassword   string `json:"writerPassword,omitempty"`
}

// AuditInfo says where the lab's audit trail is and how to check it.
type AuditInfo struct {
	Mode  string `json:"mode"`
	Store string `json:"store"`
	// PasswordFile holds the PostgreSQL writer's password (postgres mode).
	PasswordFile string `json:"passwordFile,omitempty"`
	PublicKey    string `json:"publicKey"`
	Witness      string `json:"witness"`
	// WitnessCredentialsFile holds username:password of the witness repository.
	WitnessCredentialsFile string `json:"witnessCredentialsFile"`
}

// ensureAudit fills in the audit state the first time (or when the mode
// changes) and prepares the store's files: the key and, for PostgreSQL,
// the cluster.
func (l *Lab) ensureAudit(ctx context.Context, st *State) error {
	mode := l.Audit
	switch {
	case mode == "" && st.Audit != nil:
		mode = st.Audit.Mode
	case mode == "":
		mode = AuditFile
	case mode != AuditFile && mode != AuditPostgres:
		return fmt.Errorf("audit store %q: use file or postgres", mode)
	}
	if st.Audit == nil {
		st.Audit = &AuditState{Witness: GitCredentials{Username: "slipway-audit", Password: randomHex(16)}}
	}
	st.Audit.Mode = mode
	if mode == AuditFile {
		return l.writeAuditSecrets(st)
	}
	if err := l.ensureAuditKey(); err != nil {
		return err
	}
	a := st.Audit
	if a.PostgresPort == 0 {
		port, err := postgres.FreePort()
		if err != nil {
			return err
		}
		a.PostgresPort, a.PostgresPassword, a.WriterPassword = port, randomHex(16), randomHex(16)
	}
	cluster, err := l.postgresCluster(a)
	if err != nil {
		return err
	}
	a.PostgresDir = cluster.Dir
	if err := l.writeAuditSecrets(st); err != nil {
		return err
	}
	if cluster.Initialized() {
		return nil
	}
	l.progress("creating the audit store's PostgreSQL cluster in %s", cluster.Dir)
	return cluster.Init(ctx, a.PostgresPassword)
}

// writeAuditSecrets writes the secrets the server reads as files, never
// on its command line: the witness repository's credential and the
// PostgreSQL writer's password.
func (l *Lab) writeAuditSecrets(st *State) error {
	a := st.Audit
	if err := os.WriteFile(l.path(witnessSecret), []byte(a.Witness.Username+":"+a.Witness.Password), 0o600); err != nil {
		return err
	}
	if a.Mode != AuditPostgres {
		return nil
	}
	return os.WriteFile(l.path(writerPassword), []byte(a.WriterPassword), 0o600)
}

// ensureAuditKey creates the key that signs checkpoints of a PostgreSQL
// store (a file store's server creates its own beside the records).
func (l *Lab) ensureAuditKey() error {
	if fileExists(l.path(auditKeyFile)) {
		return nil
	}
	key, err := signing.GenerateKey()
	if err != nil {
		return err
	}
	priv, err := signing.EncodePrivateKey(key)
	if err != nil {
		return err
	}
	pub, err := signing.EncodePublicKey(&key.PublicKey)
	if err != nil {
		return err
	}
	if err := os.WriteFile(l.path(auditKeyFile), priv, 0o600); err != nil {
		return err
	}
	return os.WriteFile(l.path(auditPubFile), pub, 0o644)
}

// postgresCluster is the lab's PostgreSQL. PostgreSQL will not run as
// root; run as another user, its directory must be one that user can
// reach, which a lab under root's home is not: it then lives under
// /var/lib/postgresql (Debian's home of the postgres account), named
// after the lab directory.
func (l *Lab) postgresCluster(a *AuditState) (*postgres.Cluster, error) {
	bin, err := postgres.BinDir()
	if err != nil {
		return nil, err
	}
	account, err := postgres.ServerAccount()
	if err != nil {
		return nil, err
	}
	dir := a.PostgresDir
	if dir == "" {
		dir = l.path("postgres")
		if account.Switch {
			sum := sha256.Sum256([]byte(l.Dir))
			root := "/var/lib/postgresql"
			if !fileExists(root) {
				root = os.TempDir()
			}
			dir = filepath.Join(root, "slipway-lab-"+hex.EncodeToString(sum[:6]))
		}
	}
	return &postgres.Cluster{Dir: dir, Port: a.PostgresPort, Account: account, BinDir: bin}, nil
}

// auditComponents are the processes the audit store needs: PostgreSQL in
// postgres mode, none for the file store.
func (l *Lab) auditComponents(st *State) []component {
	if st.Audit == nil || st.Audit.Mode != AuditPostgres {
		return nil
	}
	cluster, err := l.postgresCluster(st.Audit)
	if err != nil {
		return nil
	}
	super := cluster.DSN(postgres.Superuser, st.Audit.PostgresPassword, "postgres")
	return []component{{
		name: compPostgres, exe: cluster.Postgres(), args: cluster.Args(), timeout: 60 * time.Second,
		where: placement{runAs: cluster.Account.Credential()},
		ready: func(ctx context.Context) error { return postgres.Ready(ctx, super) },
		after: func(ctx context.Context) error { return l.setupAuditDatabase(ctx, cluster, st.Audit) },
	}}
}

// withAuditStore puts PostgreSQL before the server in a component order,
// when the audit store is there.
func (s *State) withAuditStore(order []string) []string {
	if s.Audit == nil || s.Audit.Mode != AuditPostgres {
		return order
	}
	return slices.Insert(order, slices.Index(order, compServer), compPostgres)
}

// withAudit gives the server its audit flags, and puts the audit store's
// processes before it.
func (l *Lab) withAudit(st *State, comps []component) []component {
	i := slices.IndexFunc(comps, func(c component) bool { return c.name == compServer })
	if i < 0 || st.Audit == nil {
		return comps
	}
	comps[i].args = append(comps[i].args, l.auditServerArgs(st)...)
	return slices.Insert(comps, i, l.auditComponents(st)...)
}

// setupAuditDatabase creates the database and the tables, owned by the
// superuser, and the role the server writes as, which may only insert.
func (l *Lab) setupAuditDatabase(ctx context.Context, cluster *postgres.Cluster, a *AuditState) error {
	conn, err := pgx.Connect(ctx, cluster.DSN(postgres.Superuser, a.PostgresPassword, "postgres"))
	if err != nil {
		return err
	}
	var exists bool
	err = conn.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)`, auditDatabase).Scan(&exists)
	if err == nil && !exists {
		_, err = conn.Exec(ctx, "CREATE DATABASE "+auditDatabase)
	}
	conn.Close(ctx)
	if err != nil {
		return fmt.Errorf("creating the audit database: %w", err)
	}
	if err := audit.SetupPostgres(ctx, cluster.DSN(postgres.Superuser, a.PostgresPassword, auditDatabase), auditWriter, a.WriterPassword); err != nil {
		return err
	}
	l.progress("audit store ready in PostgreSQL (role %s may only insert and read)", auditWriter)
	return nil
}

// auditServerArgs are `slipway server`'s audit flags: the store, the key
// and the witness repository with its own credential.
func (l *Lab) auditServerArgs(st *State) []string {
	info := l.auditInfo(st)
	args := []string{"--audit-store", info.Store, "--audit-witness-url", info.Witness,
		"--audit-witness-credentials-file", info.WitnessCredentialsFile, "--audit-witness-interval", "1m"}
	if info.Mode == AuditPostgres {
		args = append(args, "--audit-store-password-file", info.PasswordFile, "--audit-key-file", l.path(auditKeyFile))
	}
	return args
}

func (l *Lab) auditInfo(st *State) AuditInfo {
	info := AuditInfo{Mode: AuditFile, Store: l.path(auditStoreDir), PublicKey: filepath.Join(l.path(auditStoreDir), auditPubFile),
		Witness: "http://127.0.0.1:" + strconv.Itoa(st.Ports.Git) + "/" + AuditRepo, WitnessCredentialsFile: l.path(witnessSecret)}
	if a := st.Audit; a != nil && a.Mode == AuditPostgres {
		info.Mode, info.PublicKey, info.PasswordFile = AuditPostgres, l.path(auditPubFile), l.path(writerPassword)
		info.Store = fmt.Sprintf("postgres://%s@127.0.0.1:%d/%s?sslmode=disable", auditWriter, a.PostgresPort, auditDatabase)
	}
	return info
}

// purgeAudit removes a PostgreSQL cluster kept outside the lab directory.
func purgeAudit(st *State) error {
	if st == nil || st.Audit == nil || st.Audit.PostgresDir == "" {
		return nil
	}
	if err := os.RemoveAll(st.Audit.PostgresDir); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("removing the audit PostgreSQL cluster %s: %w", st.Audit.PostgresDir, err)
	}
	return nil
}
