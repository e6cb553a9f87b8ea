// Package gitops is Slipway's continuous-delivery engine: it keeps the objects
// an Application's git path describes applied in the cluster, prunes what left
// git, repairs drift, and reports sync state and health.
package gitops

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/fluxcd/pkg/ssa"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/manifest"
)

// FieldManager is the server-side apply field manager of everything Slipway applies.
const FieldManager = "slipway"

// owner labels every applied object with the Application that owns it, so
// pruning never touches an object some other tool created.
var owner = ssa.Owner{Field: FieldManager, Group: "applications.slipway.dev"}

// Desired is the state one revision of an Application asks for.
type Desired struct {
	Revision string
	// Tree is the git tree of the source path at Revision.
	Tree    string
	Objects []*unstructured.Unstructured
	// Sources maps each object's inventory ID to the file it came from.
	Sources map[string]string
}

// errStalled marks failures that retrying cannot fix: only a new commit or a
// spec change can (bad YAML, unknown kinds, a kustomize error).
type stalledError struct {
	reason string
	err    error
}

func (e *stalledError) Error() string { return e.err.Error() }
func (e *stalledError) Unwrap() error { return e.err }

func stalled(reason string, err error) error { return &stalledError{reason: reason, err: err} }

// retryableError is a failure with a reason of its own that may go away by
// itself, so it is retried with backoff (a registry that did not answer).
type retryableError struct {
	reason string
	err    error
}

func (e *retryableError) Error() string { return e.err.Error() }
func (e *retryableError) Unwrap() error { return e.err }

func retryable(reason string, err error) error { return &retryableError{reason: reason, err: err} }

// Condition reasons.
const (
	ReasonGitOperationFailed = "GitOperationFailed"
	ReasonCredentialsInvalid = "CredentialsInvalid"
	ReasonRenderFailed       = "RenderFailed"
	ReasonValidationFailed   = "ValidationFailed"
	ReasonApplyFailed        = "ApplyFailed"
	ReasonPruneFailed        = "PruneFailed"
	ReasonProgressing        = "Progressing"
	ReasonDegraded           = "Degraded"
	ReasonOutOfSync          = "OutOfSync"
	ReasonSucceeded          = "ReconciliationSucceeded"
	ReasonSuspended          = "Suspended"
	ReasonImageUnverified    = "ImageUnverified"
)

// Loader fetches and renders what an Application's source describes.
type Loader struct {
	Client  client.Client
	Mapper  apimeta.RESTMapper
	Fetcher *gitsource.Fetcher
	// AllowUnscopedCredentials sends the credentials of a Secret without
	// gitsource.AllowedURLsAnnotation to any URL; by default such a Secret
	// is refused.
	AllowUnscopedCredentials bool
}

// Load fetches the Application's revision and renders it (Fetch, then
// Render). Nothing in the cluster changes.
func (l *Loader) Load(ctx context.Context, app *slipwayv1.Application, mapper apimeta.RESTMapper, freshAfter time.Time) (*Desired, error) {
	snap, err := l.Fetch(ctx, app, freshAfter)
	if err != nil {
		return nil, err
	}
	return l.Render(app, snap, mapper)
}

// Fetch fetches the files of the Application's revision below its path. A
// fetch of the source begun at or after freshAfter is recent enough (see
// gitsource.Request.FreshAfter).
func (l *Loader) Fetch(ctx context.Context, app *slipwayv1.Application, freshAfter time.Time) (*gitsource.Snapshot, error) {
	creds, err := l.credentials(ctx, app)
	if err != nil {
		return nil, err
	}
	timeout := gitsource.DefaultTimeout
	if app.Spec.Source.Timeout != nil && app.Spec.Source.Timeout.Duration > 0 {
		timeout = app.Spec.Source.Timeout.Duration
	}
	ref := app.Spec.Source.Ref
	snap, err := l.Fetcher.Fetch(ctx, gitsource.Request{
		URL:        app.Spec.Source.URL,
		Ref:        gitsource.Ref{Branch: ref.Branch, Tag: ref.Tag, Commit: ref.Commit},
		Path:       app.Spec.Source.Path,
		Auth:       creds,
		Timeout:    timeout,
		FreshAfter: freshAfter,
	}, app.Spec.PinnedRevision)
	if err != nil {
		var gitErr *gitsource.Error
		if !errors.As(err, &gitErr) {
			// The path is missing or the tree unreadable: a new commit must fix it.
			return nil, stalled(ReasonRenderFailed, err)
		}
		return nil, err
	}
	return snap, nil
}

