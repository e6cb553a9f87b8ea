package gitops

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	"github.com/fluxcd/pkg/ssa"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/record"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/controller/controllerutil"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitsource"
)

// Finalizer lets the controller prune an Application's objects when it is
// deleted (only when spec.syncPolicy.prune is on).
const Finalizer = "slipway.dev/finalizer"

// historyLimit bounds status.history.
const historyLimit = 10

// progressPoll is how often a rollout in progress is checked.
const progressPoll = 2 * time.Second

// reconcileTimeout bounds one reconciliation: a git operation takes at
// most gitsource.MaxTimeout, the API calls their share of the rest.
const reconcileTimeout = 10 * time.Minute

// hostBusyRetry is how soon an Application whose git host had no free
// fetch slot is tried again.
const hostBusyRetry = 5 * time.Second

// ApplicationReconciler reconciles Application objects.
type ApplicationReconciler struct {
	client.Client
	Loader   *Loader
	Recorder record.EventRecorder
	// Policy gates every sync; nil disables the gate.
	Policy *PolicyGate
	// Concurrency is the number of Applications reconciled in parallel.
	Concurrency int
	// Impersonator gives the clients that apply as an Application's
	// ServiceAccount.
	Impersonator *Impersonator
	// DefaultServiceAccount is what Applications apply as when neither they
	// nor their Tenant name a ServiceAccount; empty refuses them.
	DefaultServiceAccount string
	// Clusters reaches the other clusters Applications deploy to; nil
	// refuses spec.destination.clusterRef.
	Clusters *Clusters
	// Audit records syncs, rollbacks, repaired drift, policy blocks and
	// refusals; a sync whose record cannot be written is not reported as
	// done. Nil records nothing.
	Audit audit.Recorder
}

