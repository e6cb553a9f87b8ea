package audit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"slipway.dev/slipway/internal/signing"
)

// Pack is the evidence of the production changes of a period: for each
// change, where it came from (source commit, author, test, image,
// signature, SBOM and provenance), what allowed it (policy result,
// waivers, promotion requester, approvers, change id) and what happened
// (apply time, outcome, rollback); then the verification of the whole
// log, and the records the pack is built from with a signed checkpoint
// that vouches for them, so that the file can be checked offline.
type Pack struct {
	Generated time.Time `json:"generated"`
	From      time.Time `json:"from"`
	To        time.Time `json:"to"`
	// Filter says which changes count as production (empty: every sync).
	Filter       Filter       `json:"filter"`
	Summary      Summary      `json:"summary"`
	Changes      []Change     `json:"changes"`
	Verification Verification `json:"verification"`
	Segment      Segment      `json:"segment"`
	// Uncovered says why the period ends before the To asked for, if it does.
	Uncovered string `json:"uncovered,omitempty"`
}

// Filter selects the changes of a pack.
type Filter struct {
	Namespace   string `json:"namespace,omitempty"`
	Application string `json:"application,omitempty"`
	// Stage keeps the Applications that Promotions into the stage land in.
	Stage string `json:"stage,omitempty"`
}

// Summary counts what the period holds.
type Summary struct {
	Changes    int `json:"changes"`
	Succeeded  int `json:"succeeded"`
	Failed     int `json:"failed"`
	Rollbacks  int `json:"rollbacks"`
	Drift      int `json:"driftRepaired"`
	Promotions int `json:"promotions"`
	Approvals  int `json:"approvals"`
	// NotCounted are approvals the stage's rules did not count.
	NotCounted      int `json:"approvalsNotCounted"`
	PolicyBlocks    int `json:"policyBlocks"`
	Refusals        int `json:"refusals"`
	WaiverChanges   int `json:"waiverChanges"`
	WebhookRefusals int `json:"webhookRefusals"`
	Records         int `json:"records"`
}

// Change is one sync of a production Application.
type Change struct {
	// Seq is the sync's record.
	Seq              uint64    `json:"seq"`
	Kind             string    `json:"kind"`
	AppliedAt        time.Time `json:"appliedAt"`
	Application      string    `json:"application"`
	Stage            string    `json:"stage,omitempty"`
	Outcome          string    `json:"outcome"`
	Revision         string    `json:"revision"`
	PreviousRevision string    `json:"previousRevision,omitempty"`
	AppliedAs        string    `json:"appliedAs"`
	Changes          string    `json:"changes,omitempty"`
	Rollback         bool      `json:"rollback"`
	Error            string    `json:"error,omitempty"`
	Policy           string    `json:"policy"`
	PolicyProfile    string    `json:"policyProfile,omitempty"`
	Waivers          []Waiver  `json:"waivers,omitempty"`
	Images           []Image   `json:"images"`
	// Records are the seqs of every record this change's evidence comes from.
	Records []uint64 `json:"records"`
}

// Waiver is a waiver a change relied on, as last recorded before it.
type Waiver struct {
	Name     string `json:"name"`
	Rule     string `json:"rule,omitempty"`
	Reason   string `json:"reason,omitempty"`
	Approver string `json:"approver,omitempty"`
	Expires  string `json:"expires,omitempty"`
	Seq      uint64 `json:"seq,omitempty"`
}

