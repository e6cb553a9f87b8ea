// Package promotion is Slipway's promotion engine: it moves the image that
// ran in one stage of a Delivery into the next, once that stage's rules are
// met (approvals by people other than the requester and the authors of the
// code, a change id, a soak time in the previous stage, a deployment
// window), by committing the image to the next stage's file in the ops
// repository. The API server enforces who may approve (see
// config/admission); this controller checks it again and counts.
package promotion

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/promote"
)

// DefaultTTL is how long a promotion may wait for its rules.
const DefaultTTL = 72 * time.Hour

// recheck is how often a pending promotion looks again at what it waits
// for (approvals arrive as updates; soak and windows pass with time).
const recheck = 30 * time.Second

// Trailer keys of a landed promotion's commit.
const (
	TrailerPromotion   = "Slipway-Promotion"
	TrailerRequestedBy = "Slipway-Requested-By"
	TrailerApprovedBy  = "Slipway-Approved-By"
	TrailerChangeID    = "Change-Id"
	TrailerFromStage   = "Slipway-From-Stage"
)

// Condition reasons.
const (
	ReasonPending  = "Pending"
	ReasonLanded   = "Landed"
	ReasonRejected = "Rejected"
	ReasonExpired  = "Expired"
	ReasonInvalid  = "Invalid"
)

// Reconciler reconciles Promotions.
type Reconciler struct {
	client.Client
	Fetcher  *gitsource.Fetcher
	Recorder record.EventRecorder
	// Namespace holds the identities ConfigMap.
	Namespace string
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Audit records requests, decisions and outcomes; a promotion whose
	// record cannot be written does not advance. Nil records nothing.
	Audit audit.Recorder
}

// SetupWithManager registers the controller.
func (r *Reconciler) SetupWithManager(mgr ctrl.Manager) error {
	return ctrl.NewControllerManagedBy(mgr).For(&slipwayv1.Promotion{}).Complete(r)
}