// SetupWithManager registers the controller. Metadata changes (the
// reconcile and sync request annotations) trigger it as well as spec changes.
//
// A change of tenancy or policy triggers it too: a Tenant that grants or
// withdraws rights, a waiver that unblocks a sync, or a profile that now
// blocks one, takes effect at once rather than at each Application's next
// interval (which may be an hour). Only spec changes count
// (GenerationChangedPredicate), so status and label edits do not
// re-evaluate anything. These objects change rarely and are
// administrators', so every Application is looked at again.
func (r *ApplicationReconciler) SetupWithManager(mgr ctrl.Manager) error {
	b := ctrl.NewControllerManagedBy(mgr).
		For(&slipwayv1.Application{}, builder.WithPredicates(predicate.Or(
			predicate.GenerationChangedPredicate{}, predicate.AnnotationChangedPredicate{}))).
		Watches(&slipwayv1.Tenant{}, handler.EnqueueRequestsFromMapFunc(r.allApplications),
			builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	if r.Policy != nil {
		b = b.
			Watches(&slipwayv1.PolicyProfile{}, handler.EnqueueRequestsFromMapFunc(r.allApplications),
				builder.WithPredicates(predicate.GenerationChangedPredicate{})).
			Watches(&slipwayv1.PolicyWaiver{}, handler.EnqueueRequestsFromMapFunc(r.allApplications),
				builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	}
	return b.WithOptions(controller.Options{MaxConcurrentReconciles: max(r.Concurrency, 1)}).Complete(r)
}

// allApplications maps a change of tenancy or policy to every Application.
func (r *ApplicationReconciler) allApplications(ctx context.Context, _ client.Object) []reconcile.Request {
	var apps slipwayv1.ApplicationList
	if err := r.List(ctx, &apps); err != nil {
		// A map function cannot return an error; the Applications still
		// re-evaluate at their interval.
		log.FromContext(ctx).Error(err, "listing Applications after a tenancy or policy change")
		return nil
	}
	out := make([]reconcile.Request, len(apps.Items))
	for i := range apps.Items {
		out[i] = reconcile.Request{NamespacedName: client.ObjectKeyFromObject(&apps.Items[i])}
	}
	return out
}

// What the Application controller does with its own identity (config/rbac
// is generated from these lines by `make generate`). Everything it applies,
// prunes and reads back, it does as the Application's ServiceAccount, so
// its only right over workloads is to impersonate that ServiceAccount.
// Secrets are read one by one, by the name an Application gives (git
// credentials in the Application's namespace), and never listed.
//
// +kubebuilder:rbac:groups=slipway.dev,resources=applications,verbs=list;watch;patch
// +kubebuilder:rbac:groups=slipway.dev,resources=applications/status,verbs=patch
// +kubebuilder:rbac:groups=slipway.dev,resources=tenants;policyprofiles;policywaivers,verbs=list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=serviceaccounts,verbs=impersonate
// +kubebuilder:rbac:groups=networking.k8s.io,resources=networkpolicies,verbs=list
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile brings one Application closer to its desired state.
func (r *ApplicationReconciler) Reconcile(ctx context.Context, req ctrl.Request) (result ctrl.Result, retErr error) {
	start := time.Now()
	ctx, cancel := context.WithTimeout(ctx, reconcileTimeout)
	defer cancel()
	app := &slipwayv1.Application{}
	if err := r.Get(ctx, req.NamespacedName, app); err != nil {
		if apierrors.IsNotFound(err) {
			forgetState(req.Namespace, req.Name)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	if !app.DeletionTimestamp.IsZero() {
		return ctrl.Result{}, r.finalize(ctx, app)
	}
	if !controllerutil.ContainsFinalizer(app, Finalizer) {
		patch := client.MergeFrom(app.DeepCopy())
		controllerutil.AddFinalizer(app, Finalizer)
		if err := r.Patch(ctx, app, patch); err != nil {
			return ctrl.Result{}, fmt.Errorf("adding finalizer: %w", err)
		}
	}

	base := app.DeepCopy()
	defer func() {
		app.Status.ObservedGeneration = app.Generation
		// An unchanged status is not sent: rollout polls would otherwise
		// write an empty patch every few seconds per Application.
		if !equality.Semantic.DeepEqual(base.Status, app.Status) {
			if err := r.Status().Patch(ctx, app, client.MergeFrom(base)); err != nil && !apierrors.IsNotFound(err) {
				retErr = errors.Join(retErr, fmt.Errorf("updating status: %w", err))
			}
		}
		recordState(app)
		outcome := "success"
		switch {
		case retErr != nil:
			outcome = "error"
		case apimeta.IsStatusConditionTrue(app.Status.Conditions, slipwayv1.ConditionStalled):
			outcome = "stalled"
		}
		reconcileTotal.WithLabelValues(outcome).Inc()
		reconcileDuration.WithLabelValues(outcome).Observe(time.Since(start).Seconds())
		if deployed := app.Status.LastAppliedAt; deployed != nil && (base.Status.LastAppliedAt == nil || !deployed.Equal(base.Status.LastAppliedAt)) {
			syncDuration.Observe(time.Since(start).Seconds())
		}
	}()

	if app.Spec.Suspend {
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonSuspended, "reconciliation is suspended")
		return ctrl.Result{}, nil
	}
	return r.reconcile(ctx, app)
}

func (r *ApplicationReconciler) reconcile(ctx context.Context, app *slipwayv1.Application) (ctrl.Result, error) {
	logger := log.FromContext(ctx)
	syncRequest := app.Annotations[slipwayv1.SyncRequestAnnotation]
	syncRequested := syncRequest != "" && syncRequest != app.Status.LastHandledSyncAt
	cluster, err := r.clusterFor(ctx, app)
	if err != nil {
		return r.fail(ctx, app, err)
	}
	if r.healthOnly(app, syncRequested) {
		// Only the objects still rolling out are read again; the next full
		// pass, within the interval, reads everything.
		reader, err := r.healthReader(ctx, app, cluster)
		if err != nil {
			return r.fail(ctx, app, err)
		}
		return r.checkHealth(ctx, app, reader, healthyResources(app.Status.Resources))
	}
	freshAfter := sourceFreshAfter(app, time.Now())
	webhookPass := !syncRequested && app.Annotations[slipwayv1.ReconcileRequestAnnotation] != app.Status.LastHandledReconcileAt
	// Echo the requests as handled whatever happens, so waiting clients see an answer.
	app.Status.LastHandledReconcileAt = app.Annotations[slipwayv1.ReconcileRequestAnnotation]
	app.Status.LastHandledSyncAt = syncRequest

	now := metav1.Now()
	app.Status.LastReconcileAt = &now
	setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionTrue, ReasonProgressing, "fetching and rendering the source")

	snap, err := r.Loader.Fetch(ctx, app, freshAfter)
	if errors.Is(err, gitsource.ErrHostBusy) {
		// Not a failure of this Application: its host is busy with others.
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionTrue, ReasonProgressing, "waiting for a free fetch slot: "+err.Error())
		return ctrl.Result{RequeueAfter: hostBusyRetry + time.Duration(rand.Int64N(int64(hostBusyRetry)))}, nil
	}
	if err != nil {
		return r.fail(ctx, app, err)
	}
	app.Status.LastAttemptedRevision = snap.Revision
	if webhookPass && r.sourceUnchanged(app, snap.Tree) {
		// The push did not touch this Application's path, so what it would
		// apply is what it applied: only the revision moves, without even
		// a render. The next interval's pass reads the live objects for
		// drift as usual.
		app.Status.LastAppliedRevision = snap.Revision
		app.Status.Sync = slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: snap.Revision}
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonSucceeded, "")
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionTrue, ReasonSucceeded,
			fmt.Sprintf("revision %s applied and healthy (%s unchanged since the last sync)", short(snap.Revision), sourcePath(app)))
		return ctrl.Result{RequeueAfter: interval(app)}, nil
	}
	desired, err := r.Loader.Render(app, snap, cluster.Mapper)
	if err != nil {
		return r.fail(ctx, app, err)
	}

	tenancy, err := TenancyFor(ctx, r.Client, app, r.DefaultServiceAccount)
	if err != nil {
		return r.fail(ctx, app, err)
	}
	if err := tenancy.CheckPlacement(app, desired); err != nil {
		return r.fail(ctx, app, err)
	}
	if r.Policy != nil {
		st, err := r.Policy.Check(ctx, app, tenancy.PolicyProfile, desired, cluster)
		app.Status.Policy = st
		if st != nil && !st.Passed {
			r.policyEvents(app, st)
		}
		if err != nil {
			return r.fail(ctx, app, err)
		}
	}

	applier, identity, err := r.applier(app, tenancy, cluster)
	if err != nil {
		return r.fail(ctx, app, err)
	}
	revisionChanged := desired.Revision != app.Status.LastAppliedRevision
	sp := app.Spec.SyncPolicy
	mayApply := syncRequested || (sp.Automated && (revisionChanged || sp.SelfHeal))
	if !mayApply {
		return r.compare(ctx, app, cluster, applier, desired)
	}

	if err := checkOwnership(ctx, applier, identity, app, desired.Objects); err != nil {
		return r.fail(ctx, app, err)
	}
	done, err := applyTracked(ctx, applier, cluster.Mapper, app.Status.Inventory, desired.Objects)
	if err != nil {
		if aerr := r.recordSyncFailed(ctx, app, desired, identity, err); aerr != nil {
			return r.fail(ctx, app, aerr)
		}
		r.addHistory(app, desired.Revision, "Failed", err.Error())
		return r.fail(ctx, app, forbiddenStalled(fmt.Errorf("applying revision %s as %s: %w", short(desired.Revision), identity, err)))
	}
	cs := done.changes
	if changes := summarize(cs); changes != "" {
		verb := "applied"
		if !revisionChanged && !syncRequested {
			verb = "repaired drift:"
		}
		r.event(app, corev1.EventTypeNormal, "Applied", fmt.Sprintf("revision %s %s %s", short(desired.Revision), verb, changes))
		logger.Info("applied", "revision", desired.Revision, "changes", changes)
	}

	oldInventory := app.Status.Inventory
	app.Status.Inventory = done.inventory
	var pruned string
	if leftovers := stale(oldInventory, desired.Objects); len(leftovers) > 0 {
		if !sp.Prune {
			// Keep tracking them so a later prune can still find them.
			app.Status.Inventory = append(app.Status.Inventory, leftovers...)
		} else if pruned, err = r.prune(ctx, app, applier, leftovers); err != nil {
			app.Status.Inventory = append(app.Status.Inventory, leftovers...)
			return r.fail(ctx, app, err)
		}
	}
	// The sync is recorded before its status says it is done: a record
	// that cannot be written leaves the revision unapplied in status, and
	// the retry applies (unchanged) and records again.
	if err := r.recordSync(ctx, app, desired, cs, pruned, identity, revisionChanged, syncRequested); err != nil {
		return r.fail(ctx, app, err)
	}

	if revisionChanged || syncRequested || app.Status.LastAppliedAt == nil {
		now := metav1.Now()
		app.Status.LastAppliedAt = &now
	}
	r.addHistory(app, desired.Revision, "Succeeded", summarize(cs))
	app.Status.LastAppliedRevision = desired.Revision
	app.Status.LastAppliedTree = desired.Tree
	app.Status.Sync = slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: desired.Revision}
	return r.checkHealth(ctx, app, heldReader{Reader: applier, held: done.live}, nil)
}