// Image is one image a change runs, and its supply chain.
type Image struct {
	Image        string `json:"image"`
	Digest       string `json:"digest,omitempty"`
	PipelineRun  string `json:"pipelineRun,omitempty"`
	SourceCommit string `json:"sourceCommit,omitempty"`
	Author       string `json:"author,omitempty"`
	Test         string `json:"test,omitempty"`
	TestIsolated string `json:"testIsolation,omitempty"`
	// Signed says the pipeline signed it, with SigningKey; Signature,
	// SBOM and Provenance locate the signature and attestations.
	Signed     bool   `json:"signed"`
	SigningKey string `json:"signingKey,omitempty"`
	Signature  string `json:"signature,omitempty"`
	SBOM       string `json:"sbom,omitempty"`
	Provenance string `json:"provenance,omitempty"`
	// The promotion that brought it into the stage, if any.
	Promotion       string   `json:"promotion,omitempty"`
	Requester       string   `json:"requester,omitempty"`
	Approvers       []string `json:"approvers,omitempty"`
	ChangeID        string   `json:"changeID,omitempty"`
	PromotionCommit string   `json:"promotionCommit,omitempty"`
}

// Verification is the result of verifying the whole log when the pack was made.
type Verification struct {
	OK          bool      `json:"ok"`
	LogID       string    `json:"logID"`
	KeyID       string    `json:"keyID"`
	PublicKey   string    `json:"publicKey"`
	Records     uint64    `json:"records"`
	First       uint64    `json:"first"`
	Last        uint64    `json:"last"`
	Head        string    `json:"head"`
	Checkpoints int       `json:"checkpoints"`
	Witnessed   int       `json:"witnessed"`
	Witness     string    `json:"witness,omitempty"`
	Checkpoint  string    `json:"latestCheckpoint,omitempty"`
	Problems    []Problem `json:"problems,omitempty"`
	Notes       []string  `json:"notes,omitempty"`
}

// Segment is the run of records the pack's evidence comes from, up to a
// checkpoint that vouches for all of them: offline, each record's hash
// and link are recomputed and the last must be the checkpoint's head.
type Segment struct {
	First uint64 `json:"first"`
	Last  uint64 `json:"last"`
	// Records are the records, one JSON line each, as stored.
	Records string `json:"records"`
	// Checkpoint is the signed checkpoint of size Last.
	Checkpoint string `json:"checkpoint"`
}

// ExportOptions say what to put in a pack.
type ExportOptions struct {
	From, To time.Time
	Filter   Filter
	Witness  Witness
	Now      func() time.Time
}

