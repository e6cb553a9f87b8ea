package audit

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
)

// PostgreSQL tables. Records are kept as the same JSON line the file store
// writes, so both stores hold the same bytes and are verified alike; the
// other columns are for queries.
const (
	pgLog         = "slipway_audit_log"
	pgRecords     = "slipway_audit_records"
	pgArchive     = "slipway_audit_archive"
	pgCheckpoints = "slipway_audit_checkpoints"
)

var pgSchema = []string{
	`CREATE TABLE IF NOT EXISTS ` + pgLog + ` (id text PRIMARY KEY, created timestamptz NOT NULL DEFAULT now())`,
	`CREATE TABLE IF NOT EXISTS ` + pgRecords + ` (
		seq bigint PRIMARY KEY CHECK (seq > 0),
		at timestamptz NOT NULL,
		kind text NOT NULL,
		subject text NOT NULL,
		record text NOT NULL)`,
	`CREATE INDEX IF NOT EXISTS ` + pgRecords + `_at ON ` + pgRecords + ` (at)`,
	`CREATE TABLE IF NOT EXISTS ` + pgArchive + ` (LIKE ` + pgRecords + ` INCLUDING ALL)`,
	`CREATE TABLE IF NOT EXISTS ` + pgCheckpoints + ` (size bigint PRIMARY KEY, at timestamptz NOT NULL, checkpoint text NOT NULL)`,
	// Nobody but the owner has any right, until granted below.
	`REVOKE ALL ON ` + pgLog + `, ` + pgRecords + `, ` + pgArchive + `, ` + pgCheckpoints + ` FROM PUBLIC`,
}

