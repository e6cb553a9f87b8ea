package promotion

import (
	"context"
	"fmt"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/kustomize/kyaml/yaml"
	sigsyaml "sigs.k8s.io/yaml"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
)

// IdentitiesConfigMap, in the server's namespace, maps users to the email
// addresses they commit with: key "identities", YAML of user → [emails].
const IdentitiesConfigMap = "slipway-identities"

// maxAuthorCommits bounds the source history a promotion reads for authors.
const maxAuthorCommits = 1000

// stageFile is the file of a stage's Application that promotions edit.
func stageFile(app *slipwayv1.Application, stage slipwayv1.DeliveryStage) string {
	file := stage.File
	if file == "" {
		file = "kustomization.yaml"
	}
	return path.Join(strings.Trim(app.Spec.Source.Path, "/"), file)
}

// runningImage reads which image, pinned by digest, the stage's file names
// at revision.
func (r *Reconciler) runningImage(ctx context.Context, app *slipwayv1.Application, stage slipwayv1.DeliveryStage, imageName, revision string) (string, error) {
	auth, err := r.gitCredentials(ctx, app.Namespace, app.Spec.Source.SecretRef, app.Spec.Source.URL)
	if err != nil {
		return "", err
	}
	file := stageFile(app, stage)
	snap, err := r.Fetcher.Fetch(ctx, gitsource.Request{URL: app.Spec.Source.URL, Path: path.Dir(file), Auth: auth}, revision)
	if err != nil {
		return "", err
	}
	content, ok := snap.Files[path.Base(file)]
	if !ok {
		return "", fmt.Errorf("%s does not exist at %s", file, short(revision))
	}
	return imageIn(content, imageName)
}

// imageIn finds the kustomization images entry for name and returns the
// image pinned by digest.
func imageIn(kustomization []byte, name string) (string, error) {
	doc, err := yaml.Parse(string(kustomization))
	if err != nil {
		return "", fmt.Errorf("reading the kustomization: %w", err)
	}
	images, err := doc.Pipe(yaml.Lookup("images"))
	if err != nil || images == nil {
		return "", fmt.Errorf("the kustomization has no images entry for %s", name)
	}
	entries, err := images.Elements()
	if err != nil {
		return "", err
	}
	for _, e := range entries {
		if scalar(e, "name") != name {
			continue
		}
		digest := scalar(e, "digest")
		if digest == "" {
			return "", fmt.Errorf("the images entry for %s is not pinned by digest", name)
		}
		repo := scalar(e, "newName")
		if repo == "" {
			repo = name
		}
		return repo + "@" + digest, nil
	}
	return "", fmt.Errorf("the kustomization has no images entry for %s", name)
}

func scalar(n *yaml.RNode, field string) string {
	v, err := n.Pipe(yaml.Lookup(field))
	if err != nil || v == nil {
		return ""
	}
	return strings.TrimSpace(v.MustString())
}

