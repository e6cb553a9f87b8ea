package audit

import (
	"context"
	"errors"
	"time"
)

// Store keeps a log's records and checkpoints. Implementations keep what
// they are given byte for byte and never change or remove a record except
// by moving it, whole, to their archive. The chain is computed by Log and
// checked by Verify, not by the store.
type Store interface {
	// String names the store for messages, without credentials.
	String() string
	// LogID is the id of the log the store holds, chosen when it was created.
	LogID() string
	// Append writes records durably and in order, returning only once
	// they would survive a crash. records[0].Seq must follow the last
	// record written; when another writer took that position, Append
	// writes nothing and returns ErrConflict.
	Append(ctx context.Context, records []*Record) error
	// Scan calls fn for every record, archived ones first, in the order
	// kept. A record that cannot be read is passed with Err set, so that
	// verification can say which one it is.
	Scan(ctx context.Context, fn func(Item) error) error
	// Tail calls fn, in order, for the newest records: at least every
	// record written since since, and always the last one. It is what
	// opening a log reads, so that opening costs what the recent past
	// holds, not the whole log.
	Tail(ctx context.Context, since time.Time, fn func(Item) error) error
	// AddCheckpoint keeps a signed checkpoint.
	AddCheckpoint(ctx context.Context, c *Checkpoint) error
	// Checkpoints returns those kept, in the order written.
	Checkpoints(ctx context.Context) ([]*Checkpoint, error)
	// Archive moves the records older than before (whole segments, or rows)
	// out of the live store into its archive, where Scan still reads them.
	// It returns what it moved; nothing when nothing is old enough.
	Archive(ctx context.Context, before time.Time) (*Archived, error)
	Close() error
}

// Item is one stored record as Scan reads it.
type Item struct {
	// Record is nil when Err is set.
	Record *Record
	// Err says why the stored bytes are not a record.
	Err error
	// Where locates it: a segment file and line, or a table row.
	Where string
	// sum caches the record's computed hash during verification.
	sum *Hash
}

// Archived describes what one Archive call moved.
type Archived struct {
	// First and Last are the seqs moved; LastHash is the hash of Last,
	// which links the live records to the archive.
	First, Last uint64
	LastHash    Hash
	// Where names the archive: segment files, or a table.
	Where []string
}

// ErrConflict is returned by Append when the position was taken by another writer.
var ErrConflict = errors.New("another writer appended to the audit log first")

// ErrIncomplete marks the last record of a file store cut short by a crash:
// it was never acknowledged.
var ErrIncomplete = errors.New("incomplete record at the end of the log (a write interrupted by a crash, never acknowledged)")

// recoverer is implemented by stores that repaired something when they
// opened (an interrupted write), so that Log records it.
type recoverer interface {
	Recovered() []string
}
