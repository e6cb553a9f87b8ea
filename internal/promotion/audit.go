package promotion

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
)

func subjectOf(p *slipwayv1.Promotion) string { return "Promotion " + p.Namespace + "/" + p.Name }

// details are what every record of a promotion carries.
func details(p *slipwayv1.Promotion) map[string]string {
	d := map[string]string{"namespace": p.Namespace, "promotion": p.Name, "delivery": p.Spec.Delivery, "stage": p.Spec.Stage,
		"changeID": p.Spec.ChangeID, "requestedBy": p.Spec.RequestedBy}
	if f := p.Status.Freight; f != nil {
		d["image"], d["fromRevision"], d["sourceCommit"], d["pipelineRun"] = f.Image, f.FromRevision, f.SourceCommit, f.PipelineRun
		d["authors"], d["authorUsers"] = strings.Join(f.Authors, " "), strings.Join(f.AuthorUsers, " ")
	}
	return d
}

func (r *Reconciler) record(ctx context.Context, e audit.Event) error {
	if r.Audit == nil {
		return nil
	}
	return r.Audit.Record(ctx, e)
}

// recordRequested records the request once; the requester is who the API
// server authenticated (the admission policy makes spec.requestedBy so).
func (r *Reconciler) recordRequested(ctx context.Context, p *slipwayv1.Promotion) error {
	return r.record(ctx, audit.Event{Kind: audit.KindPromotionRequested, Actor: p.Spec.RequestedBy, Subject: subjectOf(p),
		Outcome: audit.OutcomeSucceeded, Ref: audit.RefPromotion(string(p.UID), "requested"), Details: details(p)})
}

// recordDecisions records each approval and rejection once, and whether
// it counts: an approval by the requester, by an author of a commit the
// promotion carries, or by someone outside the stage's groups is recorded
// as not counted, with the reason. (The API server's admission policy
// refuses most of these before the controller sees them; those refusals
// are in the API server's audit log.)
func (r *Reconciler) recordDecisions(ctx context.Context, p *slipwayv1.Promotion, v verdict) error {
	counted := map[string]bool{}
	for _, a := range p.Spec.Approvals {
		d := details(p)
		d["decision"], d["groups"], d["reason"], d["at"] = a.Decision, strings.Join(a.Groups, " "), a.Reason, a.At.UTC().Format(time.RFC3339)
		kind, outcome := audit.KindPromotionApproved, audit.OutcomeSucceeded
		if a.Decision == slipwayv1.DecisionReject {
			kind = audit.KindPromotionRejected
		}
		switch why, refused := v.notCounted[a.User]; {
		case refused:
			kind, outcome, d["notCounted"] = audit.KindPromotionApprovalIgnored, audit.OutcomeRefused, why
		case counted[a.User]:
			kind, outcome, d["notCounted"] = audit.KindPromotionApprovalIgnored, audit.OutcomeRefused, "a person's decision counts once"
		case a.Decision == slipwayv1.DecisionApprove && !contains(v.approvers, a.User) && v.rejectedBy != "":
			kind, outcome, d["notCounted"] = audit.KindPromotionApprovalIgnored, audit.OutcomeRefused, "the promotion was rejected by "+v.rejectedBy
		}
		counted[a.User] = true
		if err := r.record(ctx, audit.Event{Kind: kind, Actor: a.User, Subject: subjectOf(p), Outcome: outcome, Details: d,
			Ref: audit.RefPromotion(string(p.UID), fmt.Sprintf("decision/%s/%d", a.User, a.At.Unix()))}); err != nil {
			return err
		}
	}
	return nil
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// recordFinished records a promotion's final phase: landed (with the
// commit, the approvers and the change id), expired or failed. A
// rejection is recorded as the rejecting decision.
func (r *Reconciler) recordFinished(ctx context.Context, p *slipwayv1.Promotion, phase, msg string, extra map[string]string) error {
	kind, outcome := "", ""
	switch phase {
	case slipwayv1.PromotionLanded:
		kind, outcome = audit.KindPromotionLanded, audit.OutcomeSucceeded
	case slipwayv1.PromotionExpired:
		kind, outcome = audit.KindPromotionExpired, audit.OutcomeFailed
	case slipwayv1.PromotionFailed:
		kind, outcome = audit.KindPromotionFailed, audit.OutcomeFailed
	default:
		return nil
	}
	d := details(p)
	d["message"] = msg
	d["approvers"] = strings.Join(p.Status.Approvers, " ")
	d["approvals"] = strconv.Itoa(len(p.Status.Approvers))
	for k, v := range extra {
		d[k] = v
	}
	return r.record(ctx, audit.Event{Kind: kind, Actor: audit.SystemActor, Subject: subjectOf(p), Outcome: outcome, Details: d,
		Ref: audit.RefPromotion(string(p.UID), strings.ToLower(phase))})
}
