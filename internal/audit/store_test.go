package audit_test

import (
	"bytes"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"slipway.dev/slipway/internal/audit"
)

// backend is one Store implementation under the shared suite: how to
// open it, and how an attacker with the store's files or its owner's
// database rights would change it behind the server's back.
type backend struct {
	name string
	// open opens the store as the server does (the same store each call).
	open func(t *testing.T) audit.Store
	// reader opens it to verify.
	reader func(t *testing.T) audit.Store
	// owner opens it with the rights archiving needs.
	owner func(t *testing.T) audit.Store
	// Attacks, on a closed store.
	flipByte func(t *testing.T, seq uint64)
	remove   func(t *testing.T, seq uint64)
	swap     func(t *testing.T, seq uint64)
	truncate func(t *testing.T, n int)
}

// forEachBackend runs the same test against both stores.
func forEachBackend(t *testing.T, test func(t *testing.T, b backend)) {
	for _, name := range []string{"file", "postgres"} {
		t.Run(name, func(t *testing.T) {
			if name == "postgres" {
				requirePostgres(t)
				test(t, postgresBackend(t))
				return
			}
			test(t, fileBackend(t))
		})
	}
}

func fileBackend(t *testing.T) backend {
	dir := t.TempDir()
	open := func(t *testing.T) audit.Store {
		s, err := audit.OpenFileStore(dir)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	// lineOf finds the segment file and line index holding seq.
	lineOf := func(t *testing.T, seq uint64) (string, [][]byte, int) {
		t.Helper()
		segs, _ := filepath.Glob(filepath.Join(dir, "segments", "*.jsonl"))
		for _, path := range segs {
			b, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			lines := bytes.SplitAfter(b, []byte("\n"))
			for i, l := range lines {
				if bytes.Contains(l, fmt.Appendf(nil, `{"seq":%d,`, seq)) {
					return path, lines, i
				}
			}
		}
		t.Fatalf("record %d not found in %s", seq, dir)
		return "", nil, 0
	}
	write := func(t *testing.T, path string, lines [][]byte) {
		t.Helper()
		_ = os.Chmod(path, 0o600)
		if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return backend{
		name: "file",
		open: open, owner: open,
		reader: func(t *testing.T) audit.Store {
			s, err := audit.OpenFileStoreReadOnly(dir)
			if err != nil {
				t.Fatal(err)
			}
			return s
		},
		flipByte: func(t *testing.T, seq uint64) {
			path, lines, i := lineOf(t, seq)
			// A byte inside the subject, where a change leaves valid JSON.
			at := bytes.Index(lines[i], []byte(`"subject":"`)) + len(`"subject":"`) + 2
			lines[i][at] ^= 0x01
			write(t, path, lines)
		},
		remove: func(t *testing.T, seq uint64) {
			path, lines, i := lineOf(t, seq)
			write(t, path, append(lines[:i:i], lines[i+1:]...))
		},
		swap: func(t *testing.T, seq uint64) {
			path, lines, i := lineOf(t, seq)
			lines[i], lines[i+1] = lines[i+1], lines[i]
			write(t, path, lines)
		},
		truncate: func(t *testing.T, n int) {
			segs, _ := filepath.Glob(filepath.Join(dir, "segments", "*.jsonl"))
			path := segs[len(segs)-1]
			b, _ := os.ReadFile(path)
			lines := bytes.SplitAfter(b, []byte("\n"))
			lines = lines[:len(lines)-1] // the empty piece after the last newline
			write(t, path, lines[:len(lines)-n])
		},
	}
}

func postgresBackend(t *testing.T) backend {
	ownerDSN, writerDSN := pgDatabase(t)
	openAs := func(dsn string) func(t *testing.T) audit.Store {
		return func(t *testing.T) audit.Store {
			s, err := audit.OpenPostgresStore(testCtx, dsn, "")
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { s.Close() })
			return s
		}
	}
	// asOwner runs SQL with the rights of the tables' owner, as a
	// database administrator could.
	asOwner := func(t *testing.T, sql string, args ...any) {
		t.Helper()
		conn, err := pgx.Connect(testCtx, ownerDSN)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(testCtx)
		if _, err := conn.Exec(testCtx, sql, args...); err != nil {
			t.Fatalf("%s: %v", sql, err)
		}
	}
	return backend{
		name: "postgres",
		open: openAs(writerDSN), reader: openAs(writerDSN), owner: openAs(ownerDSN),
		flipByte: func(t *testing.T, seq uint64) {
			asOwner(t, `UPDATE slipway_audit_records SET record = overlay(record placing chr(ascii(substr(record, strpos(record, '"subject":"') + 13, 1)) # 1) from strpos(record, '"subject":"') + 13 for 1) WHERE seq = $1`, seq)
		},
		remove: func(t *testing.T, seq uint64) {
			asOwner(t, `DELETE FROM slipway_audit_records WHERE seq = $1`, seq)
		},
		swap: func(t *testing.T, seq uint64) {
			asOwner(t, `UPDATE slipway_audit_records r SET record = o.record FROM slipway_audit_records o
				WHERE (r.seq = $1 AND o.seq = $1 + 1) OR (r.seq = $1 + 1 AND o.seq = $1)`, seq)
		},
		truncate: func(t *testing.T, n int) {
			asOwner(t, `DELETE FROM slipway_audit_records WHERE seq > (SELECT max(seq) FROM slipway_audit_records) - $1`, n)
		},
	}
}

// openLog opens a log on store with key, at the given clock.
func openLog(t *testing.T, store audit.Store, key *ecdsa.PrivateKey, now func() time.Time) *audit.Log {
	t.Helper()
	l, res, err := audit.Open(testCtx, store, audit.Options{Key: key, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	if !res.OK() {
		t.Fatalf("the store failed verification when opened: %v", res.Problems)
	}
	return l
}

func event(i int) audit.Event {
	return audit.Event{Kind: audit.KindSyncApplied, Actor: "system:serviceaccount:cafe:deployer", Subject: fmt.Sprintf("Application cafe/app-%03d", i),
		Outcome: audit.OutcomeSucceeded, Details: map[string]string{"revision": fmt.Sprintf("%040d", i), "changes": "Deployment/cafe/tea configured"}}
}

// fill writes n events and closes the log (which checkpoints).
func fill(t *testing.T, b backend, key *ecdsa.PrivateKey, n int) uint64 {
	t.Helper()
	l := openLog(t, b.open(t), key, nil)
	for i := range n {
		if err := l.Record(testCtx, event(i)); err != nil {
			t.Fatal(err)
		}
	}
	size, _ := l.Head()
	if err := l.Close(testCtx); err != nil {
		t.Fatal(err)
	}
	return size
}

func verifyStore(t *testing.T, b backend, key *ecdsa.PrivateKey) *audit.Result {
	t.Helper()
	s := b.reader(t)
	defer s.Close()
	res, err := audit.Verify(testCtx, s, &key.PublicKey, audit.VerifyOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return res
}

// TestStoreKeepsTheChain: records written, closed and reopened read back
// in order, linked, under a checkpoint; the next writer continues the chain.
func TestStoreKeepsTheChain(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		size := fill(t, b, key, 30)
		if size != 31 { // audit.opened, then 30
			t.Fatalf("head after 30 events is %d, want 31", size)
		}
		res := verifyStore(t, b, key)
		if !res.OK() || res.Records != 31 || res.Checkpoints != 1 {
			t.Fatalf("verify = %+v", res)
		}
		// A second server start continues after record 31.
		more := fill(t, b, key, 5)
		if more != 31+1+5 {
			t.Fatalf("head after reopening and 5 more events is %d, want 37", more)
		}
		res = verifyStore(t, b, key)
		if !res.OK() || res.Records != 37 || res.Checkpoints != 2 {
			t.Fatalf("verify after reopening = %+v", res)
		}
		var kinds []string
		s := b.reader(t)
		defer s.Close()
		if err := s.Scan(testCtx, func(it audit.Item) error {
			if it.Err != nil {
				return it.Err
			}
			kinds = append(kinds, it.Record.Kind)
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		if kinds[0] != audit.KindAuditOpened || kinds[31] != audit.KindAuditOpened || kinds[1] != audit.KindSyncApplied {
			t.Fatalf("kinds read back: %v", kinds)
		}
	})
}

// TestRefsAreRecordedOnce: an event seen again (a retried reconcile, a
// server restart) is recorded once, across restarts too.
func TestRefsAreRecordedOnce(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		e := event(1)
		e.Ref = "promotion/3f1c/landed"
		for range 2 {
			l := openLog(t, b.open(t), key, nil)
			for range 3 {
				if err := l.Record(testCtx, e); err != nil {
					t.Fatal(err)
				}
			}
			if !l.Recorded(e.Ref) {
				t.Fatal("Recorded does not know the ref just written")
			}
			l.Close(testCtx)
		}
		n := 0
		s := b.reader(t)
		defer s.Close()
		s.Scan(testCtx, func(it audit.Item) error {
			if it.Record != nil && it.Record.Ref == e.Ref {
				n++
			}
			return nil
		})
		if n != 1 {
			t.Fatalf("an event recorded 6 times with one ref is stored %d times", n)
		}
	})
}

// TestConcurrentRecordsShareWrites: records from many goroutines all land,
// each once, in one unbroken chain.
func TestConcurrentRecordsShareWrites(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		l := openLog(t, b.open(t), key, nil)
		errs := make(chan error, 200)
		for i := range 200 {
			go func() { errs <- l.Record(testCtx, event(i)) }()
		}
		for range 200 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		l.Close(testCtx)
		if res := verifyStore(t, b, key); !res.OK() || res.Records != 201 {
			t.Fatalf("verify = %+v", res)
		}
	})
}

