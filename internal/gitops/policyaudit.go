package gitops

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
)

// unknownActor stands for whoever wrote a profile or a waiver: the API
// server authenticated them, but a controller only sees the object. The
// API server's audit log (at Metadata level or above for
// policyprofiles and policywaivers) names them.
const unknownActor = "unknown (the API server's audit log names who wrote it)"

// PolicyAuditReconciler records PolicyProfiles and PolicyWaivers as they
// are created, changed, deleted, and as waivers expire: waivers are
// evidence (FIN-CHG-004), and so is every change of what the gate checks.
type PolicyAuditReconciler struct {
	client.Client
	Audit audit.Recorder
	// Now is the clock; time.Now when nil.
	Now func() time.Time

	mu   sync.Mutex
	seen map[string]types.UID // kind/name → uid, to record deletions
}

// SetupWithManager registers one controller per kind.
func (r *PolicyAuditReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.seen = map[string]types.UID{}
	if err := ctrl.NewControllerManagedBy(mgr).Named("policywaiver-audit").For(&slipwayv1.PolicyWaiver{}).
		Complete(reconcile.Func(r.reconcileWaiver)); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).Named("policyprofile-audit").For(&slipwayv1.PolicyProfile{}).
		Complete(reconcile.Func(r.reconcileProfile))
}

func (r *PolicyAuditReconciler) now() time.Time {
	if r.Now != nil {
		return r.Now()
	}
	return time.Now()
}

// deleted records the deletion of an object this process saw. One
// deleted while no server ran is not seen (the API server's audit log
// has it).
func (r *PolicyAuditReconciler) deleted(ctx context.Context, kind, what, name string) error {
	r.mu.Lock()
	uid, ok := r.seen[kind+"/"+name]
	delete(r.seen, kind+"/"+name)
	r.mu.Unlock()
	if !ok {
		return nil
	}
	return r.Audit.Record(ctx, audit.Event{Kind: kind, Actor: unknownActor, Subject: what + " " + name, Outcome: audit.OutcomeSucceeded,
		Ref: strings.ToLower(what) + "/" + string(uid) + "/deleted"})
}

func (r *PolicyAuditReconciler) remember(kind, name string, uid types.UID) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[kind+"/"+name] = uid
}

func (r *PolicyAuditReconciler) reconcileWaiver(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	w := &slipwayv1.PolicyWaiver{}
	if err := r.Get(ctx, req.NamespacedName, w); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.deleted(ctx, audit.KindWaiverDeleted, "PolicyWaiver", req.Name)
		}
		return ctrl.Result{}, err
	}
	r.remember(audit.KindWaiverDeleted, w.Name, w.UID)
	scope := w.Spec.Scope
	d := map[string]string{"rule": w.Spec.Rule, "scope.namespace": scope.Namespace, "scope.kind": scope.Kind, "scope.name": scope.Name,
		"reason": w.Spec.Reason, "approver": w.Spec.Approver, "expires": w.Spec.Expires.UTC().Format(time.RFC3339),
		"generation": strconv.FormatInt(w.Generation, 10)}
	if scope.Selector != nil {
		d["scope.selector"] = metav1.FormatLabelSelector(scope.Selector)
	}
	kind := audit.KindWaiverChanged
	if w.Generation == 1 {
		kind = audit.KindWaiverCreated
	}
	// The approver is who the waiver says approved it; who wrote it is not
	// known here.
	e := audit.Event{Kind: kind, Actor: w.Spec.Approver, Subject: "PolicyWaiver " + w.Name, Outcome: audit.OutcomeSucceeded, Details: d,
		Ref: fmt.Sprintf("policywaiver/%s/generation/%d", w.UID, w.Generation)}
	if err := r.Audit.Record(ctx, e); err != nil {
		return ctrl.Result{}, err
	}
	until := w.Spec.Expires.Sub(r.now())
	if until > 0 {
		return ctrl.Result{RequeueAfter: until + time.Second}, nil
	}
	return ctrl.Result{}, r.Audit.Record(ctx, audit.Event{Kind: audit.KindWaiverExpired, Actor: audit.SystemActor, Subject: "PolicyWaiver " + w.Name,
		Outcome: audit.OutcomeInfo, Details: d, Ref: fmt.Sprintf("policywaiver/%s/expired/%s", w.UID, d["expires"])})
}

func (r *PolicyAuditReconciler) reconcileProfile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	p := &slipwayv1.PolicyProfile{}
	if err := r.Get(ctx, req.NamespacedName, p); err != nil {
		if apierrors.IsNotFound(err) {
			return ctrl.Result{}, r.deleted(ctx, audit.KindProfileDeleted, "PolicyProfile", req.Name)
		}
		return ctrl.Result{}, err
	}
	r.remember(audit.KindProfileDeleted, p.Name, p.UID)
	d := map[string]string{"packs": strings.Join(p.Spec.Packs, " "), "mode": orDefault(p.Spec.Mode, slipwayv1.PolicyModeEnforce),
		"failOn": p.Spec.FailOn, "generation": strconv.FormatInt(p.Generation, 10)}
	if len(p.Spec.Parameters) > 0 {
		keys := make([]string, 0, len(p.Spec.Parameters))
		for k := range p.Spec.Parameters {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			d["parameters."+k] = string(p.Spec.Parameters[k].Raw)
		}
	}
	if u := p.Spec.Unchecked; u != nil {
		d["unchecked.clusterScoped"], d["unchecked.allowed"] = u.ClusterScoped, strings.Join(u.Allowed, " ")
	}
	if iv := p.Spec.ImageVerification; iv != nil {
		// Keys and credentials' Secret names are not secret; the keys are
		// long, so they are recorded by count and digest of the list.
		keys, _ := json.Marshal(iv.PublicKeys)
		d["imageVerification.publicKeys"] = fmt.Sprintf("%d key(s), %s", len(iv.PublicKeys), shortDigest(keys))
		d["imageVerification.builders"] = strings.Join(iv.Builders, " ")
		d["imageVerification.sourceRepositories"] = strings.Join(iv.SourceRepositories, " ")
	}
	kind := audit.KindProfileChanged
	if p.Generation == 1 {
		kind = audit.KindProfileCreated
	}
	return ctrl.Result{}, r.Audit.Record(ctx, audit.Event{Kind: kind, Actor: unknownActor, Subject: "PolicyProfile " + p.Name, Outcome: audit.OutcomeSucceeded,
		Details: d, Ref: fmt.Sprintf("policyprofile/%s/generation/%d", p.UID, p.Generation)})
}
