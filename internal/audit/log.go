package audit

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"maps"
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// Recorder is what the controllers record through. Record returns once
// the record is durable; an error means it is not, and the caller must not
// report its action as done.
type Recorder interface {
	Record(ctx context.Context, e Event) error
}

// Options configure a Log.
type Options struct {
	// Key signs checkpoints.
	Key *ecdsa.PrivateKey
	// Witness, when set, receives every checkpoint too, somewhere the
	// store's owner cannot rewrite.
	Witness Witness
	// CheckpointInterval is how often a checkpoint is made while records
	// arrive; DefaultCheckpointInterval when zero.
	CheckpointInterval time.Duration
	// WitnessInterval is how often the newest checkpoint is sent to the
	// witness; DefaultWitnessInterval when zero.
	WitnessInterval time.Duration
	// RefWindow is how far back records are remembered by Ref, so that an
	// event seen again is recorded once; DefaultRefWindow when zero.
	RefWindow time.Duration
	// Opened details go into the audit.opened record (server version...).
	Opened map[string]string
	Log    logr.Logger
	// Now is the clock; time.Now when nil.
	Now func() time.Time
}

// Defaults.
const (
	DefaultCheckpointInterval = time.Minute
	DefaultWitnessInterval    = 10 * time.Minute
	DefaultRefWindow          = 30 * 24 * time.Hour
	// maxBatch bounds the records written with one fsync.
	maxBatch = 512
)

// Log appends events to a store as a hash chain, one writer at a time.
// Concurrent Record calls are written together (one fsync or one
// transaction for all that wait), which is what keeps the audit write
// cheap for many Applications syncing at once.
type Log struct {
	store Store
	opts  Options

	requests chan *request
	stop     chan struct{}
	done     chan struct{}
	// sending is held (shared) while a request is handed to the writer,
	// so that Close never leaves one behind unanswered.
	sending sync.RWMutex
	closing bool

	mu         sync.Mutex
	since      time.Time // time of the oldest record read at open
	head       Hash
	size       uint64
	refs       map[string]time.Time
	pruned     time.Time   // when old refs were last dropped
	checkpoint *Checkpoint // newest made
	witnessed  uint64      // size of the newest sent to the witness
	// witnessing serialises sends to the witness.
	witnessing sync.Mutex
}

type request struct {
	event Event
	done  chan error
}