// Render renders a fetched revision and prepares the objects for apply:
// namespaces defaulted, owner labels set, kinds checked against mapper (the
// destination cluster's; nil means l.Mapper).
func (l *Loader) Render(app *slipwayv1.Application, snap *gitsource.Snapshot, mapper apimeta.RESTMapper) (*Desired, error) {
	if mapper == nil {
		mapper = l.Mapper
	}
	objs, err := manifest.Render(snap.Files)
	if err != nil {
		return nil, stalled(ReasonRenderFailed, fmt.Errorf("rendering revision %s: %w", short(snap.Revision), err))
	}
	if app.Spec.Monitoring != nil {
		objs = append(objs, serviceMonitor(app))
	}
	sources, err := l.prepare(objs, app, mapper)
	if err != nil {
		return nil, stalled(ReasonValidationFailed, fmt.Errorf("revision %s: %w", short(snap.Revision), err))
	}
	return &Desired{Revision: snap.Revision, Tree: snap.Tree, Objects: objs, Sources: sources}, nil
}

func (l *Loader) credentials(ctx context.Context, app *slipwayv1.Application) (*gitsource.Credentials, error) {
	ref := app.Spec.Source.SecretRef
	if ref == nil {
		return nil, nil
	}
	var secret corev1.Secret
	if err := l.Client.Get(ctx, client.ObjectKey{Namespace: app.Namespace, Name: ref.Name}, &secret); err != nil {
		return nil, fmt.Errorf("reading git credentials from Secret %s/%s: %w", app.Namespace, ref.Name, err)
	}
	if err := gitsource.CheckCredentialScope(app.Namespace+"/"+ref.Name, secret.Annotations, app.Spec.Source.URL, !l.AllowUnscopedCredentials); err != nil {
		return nil, stalled(ReasonCredentialsInvalid, err)
	}
	creds, err := gitsource.CredentialsFromSecretData(secret.Data)
	if err != nil {
		return nil, stalled(ReasonCredentialsInvalid, fmt.Errorf("git credentials in Secret %s/%s: %w", app.Namespace, ref.Name, err))
	}
	return creds, nil
}

// prepare defaults namespaces, labels ownership and refuses unknown kinds and
// duplicates, naming the file each offending object came from. It returns
// the file of each object by inventory ID.
func (l *Loader) prepare(objs []*unstructured.Unstructured, app *slipwayv1.Application, mapper apimeta.RESTMapper) (map[string]string, error) {
	crdScopes := map[schema.GroupKind]string{}
	for _, o := range objs {
		if o.GroupVersionKind().GroupKind() == (schema.GroupKind{Group: "apiextensions.k8s.io", Kind: "CustomResourceDefinition"}) {
			group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
			kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
			scope, _, _ := unstructured.NestedString(o.Object, "spec", "scope")
			crdScopes[schema.GroupKind{Group: group, Kind: kind}] = scope
		}
	}
	seen := map[string]string{}
	for _, o := range objs {
		gvk := o.GroupVersionKind()
		var namespaced bool
		if scope, ok := crdScopes[gvk.GroupKind()]; ok {
			namespaced = scope == "Namespaced"
		} else {
			mapping, err := mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
			if err != nil {
				return nil, fmt.Errorf("%s: %s %q: unknown kind %s in %s: the cluster does not serve it (is its CRD installed?)",
					manifest.Source(o), gvk.Kind, o.GetName(), gvk.Kind, gvk.GroupVersion())
			}
			namespaced = mapping.Scope.Name() == apimeta.RESTScopeNameNamespace
		}
		switch {
		case namespaced && o.GetNamespace() == "":
			o.SetNamespace(app.Spec.Destination.Namespace)
		case !namespaced:
			o.SetNamespace("")
		}
		id := objectID(o)
		if prev, dup := seen[id]; dup {
			return nil, fmt.Errorf("%s: %s is also defined in %s", manifest.Source(o), describe(o), prev)
		}
		seen[id] = manifest.Source(o)
		manifest.StripSource(o)
	}
	resourceManager(l.Client, nil).SetOwnerLabels(objs, app.Name, app.Namespace)
	return seen, nil
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