// resolveFreight finds what the previous stage runs now: its image, the
// ops revision, the run that built it, and the authors of the source
// commits it carries beyond what the target stage runs.
func (r *Reconciler) resolveFreight(ctx context.Context, p *slipwayv1.Promotion, d *slipwayv1.Delivery, from, to slipwayv1.DeliveryStage) (*slipwayv1.Freight, error) {
	prevApp, err := r.application(ctx, p.Namespace, from.Application)
	if err != nil {
		return nil, err
	}
	rev := prevApp.Status.LastAppliedRevision
	if rev == "" {
		return nil, fmt.Errorf("stage %s (Application %s) has not deployed anything yet", from.Name, from.Application)
	}
	image, err := r.runningImage(ctx, prevApp, from, d.Spec.Image, rev)
	if err != nil {
		return nil, fmt.Errorf("reading what stage %s runs: %w", from.Name, err)
	}
	f := &slipwayv1.Freight{Image: image, FromRevision: rev}
	run, err := r.runOf(ctx, p.Namespace, image)
	if err != nil {
		return nil, err
	}
	if run == nil {
		// Nothing tells whose code it is: no approval can be checked.
		f.UnmappedAuthors = []string{"(no PipelineRun of this namespace built " + image + ")"}
		return f, nil
	}
	f.SourceCommit, f.PipelineRun = run.Spec.Commit, run.Name

	// Commits the target stage already runs were reviewed when they
	// entered it; the promotion carries the rest.
	var base string
	if toApp, err := r.application(ctx, p.Namespace, to.Application); err == nil && toApp.Status.LastAppliedRevision != "" {
		if current, err := r.runningImage(ctx, toApp, to, d.Spec.Image, toApp.Status.LastAppliedRevision); err == nil {
			if prev, err := r.runOf(ctx, p.Namespace, current); err == nil && prev != nil {
				base = prev.Spec.Commit
			}
		}
	}
	var pipe slipwayv1.Pipeline
	if err := r.Get(ctx, client.ObjectKey{Namespace: p.Namespace, Name: run.Spec.PipelineRef.Name}, &pipe); err != nil {
		return nil, fmt.Errorf("reading Pipeline %s, which built %s: %w", run.Spec.PipelineRef.Name, image, err)
	}
	auth, err := r.gitCredentials(ctx, p.Namespace, pipe.Spec.Source.SecretRef, pipe.Spec.Source.URL)
	if err != nil {
		return nil, err
	}
	f.Authors, err = r.Fetcher.Authors(ctx, gitsource.Request{URL: pipe.Spec.Source.URL, Auth: auth}, base, run.Spec.Commit, maxAuthorCommits)
	if err != nil {
		return nil, err
	}
	users, err := r.identities(ctx)
	if err != nil {
		return nil, err
	}
	for _, email := range f.Authors {
		user, ok := users[strings.ToLower(email)]
		switch {
		case !ok:
			f.UnmappedAuthors = append(f.UnmappedAuthors, email)
		case !slices.Contains(f.AuthorUsers, user):
			f.AuthorUsers = append(f.AuthorUsers, user)
		}
	}
	return f, nil
}

// runOf finds the succeeded PipelineRun of the namespace that built image.
func (r *Reconciler) runOf(ctx context.Context, namespace, image string) (*slipwayv1.PipelineRun, error) {
	var runs slipwayv1.PipelineRunList
	if err := r.List(ctx, &runs, client.InNamespace(namespace)); err != nil {
		return nil, fmt.Errorf("listing PipelineRuns: %w", err)
	}
	for i := range runs.Items {
		run := &runs.Items[i]
		if run.Status.Image == image && run.Status.Phase == slipwayv1.RunSucceeded {
			return run, nil
		}
	}
	return nil, nil
}

// identities reads the email → user mapping.
func (r *Reconciler) identities(ctx context.Context) (map[string]string, error) {
	var cm corev1.ConfigMap
	err := r.Get(ctx, client.ObjectKey{Namespace: r.Namespace, Name: IdentitiesConfigMap}, &cm)
	if apierrors.IsNotFound(err) {
		return map[string]string{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading ConfigMap %s/%s: %w", r.Namespace, IdentitiesConfigMap, err)
	}
	var byUser map[string][]string
	if err := sigsyaml.Unmarshal([]byte(cm.Data["identities"]), &byUser); err != nil {
		return nil, fmt.Errorf("ConfigMap %s/%s: identities must map users to lists of emails: %w", r.Namespace, IdentitiesConfigMap, err)
	}
	byEmail := map[string]string{}
	for user, emails := range byUser {
		for _, e := range emails {
			byEmail[strings.ToLower(strings.TrimSpace(e))] = user
		}
	}
	return byEmail, nil
}

func (r *Reconciler) application(ctx context.Context, namespace, name string) (*slipwayv1.Application, error) {
	var app slipwayv1.Application
	if err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: name}, &app); err != nil {
		return nil, fmt.Errorf("reading Application %s/%s: %w", namespace, name, err)
	}
	return &app, nil
}

// gitCredentials reads a credentials Secret, only for a URL it lists.
func (r *Reconciler) gitCredentials(ctx context.Context, namespace string, ref *slipwayv1.LocalObjectReference, url string) (*gitsource.Credentials, error) {
	if ref == nil {
		return nil, nil
	}
	var secret corev1.Secret
	if err := r.Get(ctx, client.ObjectKey{Namespace: namespace, Name: ref.Name}, &secret); err != nil {
		return nil, fmt.Errorf("reading git credentials from Secret %s/%s: %w", namespace, ref.Name, err)
	}
	if err := gitsource.CheckCredentialScope(namespace+"/"+ref.Name, secret.Annotations, url, true); err != nil {
		return nil, err
	}
	return gitsource.CredentialsFromSecretData(secret.Data)
}

func short(rev string) string {
	if len(rev) > 12 {
		return rev[:12]
	}
	return rev
}