// fetchReuse is how old a fetch may be and still serve a reconciliation
// nobody asked for (an interval's, a spec change's), at most a tenth of
// the interval: a few seconds do not matter to a pass that comes once an
// interval, and thousands of Applications reading one repository then
// share a few fetches.
const fetchReuse = 5 * time.Second

// clockSkew is how far the clock of the replica that took a webhook may be
// behind the one reconciling, on nodes kept in time.
const clockSkew = time.Second

// sourceFreshAfter is the moment from which app's source must be fetched
// (gitsource.Request.FreshAfter). A reconciliation the webhook asked for
// needs the remote as it was at the webhook, which came after the push:
// the webhook's token is that moment, so one fetch serves every
// Application of the pushed repository. A sync asked for by a person wants
// the remote as it is now.
func sourceFreshAfter(app *slipwayv1.Application, now time.Time) time.Time {
	if sync := app.Annotations[slipwayv1.SyncRequestAnnotation]; sync != "" && sync != app.Status.LastHandledSyncAt {
		return now
	}
	if token := app.Annotations[slipwayv1.ReconcileRequestAnnotation]; token != "" && token != app.Status.LastHandledReconcileAt {
		// The token is another replica's clock: allow for a little skew.
		if at, err := time.Parse(time.RFC3339Nano, token); err == nil && at.Add(clockSkew).Before(now) {
			return at.Add(clockSkew)
		}
		return now
	}
	return now.Add(-min(fetchReuse, baseInterval(app)/10))
}

