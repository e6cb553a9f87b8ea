package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// PipelineSource is the source repository a Pipeline builds.
type PipelineSource struct {
	// URL of the source repository (https:// or http://).
	// +kubebuilder:validation:Pattern="^(https?|ssh)://"
	URL string `json:"url"`
	// Branches whose pushes start a run. Defaults to [main].
	// +optional
	Branches []string `json:"branches,omitempty"`
	// IgnorePaths are files whose changes alone start no run, e.g. "*.md"
	// or "docs/**". A pattern with a slash matches the path from the
	// repository's root, one without matches the file name anywhere.
	// +optional
	IgnorePaths []string `json:"ignorePaths,omitempty"`
	// SecretRef names a Secret with `username`/`password` for the repository.
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
	// WebhookSecretRef names a Secret whose key `webhook-secret` is the
	// secret the repository's push webhook signs with (GitHub and Gitea
	// set one per webhook). Only a delivery it verifies starts runs of
	// this Pipeline; without it, the server's own webhook secret does.
	// +optional
	WebhookSecretRef *LocalObjectReference `json:"webhookSecretRef,omitempty"`
}

// PipelineTest is what operations allow the test step.
type PipelineTest struct {
	// AllowNetwork lets the test command reach the network when
	// slipway.yaml asks for it (test.network: true): HTTP and HTTPS
	// through the server's egress proxy under the local executor. A test
	// step that asks without it fails.
	// +optional
	AllowNetwork bool `json:"allowNetwork,omitempty"`
}

// ImageTarget is where built images are pushed.
type ImageTarget struct {
	// Repository is registry/path/name, e.g. registry.example.com/cafe/tea.
	// +kubebuilder:validation:MinLength=1
	Repository string `json:"repository"`
	// SecretRef names a Secret with `username`/`password` for the registry.
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
}

// SigningKey names the Secret holding the key that signs images and attestations.
type SigningKey struct {
	// SecretRef names a Secret whose key `cosign.key` holds a PEM EC private key.
	SecretRef LocalObjectReference `json:"secretRef"`
}

// PromotionTarget is where the built image, pinned by digest, is written.
type PromotionTarget struct {
	// URL of the ops repository.
	// +kubebuilder:validation:Pattern="^(https?|ssh)://"
	URL string `json:"url"`
	// Branch of the ops repository; main by default.
	// +optional
	Branch string `json:"branch,omitempty"`
	// Path of the file to edit: a kustomization (its images: entry) or a
	// manifest whose image field carries the setter comment.
	// +kubebuilder:validation:MinLength=1
	Path string `json:"path"`
	// ImageName is the kustomize image name or setter name to update.
	// +kubebuilder:validation:MinLength=1
	ImageName string `json:"imageName"`
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
}

// PipelineSpec describes a source repository's delivery. Settings that
// developers own (test command, build context) live in slipway.yaml in the
// source repository; these are the ones operations own.
type PipelineSpec struct {
	Source  PipelineSource `json:"source"`
	Image   ImageTarget    `json:"image"`
	Signing SigningKey     `json:"signing"`
	// Promotion is optional: without it runs stop at the signed image.
	// +optional
	Promotion *PromotionTarget `json:"promotion,omitempty"`
	// Test is what the test step may do beyond the defaults.
	// +optional
	Test *PipelineTest `json:"test,omitempty"`
	// Timeout bounds a whole run.
	// +kubebuilder:default="15m"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// Suspend stops new runs from starting.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
}

