package promotion

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	apimeta "k8s.io/apimachinery/pkg/api/meta"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

// verdict is what a promotion still needs, or that it is rejected.
type verdict struct {
	approvers []string
	// notCounted says why each approval that does not count does not.
	notCounted   map[string]string
	missing      []string
	rejectedBy   string
	rejectReason string
	// retryAt is when a missing rule may be met by time alone (a soak
	// ending, a window opening).
	retryAt time.Time
}

func (r *Reconciler) evaluate(ctx context.Context, p *slipwayv1.Promotion, d *slipwayv1.Delivery, from, to slipwayv1.DeliveryStage, now time.Time) (verdict, error) {
	var v verdict
	v.approvals(p, to)
	if to.RequireChangeID && strings.TrimSpace(p.Spec.ChangeID) == "" {
		v.missing = append(v.missing, "a change id (spec.changeID): stage "+to.Name+" requires one")
	}
	if to.Soak != nil && to.Soak.Duration > 0 {
		if err := r.soak(ctx, p, d, from, to.Soak.Duration, now, &v); err != nil {
			return v, err
		}
	}
	if len(to.Windows) > 0 {
		open, next, err := inWindow(to.Windows, now)
		if err != nil {
			return v, err
		}
		if !open {
			v.missing = append(v.missing, fmt.Sprintf("a deployment window of stage %s (next opens %s)", to.Name, next.UTC().Format(time.RFC3339)))
			v.retryAt = earliest(v.retryAt, next)
		}
	}
	return v, nil
}

// approvals counts the approvals that hold: never the requester's or a
// commit author's (whatever their groups), each person once, only from
// the required groups, and none while an author is unmapped. A rejection
// by someone who could have approved ends the promotion.
func (v *verdict) approvals(p *slipwayv1.Promotion, to slipwayv1.DeliveryStage) {
	f := p.Status.Freight
	rule := to.Approvals
	var refused []string
	v.notCounted = map[string]string{}
	notCounted := func(user, why string) {
		refused = append(refused, user+" "+why)
		v.notCounted[user] = why
	}
	for _, a := range p.Spec.Approvals {
		switch {
		case a.User == p.Spec.RequestedBy:
			notCounted(a.User, "requested the promotion")
			continue
		case slices.Contains(f.AuthorUsers, a.User):
			notCounted(a.User, "authored a commit it carries")
			continue
		case len(f.UnmappedAuthors) > 0:
			v.notCounted[a.User] = "commit authors " + strings.Join(f.UnmappedAuthors, ", ") + " map to no user"
			continue
		case rule != nil && !slices.ContainsFunc(a.Groups, func(g string) bool { return slices.Contains(rule.Groups, g) }):
			notCounted(a.User, "is in none of the groups "+strings.Join(rule.Groups, ", "))
			continue
		}
		if a.Decision == slipwayv1.DecisionReject {
			v.rejectedBy, v.rejectReason = a.User, a.Reason
			return
		}
		if !slices.Contains(v.approvers, a.User) {
			v.approvers = append(v.approvers, a.User)
		}
	}
	if rule == nil {
		return
	}
	if len(f.UnmappedAuthors) > 0 {
		v.missing = append(v.missing, fmt.Sprintf("approvals cannot count while commit authors %s map to no user (slipway-identities)", strings.Join(f.UnmappedAuthors, ", ")))
		return
	}
	if len(v.approvers) < rule.Count {
		msg := fmt.Sprintf("%d more approval(s) from %s (have %d)", rule.Count-len(v.approvers), strings.Join(rule.Groups, " or "), len(v.approvers))
		if len(refused) > 0 {
			msg += "; not counted: " + strings.Join(refused, ", ")
		}
		v.missing = append(v.missing, msg)
	}
}

// soak checks that the freight's image runs Synced and Healthy in the
// previous stage, and has for at least d.
func (r *Reconciler) soak(ctx context.Context, p *slipwayv1.Promotion, del *slipwayv1.Delivery, from slipwayv1.DeliveryStage, d time.Duration, now time.Time, v *verdict) error {
	app, err := r.application(ctx, p.Namespace, from.Application)
	if err != nil {
		return err
	}
	f := p.Status.Freight
	running := app.Status.LastAppliedRevision == f.FromRevision
	if !running && app.Status.LastAppliedRevision != "" {
		image, err := r.runningImage(ctx, app, from, del.Spec.Image, app.Status.LastAppliedRevision)
		if err != nil {
			return err
		}
		running = image == f.Image
	}
	ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady)
	healthy := running && ready != nil && ready.Status == "True" &&
		app.Status.Sync.Status == slipwayv1.SyncStatusSynced && app.Status.Health.Status == slipwayv1.HealthHealthy
	if !healthy {
		v.missing = append(v.missing, fmt.Sprintf("%s to run Synced and Healthy in stage %s for %s (it does not now)", f.Image, from.Name, d))
		return nil
	}
	if since := ready.LastTransitionTime.Time; now.Sub(since) < d {
		v.missing = append(v.missing, fmt.Sprintf("a soak of %s in stage %s (Healthy for %s so far)", d, from.Name, now.Sub(since).Round(time.Second)))
		v.retryAt = earliest(v.retryAt, since.Add(d))
	}
	return nil
}

var weekdays = map[string]time.Weekday{"Sun": time.Sunday, "Mon": time.Monday, "Tue": time.Tuesday, "Wed": time.Wednesday, "Thu": time.Thursday, "Fri": time.Friday, "Sat": time.Saturday}

// inWindow reports whether now falls in one of the windows, and otherwise
// when the next one opens (within the coming week).
func inWindow(windows []slipwayv1.DeploymentWindow, now time.Time) (bool, time.Time, error) {
	var next time.Time
	for _, w := range windows {
		loc := time.UTC
		if w.TimeZone != "" {
			l, err := time.LoadLocation(w.TimeZone)
			if err != nil {
				return false, next, fmt.Errorf("deployment window time zone %q: %w", w.TimeZone, err)
			}
			loc = l
		}
		start, err := time.Parse("15:04", w.Start)
		if err != nil {
			return false, next, fmt.Errorf("deployment window start %q: %w", w.Start, err)
		}
		end, err := time.Parse("15:04", w.End)
		if err != nil {
			return false, next, fmt.Errorf("deployment window end %q: %w", w.End, err)
		}
		local := now.In(loc)
		for offset := 0; offset <= 7; offset++ {
			day := local.AddDate(0, 0, offset)
			if !slices.ContainsFunc(w.Days, func(d string) bool { return weekdays[d] == day.Weekday() }) {
				continue
			}
			y, m, dd := day.Date()
			opens := time.Date(y, m, dd, start.Hour(), start.Minute(), 0, 0, loc)
			closes := time.Date(y, m, dd, end.Hour(), end.Minute(), 0, 0, loc)
			if !now.Before(opens) && now.Before(closes) {
				return true, time.Time{}, nil
			}
			if opens.After(now) {
				next = earliest(next, opens)
			}
		}
	}
	return false, next, nil
}

func earliest(a, b time.Time) time.Time {
	if a.IsZero() || (!b.IsZero() && b.Before(a)) {
		return b
	}
	return a
}
