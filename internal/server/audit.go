package server

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/go-logr/logr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/version"
)

// AuditOptions configure the audit trail.
type AuditOptions struct {
	// Store is a directory (the embedded file store) or a postgres://
	// connection string; empty records nothing.
	Store string
	// StorePasswordFile holds the PostgreSQL password, kept off the
	// command line.
	StorePasswordFile string
	// KeyFile is the audit key (PKCS#8 PEM, ECDSA P-256) that signs
	// checkpoints. For a file store without one, DIR/audit.key is created
	// (and DIR/audit.pub beside it).
	KeyFile string
	// WitnessURL is a git repository that receives every checkpoint;
	// WitnessCredentialsFile holds "username:password" for it.
	WitnessURL             string
	WitnessCredentialsFile string
	// Retention is how long records stay in the live store before they
	// move to its archive; DefaultAuditRetention when zero.
	Retention time.Duration
	// CheckpointInterval and WitnessInterval: audit's defaults when zero.
	CheckpointInterval, WitnessInterval time.Duration
}

// DefaultAuditRetention keeps records live for more than a year (PCI DSS
// 10.5.1 asks for a year, three months of it at hand); archived records
// are kept, never deleted by Slipway.
const DefaultAuditRetention = 400 * 24 * time.Hour

// gapCheckInterval is how often the objects' status is compared with the trail.
const gapCheckInterval = 10 * time.Minute

// setupAudit returns the gate the controllers record through, and adds to
// mgr the leader-only runnable that opens the log: only the leader
// writes.
func setupAudit(mgr manager.Manager, opts AuditOptions) (*audit.Gate, error) {
	if opts.Store == "" {
		ctrl.Log.WithName("audit").Info("WARNING: no audit trail: syncs, promotions and runs are not recorded (--audit-store)")
		return nil, nil
	}
	key, err := auditKey(opts)
	if err != nil {
		return nil, err
	}
	var password string
	if opts.StorePasswordFile != "" {
		b, err := os.ReadFile(opts.StorePasswordFile)
		if err != nil {
			return nil, fmt.Errorf("reading the audit store's password: %w", err)
		}
		password = strings.TrimSpace(string(b))
	}
	var witness audit.Witness
	if opts.WitnessURL != "" {
		w, err := audit.NewGitWitness(opts.WitnessURL, opts.WitnessCredentialsFile)
		if err != nil {
			return nil, fmt.Errorf("the audit witness: %w", err)
		}
		witness = w
	}
	gate := audit.NewGate()
	logger := ctrl.Log.WithName("audit")
	err = mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		l := openAudit(ctx, logger, opts, password, key, witness)
		if l == nil {
			return nil // ctx ended first
		}
		gate.Set(l)
		runAudit(ctx, logger, l, mgr.GetClient(), opts)
		closeCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := l.Close(closeCtx); err != nil {
			logger.Error(err, "closing the audit log")
		}
		return nil
	}))
	return gate, err
}

// auditKey reads the key, or creates one beside a file store.
func auditKey(opts AuditOptions) (*ecdsa.PrivateKey, error) {
	path := opts.KeyFile
	if path == "" {
		if audit.IsPostgres(opts.Store) {
			return nil, errors.New("a PostgreSQL audit store needs --audit-key-file: the key that signs its checkpoints")
		}
		path = filepath.Join(strings.TrimPrefix(opts.Store, "file://"), "audit.key")
	}
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) && opts.KeyFile == "" {
		return newAuditKey(path)
	}
	if err != nil {
		return nil, fmt.Errorf("reading the audit key: %w", err)
	}
	key, err := signing.DecodePrivateKey(b)
	if err != nil {
		return nil, fmt.Errorf("the audit key in %s: %w", path, err)
	}
	return key, nil
}