// Open reads the newest records of the store (those of the ref window,
// and always the last), checks that they link, remembers their refs, and
// starts the writer: opening costs what the recent past holds, not the
// whole log, which VerifyAll checks (the server does after opening, and
// daily). It records an audit.opened record, and an audit.recovered
// record when the store repaired an interrupted write. Records that fail
// the check are reported in the result, and recording continues after
// the last one: refusing would stop every deployment at the hands of
// whoever can flip a byte.
func Open(ctx context.Context, store Store, opts Options) (*Log, *Result, error) {
	if opts.Key == nil {
		return nil, nil, errors.New("the audit log needs a signing key")
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = DefaultCheckpointInterval
	}
	if opts.WitnessInterval <= 0 {
		opts.WitnessInterval = DefaultWitnessInterval
	}
	if opts.RefWindow <= 0 {
		opts.RefWindow = DefaultRefWindow
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	l := &Log{store: store, opts: opts, refs: map[string]time.Time{},
		requests: make(chan *request, 4*maxBatch), stop: make(chan struct{}), done: make(chan struct{})}

	since := opts.Now().Add(-opts.RefWindow)
	keyID, err := KeyID(&opts.Key.PublicKey)
	if err != nil {
		return nil, nil, err
	}
	// The last record is the head, whatever the check says: the chain
	// continues from what is there.
	c := newChainChecker(0, false, nil, func(r *Record) {
		if l.since.IsZero() {
			l.since = r.Time
		}
		if r.Ref != "" && r.Time.After(since) {
			l.refs[r.Ref] = r.Time
		}
	})
	err = store.Tail(ctx, since, func(it Item) error {
		if it.Record != nil && it.Record.Seq > l.size {
			l.size, l.head = it.Record.Seq, it.Record.Hash
		}
		if c.problem == nil {
			_ = c.feed(it)
		}
		return nil
	})
	if err != nil {
		return nil, nil, fmt.Errorf("reading %s: %w", store, err)
	}
	c.finish()
	res := c.result(store.LogID(), keyID)
	if cps, err := store.Checkpoints(ctx); err == nil {
		for _, cp := range cps {
			if cp.Size == l.size && cp.Head == l.head && cp.VerifySignature(&opts.Key.PublicKey) == nil {
				l.checkpoint = cp
			}
		}
	}
	if l.since.IsZero() {
		l.since = opts.Now().UTC()
	}
	go l.run()
	if opts.Witness != nil {
		go l.witnessLoop()
	}

	// Until VerifyAll has read the whole log, the check of its tail is
	// the last verification.
	verified.Set(map[bool]float64{true: 1, false: 0}[res.OK()])
	details := map[string]string{"store": store.String(), "records": fmt.Sprint(l.size), "checked": fmt.Sprint(res.Records), "linked": fmt.Sprint(res.OK())}
	if !res.OK() {
		details["problem"] = res.Problems[0].String()
	}
	maps.Copy(details, opts.Opened)
	var events []Event
	if rec, ok := store.(recoverer); ok {
		for _, note := range rec.Recovered() {
			events = append(events, Event{Kind: KindAuditRecovered, Actor: SystemActor, Subject: "audit log " + store.LogID(),
				Outcome: OutcomeInfo, Details: map[string]string{"repair": note}})
		}
	}
	events = append(events, Event{Kind: KindAuditOpened, Actor: SystemActor, Subject: "audit log " + store.LogID(), Outcome: OutcomeInfo, Details: details})
	for _, e := range events {
		if err := l.Record(ctx, e); err != nil {
			l.Close(ctx)
			return nil, nil, err
		}
	}
	return l, res, nil
}

// VerifyAll verifies the whole log (and the witness's checkpoints, when
// there is a witness) and records the result: the trail holds the
// evidence that it was checked, and when.
func (l *Log) VerifyAll(ctx context.Context) (*Result, error) {
	res, err := Verify(ctx, l.store, &l.opts.Key.PublicKey, VerifyOptions{Witness: l.opts.Witness})
	if err != nil {
		return nil, err
	}
	verified.Set(map[bool]float64{true: 1, false: 0}[res.OK()])
	d := map[string]string{"records": fmt.Sprint(res.Records), "first": fmt.Sprint(res.First), "last": fmt.Sprint(res.Last),
		"head": res.Head.String(), "checkpoints": fmt.Sprint(res.Checkpoints), "witnessed": fmt.Sprint(res.Witnessed)}
	outcome := OutcomeSucceeded
	if !res.OK() {
		outcome, d["problem"] = OutcomeFailed, res.Problems[0].String()
	}
	return res, l.Record(ctx, Event{Kind: KindAuditVerified, Actor: SystemActor, Subject: "audit log " + l.store.LogID(), Outcome: outcome, Details: d})
}

// Since is the time of the oldest record the log read when it opened:
// events of records since then are known by ref (Recorded), older ones
// are not.
func (l *Log) Since() time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.since
}

// Head is the number of records and the hash of the last.
func (l *Log) Head() (uint64, Hash) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.size, l.head
}

// Store is the log's store.
func (l *Log) Store() Store { return l.store }

// Record appends e and returns once it is durable. An event whose Ref was
// recorded within the ref window is not recorded again (nil is returned).
func (l *Log) Record(ctx context.Context, e Event) error {
	if e.Kind == "" || e.Subject == "" {
		return errors.New("an audit event needs a kind and a subject")
	}
	if e.Ref != "" && l.Recorded(e.Ref) {
		return nil
	}
	start := time.Now()
	req := &request{event: e, done: make(chan error, 1)}
	l.sending.RLock()
	if l.closing {
		l.sending.RUnlock()
		return fmt.Errorf("recording %s of %s: the audit log is closed", e.Kind, e.Subject)
	}
	select {
	case l.requests <- req:
		l.sending.RUnlock()
	case <-ctx.Done():
		l.sending.RUnlock()
		return fmt.Errorf("recording %s of %s: %w", e.Kind, e.Subject, ctx.Err())
	}
	select {
	case err := <-req.done:
		if err != nil {
			recordFailures.Inc()
			return fmt.Errorf("recording %s of %s in %s: %w", e.Kind, e.Subject, l.store, err)
		}
		recordDuration.WithLabelValues(e.Kind).Observe(time.Since(start).Seconds())
		return nil
	case <-ctx.Done():
		// It may still be written; a retry with the same Ref is then a no-op.
		return fmt.Errorf("recording %s of %s: %w", e.Kind, e.Subject, ctx.Err())
	}
}

