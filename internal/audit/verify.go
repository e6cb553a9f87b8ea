package audit

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"time"
)

// Problem kinds, as `slipway audit verify` names them.
const (
	// ProblemChanged: a record's bytes or content changed.
	ProblemChanged = "changed"
	// ProblemMissing: records were removed from the middle or the start.
	ProblemMissing = "missing"
	// ProblemReordered: records are out of order.
	ProblemReordered = "reordered"
	// ProblemTruncated: records a checkpoint covers are gone from the end.
	ProblemTruncated = "truncated"
	// ProblemCheckpoint: a checkpoint is not one of this log's, not signed
	// by the key, or contradicts an earlier one.
	ProblemCheckpoint = "checkpoint"
)

// Problem is one failure Verify found.
type Problem struct {
	Kind string `json:"kind"`
	// Seq is the first record concerned; 0 when the problem is about a checkpoint.
	Seq uint64 `json:"seq,omitempty"`
	// Where locates it: a segment file and line, a table row, a commit.
	Where   string `json:"where,omitempty"`
	Message string `json:"message"`
}

func (p Problem) String() string {
	s := p.Kind + ": " + p.Message
	if p.Where != "" {
		s += " (" + p.Where + ")"
	}
	return s
}

// Result is what Verify found.
type Result struct {
	LogID string `json:"logID"`
	KeyID string `json:"keyID"`
	// Records were read, each linked to the one before it.
	Records uint64 `json:"records"`
	// First and Last are the seqs of the first and last good records.
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	// Head is the hash of Last.
	Head Hash `json:"head"`
	// Checkpoints of the store, and of the witness, that were checked against the records.
	Checkpoints int `json:"checkpoints"`
	Witnessed   int `json:"witnessed"`
	// LatestCheckpoint is the newest checkpoint with a good signature.
	LatestCheckpoint *Checkpoint `json:"-"`
	// Problems are what failed; the first names the first bad record.
	Problems []Problem `json:"problems,omitempty"`
	// Notes are what is worth saying without being a failure (a write a
	// crash interrupted, which the server discards at its next start).
	Notes []string `json:"notes,omitempty"`
}

// OK reports whether nothing failed.
func (r *Result) OK() bool { return len(r.Problems) == 0 }

// VerifyOptions add evidence to a verification.
type VerifyOptions struct {
	// Witness is read for the checkpoints it holds.
	Witness Witness
}

// Verify reads every record of the store and checks that each is intact
// and linked to the one before it, that the checkpoints kept in the store
// and by the witness are signed by pub and match the records, and that no
// record a checkpoint covers is missing from the end.
func Verify(ctx context.Context, store Store, pub *ecdsa.PublicKey, opts VerifyOptions) (*Result, error) {
	var witnessed []*Checkpoint
	if opts.Witness != nil {
		var err error
		if witnessed, err = opts.Witness.Checkpoints(ctx, store.LogID()); err != nil {
			return nil, fmt.Errorf("reading the checkpoints of %s: %w", opts.Witness, err)
		}
	}
	return verify(ctx, store, pub, witnessed, nil)
}

// errStop ends a scan early once a problem is found.
var errStop = errors.New("stop")

func verify(ctx context.Context, store Store, pub *ecdsa.PublicKey, witnessed []*Checkpoint, onRecord func(*Record)) (*Result, error) {
	keyID, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	kept, err := store.Checkpoints(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading checkpoints: %w", err)
	}
	c := newChainChecker(1, true, append(append([]*Checkpoint{}, kept...), witnessed...), onRecord)
	if err := store.Scan(ctx, c.feed); err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	c.finish()
	res := c.result(store.LogID(), keyID)
	checkCheckpoints(res, c, pub, kept, witnessed)
	return res, nil
}

// chainChecker follows the chain record by record, looking one record
// ahead so that a swapped pair is told apart from a missing record.
type chainChecker struct {
	start     uint64
	expected  uint64
	prev      Hash
	checkPrev bool
	pending   *Item
	problem   *Problem
	wanted    map[uint64]bool
	hashes    map[uint64]Hash
	onRecord  func(*Record)
	records   uint64
	notes     []string
}