// sourceUnchanged reports whether a webhook's pass can skip the sync: the
// source path's tree is the one the last sync applied, and nothing else
// that shapes a sync moved since (the spec, a waiver's expiry), and that
// sync ended Ready. Policy and tenancy changes have passes of their own.
func (r *ApplicationReconciler) sourceUnchanged(app *slipwayv1.Application, tree string) bool {
	return tree != "" && tree == app.Status.LastAppliedTree &&
		app.Spec.SyncPolicy.Automated &&
		app.Status.ObservedGeneration == app.Generation &&
		apimeta.IsStatusConditionTrue(app.Status.Conditions, slipwayv1.ConditionReady) &&
		!waiverExpired(app)
}

func sourcePath(app *slipwayv1.Application) string {
	if p := strings.Trim(app.Spec.Source.Path, "/"); p != "" && p != "." {
		return p
	}
	return "the repository root"
}

// healthOnly reports whether this pass only needs to poll a rollout: nothing
// was asked of the Application since its last full pass, which is recent.
func (r *ApplicationReconciler) healthOnly(app *slipwayv1.Application, syncRequested bool) bool {
	ready := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady)
	return !syncRequested &&
		ready != nil && ready.Reason == ReasonProgressing &&
		app.Status.ObservedGeneration == app.Generation &&
		app.Annotations[slipwayv1.ReconcileRequestAnnotation] == app.Status.LastHandledReconcileAt &&
		app.Status.LastReconcileAt != nil && time.Since(app.Status.LastReconcileAt.Time) < baseInterval(app) &&
		!waiverExpired(app)
}

// waiverExpired reports whether a waiver the last policy check relied on has
// expired since, which calls for a full pass.
func waiverExpired(app *slipwayv1.Application) bool {
	p := app.Status.Policy
	return p != nil && p.WaiversExpireAt != nil && !time.Now().Before(p.WaiversExpireAt.Time)
}

