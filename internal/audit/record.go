// Package audit is Slipway's tamper-evident audit trail. Every
// security-relevant event (a pipeline run, a signature, a promotion and its
// decisions, a sync, a policy block, a waiver, a refused webhook) becomes
// one Record. Records form a hash chain: each carries the hash of the one
// before it, computed over a canonical encoding, so changing, removing or
// reordering a record breaks the chain at that record. Periodic
// checkpoints (record count, head hash, time) are signed with the audit
// key and also committed to a git repository the store's owner cannot
// rewrite, so that cutting the tail off is detected too: the ideas of
// Certificate Transparency (RFC 6962) and Trillian's checkpoints over a
// plain hash chain, which is all one writer needs.
//
// Records are kept by a Store: an append-only file (the embedded default)
// or a PostgreSQL table the server may only insert into. Verify checks a
// store against the key and the checkpoints and names the first record
// that fails and how.
package audit

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// Kinds of records. A kind names what happened; the outcome says how it
// ended and the details carry what the kind is about.
const (
	KindRunStarted  = "run.started"
	KindRunFinished = "run.finished"
	KindImageSigned = "image.signed"

	KindPromotionRequested       = "promotion.requested"
	KindPromotionApproved        = "promotion.approved"
	KindPromotionRejected        = "promotion.rejected"
	KindPromotionApprovalIgnored = "promotion.approval-not-counted"
	KindPromotionLanded          = "promotion.landed"
	KindPromotionExpired         = "promotion.expired"
	KindPromotionFailed          = "promotion.failed"

	KindSyncApplied   = "sync.applied"
	KindSyncFailed    = "sync.failed"
	KindRollback      = "sync.rollback"
	KindDriftRepaired = "sync.drift-repaired"
	KindPolicyBlocked = "sync.policy-blocked"
	KindSyncRefused   = "sync.refused"

	KindProfileCreated = "policy.profile-created"
	KindProfileChanged = "policy.profile-changed"
	KindProfileDeleted = "policy.profile-deleted"
	KindWaiverCreated  = "policy.waiver-created"
	KindWaiverChanged  = "policy.waiver-changed"
	KindWaiverExpired  = "policy.waiver-expired"
	KindWaiverDeleted  = "policy.waiver-deleted"

	KindWebhookRefused = "webhook.refused"

	KindAuditOpened    = "audit.opened"
	KindAuditVerified  = "audit.verified"
	KindAuditRecovered = "audit.recovered"
	KindAuditArchived  = "audit.archived"
)

// Outcomes.
const (
	OutcomeSucceeded = "succeeded"
	OutcomeFailed    = "failed"
	OutcomeRefused   = "refused"
	OutcomeBlocked   = "blocked"
	OutcomeCancelled = "cancelled"
	OutcomeInfo      = "info"
)

// SystemActor is the actor of what Slipway does by itself.
const SystemActor = "system:slipway"

// Hash is a SHA-256 digest, written as lowercase hex.
type Hash [sha256.Size]byte

func (h Hash) String() string { return hex.EncodeToString(h[:]) }

// IsZero reports whether h is all zeros (the prev of the first record).
func (h Hash) IsZero() bool { return h == Hash{} }

// MarshalText writes h as hex.
func (h Hash) MarshalText() ([]byte, error) { return []byte(h.String()), nil }

// UnmarshalText reads 64 hex characters.
func (h *Hash) UnmarshalText(b []byte) error {
	if len(b) != 2*sha256.Size {
		return fmt.Errorf("a hash is %d hex characters, got %d", 2*sha256.Size, len(b))
	}
	_, err := hex.Decode(h[:], b)
	return err
}

// ParseHash reads a hex hash.
func ParseHash(s string) (Hash, error) {
	var h Hash
	return h, h.UnmarshalText([]byte(s))
}

// Event is what a caller records; the log adds the position, the time and
// the chain.
type Event struct {
	Kind string
	// Actor is who did it: a user as the API server authenticated them, a
	// commit author, a ServiceAccount, or SystemActor.
	Actor string
	// Subject is what it was done to, e.g. "Application cafe/tea".
	Subject string
	Outcome string
	// Ref identifies the event itself, so that an event seen again (a
	// retried reconcile, a restart) is recorded once: e.g.
	// "promotion/<uid>/landed". Empty when every occurrence is an event
	// of its own.
	Ref string
	// Details are the kind's fields, as strings so that the canonical
	// encoding never depends on how a number or a time is formatted.
	// Never a secret value.
	Details map[string]string
	// Time is when it happened; the time of recording when zero.
	Time time.Time
}

// Record is one entry of the chain.
type Record struct {
	// Seq is the record's position, from 1.
	Seq     uint64            `json:"seq"`
	Time    time.Time         `json:"time"`
	Kind    string            `json:"kind"`
	Actor   string            `json:"actor"`
	Subject string            `json:"subject"`
	Outcome string            `json:"outcome"`
	Ref     string            `json:"ref,omitempty"`
	Details map[string]string `json:"details,omitempty"`
	// Prev is the hash of record Seq-1; zero for the first record.
	Prev Hash `json:"prev"`
	// Hash is SHA-256 of the record's canonical encoding (which includes Prev).
	Hash Hash `json:"hash"`
}

