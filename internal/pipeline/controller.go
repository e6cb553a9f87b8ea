package pipeline

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/record"
	"k8s.io/client-go/util/retry"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/signing"
)

// RunReconciler executes PipelineRuns with the Engine. A run executes in a
// goroutine of this process under the Pipeline's timeout; its status is
// written when it starts and when it ends.
type RunReconciler struct {
	client.Client
	// APIReader, when set, reads a Pipeline the cache does not hold yet:
	// one created together with its first run.
	APIReader client.Reader
	Engine    *Engine
	Recorder  record.EventRecorder
	// AllowUnscopedCredentials sends credentials from Secrets that do not
	// list where they may go (gitsource.AllowedURLsAnnotation).
	AllowUnscopedCredentials bool
	// Audit records runs started and finished and images signed. Nil
	// records nothing.
	Audit audit.Recorder

	mu      sync.Mutex
	running map[types.UID]context.CancelFunc
}

// SetupWithManager registers the controller. It watches Applications too,
// to mark a succeeded run deployed when one runs its promotion (deployed.go).
func (r *RunReconciler) SetupWithManager(mgr ctrl.Manager) error {
	r.running = map[types.UID]context.CancelFunc{}
	if err := setupDeploymentJoin(context.Background(), mgr); err != nil {
		return err
	}
	return ctrl.NewControllerManagedBy(mgr).For(&slipwayv1.PipelineRun{}).
		Watches(&slipwayv1.Application{}, handler.EnqueueRequestsFromMapFunc(r.runsAwaiting)).
		Complete(r)
}

// What the PipelineRun controller does with its own identity (config/rbac
// is generated from these lines by `make generate`): it reads Pipelines
// (by name, uncached, when the cache does not hold one yet) and the
// Secrets they name (git and registry credentials, the signing key),
// writes run status, and watches Applications to see a promotion running.
//
// +kubebuilder:rbac:groups=slipway.dev,resources=pipelines;pipelineruns;applications,verbs=list;watch
// +kubebuilder:rbac:groups=slipway.dev,resources=pipelines,verbs=get
// +kubebuilder:rbac:groups=slipway.dev,resources=pipelineruns/status,verbs=update
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get
// +kubebuilder:rbac:groups="",resources=events,verbs=create;patch

// Reconcile starts, cancels or closes one run.
func (r *RunReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	run := &slipwayv1.PipelineRun{}
	if err := r.Get(ctx, req.NamespacedName, run); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	if terminal(run.Status.Phase) {
		return ctrl.Result{}, r.recordDeployment(ctx, run)
	}
	r.mu.Lock()
	cancel, mine := r.running[run.UID]
	r.mu.Unlock()
	switch {
	case mine && run.Spec.Cancel:
		cancel()
		return ctrl.Result{}, nil
	case mine:
		return ctrl.Result{}, nil
	case run.Spec.Cancel:
		return ctrl.Result{}, r.finish(ctx, run, nil, errors.New("cancelled before it started"), slipwayv1.RunCancelled)
	case run.Status.Phase == slipwayv1.RunRunning:
		// Started by a process that is gone: its workspace and processes
		// went with it. Say so instead of leaving the run Running forever.
		return ctrl.Result{}, r.finish(ctx, run, nil, errors.New("interrupted: the slipway server running it stopped; push again or create a new run"), slipwayv1.RunFailed)
	}

	pipe := &slipwayv1.Pipeline{}
	pipeKey := client.ObjectKey{Namespace: run.Namespace, Name: run.Spec.PipelineRef.Name}
	err := r.Get(ctx, pipeKey, pipe)
	if apierrors.IsNotFound(err) && r.APIReader != nil {
		err = r.APIReader.Get(ctx, pipeKey, pipe)
	}
	if err != nil {
		return ctrl.Result{}, r.finish(ctx, run, nil, fmt.Errorf("reading Pipeline %s: %w", run.Spec.PipelineRef.Name, err), slipwayv1.RunFailed)
	}
	if branches := pipe.WatchedBranches(); !slices.Contains(branches, run.Spec.Branch) {
		return ctrl.Result{}, r.finish(ctx, run, nil, &refusal{reason: ReasonBranchNotWatched,
			msg: fmt.Sprintf("branch %q is not one of the branches %v Pipeline %s builds: the run builds nothing", run.Spec.Branch, branches, pipe.Name)}, slipwayv1.RunFailed)
	}
	request, err := r.request(ctx, pipe, run)
	if err != nil {
		return ctrl.Result{}, r.finish(ctx, run, nil, err, slipwayv1.RunFailed)
	}

	if err := r.recordStarted(ctx, run, pipe); err != nil {
		return ctrl.Result{}, err
	}
	now := metav1.Now()
	run.Status.Phase, run.Status.StartTime = slipwayv1.RunRunning, &now
	setRunCondition(run, metav1.ConditionUnknown, "Running", "running")
	if err := r.Status().Update(ctx, run); err != nil {
		return ctrl.Result{}, fmt.Errorf("marking run %s Running: %w", run.Name, err)
	}
	timeout := 15 * time.Minute
	if pipe.Spec.Timeout != nil && pipe.Spec.Timeout.Duration > 0 {
		timeout = pipe.Spec.Timeout.Duration
	}
	runCtx, cancelRun := context.WithTimeout(context.Background(), timeout)
	r.mu.Lock()
	r.running[run.UID] = cancelRun
	r.mu.Unlock()
	key := client.ObjectKeyFromObject(run)
	logger := log.FromContext(ctx)
	go func() {
		defer func() {
			cancelRun()
			r.mu.Lock()
			delete(r.running, run.UID)
			r.mu.Unlock()
		}()
		res, err := r.Engine.Run(runCtx, request)
		phase := slipwayv1.RunSucceeded
		switch {
		case errors.Is(runCtx.Err(), context.Canceled):
			phase = slipwayv1.RunCancelled
		case errors.Is(runCtx.Err(), context.DeadlineExceeded):
			phase, err = slipwayv1.RunFailed, fmt.Errorf("the run outlived its %s timeout and was stopped: %w", timeout, err)
		case err != nil:
			phase = slipwayv1.RunFailed
		}
		finishCtx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		keyID, _ := audit.KeyID(&request.Settings.SigningKey.PublicKey)
		if err := recordRetrying(finishCtx, auditRetry, func(ctx context.Context) error { return r.recordSigned(ctx, run, res, keyID) }); err != nil {
			logger.Error(err, "recording the image's signature in the audit trail")
		}
		latest := &slipwayv1.PipelineRun{}
		if getErr := r.Get(finishCtx, key, latest); getErr != nil {
			logger.Error(getErr, "reading the finished run")
			return
		}
		if finishErr := r.finish(finishCtx, latest, res, err, phase); finishErr != nil {
			logger.Error(finishErr, "recording the run's result")
		}
	}()
	return ctrl.Result{}, nil
}

