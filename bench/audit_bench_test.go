package bench

import (
	"context"
	"crypto/ecdsa"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/postgres"
	"slipway.dev/slipway/internal/signing"
)

// auditStores opens a fresh store of each kind; PostgreSQL is a
// throwaway server of Debian's binaries, the writer an insert-only role.
type auditStore struct {
	name string
	open func(b *testing.B) audit.Store
}

func auditStores(b *testing.B) ([]auditStore, func()) {
	stores := []auditStore{{"file", func(b *testing.B) audit.Store {
		s, err := audit.OpenFileStore(filepath.Join(b.TempDir(), "audit"))
		if err != nil {
			b.Fatal(err)
		}
		return s
	}}}
	if _, err := postgres.BinDir(); err != nil {
		b.Logf("PostgreSQL skipped: %v", err)
		return stores, func() {}
	}
	dir, err := os.MkdirTemp("", "slipway-bench-pg-")
	if err != nil {
		b.Fatal(err)
	}
	pg, err := postgres.Start(context.Background(), dir)
	if err != nil {
		b.Fatal(err)
	}
	n := 0
	stores = append(stores, auditStore{"postgres", func(b *testing.B) audit.Store {
		n++
		db := fmt.Sprintf("bench_%d", n)
		if err := pg.CreateDatabase(context.Background(), db); err != nil {
			b.Fatal(err)
		}
		if err := audit.SetupPostgres(context.Background(), pg.SuperDSN(db), "slipway_audit", "bench-writer"); err != nil {
			b.Fatal(err)
		}
		s, err := audit.OpenPostgresStore(context.Background(), pg.DSN("slipway_audit", "bench-writer", db), "")
		if err != nil {
			b.Fatal(err)
		}
		return s
	}})
	return stores, func() { pg.Stop(); os.RemoveAll(dir) }
}

func benchKey(b *testing.B) *ecdsa.PrivateKey {
	k, err := signing.GenerateKey()
	if err != nil {
		b.Fatal(err)
	}
	return k
}

// syncEvent is a record of the size a sync writes.
func syncEvent(i int) audit.Event {
	return audit.Event{Kind: audit.KindSyncApplied, Actor: "ServiceAccount bench/slipway-deployer", Subject: fmt.Sprintf("Application bench/app-%04d", i%1000),
		Outcome: audit.OutcomeSucceeded, Ref: fmt.Sprintf("application/%08d/deploy/%040d/%d", i%1000, i, i),
		Details: map[string]string{"namespace": "bench", "application": fmt.Sprintf("app-%04d", i%1000), "revision": fmt.Sprintf("%040x", i),
			"previousRevision": fmt.Sprintf("%040x", i-1), "source": "http://127.0.0.1:3000/ops.git", "path": "apps/app", "destination": "bench",
			"changes": "Deployment/bench/app configured, ConfigMap/bench/app-config-0 configured, ConfigMap/bench/app-config-1 configured",
			"objects": "10", "images": "registry.lab.local/bench/app@sha256:" + fmt.Sprintf("%064x", i), "policy": "passed",
			"policy.profile": "default", "policy.mode": "enforce", "policy.failed": "0", "policy.waived": "0", "policy.waivers": ""}}
}

// BenchmarkAuditAppend: records appended durably per second by each
// store, for one writer (each record waits for its own fsync or commit)
// and for many at once (they share them), as 16 reconcile workers do.
func BenchmarkAuditAppend(b *testing.B) {
	n := envCount(b, "SLIPWAY_BENCH_AUDIT_RECORDS", 5000)
	stores, stop := auditStores(b)
	defer stop()
	for _, s := range stores {
		for _, writers := range []int{1, 16, 64} {
			b.Run(fmt.Sprintf("%s/writers=%d", s.name, writers), func(b *testing.B) {
				for range b.N {
					l, _, err := audit.Open(context.Background(), s.open(b), audit.Options{Key: benchKey(b)})
					if err != nil {
						b.Fatal(err)
					}
					start := time.Now()
					var wg sync.WaitGroup
					for w := range writers {
						wg.Add(1)
						go func() {
							defer wg.Done()
							for i := w; i < n; i += writers {
								if err := l.Record(context.Background(), syncEvent(i)); err != nil {
									b.Error(err)
									return
								}
							}
						}()
					}
					wg.Wait()
					elapsed := time.Since(start)
					l.Close(context.Background())
					rate := float64(n) / elapsed.Seconds()
					b.ReportMetric(rate, "records/s")
					fmt.Printf("| audit append | %s | %d writers | %d records | %.0f records/s | %.2f ms per record |\n",
						s.name, writers, n, rate, elapsed.Seconds()*1000/float64(n)*float64(writers))
				}
			})
		}
	}
}

// BenchmarkAuditVerify: `audit verify` over a million records (a
// checkpoint at the end), per store.
func BenchmarkAuditVerify(b *testing.B) {
	n := envCount(b, "SLIPWAY_BENCH_AUDIT_VERIFY", 1_000_000)
	stores, stop := auditStores(b)
	defer stop()
	for _, s := range stores {
		b.Run(fmt.Sprintf("%s/records=%d", s.name, n), func(b *testing.B) {
			key := benchKey(b)
			store := s.open(b)
			defer store.Close()
			fill := time.Now()
			if err := fillChain(store, key, n); err != nil {
				b.Fatal(err)
			}
			b.Logf("wrote %d records in %.1fs", n, time.Since(fill).Seconds())
			for range b.N {
				start := time.Now()
				res, err := audit.Verify(context.Background(), store, &key.PublicKey, audit.VerifyOptions{})
				if err != nil || !res.OK() || res.Records != uint64(n) {
					b.Fatalf("verify: %v %+v", err, res)
				}
				elapsed := time.Since(start)
				b.ReportMetric(elapsed.Seconds(), "s-verify")
				b.ReportMetric(float64(n)/elapsed.Seconds(), "records/s")
				fmt.Printf("| audit verify | %s | %d records | %.1f s | %.0f records/s |\n", s.name, n, elapsed.Seconds(), float64(n)/elapsed.Seconds())
			}
		})
	}
}

// fillChain appends n chained records in large batches, then a checkpoint
// of them all: what a long-running log looks like, written fast.
func fillChain(store audit.Store, key *ecdsa.PrivateKey, n int) error {
	var prev audit.Hash
	t := time.Now().UTC().Add(-time.Duration(n) * time.Second)
	batch := make([]*audit.Record, 0, 5000)
	for i := 1; i <= n; i++ {
		e := syncEvent(i)
		r := &audit.Record{Seq: uint64(i), Time: t.Add(time.Duration(i) * time.Second), Kind: e.Kind, Actor: e.Actor, Subject: e.Subject,
			Outcome: e.Outcome, Ref: e.Ref, Details: e.Details, Prev: prev}
		r.Hash = r.ComputeHash()
		prev = r.Hash
		batch = append(batch, r)
		if len(batch) == cap(batch) || i == n {
			if err := store.Append(context.Background(), batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	c := &audit.Checkpoint{LogID: store.LogID(), Size: uint64(n), Head: prev, Time: time.Now().UTC()}
	if err := c.Sign(key); err != nil {
		return err
	}
	return store.AddCheckpoint(context.Background(), c)
}