func newAuditKey(path string) (*ecdsa.PrivateKey, error) {
	key, err := signing.GenerateKey()
	if err != nil {
		return nil, err
	}
	priv, err := signing.EncodePrivateKey(key)
	if err != nil {
		return nil, err
	}
	pub, err := signing.EncodePublicKey(&key.PublicKey)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, err
	}
	if err := os.WriteFile(path, priv, 0o600); err != nil {
		return nil, fmt.Errorf("writing the audit key: %w", err)
	}
	if err := os.WriteFile(strings.TrimSuffix(path, ".key")+".pub", pub, 0o644); err != nil {
		return nil, fmt.Errorf("writing the audit public key: %w", err)
	}
	return key, nil
}

// openAudit opens the store and the log, trying again every few seconds
// while the store cannot be reached: records wait meanwhile, and nothing
// is reported done that is not recorded.
func openAudit(ctx context.Context, logger logr.Logger, opts AuditOptions, password string, key *ecdsa.PrivateKey, witness audit.Witness) *audit.Log {
	host, _ := os.Hostname()
	for wait := time.Second; ; wait = min(2*wait, 30*time.Second) {
		store, err := audit.OpenStore(ctx, opts.Store, password, false)
		if err == nil {
			var l *audit.Log
			var res *audit.Result
			l, res, err = audit.Open(ctx, store, audit.Options{Key: key, Witness: witness, Log: logger,
				CheckpointInterval: opts.CheckpointInterval, WitnessInterval: opts.WitnessInterval,
				Opened: map[string]string{"version": version.Version, "host": host}})
			if err == nil {
				size, head := l.Head()
				if !res.OK() {
					logger.Error(errors.New(res.Problems[0].String()), "THE NEWEST AUDIT RECORDS DO NOT LINK; recording continues after the last one", "store", store.String())
				}
				logger.Info("audit log open", "store", store.String(), "records", size, "head", head.String())
				return l
			}
			store.Close()
		}
		logger.Error(err, "opening the audit log; records wait until it opens", "retryIn", wait.String())
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(wait):
		}
	}
}

// runAudit checks for gaps now and then, and archives what is past
// retention once a day, until ctx ends.
func runAudit(ctx context.Context, logger logr.Logger, l *audit.Log, c client.Reader, opts AuditOptions) {
	retention := opts.Retention
	if retention <= 0 {
		retention = DefaultAuditRetention
	}
	archive := func() {
		if _, err := l.ArchiveBefore(ctx, time.Now().Add(-retention)); err != nil {
			if errors.Is(err, audit.ErrArchiveNeedsOwner) {
				logger.Info("records past retention stay live: " + err.Error())
			} else {
				logger.Error(err, "archiving audit records past retention")
			}
		}
	}
	check := func() {
		if err := checkGaps(ctx, l, c); err != nil && ctx.Err() == nil {
			logger.Error(err, "comparing status with the audit trail")
		}
	}
	verifyAll := func() {
		res, err := l.VerifyAll(ctx)
		switch {
		case err != nil && ctx.Err() == nil:
			logger.Error(err, "verifying the audit log")
		case err == nil && !res.OK():
			logger.Error(errors.New(res.Problems[0].String()), "THE AUDIT LOG FAILS VERIFICATION")
		case err == nil:
			logger.Info("audit log verified", "records", res.Records, "checkpoints", res.Checkpoints, "witnessed", res.Witnessed)
		}
	}
	check()
	// The whole log is verified apart from the writes, which go on.
	go verifyAll()
	archive()
	gaps := time.NewTicker(gapCheckInterval)
	defer gaps.Stop()
	daily := time.NewTicker(24 * time.Hour)
	defer daily.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-gaps.C:
			check()
		case <-daily.C:
			verifyAll()
			archive()
		}
	}
}

// auditRecorder is the gate as a Recorder; nil (not a nil gate in an
// interface) when nothing is recorded.
func auditRecorder(g *audit.Gate) audit.Recorder {
	if g == nil {
		return nil
	}
	return g
}