// Limits of one record, so that a reader can refuse absurd input before
// parsing it and a writer never produces what readers refuse.
const (
	MaxRecordBytes = 256 << 10
	maxDetails     = 256
)

// canonicalPrefix separates this encoding from any other SHA-256 input.
const canonicalPrefix = "slipway.dev/audit/record/v1\x00"

// Canonical returns the encoding the record's hash is computed over: a
// fixed prefix, then every field but the hash in a fixed order, strings
// length-prefixed, details sorted by key, the time as UTC nanoseconds.
// It does not depend on JSON, map order or time formatting.
func (r *Record) Canonical() []byte {
	size := len(canonicalPrefix) + 2*binary.MaxVarintLen64 + len(r.Prev) + 6*binary.MaxVarintLen64 +
		len(r.Kind) + len(r.Actor) + len(r.Subject) + len(r.Outcome) + len(r.Ref)
	keys := make([]string, 0, len(r.Details))
	for k, v := range r.Details {
		keys = append(keys, k)
		size += 2*binary.MaxVarintLen64 + len(k) + len(v)
	}
	slices.Sort(keys)
	b := make([]byte, 0, size)
	b = append(b, canonicalPrefix...)
	b = binary.AppendUvarint(b, r.Seq)
	b = binary.AppendVarint(b, r.Time.UnixNano())
	for _, s := range []string{r.Kind, r.Actor, r.Subject, r.Outcome, r.Ref} {
		b = appendString(b, s)
	}
	b = binary.AppendUvarint(b, uint64(len(keys)))
	for _, k := range keys {
		b = appendString(b, k)
		b = appendString(b, r.Details[k])
	}
	return append(b, r.Prev[:]...)
}

func appendString(b []byte, s string) []byte {
	b = binary.AppendUvarint(b, uint64(len(s)))
	return append(b, s...)
}

// ComputeHash is the hash the record should carry.
func (r *Record) ComputeHash() Hash { return sha256.Sum256(r.Canonical()) }

// validate checks what a record must be before it is written or after it
// is read: text fields in UTF-8 (JSON would silently replace invalid
// bytes, changing the hash), bounded, with a kind and a subject.
func (r *Record) validate() error {
	if r.Seq == 0 {
		return errors.New("seq must be at least 1")
	}
	if r.Kind == "" || r.Subject == "" {
		return errors.New("kind and subject are required")
	}
	if len(r.Details) > maxDetails {
		return fmt.Errorf("%d details, at most %d", len(r.Details), maxDetails)
	}
	fields := []string{r.Kind, r.Actor, r.Subject, r.Outcome, r.Ref}
	for k, v := range r.Details {
		fields = append(fields, k, v)
	}
	for _, f := range fields {
		if !utf8.ValidString(f) {
			return errors.New("a field is not valid UTF-8")
		}
	}
	if r.Time.Location() != time.UTC {
		return errors.New("time must be UTC")
	}
	return nil
}

// Marshal returns the record as one line of JSON, newline included: the
// form both stores keep. The hash is over Canonical, not over this line.
func (r *Record) Marshal() ([]byte, error) {
	b, err := json.Marshal(r)
	if err != nil {
		return nil, err
	}
	if len(b) >= MaxRecordBytes {
		return nil, fmt.Errorf("record %d of kind %s is %d bytes, over the limit of %d", r.Seq, r.Kind, len(b), MaxRecordBytes)
	}
	return append(b, '\n'), nil
}

// ParseRecord reads one record written by Marshal (with or without its
// newline). It checks the form, not the chain: Verify does that.
func ParseRecord(line []byte) (*Record, error) {
	line = bytes.TrimSuffix(line, []byte("\n"))
	if len(line) >= MaxRecordBytes {
		return nil, fmt.Errorf("a record of %d bytes is over the limit of %d", len(line), MaxRecordBytes)
	}
	// Unknown fields and anything after the value are caught below: the
	// record must read back as exactly these bytes.
	r := &Record{}
	if err := json.Unmarshal(line, r); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	if r.Time.IsZero() {
		return nil, errors.New("not a record: no time")
	}
	// JSON keeps the offset a time was written with; records are UTC.
	if _, offset := r.Time.Zone(); offset != 0 {
		return nil, errors.New("not a record: time is not UTC")
	}
	r.Time = r.Time.UTC()
	if err := r.validate(); err != nil {
		return nil, fmt.Errorf("not a record: %w", err)
	}
	// Only one spelling of a record is accepted: the one Marshal writes.
	// JSON alone would take other bytes for the same record (upper-case
	// hex, a repeated key), which would let stored bytes change unseen.
	again, err := r.Marshal()
	if err != nil || !bytes.Equal(again[:len(again)-1], line) {
		return nil, errors.New("not a record: not in canonical form")
	}
	return r, nil
}

// Short is a one-line description for messages.
func (r *Record) Short() string {
	return fmt.Sprintf("record %d (%s %s, %s)", r.Seq, r.Kind, r.Subject, r.Time.Format(time.RFC3339))
}

// sanitize makes a caller's text safe to record: valid UTF-8, bounded.
func sanitize(s string, max int) string {
	s = strings.ToValidUTF8(s, "\uFFFD")
	if len(s) > max {
		s = s[:max]
		for !utf8.ValidString(s) {
			s = s[:len(s)-1]
		}
		s += "..."
	}
	return s
}