// compare reports drift without changing anything (automated sync or
// self-heal is off and nobody asked for a sync).
func (r *ApplicationReconciler) compare(ctx context.Context, app *slipwayv1.Application, cluster *Cluster, applier client.Client, desired *Desired) (ctrl.Result, error) {
	changes, err := Plan(ctx, applier, app, desired)
	if err != nil {
		return r.fail(ctx, app, forbiddenStalled(err))
	}
	var diffs []string
	for _, c := range changes {
		diffs = append(diffs, c.Subject+" "+c.Action)
	}
	sync := slipwayv1.SyncStatus{Status: slipwayv1.SyncStatusSynced, Revision: desired.Revision}
	if len(diffs) > 0 {
		sync.Status = slipwayv1.SyncStatusOutOfSync
		sync.Message = joinLimited(diffs, 10)
		if app.Status.Sync.Status != slipwayv1.SyncStatusOutOfSync {
			r.event(app, corev1.EventTypeWarning, ReasonOutOfSync, fmt.Sprintf("live state differs from revision %s: %s", short(desired.Revision), sync.Message))
		}
	}
	app.Status.Sync = sync
	if len(app.Status.Inventory) == 0 {
		setCondition(app, slipwayv1.ConditionStalled, metav1.ConditionFalse, ReasonOutOfSync, "")
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonOutOfSync, "")
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionFalse, ReasonOutOfSync,
			fmt.Sprintf("revision %s is not applied: automated sync is off; run `slipway app sync %s`", short(desired.Revision), app.Name))
		return ctrl.Result{RequeueAfter: interval(app)}, nil
	}
	return r.checkHealth(ctx, app, applier, nil)
}

// healthReader is who reads an Application's objects for a rollout poll:
// the identity that applies them. In this cluster the server's own has no
// right to a tenant's objects.
func (r *ApplicationReconciler) healthReader(ctx context.Context, app *slipwayv1.Application, cluster *Cluster) (client.Reader, error) {
	tenancy, err := TenancyFor(ctx, r.Client, app, r.DefaultServiceAccount)
	if err != nil {
		return nil, err
	}
	reader, _, err := r.applier(app, tenancy, cluster)
	return reader, err
}

// checkHealth reads the inventoried objects with reader, the identity that
// applies them.
func (r *ApplicationReconciler) checkHealth(ctx context.Context, app *slipwayv1.Application, reader client.Reader, known map[string]slipwayv1.ResourceStatus) (ctrl.Result, error) {
	resources, health, err := assessHealth(ctx, reader, app.Status.Inventory, known)
	if err != nil {
		return r.fail(ctx, app, err)
	}
	app.Status.Resources = resources
	if health.Status == slipwayv1.HealthProgressing && app.Status.LastAppliedAt != nil {
		if limit := rolloutTimeout(app); time.Since(app.Status.LastAppliedAt.Time) > limit {
			health = slipwayv1.HealthStatus{Status: slipwayv1.HealthDegraded,
				Message: fmt.Sprintf("rollout did not finish within %s: %s", limit, health.Message)}
		}
	}
	if health.Status != app.Status.Health.Status && health.Status == slipwayv1.HealthDegraded {
		r.event(app, corev1.EventTypeWarning, ReasonDegraded, health.Message)
		countRolloutFailure(app)
	}
	app.Status.Health = health
	setCondition(app, slipwayv1.ConditionStalled, metav1.ConditionFalse, ReasonSucceeded, "")

	outOfSync := app.Status.Sync.Status == slipwayv1.SyncStatusOutOfSync
	switch {
	case health.Status == slipwayv1.HealthProgressing:
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionTrue, ReasonProgressing, health.Message)
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionUnknown, ReasonProgressing, "waiting for rollout: "+health.Message)
		return ctrl.Result{RequeueAfter: progressPoll}, nil
	case health.Status == slipwayv1.HealthDegraded:
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonDegraded, "")
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionFalse, ReasonDegraded, health.Message)
	case outOfSync:
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonOutOfSync, "")
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionFalse, ReasonOutOfSync, "live state differs from git: "+app.Status.Sync.Message)
	default:
		setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, ReasonSucceeded, "")
		setCondition(app, slipwayv1.ConditionReady, metav1.ConditionTrue, ReasonSucceeded,
			fmt.Sprintf("revision %s applied and healthy", short(app.Status.LastAppliedRevision)))
	}
	return ctrl.Result{RequeueAfter: interval(app)}, nil
}