// Export reads and verifies the whole store and builds the pack of the
// period.
func Export(ctx context.Context, store Store, pub *ecdsa.PublicKey, opts ExportOptions) (*Pack, error) {
	var witnessed []*Checkpoint
	if opts.Witness != nil {
		var err error
		if witnessed, err = opts.Witness.Checkpoints(ctx, store.LogID()); err != nil {
			return nil, fmt.Errorf("reading the checkpoints of %s: %w", opts.Witness, err)
		}
	}
	var all []*Record
	res, err := verify(ctx, store, pub, witnessed, func(r *Record) { all = append(all, r) })
	if err != nil {
		return nil, err
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	pem, err := signing.EncodePublicKey(pub)
	if err != nil {
		return nil, err
	}
	p := &Pack{Generated: opts.Now().UTC(), From: opts.From.UTC(), To: opts.To.UTC(), Filter: opts.Filter, Changes: []Change{},
		Verification: Verification{OK: res.OK(), LogID: res.LogID, KeyID: res.KeyID, PublicKey: string(pem), Records: res.Records,
			First: res.First, Last: res.Last, Head: res.Head.String(), Checkpoints: res.Checkpoints, Witnessed: res.Witnessed,
			Problems: res.Problems, Notes: res.Notes}}
	if opts.Witness != nil {
		p.Verification.Witness = opts.Witness.String()
	}
	if res.LatestCheckpoint != nil {
		p.Verification.Checkpoint = string(res.LatestCheckpoint.Marshal())
	}
	cps, err := store.Checkpoints(ctx)
	if err != nil {
		return nil, err
	}
	cps = append(cps, witnessed...)
	// A pack holds only what a signed checkpoint vouches for: a period
	// reaching past the newest checkpoint ends at the first record after it.
	var covered uint64
	for _, cp := range cps {
		if cp.VerifySignature(pub) == nil && cp.Size <= res.Last {
			covered = max(covered, cp.Size)
		}
	}
	if len(all) > 0 && covered < all[len(all)-1].Seq {
		if next := all[covered-all[0].Seq+1]; covered >= all[0].Seq-1 && next.Time.Before(p.To) {
			p.To = next.Time
			p.Uncovered = fmt.Sprintf("the period ends at %s: records from %d on are not yet covered by a signed checkpoint (the server makes one a minute while records arrive); export again to include them",
				next.Time.Format(time.RFC3339Nano), next.Seq)
		}
	}
	p.build(all)
	if err := p.cut(all, cps); err != nil {
		return nil, err
	}
	return p, nil
}

// index finds, for a change, the records its evidence comes from.
type index struct {
	signed   map[string][]*Record // digest → image.signed, oldest first
	finished map[string][]*Record // digest → run.finished (succeeded), oldest first
	landed   map[string][]*Record // namespace/application → promotion.landed, oldest first
	waivers  map[string][]*Record // waiver name → created/changed, oldest first
}

// latestBefore is the last of records older than seq, or nil.
func latestBefore(records []*Record, seq uint64) *Record {
	var out *Record
	for _, r := range records {
		if r.Seq < seq {
			out = r
		}
	}
	return out
}

func digestOf(image string) string {
	if _, d, ok := strings.Cut(image, "@"); ok {
		return d
	}
	return ""
}

func (p *Pack) build(all []*Record) {
	ix := index{signed: map[string][]*Record{}, finished: map[string][]*Record{}, landed: map[string][]*Record{},
		waivers: map[string][]*Record{}}
	for _, r := range all {
		switch r.Kind {
		case KindImageSigned:
			ix.signed[r.Details["digest"]] = append(ix.signed[r.Details["digest"]], r)
		case KindRunFinished:
			if r.Outcome == OutcomeSucceeded && r.Details["digest"] != "" {
				ix.finished[r.Details["digest"]] = append(ix.finished[r.Details["digest"]], r)
			}
		case KindPromotionLanded:
			app := r.Details["namespace"] + "/" + r.Details["application"]
			ix.landed[app] = append(ix.landed[app], r)
		case KindWaiverCreated, KindWaiverChanged:
			name := strings.TrimPrefix(r.Subject, "PolicyWaiver ")
			ix.waivers[name] = append(ix.waivers[name], r)
		}
	}
	in := func(r *Record) bool { return !r.Time.Before(p.From) && r.Time.Before(p.To) }
	stageOf := func(r *Record) string {
		if s := r.Details["stage"]; s != "" {
			return s
		}
		if l := latestBefore(ix.landed[r.Details["namespace"]+"/"+r.Details["application"]], r.Seq); l != nil {
			return l.Details["stage"]
		}
		return ""
	}
	for _, r := range all {
		if !in(r) {
			continue
		}
		p.Summary.Records++
		d := r.Details
		// Records about something the filter leaves out do not count; a
		// filter on what a record does not name (the stage of a waiver)
		// lets it count.
		if !p.keep(cmpOr(d["namespace"], d["scope.namespace"]), d["application"], stageOf(r), r.Kind) {
			continue
		}
		switch r.Kind {
		case KindPromotionLanded:
			p.Summary.Promotions++
		case KindPromotionApproved:
			p.Summary.Approvals++
		case KindPromotionApprovalIgnored:
			p.Summary.NotCounted++
		case KindPolicyBlocked:
			p.Summary.PolicyBlocks++
		case KindSyncRefused:
			p.Summary.Refusals++
		case KindWaiverCreated, KindWaiverChanged, KindWaiverExpired, KindWaiverDeleted:
			p.Summary.WaiverChanges++
		case KindWebhookRefused:
			p.Summary.WebhookRefusals++
		case KindSyncApplied, KindRollback, KindDriftRepaired, KindSyncFailed:
			if !changed(r) {
				continue
			}
			c := p.change(r, ix)
			p.Changes = append(p.Changes, c)
			p.Summary.Changes++
			switch {
			case c.Outcome != OutcomeSucceeded:
				p.Summary.Failed++
			default:
				p.Summary.Succeeded++
			}
			if c.Rollback {
				p.Summary.Rollbacks++
			}
			if r.Kind == KindDriftRepaired {
				p.Summary.Drift++
			}
		}
	}
}

// changed reports whether a sync changed what runs: objects changed, a
// first deployment, a rollback, or a failure. A new revision of the ops
// repository that leaves an Application's objects as they were (another
// path changed) is recorded, but is no change of that Application.
func changed(r *Record) bool {
	return r.Details["changes"] != "" || r.Details["previousRevision"] == "" || r.Kind == KindRollback || r.Outcome != OutcomeSucceeded
}

func cmpOr(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// keep applies the filter to a record naming namespace, application and
// stage. Changes must match every part of it; other records are not
// held to a part they do not name.
func (p *Pack) keep(namespace, application, stage, kind string) bool {
	f := p.Filter
	strict := kind == KindSyncApplied || kind == KindRollback || kind == KindDriftRepaired || kind == KindSyncFailed
	match := func(want, have string) bool { return want == "" || want == have || (have == "" && !strict) }
	return match(f.Namespace, namespace) && match(f.Application, application) && match(f.Stage, stage)
}

func (p *Pack) change(r *Record, ix index) Change {
	d := r.Details
	app := d["namespace"] + "/" + d["application"]
	c := Change{Seq: r.Seq, Kind: r.Kind, AppliedAt: r.Time, Application: app, Outcome: r.Outcome,
		Revision: d["revision"], PreviousRevision: d["previousRevision"], AppliedAs: r.Actor, Changes: d["changes"],
		Rollback: r.Kind == KindRollback, Error: d["error"], Policy: d["policy"], PolicyProfile: d["policy.profile"],
		Images: []Image{}, Records: []uint64{r.Seq}}
	if l := latestBefore(ix.landed[app], r.Seq); l != nil {
		c.Stage = l.Details["stage"]
		c.Records = append(c.Records, l.Seq)
	}
	for _, name := range strings.Fields(d["policy.waivers"]) {
		w := Waiver{Name: name}
		if wr := latestBefore(ix.waivers[name], r.Seq); wr != nil {
			w = Waiver{Name: name, Rule: wr.Details["rule"], Reason: wr.Details["reason"], Approver: wr.Details["approver"],
				Expires: wr.Details["expires"], Seq: wr.Seq}
			c.Records = append(c.Records, w.Seq)
		}
		c.Waivers = append(c.Waivers, w)
	}
	for _, ref := range strings.Fields(d["images"]) {
		img := Image{Image: ref, Digest: digestOf(ref)}
		if run := latestBefore(ix.finished[img.Digest], r.Seq); run != nil {
			img.PipelineRun = run.Details["namespace"] + "/" + run.Details["pipelineRun"]
			img.SourceCommit, img.Author = run.Details["commit"], run.Details["commitAuthor"]
			img.Test, img.TestIsolated = run.Details["test"], run.Details["testIsolation"]
			c.Records = append(c.Records, run.Seq)
		}
		if s := latestBefore(ix.signed[img.Digest], r.Seq); s != nil {
			img.Signed, img.SigningKey = true, s.Details["signingKey"]
			img.Signature, img.SBOM, img.Provenance = s.Details["signature"], s.Details["sbom"], s.Details["provenance"]
			c.Records = append(c.Records, s.Seq)
		}
		var brought []*Record
		for _, l := range ix.landed[app] {
			if l.Details["image"] == ref {
				brought = append(brought, l)
			}
		}
		if l := latestBefore(brought, r.Seq); l != nil {
			img.Promotion = l.Details["namespace"] + "/" + l.Details["promotion"]
			img.Requester, img.ChangeID, img.PromotionCommit = l.Details["requestedBy"], l.Details["changeID"], l.Details["commit"]
			img.Approvers = strings.Fields(l.Details["approvers"])
			c.Records = append(c.Records, l.Seq)
		}
		c.Images = append(c.Images, img)
	}
	slices.Sort(c.Records)
	c.Records = slices.Compact(c.Records)
	return c
}

// cut keeps the records of the period and those its changes refer to, up
// to the first checkpoint that covers them all, and that checkpoint: what
// an offline check needs to rebuild the pack's summary and changes.
func (p *Pack) cut(all []*Record, checkpoints []*Checkpoint) error {
	var lo, hi uint64
	take := func(seq uint64) {
		if lo == 0 || seq < lo {
			lo = seq
		}
		hi = max(hi, seq)
	}
	for _, r := range all {
		if !r.Time.Before(p.From) && r.Time.Before(p.To) {
			take(r.Seq)
		}
	}
	for _, c := range p.Changes {
		for _, seq := range c.Records {
			take(seq)
		}
	}
	if lo == 0 {
		return nil
	}
	var cover *Checkpoint
	for _, cp := range checkpoints {
		if cp.Size >= hi && cp.Size <= all[len(all)-1].Seq && (cover == nil || cp.Size < cover.Size) {
			cover = cp
		}
	}
	if cover == nil {
		return fmt.Errorf("no checkpoint covers record %d yet: wait for the next one (the server makes one a minute while records arrive) and export again", hi)
	}
	var buf bytes.Buffer
	first := all[0].Seq
	for _, r := range all[lo-first : cover.Size-first+1] {
		line, err := r.Marshal()
		if err != nil {
			return err
		}
		buf.Write(line)
	}
	p.Segment = Segment{First: lo, Last: cover.Size, Records: buf.String(), Checkpoint: string(cover.Marshal())}
	return nil
}

// VerifyPack checks a pack offline: its records are intact and linked,
// the checkpoint is signed by pub and vouches for the last of them, and
// every change is built from those records as the pack says.
func VerifyPack(p *Pack, pub *ecdsa.PublicKey) (*Result, error) {
	keyID, err := KeyID(pub)
	if err != nil {
		return nil, err
	}
	if p.Segment.Records == "" {
		if len(p.Changes) == 0 && p.Summary == (Summary{}) {
			return &Result{LogID: p.Verification.LogID, KeyID: keyID}, nil
		}
		return nil, errors.New("the pack has changes but no records to verify them by")
	}
	cp, err := ParseCheckpoint([]byte(p.Segment.Checkpoint))
	if err != nil {
		return nil, fmt.Errorf("the pack's checkpoint: %w", err)
	}
	bySeq := map[uint64]*Record{}
	c := newChainChecker(p.Segment.First, p.Segment.First == 1, []*Checkpoint{cp}, func(r *Record) { bySeq[r.Seq] = r })
	err = ReadRecords(strings.NewReader(p.Segment.Records), "pack", c.feed)
	if err != nil && !errors.Is(err, errStop) {
		return nil, err
	}
	c.finish()
	res := c.result(cp.LogID, keyID)
	checkCheckpoints(res, c, pub, []*Checkpoint{cp}, nil)
	if c.problem == nil && res.Last != cp.Size {
		res.Problems = append(res.Problems, Problem{Kind: ProblemTruncated, Seq: res.Last + 1,
			Message: fmt.Sprintf("the pack's records end at %d, its checkpoint vouches for %d", res.Last, cp.Size)})
	}
	// The changes must be what the records say.
	again := &Pack{From: p.From, To: p.To, Filter: p.Filter, Changes: []Change{}}
	var all []*Record
	for seq := p.Segment.First; seq <= res.Last; seq++ {
		if r := bySeq[seq]; r != nil {
			all = append(all, r)
		}
	}
	again.build(all)
	want, _ := json.Marshal([]any{again.Summary, again.Changes})
	got, _ := json.Marshal([]any{p.Summary, p.Changes})
	if res.OK() && !bytes.Equal(want, got) {
		res.Problems = append(res.Problems, Problem{Kind: ProblemChanged,
			Message: "the pack's summary or list of changes is not what its records say (the file was edited)"})
	}
	return res, nil
}