// newChainChecker expects the first record to be start; with anchored,
// its prev must be zero (a log's first record), otherwise it is taken as
// it is and the chain is vouched for by the checkpoints after it. Start 0
// takes the first intact record as the start, whatever its seq (the tail
// of a log).
func newChainChecker(start uint64, anchored bool, checkpoints []*Checkpoint, onRecord func(*Record)) *chainChecker {
	c := &chainChecker{start: start, expected: start, checkPrev: anchored, wanted: map[uint64]bool{}, hashes: map[uint64]Hash{}, onRecord: onRecord}
	for _, cp := range checkpoints {
		c.wanted[cp.Size] = true
	}
	return c
}

func (c *chainChecker) feed(it Item) error {
	if c.problem != nil {
		return errStop
	}
	if c.pending == nil {
		c.pending = &it
		return nil
	}
	cur := c.pending
	c.pending = &it
	c.check(cur, &it)
	if c.problem != nil {
		return errStop
	}
	return nil
}

func (c *chainChecker) finish() {
	if c.pending != nil && c.problem == nil {
		c.check(c.pending, nil)
	}
	c.pending = nil
}

func (c *chainChecker) fail(kind string, seq uint64, where, msg string) {
	c.problem = &Problem{Kind: kind, Seq: seq, Where: where, Message: msg}
}

// intact reports whether an item is a record whose content matches its
// hash, computing the hash once per item.
func intact(it *Item) bool {
	if it == nil || it.Err != nil {
		return false
	}
	if it.sum == nil {
		sum := it.Record.ComputeHash()
		it.sum = &sum
	}
	return *it.sum == it.Record.Hash
}

func (c *chainChecker) check(it *Item, next *Item) {
	if c.expected == 0 && intact(it) {
		c.start, c.expected, c.checkPrev = it.Record.Seq, it.Record.Seq, it.Record.Seq == 1
	}
	e := c.expected
	if it.Err != nil {
		if errors.Is(it.Err, ErrIncomplete) && next == nil {
			c.notes = append(c.notes, it.Where+": "+it.Err.Error())
			return
		}
		c.fail(ProblemChanged, e, it.Where, fmt.Sprintf("record %d was changed: it can no longer be read (%v)", e, it.Err))
		return
	}
	r := it.Record
	if !intact(it) {
		c.fail(ProblemChanged, e, it.Where, fmt.Sprintf("record %d was changed: its content no longer matches its hash", e))
		return
	}
	switch {
	case r.Seq > e && intact(next) && next.Record.Seq == e:
		c.fail(ProblemReordered, e, it.Where, fmt.Sprintf("records %d and %d are out of order: %d is stored before %d", e, r.Seq, r.Seq, e))
		return
	case r.Seq > e:
		what := fmt.Sprintf("record %d is missing", e)
		if r.Seq > e+1 {
			what = fmt.Sprintf("records %d to %d are missing", e, r.Seq-1)
		}
		c.fail(ProblemMissing, e, it.Where, fmt.Sprintf("%s: record %d comes after record %d", what, r.Seq, e-1))
		return
	case r.Seq < e:
		c.fail(ProblemReordered, r.Seq, it.Where, fmt.Sprintf("record %d is stored again, or out of order, after record %d", r.Seq, e-1))
		return
	}
	if c.checkPrev && r.Prev != c.prev {
		if e == c.start {
			c.fail(ProblemChanged, e, it.Where, fmt.Sprintf("record %d was changed: the first record of the log must link to nothing", e))
		} else {
			c.fail(ProblemChanged, e-1, it.Where, fmt.Sprintf("record %d was changed: its hash is not the one record %d links to (it, or record %d, was altered and its hash recomputed)", e-1, e, e))
		}
		return
	}
	c.prev, c.checkPrev = r.Hash, true
	c.expected++
	c.records++
	if c.wanted[r.Seq] {
		c.hashes[r.Seq] = r.Hash
	}
	if c.onRecord != nil {
		c.onRecord(r)
	}
}

func (c *chainChecker) result(logID, keyID string) *Result {
	res := &Result{LogID: logID, KeyID: keyID, Records: c.records, Notes: c.notes}
	if c.records > 0 {
		res.First, res.Last, res.Head = c.start, c.expected-1, c.prev
	}
	if c.problem != nil {
		res.Problems = append(res.Problems, *c.problem)
	}
	return res
}