// TestTamperingIsNamed: each way of changing the store behind the server's
// back is found, and Verify names the first record concerned and how.
func TestTamperingIsNamed(t *testing.T) {
	cases := []struct {
		name   string
		attack func(t *testing.T, b backend)
		kind   string
		seq    uint64
	}{
		{"flipped byte", func(t *testing.T, b backend) { b.flipByte(t, 12) }, audit.ProblemChanged, 12},
		{"deleted record", func(t *testing.T, b backend) { b.remove(t, 9) }, audit.ProblemMissing, 9},
		{"reordered pair", func(t *testing.T, b backend) { b.swap(t, 15) }, audit.ProblemReordered, 15},
		{"truncated tail", func(t *testing.T, b backend) { b.truncate(t, 3) }, audit.ProblemTruncated, 19},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			forEachBackend(t, func(t *testing.T, b backend) {
				key := newKey(t)
				fill(t, b, key, 20) // records 1..21 under a checkpoint of 21
				if res := verifyStore(t, b, key); !res.OK() {
					t.Fatalf("untouched store fails: %v", res.Problems)
				}
				c.attack(t, b)
				res := verifyStore(t, b, key)
				if res.OK() {
					t.Fatalf("%s not detected: %+v", c.name, res)
				}
				p := res.Problems[0]
				if p.Kind != c.kind || p.Seq != c.seq {
					t.Fatalf("%s reported as %q of record %d (%s), want %q of record %d", c.name, p.Kind, p.Seq, p, c.kind, c.seq)
				}
				t.Logf("%s: %s", c.name, p)
			})
		})
	}
}

