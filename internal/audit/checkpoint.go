package audit

import (
	"bufio"
	"bytes"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
)

// checkpointHeader starts every checkpoint body.
const checkpointHeader = "slipway.dev/audit/checkpoint/v1"

// Checkpoint commits to the first Size records of a log: Head is the hash
// of record Size. Signed by the audit key, it lets anyone holding the
// public key check that a copy of the log still has those records,
// unchanged, in order.
type Checkpoint struct {
	// LogID names the log, so a checkpoint of one log is never taken
	// for another's.
	LogID string
	Size  uint64
	Head  Hash
	Time  time.Time
	// KeyID is the SHA-256 of the signing key's PKIX encoding, hex.
	KeyID string
	// Signature is ASN.1 ECDSA over SHA-256 of Body().
	Signature []byte
}

// Body is the signed text:
//
//	slipway.dev/audit/checkpoint/v1
//	log <id>
//	size <n>
//	head <hex>
//	time <RFC 3339, UTC>
func (c *Checkpoint) Body() []byte {
	return fmt.Appendf(nil, "%s\nlog %s\nsize %d\nhead %s\ntime %s\n",
		checkpointHeader, c.LogID, c.Size, c.Head, c.Time.UTC().Format(time.RFC3339Nano))
}

// Marshal writes the body, then "signature <key id> <base64>" and a newline.
func (c *Checkpoint) Marshal() []byte {
	return fmt.Appendf(c.Body(), "signature %s %s\n", c.KeyID, base64.StdEncoding.EncodeToString(c.Signature))
}

// maxCheckpointBytes bounds what ParseCheckpoint reads.
const maxCheckpointBytes = 4096

// ParseCheckpoint reads what Marshal wrote. It checks the form, not the
// signature (VerifySignature does).
func ParseCheckpoint(b []byte) (*Checkpoint, error) {
	if len(b) > maxCheckpointBytes {
		return nil, fmt.Errorf("a checkpoint of %d bytes is over the limit of %d", len(b), maxCheckpointBytes)
	}
	sc := bufio.NewScanner(bytes.NewReader(b))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) != 6 || lines[0] != checkpointHeader {
		return nil, errors.New("not a checkpoint: want the header line and five fields")
	}
	field := func(i int, name string) (string, error) {
		v, ok := strings.CutPrefix(lines[i], name+" ")
		if !ok || v == "" {
			return "", fmt.Errorf("not a checkpoint: line %d is not %q", i+1, name)
		}
		return v, nil
	}
	c := &Checkpoint{}
	var err error
	if c.LogID, err = field(1, "log"); err != nil {
		return nil, err
	}
	size, err := field(2, "size")
	if err != nil {
		return nil, err
	}
	if c.Size, err = strconv.ParseUint(size, 10, 64); err != nil {
		return nil, fmt.Errorf("not a checkpoint: size: %w", err)
	}
	head, err := field(3, "head")
	if err != nil {
		return nil, err
	}
	if c.Head, err = ParseHash(head); err != nil {
		return nil, fmt.Errorf("not a checkpoint: head: %w", err)
	}
	at, err := field(4, "time")
	if err != nil {
		return nil, err
	}
	if c.Time, err = time.Parse(time.RFC3339Nano, at); err != nil {
		return nil, fmt.Errorf("not a checkpoint: time: %w", err)
	}
	c.Time = c.Time.UTC()
	sig, err := field(5, "signature")
	if err != nil {
		return nil, err
	}
	keyID, sigB64, ok := strings.Cut(sig, " ")
	if !ok {
		return nil, errors.New("not a checkpoint: signature line wants a key id and a signature")
	}
	c.KeyID = keyID
	if c.Signature, err = base64.StdEncoding.DecodeString(sigB64); err != nil {
		return nil, fmt.Errorf("not a checkpoint: signature: %w", err)
	}
	// The body must be exactly what would be signed: no second spelling
	// of the same checkpoint.
	if want := c.Marshal(); !bytes.Equal(want, b) && !bytes.Equal(want[:len(want)-1], b) {
		return nil, errors.New("not a checkpoint: not in canonical form")
	}
	return c, nil
}

// KeyID returns the id of a public key: SHA-256 of its PKIX DER, hex.
func KeyID(pub *ecdsa.PublicKey) (string, error) {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("encoding the audit public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return hex.EncodeToString(sum[:]), nil
}

// Sign fills in the key id and signature.
func (c *Checkpoint) Sign(key *ecdsa.PrivateKey) error {
	id, err := KeyID(&key.PublicKey)
	if err != nil {
		return err
	}
	c.KeyID = id
	digest := sha256.Sum256(c.Body())
	sig, err := ecdsa.SignASN1(rand.Reader, key, digest[:])
	if err != nil {
		return fmt.Errorf("signing checkpoint of size %d: %w", c.Size, err)
	}
	c.Signature = sig
	return nil
}

// VerifySignature checks the checkpoint was signed by pub.
func (c *Checkpoint) VerifySignature(pub *ecdsa.PublicKey) error {
	id, err := KeyID(pub)
	if err != nil {
		return err
	}
	if c.KeyID != id {
		return fmt.Errorf("checkpoint of size %d was signed by key %s, not by %s", c.Size, shortID(c.KeyID), shortID(id))
	}
	digest := sha256.Sum256(c.Body())
	if !ecdsa.VerifyASN1(pub, digest[:], c.Signature) {
		return fmt.Errorf("checkpoint of size %d: the signature does not verify", c.Size)
	}
	return nil
}

func shortID(id string) string {
	if len(id) > 16 {
		return id[:16]
	}
	return id
}
