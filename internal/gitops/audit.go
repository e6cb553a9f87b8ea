package gitops

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/fluxcd/pkg/ssa"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/imagetrust"
)

// ReasonAuditFailed is the reason of an Application whose sync, refusal or
// block could not be recorded in the audit trail: it is not reported as
// done, and is tried again.
const ReasonAuditFailed = "AuditFailed"

func subjectOf(app *slipwayv1.Application) string {
	return "Application " + app.Namespace + "/" + app.Name
}

// record writes e to the audit trail, when there is one. Its error is
// retried with backoff.
func (r *ApplicationReconciler) record(ctx context.Context, e audit.Event) error {
	if r.Audit == nil {
		return nil
	}
	if err := r.Audit.Record(ctx, e); err != nil {
		return &retryableError{reason: ReasonAuditFailed, err: err}
	}
	return nil
}

// nextHistoryID is the id the next deployment entry gets.
func nextHistoryID(app *slipwayv1.Application) int64 {
	if len(app.Status.History) == 0 {
		return 1
	}
	return app.Status.History[0].ID + 1
}

// recordSync records what an apply changed: a deployment (a rollback
// when the Application is pinned to the revision), which its history
// gets as a new entry; a sync someone asked for; or drift repaired. A
// periodic apply that changed nothing is not an event. A deployment's
// ref names its history entry, so the server's gap check can tell an
// entry the trail lacks.
func (r *ApplicationReconciler) recordSync(ctx context.Context, app *slipwayv1.Application, desired *Desired, cs *ssa.ChangeSet, pruned, identity string, revisionChanged, syncRequested bool) error {
	changes := summarize(cs)
	if pruned != "" {
		changes = strings.TrimPrefix(changes+", pruned "+pruned, ", ")
	}
	e := audit.Event{Kind: audit.KindSyncApplied, Actor: identity, Subject: subjectOf(app), Outcome: audit.OutcomeSucceeded,
		Details: syncDetails(app, desired, changes)}
	h := app.Status.History
	newEntry := len(h) == 0 || h[0].Revision != desired.Revision || h[0].Result != "Succeeded"
	switch {
	case newEntry:
		e.Ref = audit.RefDeploy(string(app.UID), desired.Revision, nextHistoryID(app))
		if revisionChanged && app.Spec.PinnedRevision != "" {
			e.Kind = audit.KindRollback
		}
	case syncRequested:
		token := app.Annotations[slipwayv1.SyncRequestAnnotation]
		e.Details["syncRequest"] = token
		e.Ref = "application/" + string(app.UID) + "/sync/" + token
	case changes != "":
		e.Kind = audit.KindDriftRepaired
	default:
		return nil
	}
	return r.record(ctx, e)
}

// recordSyncFailed records an apply that failed.
func (r *ApplicationReconciler) recordSyncFailed(ctx context.Context, app *slipwayv1.Application, desired *Desired, identity string, applyErr error) error {
	d := syncDetails(app, desired, "")
	d["error"] = applyErr.Error()
	return r.record(ctx, audit.Event{Kind: audit.KindSyncFailed, Actor: identity, Subject: subjectOf(app), Outcome: audit.OutcomeFailed,
		Ref: audit.RefSyncFailed(string(app.UID), desired.Revision, nextHistoryID(app)), Details: d})
}

// syncDetails are what an auditor needs of a sync: the revision and the
// one before, what changed, the images by digest, and the policy result
// with the waivers it relied on.
func syncDetails(app *slipwayv1.Application, desired *Desired, changes string) map[string]string {
	d := map[string]string{
		"namespace":        app.Namespace,
		"application":      app.Name,
		"source":           app.Spec.Source.URL,
		"path":             app.Spec.Source.Path,
		"revision":         desired.Revision,
		"previousRevision": app.Status.LastAppliedRevision,
		"destination":      app.Spec.Destination.Namespace,
		"changes":          changes,
		"objects":          strconv.Itoa(len(desired.Objects)),
	}
	if c := app.Spec.Destination.ClusterRef; c != nil {
		d["cluster"] = c.Name
	}
	if app.Spec.PinnedRevision != "" {
		d["pinnedRevision"] = app.Spec.PinnedRevision
	}
	objs := make([]map[string]any, len(desired.Objects))
	for i, o := range desired.Objects {
		objs[i] = o.Object
	}
	images, _ := imagetrust.Images(objs)
	slices.Sort(images)
	d["images"] = strings.Join(images, " ")
	policyDetails(d, app.Status.Policy)
	return d
}

func policyDetails(d map[string]string, st *slipwayv1.PolicyStatus) {
	if st == nil {
		d["policy"] = "no profile applies"
		return
	}
	d["policy"] = "failed"
	if st.Passed {
		d["policy"] = "passed"
	}
	d["policy.profile"], d["policy.mode"] = st.Profile, st.Mode
	d["policy.failed"], d["policy.waived"] = strconv.Itoa(st.Failed), strconv.Itoa(st.Waived)
	var waivers, violations []string
	for _, v := range st.Violations {
		if v.Waiver != "" {
			if !slices.Contains(waivers, v.Waiver) {
				waivers = append(waivers, v.Waiver)
			}
			continue
		}
		violations = append(violations, fmt.Sprintf("%s (%s) %s %s", v.Rule, v.Severity, v.Object, v.Path))
	}
	slices.Sort(waivers)
	d["policy.waivers"] = strings.Join(waivers, " ")
	if len(violations) > 0 {
		d["policy.violations"] = joinLimited(violations, 20)
	}
}

// recordRefusal records a revision the policy gate blocked or the
// tenancy checks refused. The same refusal of the same revision is
// recorded once.
func (r *ApplicationReconciler) recordRefusal(ctx context.Context, app *slipwayv1.Application, err error) error {
	var se *stalledError
	if r.Audit == nil || !errors.As(err, &se) {
		return nil
	}
	kind, outcome := "", ""
	switch se.reason {
	case ReasonPolicyViolation:
		kind, outcome = audit.KindPolicyBlocked, audit.OutcomeBlocked
	case ReasonTenancyViolation:
		kind, outcome = audit.KindSyncRefused, audit.OutcomeRefused
	default:
		return nil
	}
	sum := sha256.Sum256([]byte(err.Error()))
	d := map[string]string{"namespace": app.Namespace, "application": app.Name, "revision": app.Status.LastAttemptedRevision,
		"reason": se.reason, "message": truncate(err.Error(), 4096)}
	if kind == audit.KindPolicyBlocked {
		policyDetails(d, app.Status.Policy)
	}
	return r.record(ctx, audit.Event{Kind: kind, Actor: audit.SystemActor, Subject: subjectOf(app), Outcome: outcome, Details: d,
		Ref: fmt.Sprintf("application/%s/%s/%s/%s", app.UID, se.reason, app.Status.LastAttemptedRevision, hex.EncodeToString(sum[:8]))})
}

func shortDigest(b []byte) string {
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:8])
}
