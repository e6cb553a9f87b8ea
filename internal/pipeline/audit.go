package pipeline

import (
	"context"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/signing"
)

func runSubject(run *slipwayv1.PipelineRun) string {
	return "PipelineRun " + run.Namespace + "/" + run.Name
}

func runDetails(run *slipwayv1.PipelineRun) map[string]string {
	return map[string]string{"namespace": run.Namespace, "pipelineRun": run.Name, "pipeline": run.Spec.PipelineRef.Name,
		"commit": run.Spec.Commit, "branch": run.Spec.Branch, "rollback": boolString(run.Spec.Rollback),
		"pushedBy": run.Spec.Author, "webhookSecret": run.Annotations["slipway.dev/webhook-secret"]}
}

func boolString(b bool) string {
	if b {
		return "true"
	}
	return "false"
}

func (r *RunReconciler) record(ctx context.Context, e audit.Event) error {
	if r.Audit == nil {
		return nil
	}
	return r.Audit.Record(ctx, e)
}

// recordStarted records a run about to start, with who pushed the commit
// (as the webhook reported).
func (r *RunReconciler) recordStarted(ctx context.Context, run *slipwayv1.PipelineRun, pipe *slipwayv1.Pipeline) error {
	d := runDetails(run)
	d["source"] = pipe.Spec.Source.URL
	d["image"] = pipe.Spec.Image.Repository
	actor := run.Spec.Author
	if actor == "" {
		actor = "unknown (the push named no author)"
	}
	return r.record(ctx, audit.Event{Kind: audit.KindRunStarted, Actor: actor, Subject: runSubject(run), Outcome: audit.OutcomeSucceeded,
		Ref: audit.RefRun(string(run.UID), "started"), Details: d})
}

// recordSigned records the signature of the run's image and where its
// signed SBOM and provenance are, when the sign step succeeded.
func (r *RunReconciler) recordSigned(ctx context.Context, run *slipwayv1.PipelineRun, res *Result, keyID string) error {
	if res == nil || res.Digest == "" {
		return nil
	}
	if s := res.Step(StepSign); s == nil || s.State != StepSucceeded {
		return nil
	}
	d := runDetails(run)
	d["image"], d["digest"], d["signingKey"] = res.Image, res.Digest, keyID
	if digest, err := name.NewDigest(res.Image); err == nil {
		if tag, err := signing.SignatureTag(digest); err == nil {
			d["signature"] = tag.String()
		}
		if tag, err := signing.AttestationTag(digest); err == nil {
			// The pipeline attaches the SPDX SBOM and the SLSA provenance
			// as signed attestations under this tag.
			d["attestations"] = tag.String()
			d["sbom"] = "spdxjson attestation in " + tag.String()
			d["provenance"] = "slsaprovenance1 attestation in " + tag.String()
		}
	}
	return r.record(ctx, audit.Event{Kind: audit.KindImageSigned, Actor: audit.SystemActor, Subject: runSubject(run), Outcome: audit.OutcomeSucceeded,
		Ref: audit.RefRun(string(run.UID), "signed"), Details: d})
}

// recordFinished records a run's outcome: the commit and its author, the
// test result and how the test was isolated, the image and where it was
// promoted.
func (r *RunReconciler) recordFinished(ctx context.Context, run *slipwayv1.PipelineRun, res *Result, runErr error, phase string) error {
	d := runDetails(run)
	d["phase"] = phase
	outcome := audit.OutcomeSucceeded
	switch phase {
	case slipwayv1.RunFailed:
		outcome = audit.OutcomeFailed
	case slipwayv1.RunCancelled:
		outcome = audit.OutcomeCancelled
	}
	if runErr != nil {
		d["error"] = runErr.Error()
	}
	actor := audit.SystemActor
	if res != nil {
		d["image"], d["digest"], d["promotionCommit"] = res.Image, res.Digest, res.PromotionCommit
		d["commitAuthor"], d["testIsolation"] = res.CommitAuthor, string(res.TestIsolation)
		if !res.CommitTime.IsZero() {
			d["commitTime"] = res.CommitTime.UTC().Format(time.RFC3339)
		}
		var steps []string
		for _, s := range res.Steps {
			steps = append(steps, string(s.Name)+"="+string(s.State))
		}
		d["steps"] = strings.Join(steps, " ")
		if t := res.Step(StepTest); t != nil {
			d["test"], d["testMessage"] = string(t.State), t.Message
		}
	}
	return r.record(ctx, audit.Event{Kind: audit.KindRunFinished, Actor: actor, Subject: runSubject(run), Outcome: outcome,
		Ref: audit.RefRun(string(run.UID), "finished"), Details: d})
}

// auditRetry bounds how long a run's outcome waits for the audit log.
const auditRetry = 10 * time.Second

// recordRetrying writes a record, trying again for up to limit: the run
// is over, whatever the audit log says, and its status will say so; a
// record still missing then is found by the server's gap check and
// recorded.
func recordRetrying(ctx context.Context, limit time.Duration, write func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(ctx, limit)
	defer cancel()
	for {
		err := write(ctx)
		if err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return err
		case <-time.After(time.Second):
		}
	}
}
