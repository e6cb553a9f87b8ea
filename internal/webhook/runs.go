package webhook

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"path"
	"regexp"
	"slices"
	"strings"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

var commitSHA = regexp.MustCompile(`^[0-9a-f]{40}$`)

// startRuns creates a PipelineRun for every Pipeline that builds the pushed
// branch of the repository and that the delivery's signature may start
// (see verified.starts). The run's name derives from the Pipeline and the
// commit, never from the unsigned delivery id: a replayed delivery, or the
// same commit pushed again, finds its run already there and starts
// nothing.
func (h *Handler) startRuns(ctx context.Context, push *Push, v *verified) ([]string, error) {
	branch, isBranch := strings.CutPrefix(push.Ref, "refs/heads/")
	// Deleting a branch pushes the zero SHA: nothing to build.
	if !isBranch || !commitSHA.MatchString(push.After) || strings.Trim(push.After, "0") == "" {
		return nil, nil
	}
	var started []string
	for i := range v.pipelines {
		p := &v.pipelines[i]
		if p.Spec.Suspend || !slices.Contains(p.WatchedBranches(), branch) || !v.starts(p) {
			continue
		}
		if push.ChangedFiles != nil && !slices.ContainsFunc(push.ChangedFiles, func(f string) bool {
			return !Ignored(p.Spec.Source.IgnorePaths, f)
		}) {
			continue // only files the Pipeline ignores changed
		}
		signer := "server"
		if p.Spec.Source.WebhookSecretRef != nil {
			signer = "pipeline"
		}
		run := &slipwayv1.PipelineRun{
			ObjectMeta: metav1.ObjectMeta{
				Namespace:   p.Namespace,
				Name:        runName(p.Name, push.After),
				Labels:      map[string]string{"slipway.dev/pipeline": p.Name, "slipway.dev/commit": push.After},
				Annotations: map[string]string{"slipway.dev/webhook-secret": signer},
			},
			Spec: slipwayv1.PipelineRunSpec{
				PipelineRef: slipwayv1.LocalObjectReference{Name: p.Name},
				Commit:      push.After, Branch: branch, Author: push.Author,
			},
		}
		err := h.Client.Create(ctx, run)
		if apierrors.IsAlreadyExists(err) {
			continue // this commit's run exists: a replay, or a push of it to another branch
		}
		if err != nil {
			return started, fmt.Errorf("creating a PipelineRun for Pipeline %s/%s: %w", p.Namespace, p.Name, err)
		}
		started = append(started, run.Namespace+"/"+run.Name)
	}
	return started, nil
}

// runName is the name of the webhook's run of a Pipeline for a commit,
// <pipeline>-<short sha>-<hash of both>, within the 63 characters a label
// value (and so a tidy name) allows: one run per Pipeline and commit.
func runName(pipeline, sha string) string {
	sum := sha256.Sum256([]byte(pipeline + "/" + sha))
	suffix := "-" + sha[:8] + "-" + hex.EncodeToString(sum[:])[:6]
	if max := 63 - len(suffix); len(pipeline) > max {
		pipeline = strings.TrimRight(pipeline[:max], "-.")
	}
	return pipeline + suffix
}

// Ignored reports whether a Pipeline with these ignore patterns ignores a
// change to file (a path from the repository's root). A pattern is a
// path.Match glob: one with a slash matches the whole path ("docs/*.md"),
// one without matches the file's name in any directory ("*.md"), and one
// ending in "/**" matches everything under a directory ("docs/**").
// A malformed pattern matches nothing, so it cannot hide a change.
func Ignored(patterns []string, file string) bool {
	for _, p := range patterns {
		if dir, ok := strings.CutSuffix(p, "/**"); ok {
			if strings.HasPrefix(file, dir+"/") {
				return true
			}
			continue
		}
		target := file
		if !strings.Contains(p, "/") {
			target = path.Base(file)
		}
		if ok, err := path.Match(p, target); err == nil && ok {
			return true
		}
	}
	return false
}