// Recorded reports whether an event with this ref was recorded within the
// ref window.
func (l *Log) Recorded(ref string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	_, ok := l.refs[ref]
	return ok
}

// run is the single writer: it takes what is waiting, up to maxBatch,
// writes it with one Append, and makes checkpoints on its interval.
func (l *Log) run() {
	defer close(l.done)
	checkpoints := time.NewTicker(l.opts.CheckpointInterval)
	defer checkpoints.Stop()
	for {
		select {
		case req := <-l.requests:
			batch := []*request{req}
		drain:
			for len(batch) < maxBatch {
				select {
				case r := <-l.requests:
					batch = append(batch, r)
				default:
					break drain
				}
			}
			l.write(batch)
		case <-checkpoints.C:
			l.checkpointNow()
			l.forgetOldRefs()
		case <-l.stop:
			// Write what is still waiting, then stop.
			for {
				select {
				case r := <-l.requests:
					l.write([]*request{r})
				default:
					return
				}
			}
		}
	}
}

// writeTimeout bounds one Append.
const writeTimeout = 30 * time.Second

func (l *Log) write(batch []*request) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	err := l.appendBatch(ctx, batch)
	if errors.Is(err, ErrConflict) {
		// Another writer (a replica that was leader a moment ago) appended:
		// read what it wrote and chain after it.
		if err = l.resync(ctx); err == nil {
			err = l.appendBatch(ctx, batch)
		}
	}
	for _, r := range batch {
		r.done <- err
	}
}

func (l *Log) appendBatch(ctx context.Context, batch []*request) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	size, head := l.size, l.head
	now := l.opts.Now().UTC()
	var records []*Record
	seen := map[string]bool{}
	for _, req := range batch {
		e := req.event
		if e.Ref != "" {
			if _, ok := l.refs[e.Ref]; ok || seen[e.Ref] {
				continue
			}
			seen[e.Ref] = true
		}
		r := &Record{Seq: size + 1, Time: now, Kind: sanitize(e.Kind, 128), Actor: sanitize(e.Actor, 512),
			Subject: sanitize(e.Subject, 512), Outcome: sanitize(e.Outcome, 64), Ref: sanitize(e.Ref, 512), Prev: head}
		if len(e.Details) > 0 {
			r.Details = make(map[string]string, len(e.Details))
			for k, v := range e.Details {
				if len(r.Details) == maxDetails {
					break
				}
				r.Details[sanitize(k, 128)] = sanitize(v, 8192)
			}
		}
		if err := r.validate(); err != nil {
			return fmt.Errorf("%s of %s: %w", e.Kind, e.Subject, err)
		}
		r.Hash = r.ComputeHash()
		records = append(records, r)
		size, head = r.Seq, r.Hash
	}
	if len(records) == 0 {
		return nil
	}
	if err := l.store.Append(ctx, records); err != nil {
		return err
	}
	batchSize.Observe(float64(len(records)))
	l.size, l.head = size, head
	recordsGauge.Set(float64(size))
	for _, r := range records {
		if r.Ref != "" {
			l.refs[r.Ref] = r.Time
		}
	}
	return nil
}

// forgetOldRefs drops the refs older than the window, at most hourly, so
// that memory follows the window rather than the log's age.
func (l *Log) forgetOldRefs() {
	l.mu.Lock()
	defer l.mu.Unlock()
	now := l.opts.Now()
	if now.Sub(l.pruned) < time.Hour {
		return
	}
	l.pruned = now
	cutoff := now.Add(-l.opts.RefWindow)
	for ref, at := range l.refs {
		if at.Before(cutoff) {
			delete(l.refs, ref)
		}
	}
}