// TestRewrittenChainContradictsCheckpoint: whoever holds the store and
// rewrites records with their hashes recomputed still contradicts the
// signed checkpoint made before.
func TestRewrittenChainContradictsCheckpoint(t *testing.T) {
	b := fileBackend(t)
	key := newKey(t)
	fill(t, b, key, 10)
	s := b.reader(t)
	var records []*audit.Record
	s.Scan(testCtx, func(it audit.Item) error { records = append(records, it.Record); return nil })
	// Rewrite record 5 and rehash everything after it.
	records[4].Actor = "someone-else"
	var buf bytes.Buffer
	for i, r := range records {
		if i > 0 {
			r.Prev = records[i-1].Hash
		}
		r.Hash = r.ComputeHash()
		line, _ := r.Marshal()
		buf.Write(line)
	}
	segs, _ := filepath.Glob(filepath.Join(s.(*audit.FileStore).Dir(), "segments", "*.jsonl"))
	os.Chmod(segs[0], 0o600)
	if err := os.WriteFile(segs[0], buf.Bytes(), 0o600); err != nil {
		t.Fatal(err)
	}
	res := verifyStore(t, b, key)
	if res.OK() || res.Problems[0].Kind != audit.ProblemChanged || res.Problems[0].Seq != 1 {
		t.Fatalf("a rewritten, rehashed chain gives %+v", res.Problems)
	}
	if !strings.Contains(res.Problems[0].Message, "rewritten") {
		t.Fatalf("message: %s", res.Problems[0].Message)
	}
}