// Pipeline builds, signs and promotes a source repository's pushes.
// +kubebuilder:object:root=true
// +kubebuilder:resource:categories=slipway
// +kubebuilder:printcolumn:name="Source",type=string,JSONPath=`.spec.source.url`
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image.repository`
type Pipeline struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PipelineSpec `json:"spec"`
}

// WatchedBranches are the branches whose commits the Pipeline builds:
// spec.source.branches, or main.
func (p *Pipeline) WatchedBranches() []string {
	if len(p.Spec.Source.Branches) == 0 {
		return []string{"main"}
	}
	return p.Spec.Source.Branches
}

// PipelineList is a list of Pipelines.
// +kubebuilder:object:root=true
type PipelineList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Pipeline `json:"items"`
}

// Run phases.
const (
	RunPending   = "Pending"
	RunRunning   = "Running"
	RunSucceeded = "Succeeded"
	RunFailed    = "Failed"
	RunCancelled = "Cancelled"
)

// PipelineRunSpec is one run of a Pipeline on one commit.
type PipelineRunSpec struct {
	PipelineRef LocalObjectReference `json:"pipelineRef"`
	// Commit is the full SHA to build.
	// +kubebuilder:validation:Pattern="^[0-9a-f]{40}$"
	Commit string `json:"commit"`
	// Branch holding the commit: one of the Pipeline's branches, or the
	// run is refused; the checkout refuses a commit the branch does not
	// reach.
	// +optional
	Branch string `json:"branch,omitempty"`
	// Rollback lets the run promote a commit older than the one the ops
	// repository runs, or one that does not descend from it; without it
	// such a promotion is refused, so that a replayed or late push never
	// rolls a service back. Webhooks never set it.
	// +optional
	Rollback bool `json:"rollback,omitempty"`
	// Author of the pushed commit, as the webhook reported it.
	// +optional
	Author string `json:"author,omitempty"`
	// Cancel stops the run; its processes are killed.
	// +optional
	Cancel bool `json:"cancel,omitempty"`
}

// StepStatus is one step of a run.
type StepStatus struct {
	Name  string `json:"name"`
	State string `json:"state"`
	// +optional
	Message string `json:"message,omitempty"`
	// +optional
	Started *metav1.Time `json:"started,omitempty"`
	// +optional
	Finished *metav1.Time `json:"finished,omitempty"`
	// Log is the step's log file on the executor (secrets masked).
	// +optional
	Log string `json:"log,omitempty"`
}

// PipelineRunStatus is what the run did.
type PipelineRunStatus struct {
	// +optional
	Phase string `json:"phase,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	StartTime *metav1.Time `json:"startTime,omitempty"`
	// +optional
	CompletionTime *metav1.Time `json:"completionTime,omitempty"`
	// +optional
	Steps []StepStatus `json:"steps,omitempty"`
	// TestIsolation is how the test command was kept from the server:
	// container (one of its own on the server's host), pod (one of its
	// own in the cluster), or none: it ran as the server's user, which
	// the operator allowed with --allow-unisolated-tests.
	// +optional
	TestIsolation string `json:"testIsolation,omitempty"`
	// Image is the pushed image pinned by digest.
	// +optional
	Image string `json:"image,omitempty"`
	// +optional
	Digest string `json:"digest,omitempty"`
	// PromotionCommit is the ops repository commit that carries the image.
	// +optional
	PromotionCommit string `json:"promotionCommit,omitempty"`
	// CommitTime is the committer time of the built commit; lead times
	// count from it.
	// +optional
	CommitTime *metav1.Time `json:"commitTime,omitempty"`
	// DeployedAt is the earliest time an Application deploying the
	// promotion's ops repository path was seen Synced and Healthy at
	// PromotionCommit, or at a revision it deployed after PromotionCommit.
	// +optional
	DeployedAt *metav1.Time `json:"deployedAt,omitempty"`
	// DeployedApplication is the namespace/name of that Application.
	// +optional
	DeployedApplication string `json:"deployedApplication,omitempty"`
}

// PipelineRun is one execution of a Pipeline.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=slipway
// +kubebuilder:printcolumn:name="Pipeline",type=string,JSONPath=`.spec.pipelineRef.name`
// +kubebuilder:printcolumn:name="Commit",type=string,JSONPath=`.spec.commit`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Isolation",type=string,JSONPath=`.status.testIsolation`,priority=1
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type PipelineRun struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PipelineRunSpec `json:"spec"`
	// +optional
	Status PipelineRunStatus `json:"status,omitempty"`
}

// PipelineRunList is a list of PipelineRuns.
// +kubebuilder:object:root=true
type PipelineRunList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PipelineRun `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Pipeline{}, &PipelineList{}, &PipelineRun{}, &PipelineRunList{})
}