// resync reads the records another writer appended (the newest ones,
// as opening does).
func (l *Log) resync(ctx context.Context) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.store.Tail(ctx, l.opts.Now().Add(-l.opts.RefWindow), func(it Item) error {
		if it.Err != nil {
			return fmt.Errorf("%s: %w", it.Where, it.Err)
		}
		if r := it.Record; r.Seq > l.size {
			l.size, l.head = r.Seq, r.Hash
			if r.Ref != "" {
				l.refs[r.Ref] = r.Time
			}
		}
		return nil
	})
}

// Checkpoint signs and keeps a checkpoint of the records written so far,
// unless the newest already covers them, and returns the newest.
func (l *Log) Checkpoint(ctx context.Context) (*Checkpoint, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.size == 0 || (l.checkpoint != nil && l.checkpoint.Size == l.size) {
		return l.checkpoint, nil
	}
	c := &Checkpoint{LogID: l.store.LogID(), Size: l.size, Head: l.head, Time: l.opts.Now().UTC()}
	if err := c.Sign(l.opts.Key); err != nil {
		return nil, err
	}
	if err := l.store.AddCheckpoint(ctx, c); err != nil {
		return nil, fmt.Errorf("keeping checkpoint %d in %s: %w", c.Size, l.store, err)
	}
	l.checkpoint = c
	checkpointSize.Set(float64(c.Size))
	return c, nil
}

func (l *Log) checkpointNow() {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if _, err := l.Checkpoint(ctx); err != nil {
		l.opts.Log.Error(err, "making an audit checkpoint")
	}
}

// Witness sends the newest checkpoint to the witness, if it has not seen it.
func (l *Log) Witness(ctx context.Context) error {
	if l.opts.Witness == nil {
		return nil
	}
	l.witnessing.Lock()
	defer l.witnessing.Unlock()
	c, err := l.Checkpoint(ctx)
	if err != nil || c == nil {
		return err
	}
	l.mu.Lock()
	seen := l.witnessed >= c.Size
	l.mu.Unlock()
	if seen {
		return nil
	}
	if err := l.opts.Witness.Publish(ctx, c); err != nil {
		return fmt.Errorf("sending checkpoint %d to %s: %w", c.Size, l.opts.Witness, err)
	}
	l.mu.Lock()
	l.witnessed = max(l.witnessed, c.Size)
	witnessedSize.Set(float64(l.witnessed))
	l.mu.Unlock()
	return nil
}

// witnessLoop sends checkpoints to the witness on its interval, apart from
// the writer: a slow git server must never hold up a record.
func (l *Log) witnessLoop() {
	tick := time.NewTicker(l.opts.WitnessInterval)
	defer tick.Stop()
	for {
		select {
		case <-tick.C:
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			if err := l.Witness(ctx); err != nil {
				l.opts.Log.Error(err, "witnessing an audit checkpoint")
			}
			cancel()
		case <-l.stop:
			return
		}
	}
}

// Close writes what waits, makes a last checkpoint, sends it to the
// witness (within ctx) and closes the store.
func (l *Log) Close(ctx context.Context) error {
	l.sending.Lock()
	if l.closing {
		l.sending.Unlock()
		return nil
	}
	l.closing = true
	l.sending.Unlock()
	close(l.stop)
	<-l.done
	_, err := l.Checkpoint(ctx)
	if werr := l.Witness(ctx); werr != nil {
		err = errors.Join(err, werr)
	}
	return errors.Join(err, l.store.Close())
}

// ArchiveBefore moves records older than before to the store's archive and
// records that it did, with the last archived record's hash, which links
// what stays live to what moved.
func (l *Log) ArchiveBefore(ctx context.Context, before time.Time) (*Archived, error) {
	a, err := l.store.Archive(ctx, before)
	if err != nil || a == nil {
		return a, err
	}
	details := map[string]string{"first": fmt.Sprint(a.First), "last": fmt.Sprint(a.Last), "lastHash": a.LastHash.String(),
		"before": before.UTC().Format(time.RFC3339)}
	for i, w := range a.Where {
		details[fmt.Sprintf("where.%d", i)] = w
	}
	return a, l.Record(ctx, Event{Kind: KindAuditArchived, Actor: SystemActor, Subject: "audit log " + l.store.LogID(), Outcome: OutcomeSucceeded, Details: details})
}