// ReasonBranchNotWatched is the reason of a run refused for its branch.
const ReasonBranchNotWatched = "BranchNotWatched"

// ReasonCredentialsOutOfScope is the reason of a run refused because a
// Secret's credentials would go where the Secret does not allow.
const ReasonCredentialsOutOfScope = "CredentialsOutOfScope"

// refusal is a run refused before it starts, for a reason of its own.
type refusal struct{ reason, msg string }

func (r *refusal) Error() string { return r.msg }

// request assembles the engine's input from the Pipeline and its Secrets.
func (r *RunReconciler) request(ctx context.Context, pipe *slipwayv1.Pipeline, run *slipwayv1.PipelineRun) (Request, error) {
	srcAuth, err := r.credentials(ctx, pipe.Namespace, pipe.Spec.Source.SecretRef, pipe.Spec.Source.URL)
	if err != nil {
		return Request{}, err
	}
	regAuth, err := r.credentials(ctx, pipe.Namespace, pipe.Spec.Image.SecretRef, pipe.Spec.Image.Repository)
	if err != nil {
		return Request{}, err
	}
	keySecret, err := r.secret(ctx, pipe.Namespace, pipe.Spec.Signing.SecretRef.Name)
	if err != nil {
		return Request{}, err
	}
	key, err := signing.DecodePrivateKey(keySecret.Data["cosign.key"])
	if err != nil {
		return Request{}, fmt.Errorf("signing key in Secret %s/%s (key cosign.key): %w", pipe.Namespace, keySecret.Name, err)
	}
	settings := Settings{ImageRepository: pipe.Spec.Image.Repository, SigningKey: key,
		AllowTestNetwork: pipe.Spec.Test != nil && pipe.Spec.Test.AllowNetwork}
	if regAuth != nil {
		settings.Registry = RegistryAuth{Username: regAuth.Username, Password: regAuth.Password}
	}
	if p := pipe.Spec.Promotion; p != nil {
		opsAuth, err := r.credentials(ctx, pipe.Namespace, p.SecretRef, p.URL)
		if err != nil {
			return Request{}, err
		}
		settings.Promotion = &Promotion{RepoURL: p.URL, Branch: p.Branch, Path: p.Path, ImageName: p.ImageName, Auth: opsAuth}
	}
	return Request{
		Namespace: run.Namespace,
		Pipeline:  pipe.Name,
		RunID:     run.Name,
		Source:    Source{URL: pipe.Spec.Source.URL, Commit: run.Spec.Commit, Branch: run.Spec.Branch, Auth: srcAuth},
		Settings:  settings,
		Rollback:  run.Spec.Rollback,
	}, nil
}