// fail records err in the conditions. Stalled errors wait for the next
// interval (a new commit may fix them); others are retried with backoff.
func (r *ApplicationReconciler) fail(ctx context.Context, app *slipwayv1.Application, err error) (ctrl.Result, error) {
	if aerr := r.recordRefusal(ctx, app, err); aerr != nil {
		err = aerr
	}
	reason := ReasonApplyFailed
	var se *stalledError
	var re *retryableError
	var gitErr *gitsource.Error
	switch {
	case errors.As(err, &se):
		reason = se.reason
	case errors.As(err, &re):
		reason = re.reason
	case errors.As(err, &gitErr):
		reason = ReasonGitOperationFailed
	}
	msg := strings.TrimSpace(err.Error())
	if prev := apimeta.FindStatusCondition(app.Status.Conditions, slipwayv1.ConditionReady); prev == nil || prev.Message != msg || prev.Status != metav1.ConditionFalse {
		r.event(app, corev1.EventTypeWarning, reason, msg)
	}
	setCondition(app, slipwayv1.ConditionReady, metav1.ConditionFalse, reason, msg)
	setCondition(app, slipwayv1.ConditionReconciling, metav1.ConditionFalse, reason, "")
	if app.Status.Sync.Status == "" {
		app.Status.Sync.Status = slipwayv1.SyncStatusUnknown
	}
	if app.Status.Health.Status == "" {
		app.Status.Health.Status = slipwayv1.HealthUnknown
	}
	if se != nil {
		setCondition(app, slipwayv1.ConditionStalled, metav1.ConditionTrue, reason, msg)
		log.FromContext(ctx).Info("stalled", "reason", reason, "error", msg)
		return ctrl.Result{RequeueAfter: interval(app)}, nil
	}
	setCondition(app, slipwayv1.ConditionStalled, metav1.ConditionFalse, reason, "")
	return ctrl.Result{}, err
}

// applier is the client that changes the cluster for app, and who it acts
// as: in this cluster its ServiceAccount, or the server itself with a
// Tenant's server rights; in another cluster, its kubeconfig's identity.
func (r *ApplicationReconciler) applier(app *slipwayv1.Application, t *Tenancy, cluster *Cluster) (client.Client, string, error) {
	switch {
	case cluster.Remote:
		return cluster.Client, "the kubeconfig's identity in " + cluster.Name, nil
	case t.ServerRights || r.Impersonator == nil:
		return r.Client, t.Identity(app.Namespace), nil
	}
	c, err := r.Impersonator.ServiceAccount(app.Namespace, t.ServiceAccount)
	return c, t.Identity(app.Namespace), err
}

// prune deletes entries' objects and says what it deleted.
func (r *ApplicationReconciler) prune(ctx context.Context, app *slipwayv1.Application, applier client.Client, entries []slipwayv1.InventoryEntry) (string, error) {
	objs, err := inventoryObjects(entries)
	if err != nil {
		return "", err
	}
	rm := resourceManager(applier, nil)
	opts := ssa.DefaultDeleteOptions()
	// Only objects still labelled as this Application's are deleted.
	opts.Inclusions = rm.GetOwnerLabels(app.Name, app.Namespace)
	cs, err := rm.DeleteAll(ctx, objs, opts)
	if err != nil {
		return "", forbiddenStalled(fmt.Errorf("pruning objects that left git: %w", err))
	}
	changes := summarize(cs)
	if changes != "" {
		r.event(app, corev1.EventTypeNormal, "Pruned", changes)
	}
	return changes, nil
}

func (r *ApplicationReconciler) finalize(ctx context.Context, app *slipwayv1.Application) error {
	if !controllerutil.ContainsFinalizer(app, Finalizer) {
		return nil
	}
	if app.Spec.SyncPolicy.Prune && !app.Spec.Suspend && len(app.Status.Inventory) > 0 {
		if err := r.pruneOnDelete(ctx, app); err != nil {
			return err
		}
	}
	forgetState(app.Namespace, app.Name)
	patch := client.MergeFrom(app.DeepCopy())
	controllerutil.RemoveFinalizer(app, Finalizer)
	return client.IgnoreNotFound(r.Patch(ctx, app, patch))
}

