package audit_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"fmt"
	"testing"
	"time"

	"slipway.dev/slipway/internal/audit"
)

// memStore is a store over bytes, to fuzz the reader and the verifier
// without a disk.
type memStore struct {
	records     []byte
	checkpoints []*audit.Checkpoint
	logID       string
}

func (m *memStore) String() string { return "memory" }
func (m *memStore) LogID() string  { return m.logID }
func (m *memStore) Close() error   { return nil }
func (m *memStore) Append(_ context.Context, rs []*audit.Record) error {
	for _, r := range rs {
		line, err := r.Marshal()
		if err != nil {
			return err
		}
		m.records = append(m.records, line...)
	}
	return nil
}
func (m *memStore) Scan(_ context.Context, fn func(audit.Item) error) error {
	return audit.ReadRecords(bytes.NewReader(m.records), "memory", fn)
}
func (m *memStore) Tail(ctx context.Context, _ time.Time, fn func(audit.Item) error) error {
	return m.Scan(ctx, fn)
}
func (m *memStore) AddCheckpoint(_ context.Context, c *audit.Checkpoint) error {
	m.checkpoints = append(m.checkpoints, c)
	return nil
}
func (m *memStore) Checkpoints(context.Context) ([]*audit.Checkpoint, error) {
	return m.checkpoints, nil
}
func (m *memStore) Archive(context.Context, time.Time) (*audit.Archived, error) {
	return nil, nil
}

// validLog is a small log under a checkpoint of all its records.
func validLog(t testing.TB, key *ecdsa.PrivateKey) *memStore {
	s := &memStore{logID: "fuzz"}
	clock := time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)
	l, _, err := audit.Open(testCtx, s, audit.Options{Key: key, Now: func() time.Time { clock = clock.Add(time.Second); return clock }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 4 {
		e := event(i)
		e.Details["note"] = fmt.Sprintf("ünïcode %d \"quoted\"", i)
		l.Record(testCtx, e)
	}
	l.Close(testCtx)
	return s
}

// FuzzReadRecords: the reader never panics, never accepts more than one
// spelling of a record, and what it accepts reads back the same.
func FuzzReadRecords(f *testing.F) {
	s := validLog(f, newKey(f))
	f.Add(s.records)
	f.Add([]byte("{}\n{\"seq\":1}\n"))
	f.Add(bytes.Repeat([]byte("x"), 300<<10))
	f.Fuzz(func(t *testing.T, data []byte) {
		_ = audit.ReadRecords(bytes.NewReader(data), "fuzz", func(it audit.Item) error {
			if it.Err != nil {
				return nil
			}
			line, err := it.Record.Marshal()
			if err != nil {
				t.Fatalf("an accepted record does not marshal: %v", err)
			}
			again, err := audit.ParseRecord(line)
			if err != nil || again.ComputeHash() != it.Record.ComputeHash() {
				t.Fatalf("an accepted record does not read back the same: %v", err)
			}
			if !bytes.Contains(data, line[:len(line)-1]) {
				t.Fatalf("accepted a record spelled differently from how it is written: %s", line)
			}
			return nil
		})
	})
}

// FuzzVerify: whatever the bytes of the records, Verify does not panic,
// and it passes only the log as written, or the log followed by an
// unfinished line (what a crash mid-write leaves). Inputs of many lines
// shrink slowly: run it with -fuzzminimizetime 1s (make fuzz does), or
// the default minute of minimising each new input leaves little time to
// fuzz.
func FuzzVerify(f *testing.F) {
	key := newKey(f)
	orig := validLog(f, key)
	f.Add(orig.records)
	f.Add(orig.records[:len(orig.records)/2])
	f.Add(append(bytes.Clone(orig.records), orig.records...))
	f.Fuzz(func(t *testing.T, data []byte) {
		s := &memStore{records: data, checkpoints: orig.checkpoints, logID: orig.logID}
		res, err := audit.Verify(testCtx, s, &key.PublicKey, audit.VerifyOptions{})
		if err != nil {
			t.Fatal(err)
		}
		rest, isPrefix := bytes.CutPrefix(data, orig.records)
		if res.OK() && !(isPrefix && !bytes.Contains(rest, []byte("\n"))) {
			t.Fatalf("verify passed changed records:\n%q", data)
		}
		if bytes.Equal(data, orig.records) && !res.OK() {
			t.Fatalf("verify failed the log as written: %v", res.Problems)
		}
	})
}

// FuzzParseCheckpoint: a checkpoint is read in one spelling only.
func FuzzParseCheckpoint(f *testing.F) {
	key := newKey(f)
	c := &audit.Checkpoint{LogID: "abc", Size: 12, Time: time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)}
	c.Sign(key)
	f.Add(c.Marshal())
	f.Fuzz(func(t *testing.T, data []byte) {
		got, err := audit.ParseCheckpoint(data)
		if err != nil {
			return
		}
		if m := got.Marshal(); !bytes.Equal(m, data) && !bytes.Equal(m[:len(m)-1], data) {
			t.Fatalf("accepted a checkpoint spelled differently: %q", data)
		}
	})
}