// TestArchiveStillVerifies: records past retention move to the archive,
// whole, and the log with its archive still verifies under the old
// checkpoints; the move itself is recorded.
func TestArchiveStillVerifies(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		now := time.Now().Add(-500 * 24 * time.Hour)
		clock := func() time.Time { return now }
		l := openLog(t, b.open(t), key, clock)
		for i := range 10 {
			l.Record(testCtx, event(i))
		}
		if _, err := l.Checkpoint(testCtx); err != nil {
			t.Fatal(err)
		}
		now = time.Now()
		for i := range 5 {
			l.Record(testCtx, event(100+i))
		}
		before := time.Now().Add(-400 * 24 * time.Hour)
		if b.name == "postgres" {
			// The server's role may only insert: archiving is refused.
			if _, err := l.ArchiveBefore(testCtx, before); !errors.Is(err, audit.ErrArchiveNeedsOwner) {
				t.Fatalf("archiving as the insert-only role: %v, want ErrArchiveNeedsOwner", err)
			}
		}
		l.Close(testCtx)

		l = openLog(t, b.owner(t), key, nil)
		a, err := l.ArchiveBefore(testCtx, before)
		if err != nil {
			t.Fatal(err)
		}
		if a == nil || a.First != 1 || a.Last != 11 {
			t.Fatalf("archived %+v, want records 1 to 11 (the 500-day-old ones)", a)
		}
		again, err := l.ArchiveBefore(testCtx, before)
		if err != nil || again != nil {
			t.Fatalf("a second archive run moved %+v (%v), want nothing", again, err)
		}
		l.Close(testCtx)
		res := verifyStore(t, b, key)
		if !res.OK() || res.Records != 18 || res.Checkpoints < 2 {
			t.Fatalf("verify after archiving = %+v", res)
		}
		var archived *audit.Record
		s := b.reader(t)
		s.Scan(testCtx, func(it audit.Item) error {
			if it.Record != nil && it.Record.Kind == audit.KindAuditArchived {
				archived = it.Record
			}
			return nil
		})
		s.Close()
		if archived == nil || archived.Details["last"] != "11" || archived.Details["lastHash"] == "" {
			t.Fatalf("the archiving is not recorded: %+v", archived)
		}
	})
}

// TestInterruptedWriteIsRepairedAndRecorded: a crash mid-write leaves half
// a line; the next open cuts it (it was never acknowledged), says so in a
// record, and the chain verifies.
func TestInterruptedWriteIsRepairedAndRecorded(t *testing.T) {
	b := fileBackend(t)
	key := newKey(t)
	fill(t, b, key, 5)
	s := b.reader(t).(*audit.FileStore)
	segs, _ := filepath.Glob(filepath.Join(s.Dir(), "segments", "*.jsonl"))
	f, _ := os.OpenFile(segs[len(segs)-1], os.O_WRONLY|os.O_APPEND, 0)
	f.WriteString(`{"seq":7,"time":"2026-01-0`)
	f.Close()
	if res := verifyStore(t, b, key); !res.OK() || len(res.Notes) != 1 {
		t.Fatalf("an incomplete last line should be a note, not a failure: %+v", res)
	}
	l := openLog(t, b.open(t), key, nil)
	l.Close(testCtx)
	var repaired *audit.Record
	s.Scan(testCtx, func(it audit.Item) error {
		if it.Record != nil && it.Record.Kind == audit.KindAuditRecovered {
			repaired = it.Record
		}
		return nil
	})
	if repaired == nil || !strings.Contains(repaired.Details["repair"], "discarded 26 bytes") {
		t.Fatalf("the repair is not recorded: %+v", repaired)
	}
	if res := verifyStore(t, b, key); !res.OK() || len(res.Notes) != 0 {
		t.Fatalf("after the repair: %+v", res)
	}
}

// TestSecondWriter: the file store admits one process; PostgreSQL admits
// a second writer (a replica that was leader a moment ago) without a fork.
func TestSecondWriter(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		first := openLog(t, b.open(t), key, nil)
		defer first.Close(testCtx)
		if b.name == "file" {
			if _, err := audit.OpenFileStore(first.Store().(*audit.FileStore).Dir()); err == nil || !strings.Contains(err.Error(), "in use") {
				t.Fatalf("a second process opened the file store: %v", err)
			}
			return
		}
		second := openLog(t, b.open(t), key, nil)
		defer second.Close(testCtx)
		for i := range 10 {
			if err := first.Record(testCtx, event(i)); err != nil {
				t.Fatal(err)
			}
			if err := second.Record(testCtx, event(100+i)); err != nil {
				t.Fatal(err)
			}
		}
		if res := verifyStore(t, b, key); !res.OK() || res.Records != 22 {
			t.Fatalf("two writers: %+v", res)
		}
	})
}