// SetupPostgres creates the audit tables, owned by the user of ownerDSN,
// and gives writer the rights the server needs and no more: INSERT and
// SELECT on records and checkpoints, SELECT on the rest. It never grants
// UPDATE, DELETE or TRUNCATE, so the server cannot change or remove a
// row; only the tables' owner can archive. With a password, the writer
// role is created (or its password set) as a login role. Idempotent.
func SetupPostgres(ctx context.Context, ownerDSN, writer, password string) error {
	conn, err := pgx.Connect(ctx, ownerDSN)
	if err != nil {
		return fmt.Errorf("connecting to PostgreSQL as the audit tables' owner: %w", err)
	}
	defer conn.Close(ctx)
	tx, err := conn.Begin(ctx)
	if err != nil {
		return err
	}
	defer tx.Rollback(ctx) //nolint:errcheck // after Commit it does nothing
	if password != "" {
		var exists bool
		if err := tx.QueryRow(ctx, `SELECT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = $1)`, writer).Scan(&exists); err != nil {
			return err
		}
		verb := "CREATE ROLE %I LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT PASSWORD %L"
		if exists {
			verb = "ALTER ROLE %I LOGIN PASSWORD %L"
		}
		var stmt string
		if err := tx.QueryRow(ctx, `SELECT format('`+verb+`', $1::text, $2::text)`, writer, password).Scan(&stmt); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, stmt); err != nil {
			return fmt.Errorf("creating the audit writer role %s: %w", writer, err)
		}
	}
	for _, s := range pgSchema {
		if _, err := tx.Exec(ctx, s); err != nil {
			return fmt.Errorf("creating the audit tables: %w", err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO `+pgLog+` (id) SELECT $1 WHERE NOT EXISTS (SELECT 1 FROM `+pgLog+`)`, newLogID()); err != nil {
		return err
	}
	w := pgx.Identifier{writer}.Sanitize()
	for _, grant := range []string{
		`GRANT INSERT, SELECT ON ` + pgRecords + `, ` + pgCheckpoints + ` TO ` + w,
		`GRANT SELECT ON ` + pgLog + `, ` + pgArchive + ` TO ` + w,
	} {
		if _, err := tx.Exec(ctx, grant); err != nil {
			return fmt.Errorf("granting the audit writer its rights: %w", err)
		}
	}
	return tx.Commit(ctx)
}

// PostgresStore keeps records in PostgreSQL. Append is one transaction:
// committed (with the server's synchronous commit) means durable. The
// primary key on seq makes a second writer's append fail rather than fork
// the chain.
type PostgresStore struct {
	pool  *pgxpool.Pool
	name  string
	logID string
}

// OpenPostgresStore connects with dsn (the writer role, or any role that
// may read, to verify); a non-empty password replaces the one of dsn, so
// that it can come from a file rather than a command line. The tables
// must exist (SetupPostgres).
func OpenPostgresStore(ctx context.Context, dsn, password string) (*PostgresStore, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		// pgx's parse errors quote the connection string, password included.
		return nil, errors.New("the PostgreSQL connection string is not valid")
	}
	if password != "" {
		cfg.ConnConfig.Password = password
	}
	cfg.MaxConns = 4
	if cfg.ConnConfig.ConnectTimeout == 0 {
		cfg.ConnConfig.ConnectTimeout = 10 * time.Second
	}
	name := fmt.Sprintf("PostgreSQL store %s@%s:%d/%s", cfg.ConnConfig.User, cfg.ConnConfig.Host, cfg.ConnConfig.Port, cfg.ConnConfig.Database)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("connecting to the %s: %w", name, err)
	}
	s := &PostgresStore{pool: pool, name: name}
	qctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := pool.QueryRow(qctx, `SELECT id FROM `+pgLog+` LIMIT 1`).Scan(&s.logID); err != nil {
		pool.Close()
		return nil, fmt.Errorf("reading the audit log's identity from the %s (are the tables set up? slipway audit setup-postgres): %w", name, err)
	}
	return s, nil
}

func (s *PostgresStore) String() string { return s.name }

// LogID is the log's id.
func (s *PostgresStore) LogID() string { return s.logID }

// Append inserts the records in one transaction.
func (s *PostgresStore) Append(ctx context.Context, records []*Record) error {
	if len(records) == 0 {
		return nil
	}
	rows := make([][]any, len(records))
	for i, r := range records {
		line, err := r.Marshal()
		if err != nil {
			return err
		}
		rows[i] = []any{int64(r.Seq), r.Time, r.Kind, r.Subject, string(line[:len(line)-1])}
	}
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		// The first record must follow the last: a writer whose head is
		// behind (another appended) must not leave a gap or a fork.
		var last int64
		if err := tx.QueryRow(ctx, `SELECT COALESCE(max(seq), 0) FROM `+pgRecords).Scan(&last); err != nil {
			return err
		}
		if last == 0 {
			if err := tx.QueryRow(ctx, `SELECT COALESCE(max(seq), 0) FROM `+pgArchive).Scan(&last); err != nil {
				return err
			}
		}
		if uint64(last)+1 != records[0].Seq {
			return ErrConflict
		}
		_, err := tx.CopyFrom(ctx, pgx.Identifier{pgRecords}, []string{"seq", "at", "kind", "subject", "record"}, pgx.CopyFromRows(rows))
		return err
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "23505" {
		return ErrConflict
	}
	return err
}

// Scan reads the archive, then the live table, each by seq.
func (s *PostgresStore) Scan(ctx context.Context, fn func(Item) error) error {
	for _, table := range []string{pgArchive, pgRecords} {
		rows, err := s.pool.Query(ctx, `SELECT seq, record FROM `+table+` ORDER BY seq`)
		if err != nil {
			return fmt.Errorf("reading %s: %w", table, err)
		}
		var seq int64
		var body string
		_, err = pgx.ForEachRow(rows, []any{&seq, &body}, func() error {
			it := Item{Where: fmt.Sprintf("%s row %d", table, seq)}
			it.Record, it.Err = ParseRecord([]byte(body))
			return fn(it)
		})
		if err != nil {
			return err
		}
	}
	return nil
}

// Tail reads the live rows from the last one older than since; when the
// live table is empty, the last archived row.
func (s *PostgresStore) Tail(ctx context.Context, since time.Time, fn func(Item) error) error {
	queries := []string{
		`SELECT seq, record FROM ` + pgRecords + ` WHERE seq >= COALESCE((SELECT max(seq) FROM ` + pgRecords + ` WHERE at < $1), 0) ORDER BY seq`,
		`SELECT seq, record FROM ` + pgArchive + ` WHERE $1::timestamptz IS NOT NULL ORDER BY seq DESC LIMIT 1`,
	}
	for i, q := range queries {
		rows, err := s.pool.Query(ctx, q, since)
		if err != nil {
			return fmt.Errorf("reading the newest audit records: %w", err)
		}
		n := 0
		var seq int64
		var body string
		_, err = pgx.ForEachRow(rows, []any{&seq, &body}, func() error {
			n++
			it := Item{Where: fmt.Sprintf("%s row %d", []string{pgRecords, pgArchive}[i], seq)}
			it.Record, it.Err = ParseRecord([]byte(body))
			return fn(it)
		})
		if err != nil || n > 0 {
			return err
		}
	}
	return nil
}

// AddCheckpoint inserts a checkpoint; one of the same size is kept once.
func (s *PostgresStore) AddCheckpoint(ctx context.Context, c *Checkpoint) error {
	_, err := s.pool.Exec(ctx, `INSERT INTO `+pgCheckpoints+` (size, at, checkpoint) VALUES ($1, $2, $3) ON CONFLICT (size) DO NOTHING`,
		int64(c.Size), c.Time, string(c.Marshal()))
	return err
}

// Checkpoints reads the checkpoints by size; a row that is not one is skipped.
func (s *PostgresStore) Checkpoints(ctx context.Context) ([]*Checkpoint, error) {
	rows, err := s.pool.Query(ctx, `SELECT checkpoint FROM `+pgCheckpoints+` ORDER BY size, at`)
	if err != nil {
		return nil, fmt.Errorf("reading %s: %w", pgCheckpoints, err)
	}
	var out []*Checkpoint
	var text string
	_, err = pgx.ForEachRow(rows, []any{&text}, func() error {
		if c, err := ParseCheckpoint([]byte(text)); err == nil {
			out = append(out, c)
		}
		return nil
	})
	return out, err
}

// ErrArchiveNeedsOwner is returned when the store's role may not move rows.
var ErrArchiveNeedsOwner = errors.New("archiving moves rows out of the live table, which only the audit tables' owner may do: run `slipway audit archive` with the owner's connection")

// Archive moves the oldest rows, up to the last one older than before,
// to the archive table in one transaction.
func (s *PostgresStore) Archive(ctx context.Context, before time.Time) (*Archived, error) {
	var out *Archived
	err := pgx.BeginFunc(ctx, s.pool, func(tx pgx.Tx) error {
		var upTo *int64
		if err := tx.QueryRow(ctx, `SELECT max(seq) FROM `+pgRecords+` WHERE at < $1`, before).Scan(&upTo); err != nil {
			return err
		}
		if upTo == nil {
			return nil
		}
		var first, last int64
		err := tx.QueryRow(ctx, `WITH moved AS (DELETE FROM `+pgRecords+` WHERE seq <= $1 RETURNING *),
			kept AS (INSERT INTO `+pgArchive+` SELECT * FROM moved RETURNING seq)
			SELECT min(seq), max(seq) FROM kept`, *upTo).Scan(&first, &last)
		if err != nil {
			return err
		}
		var body string
		if err := tx.QueryRow(ctx, `SELECT record FROM `+pgArchive+` WHERE seq = $1`, last).Scan(&body); err != nil {
			return err
		}
		r, err := ParseRecord([]byte(body))
		if err != nil {
			return fmt.Errorf("the last archived row %d: %w", last, err)
		}
		out = &Archived{First: uint64(first), Last: uint64(last), LastHash: r.Hash, Where: []string{"table " + pgArchive}}
		return nil
	})
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "42501" {
		return nil, ErrArchiveNeedsOwner
	}
	return out, err
}

// Close closes the connections.
func (s *PostgresStore) Close() error {
	s.pool.Close()
	return nil
}
