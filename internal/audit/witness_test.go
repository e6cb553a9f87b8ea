package audit_test

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
)

// witnessRepo starts a git server with a protected repository for
// checkpoints and returns a witness writing to it.
func witnessRepo(t *testing.T) *audit.GitWitness {
	t.Helper()
	srv, err := gitserver.New(t.TempDir(), "slipway", "git-server-password")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := srv.Start(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	if err := srv.CreateProtectedRepo(t.Context(), "audit.git", "audit-witness", "witness-password"); err != nil {
		t.Fatal(err)
	}
	return &audit.GitWitness{URL: srv.RepoURL("audit.git"), Auth: &gitsource.Credentials{Username: "audit-witness", Password: "witness-password"}, Timeout: 30 * time.Second}
}

// TestWitnessCatchesWhatTheStoreHides: whoever holds the store can cut
// its tail and its own checkpoints off, and even sign a new checkpoint
// with the audit key; the checkpoints committed to the witness repository
// still show the records that were there.
func TestWitnessCatchesWhatTheStoreHides(t *testing.T) {
	b := fileBackend(t)
	key := newKey(t)
	w := witnessRepo(t)
	l, _, err := audit.Open(testCtx, b.open(t), audit.Options{Key: key, Witness: w, WitnessInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		l.Record(testCtx, event(i))
	}
	if err := l.Witness(testCtx); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		l.Record(testCtx, event(10+i))
	}
	if err := l.Close(testCtx); err != nil { // checkpoints 16 and witnesses it
		t.Fatal(err)
	}
	cps, err := w.Checkpoints(testCtx, l.Store().LogID())
	if err != nil || len(cps) != 2 || cps[0].Size != 11 || cps[1].Size != 16 {
		t.Fatalf("witnessed checkpoints = %+v (%v), want sizes 11 and 16", cps, err)
	}
	verifyWith := func() *audit.Result {
		s := b.reader(t)
		defer s.Close()
		res, err := audit.Verify(testCtx, s, &key.PublicKey, audit.VerifyOptions{Witness: w})
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	if res := verifyWith(); !res.OK() || res.Witnessed != 2 {
		t.Fatalf("untouched: %+v", res)
	}

	// Cut the last 4 records and every checkpoint the store kept.
	b.truncate(t, 4)
	dir := l.Store().(*audit.FileStore).Dir()
	if err := os.Remove(filepath.Join(dir, "checkpoints.jsonl")); err != nil {
		t.Fatal(err)
	}
	if res := verifyStore(t, b, key); !res.OK() {
		t.Fatalf("without the witness nothing contradicts the cut store: %v", res.Problems)
	}
	res := verifyWith()
	if res.OK() || res.Problems[0].Kind != audit.ProblemTruncated || res.Problems[0].Seq != 13 {
		t.Fatalf("with the witness: %+v, want record 13 named as truncated", res.Problems)
	}

	// Holding the audit key too, sign a checkpoint of the cut log and
	// witness it: the witness history still has the larger one before it.
	l2, _, err := audit.Open(testCtx, b.open(t), audit.Options{Key: key, Witness: w, WitnessInterval: time.Hour})
	if err != nil {
		t.Fatal(err)
	}
	l2.Close(testCtx) // 13 records now, witnessed
	res = verifyWith()
	found := false
	for _, p := range res.Problems {
		if p.Kind == audit.ProblemTruncated && p.Seq == 14 {
			found = true
		}
	}
	if !found {
		t.Fatalf("a smaller checkpoint after a larger one is not reported: %+v", res.Problems)
	}
}
