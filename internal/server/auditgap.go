package server

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
)

// recoveredNote marks a record written by the gap check.
const recoveredNote = "found by the gap check: the object's status reports it, the audit trail did not have it (a crash between the action and its record, or an audit store that was unreachable)"

// checkGaps compares what the objects' status reports with the trail:
// every deployment in an Application's history, every promotion's
// request and outcome, every run's start and end since the trail began
// must have its record. What is missing is recorded now, marked as
// recovered, so that no gap stays silent.
func checkGaps(ctx context.Context, l *audit.Log, c client.Reader) error {
	since := l.Since()
	var errs []error
	record := func(e audit.Event) {
		if l.Recorded(e.Ref) {
			return
		}
		if e.Details == nil {
			e.Details = map[string]string{}
		}
		e.Details["recovered"] = recoveredNote
		if err := l.Record(ctx, e); err != nil {
			errs = append(errs, err)
		}
	}
	// Status times are whole seconds: one in the second the trail began counts.
	after := func(t time.Time) bool { return !t.IsZero() && !t.Before(since.Truncate(time.Second)) }

	var apps slipwayv1.ApplicationList
	if err := c.List(ctx, &apps); err != nil {
		return fmt.Errorf("listing Applications: %w", err)
	}
	for _, app := range apps.Items {
		for _, h := range app.Status.History {
			if !after(h.DeployedAt.Time) {
				continue
			}
			subject := "Application " + app.Namespace + "/" + app.Name
			d := map[string]string{"namespace": app.Namespace, "application": app.Name, "revision": h.Revision,
				"historyID": fmt.Sprint(h.ID), "at": h.DeployedAt.UTC().Format(time.RFC3339), "message": h.Message}
			if h.Result == "Succeeded" {
				record(audit.Event{Kind: audit.KindSyncApplied, Actor: audit.SystemActor, Subject: subject, Outcome: audit.OutcomeSucceeded,
					Ref: audit.RefDeploy(string(app.UID), h.Revision, h.ID), Details: d})
			} else {
				record(audit.Event{Kind: audit.KindSyncFailed, Actor: audit.SystemActor, Subject: subject, Outcome: audit.OutcomeFailed,
					Ref: audit.RefSyncFailed(string(app.UID), h.Revision, h.ID), Details: d})
			}
		}
	}

	var promotions slipwayv1.PromotionList
	if err := c.List(ctx, &promotions); err != nil {
		return fmt.Errorf("listing Promotions: %w", err)
	}
	for _, p := range promotions.Items {
		subject := "Promotion " + p.Namespace + "/" + p.Name
		d := func() map[string]string {
			return map[string]string{"namespace": p.Namespace, "promotion": p.Name, "delivery": p.Spec.Delivery, "stage": p.Spec.Stage,
				"changeID": p.Spec.ChangeID, "requestedBy": p.Spec.RequestedBy, "commit": p.Status.Commit, "approvers": strings.Join(p.Status.Approvers, " ")}
		}
		if after(p.CreationTimestamp.Time) && p.Status.Phase != "" {
			record(audit.Event{Kind: audit.KindPromotionRequested, Actor: p.Spec.RequestedBy, Subject: subject, Outcome: audit.OutcomeSucceeded,
				Ref: audit.RefPromotion(string(p.UID), "requested"), Details: d()})
		}
		var finished time.Time
		if p.Status.LandedAt != nil {
			finished = p.Status.LandedAt.Time
		} else if len(p.Status.Conditions) > 0 {
			finished = p.Status.Conditions[0].LastTransitionTime.Time
		}
		if !after(finished) {
			continue
		}
		kind := map[string]string{slipwayv1.PromotionLanded: audit.KindPromotionLanded, slipwayv1.PromotionExpired: audit.KindPromotionExpired,
			slipwayv1.PromotionFailed: audit.KindPromotionFailed}[p.Status.Phase]
		if kind != "" {
			record(audit.Event{Kind: kind, Actor: audit.SystemActor, Subject: subject, Outcome: map[bool]string{true: audit.OutcomeSucceeded, false: audit.OutcomeFailed}[kind == audit.KindPromotionLanded],
				Ref: audit.RefPromotion(string(p.UID), strings.ToLower(p.Status.Phase)), Details: d()})
		}
	}

	var runs slipwayv1.PipelineRunList
	if err := c.List(ctx, &runs); err != nil {
		return fmt.Errorf("listing PipelineRuns: %w", err)
	}
	for _, run := range runs.Items {
		subject := "PipelineRun " + run.Namespace + "/" + run.Name
		d := func() map[string]string {
			return map[string]string{"namespace": run.Namespace, "pipelineRun": run.Name, "pipeline": run.Spec.PipelineRef.Name,
				"commit": run.Spec.Commit, "phase": run.Status.Phase, "image": run.Status.Image, "digest": run.Status.Digest,
				"promotionCommit": run.Status.PromotionCommit}
		}
		if run.Status.StartTime != nil && after(run.Status.StartTime.Time) {
			record(audit.Event{Kind: audit.KindRunStarted, Actor: run.Spec.Author, Subject: subject, Outcome: audit.OutcomeSucceeded,
				Ref: audit.RefRun(string(run.UID), "started"), Details: d()})
		}
		if run.Status.CompletionTime != nil && after(run.Status.CompletionTime.Time) {
			outcome := audit.OutcomeSucceeded
			if run.Status.Phase != slipwayv1.RunSucceeded {
				outcome = audit.OutcomeFailed
			}
			record(audit.Event{Kind: audit.KindRunFinished, Actor: audit.SystemActor, Subject: subject, Outcome: outcome,
				Ref: audit.RefRun(string(run.UID), "finished"), Details: d()})
		}
	}
	return errors.Join(errs...)
}