// What the Promotion controller does with its own identity (config/rbac is
// generated from these lines by `make generate`). Slipway's resources are
// read from the manager's cache (list, watch); the identities ConfigMap (in
// slipway-system, where `slipway install` runs the server) and git
// credentials are read by name, uncached.
//
// +kubebuilder:rbac:groups=slipway.dev,resources=promotions;deliveries;applications;pipelines;pipelineruns,verbs=list;watch
// +kubebuilder:rbac:groups=slipway.dev,resources=promotions/status,verbs=patch
// +kubebuilder:rbac:groups="",namespace=slipway-system,resources=configmaps,verbs=get
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile moves one promotion forward.
func (r *Reconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &slipwayv1.Promotion{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	switch p.Status.Phase {
	case slipwayv1.PromotionLanded, slipwayv1.PromotionRejected, slipwayv1.PromotionExpired, slipwayv1.PromotionFailed:
		return ctrl.Result{}, nil
	}
	base := p.DeepCopy()
	result, err := r.reconcile(ctx, p)
	p.Status.ObservedGeneration = p.Generation
	if perr := r.Status().Patch(ctx, p, client.MergeFrom(base)); perr != nil && !apierrors.IsNotFound(perr) {
		err = errors.Join(err, fmt.Errorf("updating status: %w", perr))
	}
	return result, err
}

func (r *Reconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

func (r *Reconciler) reconcile(ctx context.Context, p *slipwayv1.Promotion) (ctrl.Result, error) {
	if err := r.recordRequested(ctx, p); err != nil {
		return ctrl.Result{}, err
	}
	d := &slipwayv1.Delivery{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: p.Spec.Delivery}, d); err != nil {
		if apierrors.IsNotFound(err) {
			return r.finish(ctx, p, slipwayv1.PromotionFailed, ReasonInvalid, fmt.Sprintf("Delivery %s does not exist", p.Spec.Delivery), nil)
		}
		return ctrl.Result{}, err
	}
	i := slices.IndexFunc(d.Spec.Stages, func(s slipwayv1.DeliveryStage) bool { return s.Name == p.Spec.Stage })
	switch {
	case i < 0:
		return r.finish(ctx, p, slipwayv1.PromotionFailed, ReasonInvalid, fmt.Sprintf("Delivery %s has no stage %s", d.Name, p.Spec.Stage), nil)
	case i == 0:
		return r.finish(ctx, p, slipwayv1.PromotionFailed, ReasonInvalid, fmt.Sprintf("%s is the first stage of Delivery %s: its Pipeline writes it", p.Spec.Stage, d.Name), nil)
	}
	from, to := d.Spec.Stages[i-1], d.Spec.Stages[i]

	now := r.now()
	if p.Status.ExpiresAt == nil {
		ttl := DefaultTTL
		if to.PromotionTTL != nil {
			ttl = to.PromotionTTL.Duration
		}
		p.Status.ExpiresAt = &metav1.Time{Time: p.CreationTimestamp.Add(ttl)}
	}
	if !now.Before(p.Status.ExpiresAt.Time) {
		return r.finish(ctx, p, slipwayv1.PromotionExpired, ReasonExpired, fmt.Sprintf("expired at %s without meeting its rules: %s", p.Status.ExpiresAt.UTC().Format(time.RFC3339), strings.Join(p.Status.Missing, "; ")), nil)
	}
	if p.Status.Freight == nil {
		f, err := r.resolveFreight(ctx, p, d, from, to)
		if err != nil {
			r.setCondition(p, metav1.ConditionFalse, ReasonPending, "resolving what to promote: "+err.Error())
			return ctrl.Result{}, err
		}
		p.Status.Freight = f
		r.event(p, corev1.EventTypeNormal, "Resolved", fmt.Sprintf("promoting %s from stage %s (ops revision %s)", f.Image, from.Name, short(f.FromRevision)))
	}

	verdict, err := r.evaluate(ctx, p, d, from, to, now)
	if err != nil {
		return ctrl.Result{}, err
	}
	if err := r.recordDecisions(ctx, p, verdict); err != nil {
		return ctrl.Result{}, err
	}
	p.Status.Approvers, p.Status.Missing = verdict.approvers, verdict.missing
	if verdict.rejectedBy != "" {
		return r.finish(ctx, p, slipwayv1.PromotionRejected, ReasonRejected, fmt.Sprintf("rejected by %s: %s", verdict.rejectedBy, verdict.rejectReason), nil)
	}
	if len(verdict.missing) > 0 {
		p.Status.Phase = slipwayv1.PromotionPending
		r.setCondition(p, metav1.ConditionFalse, ReasonPending, "waiting for: "+strings.Join(verdict.missing, "; "))
		wait := min(recheck, p.Status.ExpiresAt.Sub(now))
		if verdict.retryAt.After(now) {
			wait = min(wait, verdict.retryAt.Sub(now))
		}
		return ctrl.Result{RequeueAfter: max(wait, time.Second)}, nil
	}
	return r.land(ctx, p, d, from, to, verdict.approvers)
}

// land commits the freight's image to the target stage's file.
func (r *Reconciler) land(ctx context.Context, p *slipwayv1.Promotion, d *slipwayv1.Delivery, from, to slipwayv1.DeliveryStage, approvers []string) (ctrl.Result, error) {
	app, err := r.application(ctx, p.Namespace, to.Application)
	if err != nil {
		return ctrl.Result{}, err
	}
	auth, err := r.gitCredentials(ctx, p.Namespace, d.Spec.SecretRef, app.Spec.Source.URL)
	if err != nil {
		return ctrl.Result{}, err
	}
	ref, err := promote.ParseReference(p.Status.Freight.Image)
	if err != nil {
		return r.finish(ctx, p, slipwayv1.PromotionFailed, ReasonInvalid, err.Error(), nil)
	}
	trailers := []promote.Trailer{
		{Key: TrailerPromotion, Value: p.Namespace + "/" + p.Name},
		{Key: TrailerFromStage, Value: from.Name + "@" + p.Status.Freight.FromRevision},
		{Key: TrailerRequestedBy, Value: p.Spec.RequestedBy},
	}
	for _, a := range approvers {
		trailers = append(trailers, promote.Trailer{Key: TrailerApprovedBy, Value: a})
	}
	if p.Spec.ChangeID != "" {
		trailers = append(trailers, promote.Trailer{Key: TrailerChangeID, Value: p.Spec.ChangeID})
	}
	sourceCommit := p.Status.Freight.SourceCommit
	if sourceCommit == "" {
		sourceCommit = "unknown"
	}
	res, err := promote.Promote(ctx, promote.Request{
		RepoURL: app.Spec.Source.URL, Branch: app.Spec.Source.Ref.Branch, Path: stageFile(app, to),
		ImageName: d.Spec.Image, Image: ref, SourceCommit: sourceCommit, RunID: "promotion/" + p.Namespace + "/" + p.Name,
		Auth: auth, Trailers: trailers,
	})
	if err != nil {
		r.setCondition(p, metav1.ConditionFalse, ReasonPending, "landing failed, retrying: "+err.Error())
		return ctrl.Result{}, err
	}
	landed := map[string]string{"commit": res.Commit, "application": app.Name, "file": stageFile(app, to), "fromStage": from.Name}
	if !res.Changed {
		// A crash after the push and before the record: the retry finds the
		// branch already naming the image, and records the landing now.
		landed["landedBy"] = "an earlier attempt: the branch already named the image"
	}
	result, err := r.finish(ctx, p, slipwayv1.PromotionLanded, ReasonLanded, fmt.Sprintf("%s entered stage %s with commit %s", ref, to.Name, short(res.Commit)), landed)
	if err != nil {
		return result, err
	}
	now := metav1.Now()
	p.Status.Commit, p.Status.LandedAt = res.Commit, &now
	log.FromContext(ctx).Info("promotion landed", "stage", to.Name, "image", ref.String(), "commit", res.Commit)
	return result, nil
}

// finish puts the promotion in a final phase, once that is recorded.
func (r *Reconciler) finish(ctx context.Context, p *slipwayv1.Promotion, phase, reason, msg string, recorded map[string]string) (ctrl.Result, error) {
	if err := r.recordFinished(ctx, p, phase, msg, recorded); err != nil {
		r.setCondition(p, metav1.ConditionFalse, "AuditFailed", "recording that the promotion is "+strings.ToLower(phase)+" failed, retrying: "+err.Error())
		return ctrl.Result{}, err
	}
	p.Status.Phase = phase
	observeFinished(p, phase, r.now())
	status := metav1.ConditionFalse
	eventType := corev1.EventTypeWarning
	if phase == slipwayv1.PromotionLanded {
		status, eventType = metav1.ConditionTrue, corev1.EventTypeNormal
		p.Status.Missing = nil
	}
	r.setCondition(p, status, reason, msg)
	r.event(p, eventType, reason, msg)
	return ctrl.Result{}, nil
}

func (r *Reconciler) setCondition(p *slipwayv1.Promotion, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&p.Status.Conditions, metav1.Condition{
		Type: slipwayv1.ConditionReady, Status: status, Reason: reason, Message: msg, ObservedGeneration: p.Generation,
	})
}

func (r *Reconciler) event(p *slipwayv1.Promotion, eventType, reason, msg string) {
	if r.Recorder != nil {
		r.Recorder.Event(p, eventType, reason, msg)
	}
}