func (r *RunReconciler) secret(ctx context.Context, namespace, name string) (*corev1.Secret, error) {
	s := &corev1.Secret{}
	if err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, s); err != nil {
		return nil, fmt.Errorf("reading Secret %s/%s: %w", namespace, name, err)
	}
	return s, nil
}

// credentials reads a Secret's credentials for target (a repository URL or
// an image repository), refusing a target the Secret does not list.
func (r *RunReconciler) credentials(ctx context.Context, namespace string, ref *slipwayv1.LocalObjectReference, target string) (*gitsource.Credentials, error) {
	if ref == nil {
		return nil, nil
	}
	s, err := r.secret(ctx, namespace, ref.Name)
	if err != nil {
		return nil, err
	}
	if err := gitsource.CheckCredentialScope(namespace+"/"+ref.Name, s.Annotations, target, !r.AllowUnscopedCredentials); err != nil {
		return nil, &refusal{reason: ReasonCredentialsOutOfScope, msg: err.Error()}
	}
	c, err := gitsource.CredentialsFromSecretData(s.Data)
	if err != nil {
		return nil, fmt.Errorf("credentials in Secret %s/%s: %w", namespace, ref.Name, err)
	}
	return c, nil
}

// finish records the outcome, in the audit trail first, then in status;
// it retries on conflicts with other writers.
func (r *RunReconciler) finish(ctx context.Context, run *slipwayv1.PipelineRun, res *Result, runErr error, phase string) error {
	key := client.ObjectKeyFromObject(run)
	if err := recordRetrying(ctx, auditRetry, func(ctx context.Context) error { return r.recordFinished(ctx, run, res, runErr, phase) }); err != nil {
		log.FromContext(ctx).Error(err, "recording the run's outcome in the audit trail; the server's gap check records it later")
	}
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := r.Get(ctx, key, run); err != nil {
			return err
		}
		now := metav1.Now()
		run.Status.Phase, run.Status.CompletionTime = phase, &now
		if res != nil {
			run.Status.Image, run.Status.Digest, run.Status.PromotionCommit = res.Image, res.Digest, res.PromotionCommit
			run.Status.TestIsolation = string(res.TestIsolation)
			if !res.CommitTime.IsZero() {
				run.Status.CommitTime = &metav1.Time{Time: res.CommitTime}
			}
			run.Status.Steps = nil
			for _, s := range res.Steps {
				st := slipwayv1.StepStatus{Name: string(s.Name), State: string(s.State), Message: s.Message, Log: s.Log}
				if !s.Started.IsZero() {
					st.Started, st.Finished = &metav1.Time{Time: s.Started}, &metav1.Time{Time: s.Finished}
				}
				run.Status.Steps = append(run.Status.Steps, st)
			}
		}
		unisolated := ""
		if res != nil && res.TestIsolation == IsolationNone {
			unisolated = "; the test command ran UNISOLATED, as the server's user"
		}
		if phase == slipwayv1.RunSucceeded {
			setRunCondition(run, metav1.ConditionTrue, phase, fmt.Sprintf("built, signed and promoted %s%s", res.Image, unisolated))
		} else {
			msg, reason := phase, phase
			if runErr != nil {
				msg = runErr.Error() + unisolated
			}
			if ref := (*refusal)(nil); errors.As(runErr, &ref) {
				reason = ref.reason
			}
			setRunCondition(run, metav1.ConditionFalse, reason, msg)
		}
		return r.Status().Update(ctx, run)
	})
	if err != nil {
		return fmt.Errorf("recording the result of run %s: %w", run.Name, err)
	}
	observeFinished(run, res)
	if r.Recorder != nil {
		eventType := corev1.EventTypeNormal
		if phase != slipwayv1.RunSucceeded {
			eventType = corev1.EventTypeWarning
		}
		r.Recorder.Event(run, eventType, phase, apimeta.FindStatusCondition(run.Status.Conditions, slipwayv1.ConditionReady).Message)
		if res != nil && res.TestIsolation == IsolationNone {
			r.Recorder.Event(run, corev1.EventTypeWarning, "Unisolated", "the test command ran as the server's user, with its view of the host: the server was started with --allow-unisolated-tests on a host that cannot isolate it")
		}
	}
	return nil
}

func setRunCondition(run *slipwayv1.PipelineRun, status metav1.ConditionStatus, reason, msg string) {
	if len(msg) > 32768 {
		msg = msg[:32765] + "..."
	}
	apimeta.SetStatusCondition(&run.Status.Conditions, metav1.Condition{Type: slipwayv1.ConditionReady, Status: status, Reason: reason, Message: msg, ObservedGeneration: run.Generation})
}

func terminal(phase string) bool {
	return phase == slipwayv1.RunSucceeded || phase == slipwayv1.RunFailed || phase == slipwayv1.RunCancelled
}