// checkCheckpoints compares the checkpoints with the records read.
func checkCheckpoints(res *Result, c *chainChecker, pub *ecdsa.PublicKey, kept, witnessed []*Checkpoint) {
	last := c.expected - 1
	var broken uint64 // first record no checkpoint can vouch for
	if c.problem != nil {
		broken = c.problem.Seq
	}
	var good []*Checkpoint
	for i, list := range [][]*Checkpoint{kept, witnessed} {
		source := "the store"
		if i == 1 {
			source = "the witness"
		}
		var prevSize uint64
		var prevTime time.Time
		for j, cp := range list {
			where := fmt.Sprintf("checkpoint %d of %s", j+1, source)
			if err := cp.VerifySignature(pub); err != nil {
				res.Problems = append(res.Problems, Problem{Kind: ProblemCheckpoint, Where: where, Message: err.Error()})
				continue
			}
			if cp.LogID != res.LogID {
				res.Problems = append(res.Problems, Problem{Kind: ProblemCheckpoint, Where: where,
					Message: fmt.Sprintf("the checkpoint is of log %s, not of %s", cp.LogID, res.LogID)})
				continue
			}
			if cp.Size < prevSize {
				res.Problems = append(res.Problems, Problem{Kind: ProblemTruncated, Seq: cp.Size + 1, Where: where,
					Message: fmt.Sprintf("the log shrank: %d records at %s, then %d at %s", prevSize, prevTime.Format(time.RFC3339), cp.Size, cp.Time.Format(time.RFC3339))})
			}
			prevSize, prevTime = max(prevSize, cp.Size), cp.Time
			good = append(good, cp)
			if res.LatestCheckpoint == nil || cp.Size > res.LatestCheckpoint.Size ||
				(cp.Size == res.LatestCheckpoint.Size && cp.Time.After(res.LatestCheckpoint.Time)) {
				res.LatestCheckpoint = cp
			}
			if broken != 0 && cp.Size >= broken {
				continue
			}
			if cp.Size > last {
				continue
			}
			if c.hashes[cp.Size] != cp.Head {
				from := matchedBefore(list[:j], c.hashes, cp.Size) + 1
				res.Problems = append(res.Problems, Problem{Kind: ProblemChanged, Seq: from, Where: where,
					Message: fmt.Sprintf("records %d to %d were rewritten: the checkpoint of %s says record %d has hash %s, the log has %s",
						from, cp.Size, cp.Time.Format(time.RFC3339), cp.Size, cp.Head, c.hashes[cp.Size])})
				continue
			}
			if i == 0 {
				res.Checkpoints++
			} else {
				res.Witnessed++
			}
		}
	}
	// The largest size any good checkpoint vouches for must be there.
	var covered *Checkpoint
	for _, cp := range good {
		if covered == nil || cp.Size > covered.Size {
			covered = cp
		}
	}
	if covered != nil && covered.Size > last && broken == 0 {
		what := fmt.Sprintf("record %d is missing", last+1)
		if covered.Size > last+1 {
			what = fmt.Sprintf("records %d to %d are missing", last+1, covered.Size)
		}
		res.Problems = append(res.Problems, Problem{Kind: ProblemTruncated, Seq: last + 1,
			Message: fmt.Sprintf("%s from the end: the checkpoint of %s was signed for %d records, the log has %d", what, covered.Time.Format(time.RFC3339), covered.Size, last)})
	}
}

// matchedBefore is the size of the largest earlier checkpoint that matched
// the records, or 0.
func matchedBefore(earlier []*Checkpoint, hashes map[uint64]Hash, size uint64) uint64 {
	var best uint64
	for _, cp := range earlier {
		if cp.Size < size && cp.Size > best && hashes[cp.Size] == cp.Head {
			best = cp.Size
		}
	}
	return best
}

// VerifyEach verifies the store as Verify does (without a witness),
// calling fn with each good record in order: records are read once, and
// none after the first failure is passed.
func VerifyEach(ctx context.Context, store Store, pub *ecdsa.PublicKey, fn func(*Record)) (*Result, error) {
	return verify(ctx, store, pub, nil, fn)
}