// TestWriterRoleCannotChangeRows: the role the server writes as may insert
// and read, nothing else: every way to change or remove a record or a
// checkpoint is refused by PostgreSQL.
func TestWriterRoleCannotChangeRows(t *testing.T) {
	_, writerDSN := pgDatabase(t)
	key := newKey(t)
	s, err := audit.OpenPostgresStore(testCtx, writerDSN, "")
	if err != nil {
		t.Fatal(err)
	}
	l := openLog(t, s, key, nil)
	l.Record(testCtx, event(1))
	l.Close(testCtx)
	conn, err := pgx.Connect(testCtx, writerDSN)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(testCtx)
	// PostgreSQL answers a grant of rights one does not hold with a
	// warning, not an error: what matters is that it changes nothing below.
	_, _ = conn.Exec(testCtx, `GRANT UPDATE, DELETE, TRUNCATE ON slipway_audit_records TO slipway_audit`)
	for _, sql := range []string{
		`UPDATE slipway_audit_records SET record = 'x' WHERE seq = 1`,
		`UPDATE slipway_audit_records SET seq = 100 WHERE seq = 2`,
		`DELETE FROM slipway_audit_records WHERE seq = 2`,
		`TRUNCATE slipway_audit_records`,
		`UPDATE slipway_audit_checkpoints SET size = 1`,
		`DELETE FROM slipway_audit_checkpoints`,
		`TRUNCATE slipway_audit_checkpoints`,
		`INSERT INTO slipway_audit_archive SELECT * FROM slipway_audit_records`,
		`DELETE FROM slipway_audit_archive`,
		`UPDATE slipway_audit_log SET id = 'other'`,
		`DROP TABLE slipway_audit_records`,
		`ALTER TABLE slipway_audit_records DISABLE TRIGGER ALL`,
	} {
		_, err := conn.Exec(testCtx, sql)
		if err == nil {
			t.Errorf("the writer role may run %s", sql)
			continue
		}
		if !strings.Contains(err.Error(), "permission denied") && !strings.Contains(err.Error(), "must be owner") &&
			!strings.Contains(err.Error(), "no privileges") {
			t.Errorf("%s: refused for another reason: %v", sql, err)
		}
	}
	if res := verifyStore(t, postgresBackendFor(writerDSN), key); !res.OK() || res.Records != 2 {
		t.Fatalf("after the attempts: %+v", res)
	}
}

func postgresBackendFor(dsn string) backend {
	return backend{name: "postgres", reader: func(t *testing.T) audit.Store {
		s, err := audit.OpenPostgresStore(testCtx, dsn, "")
		if err != nil {
			t.Fatal(err)
		}
		return s
	}}
}

// TestOpenReadsTheTailVerifyAllReadsAll: opening reads only the recent
// records (a year-old change goes unseen there, and opening stays cheap
// however long the log), and VerifyAll, which the server runs after
// opening and daily, finds it and records that it did.
func TestOpenReadsTheTailVerifyAllReadsAll(t *testing.T) {
	forEachBackend(t, func(t *testing.T, b backend) {
		key := newKey(t)
		now := time.Now().Add(-400 * 24 * time.Hour)
		l := openLog(t, b.open(t), key, func() time.Time { return now })
		for i := range 5 {
			l.Record(testCtx, event(i))
		}
		now = time.Now()
		for i := range 5 {
			l.Record(testCtx, event(10+i))
		}
		l.Close(testCtx)
		b.flipByte(t, 3)

		l, res, err := audit.Open(testCtx, b.open(t), audit.Options{Key: key})
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close(testCtx)
		if !res.OK() || res.Records >= 11 {
			t.Fatalf("opening read %d records (%v), want only the recent ones", res.Records, res.Problems)
		}
		if size, _ := l.Head(); size != 12 {
			t.Fatalf("head after opening is %d, want 12", size)
		}
		all, err := l.VerifyAll(testCtx)
		if err != nil {
			t.Fatal(err)
		}
		if all.OK() || all.Problems[0].Seq != 3 {
			t.Fatalf("VerifyAll: %+v, want record 3 named", all.Problems)
		}
		var recorded *audit.Record
		s := b.reader(t)
		defer s.Close()
		s.Scan(testCtx, func(it audit.Item) error {
			if it.Record != nil && it.Record.Kind == audit.KindAuditVerified {
				recorded = it.Record
			}
			return nil
		})
		if recorded == nil || recorded.Outcome != audit.OutcomeFailed || !strings.Contains(recorded.Details["problem"], "record 3") {
			t.Fatalf("the failed verification is not recorded: %+v", recorded)
		}
	})
}