// pruneOnDelete deletes a deleted Application's objects as its identity.
// When that identity no longer may (its ServiceAccount or Tenant is gone,
// RBAC changed), the objects are left in place with a Warning naming them,
// rather than keeping the Application from ever being deleted.
func (r *ApplicationReconciler) pruneOnDelete(ctx context.Context, app *slipwayv1.Application) error {
	tenancy, err := TenancyFor(ctx, r.Client, app, r.DefaultServiceAccount)
	var cluster *Cluster
	if err == nil {
		cluster, err = r.clusterFor(ctx, app)
	}
	var applier client.Client
	if err == nil {
		applier, _, err = r.applier(app, tenancy, cluster)
	}
	if err == nil {
		_, err = r.prune(ctx, app, applier, app.Status.Inventory)
	}
	var se *stalledError
	if err != nil && errors.As(err, &se) {
		ids := make([]string, len(app.Status.Inventory))
		for i, e := range app.Status.Inventory {
			ids[i] = e.ID
		}
		r.event(app, corev1.EventTypeWarning, ReasonPruneFailed, fmt.Sprintf("deleted without pruning %s: %v", joinLimited(ids, 10), err))
		return nil
	}
	return err
}

// addHistory records a deployment, unless the newest entry already records
// the same revision with the same result (a retry or a repair is not a new deployment).
func (r *ApplicationReconciler) addHistory(app *slipwayv1.Application, revision, result, message string) {
	if h := app.Status.History; len(h) > 0 && h[0].Revision == revision && h[0].Result == result {
		return
	}
	var next int64 = 1
	if len(app.Status.History) > 0 {
		next = app.Status.History[0].ID + 1
	}
	countDeployment(app, result != "Succeeded")
	entry := slipwayv1.RevisionHistory{ID: next, Revision: revision, DeployedAt: metav1.Now(), Result: result, Message: truncate(message, 512)}
	app.Status.History = append([]slipwayv1.RevisionHistory{entry}, app.Status.History...)
	if len(app.Status.History) > historyLimit {
		app.Status.History = app.Status.History[:historyLimit]
	}
}

// policyEvents emits one Warning per failing rule and object (the recorder
// aggregates repeats), so `kubectl describe` shows what blocks or would block.
func (r *ApplicationReconciler) policyEvents(app *slipwayv1.Application, st *slipwayv1.PolicyStatus) {
	if st == nil {
		return
	}
	for _, v := range st.Violations {
		if v.Waiver == "" {
			r.event(app, corev1.EventTypeWarning, ReasonPolicyViolation,
				fmt.Sprintf("%s (%s, %s mode) %s %s: %s", v.Rule, v.Severity, st.Mode, v.Object, v.Path, v.Message))
		}
	}
}

func (r *ApplicationReconciler) event(app *slipwayv1.Application, eventType, reason, msg string) {
	if r.Recorder != nil {
		r.Recorder.Event(app, eventType, reason, truncate(msg, 1024))
	}
}

func setCondition(app *slipwayv1.Application, condType string, status metav1.ConditionStatus, reason, msg string) {
	apimeta.SetStatusCondition(&app.Status.Conditions, metav1.Condition{
		Type: condType, Status: status, Reason: reason, Message: truncate(msg, 32768), ObservedGeneration: app.Generation,
	})
}

// interval is spec.interval plus up to 10% jitter, so Applications created
// together do not all hit git and the API server at the same moment; or less,
// up to just after a waiver that covered a finding expires.
func interval(app *slipwayv1.Application) time.Duration {
	d := baseInterval(app)
	d += time.Duration(rand.Int64N(int64(d)/10 + 1))
	if p := app.Status.Policy; p != nil && p.WaiversExpireAt != nil {
		d = min(d, max(time.Until(p.WaiversExpireAt.Time)+time.Second, time.Second))
	}
	return d
}

func baseInterval(app *slipwayv1.Application) time.Duration {
	if app.Spec.Interval != nil && app.Spec.Interval.Duration > 0 {
		return app.Spec.Interval.Duration
	}
	return time.Minute
}

func rolloutTimeout(app *slipwayv1.Application) time.Duration {
	if app.Spec.RolloutTimeout != nil && app.Spec.RolloutTimeout.Duration > 0 {
		return app.Spec.RolloutTimeout.Duration
	}
	return 5 * time.Minute
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n-3] + "..."
}

func joinLimited(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}
