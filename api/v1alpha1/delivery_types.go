package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// DeliverySpec lists the ordered stages one service's builds move through,
// e.g. dev → staging → prod. The first stage is written by the Pipeline's
// own promotion; each later stage is entered only through a Promotion that
// moves exactly the image that ran in the stage before it.
type DeliverySpec struct {
	// Image is the image's name in every stage's file: the name of the
	// kustomization's images entry (the Pipeline's promotion.imageName).
	// +kubebuilder:validation:MinLength=1
	Image string `json:"image"`
	// SecretRef names the Secret (in this namespace) with the ops
	// repository's write credentials; it must list the repository in its
	// slipway.dev/allowed-urls annotation.
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
	// Stages in order. A stage is an Application of this namespace, which
	// may deploy to another cluster (spec.destination.clusterRef).
	// +kubebuilder:validation:MinItems=2
	// +listType=map
	// +listMapKey=name
	Stages []DeliveryStage `json:"stages"`
}

// DeliveryStage is one stage and the rules for entering it.
type DeliveryStage struct {
	// Name of the stage, e.g. prod.
	// +kubebuilder:validation:Pattern=`^[a-z0-9]([-a-z0-9]*[a-z0-9])?$`
	Name string `json:"name"`
	// Application runs the stage; its source path holds the stage's file.
	// +kubebuilder:validation:MinLength=1
	Application string `json:"application"`
	// File is the file a promotion edits, relative to the Application's
	// path; kustomization.yaml when empty.
	// +optional
	File string `json:"file,omitempty"`
	// Approvals a promotion into the stage needs.
	// +optional
	Approvals *ApprovalRule `json:"approvals,omitempty"`
	// RequireChangeID refuses promotions without spec.changeID (e.g. a
	// change-management ticket).
	// +optional
	RequireChangeID bool `json:"requireChangeID,omitempty"`
	// Soak is how long the image must have run Synced and Healthy in the
	// previous stage.
	// +optional
	Soak *metav1.Duration `json:"soak,omitempty"`
	// Windows are when promotions may land; any time when empty.
	// +optional
	Windows []DeploymentWindow `json:"windows,omitempty"`
	// PromotionTTL is how long a promotion may wait before it expires;
	// 72h when empty.
	// +optional
	PromotionTTL *metav1.Duration `json:"promotionTTL,omitempty"`
}

// ApprovalRule asks for approvals from members of some groups.
type ApprovalRule struct {
	// Count of distinct approvers needed.
	// +kubebuilder:validation:Minimum=1
	Count int `json:"count"`
	// Groups an approver must belong to (any of them), as the API server
	// authenticates them (client certificate O, OIDC groups).
	// +kubebuilder:validation:MinItems=1
	Groups []string `json:"groups"`
}

// DeploymentWindow is a weekly time range.
type DeploymentWindow struct {
	// Days of the week, e.g. [Mon, Tue, Wed, Thu].
	// +kubebuilder:validation:items:Enum=Mon;Tue;Wed;Thu;Fri;Sat;Sun
	// +kubebuilder:validation:MinItems=1
	Days []string `json:"days"`
	// Start and End as HH:MM, End after Start.
	// +kubebuilder:validation:Pattern=`^([01][0-9]|2[0-3]):[0-5][0-9]$`
	Start string `json:"start"`
	// +kubebuilder:validation:Pattern=`^([01][0-9]|2[0-3]):[0-5][0-9]$`
	End string `json:"end"`
	// TimeZone is an IANA name, e.g. Asia/Seoul; UTC when empty.
	// +optional
	TimeZone string `json:"timeZone,omitempty"`
}

// Delivery is the ordered stages of one service.
// +kubebuilder:object:root=true
// +kubebuilder:resource:categories=slipway
// +kubebuilder:printcolumn:name="Image",type=string,JSONPath=`.spec.image`
// +kubebuilder:printcolumn:name="Stages",type=string,JSONPath=`.spec.stages[*].name`
type Delivery struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              DeliverySpec `json:"spec"`
}

// DeliveryList is a list of Deliveries.
// +kubebuilder:object:root=true
type DeliveryList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Delivery `json:"items"`
}

// Promotion phases.
const (
	PromotionPending  = "Pending"
	PromotionLanded   = "Landed"
	PromotionRejected = "Rejected"
	PromotionExpired  = "Expired"
	PromotionFailed   = "Failed"
)

// Approval decisions.
const (
	DecisionApprove = "Approve"
	DecisionReject  = "Reject"
)

// PromotionSpec asks to move what runs in the stage before Stage into it.
// Everything but Approvals is fixed once created; Approvals only grow, and
// each entry is its author's own (the API server checks both).
type PromotionSpec struct {
	// Delivery names the Delivery of this namespace.
	// +kubebuilder:validation:MinLength=1
	Delivery string `json:"delivery"`
	// Stage is the stage to enter; not the first.
	// +kubebuilder:validation:MinLength=1
	Stage string `json:"stage"`
	// ChangeID references the approved change, e.g. CHG-2041.
	// +optional
	ChangeID string `json:"changeID,omitempty"`
	// RequestedBy is the user who created the promotion, as the API server
	// authenticated them.
	// +kubebuilder:validation:MinLength=1
	RequestedBy string `json:"requestedBy"`
	// Approvals are the decisions of reviewers, appended one by one.
	// +optional
	Approvals []PromotionApproval `json:"approvals,omitempty"`
}

// PromotionApproval is one reviewer's decision.
type PromotionApproval struct {
	// User is who decided, as the API server authenticated them.
	User string `json:"user"`
	// Groups the user claims from the API server's authentication of them.
	// +optional
	Groups []string `json:"groups,omitempty"`
	// Decision is Approve or Reject.
	// +kubebuilder:validation:Enum=Approve;Reject
	Decision string `json:"decision"`
	// Reason given, required for a rejection.
	// +optional
	Reason string `json:"reason,omitempty"`
	// At is when the decision was made.
	At metav1.Time `json:"at"`
}

// Freight is exactly what a promotion moves.
type Freight struct {
	// Image is the image pinned by digest that ran in the previous stage.
	Image string `json:"image"`
	// FromRevision is the ops repository commit the previous stage ran it at.
	FromRevision string `json:"fromRevision"`
	// SourceCommit is the source commit the image was built from, and
	// PipelineRun the run that built it.
	SourceCommit string `json:"sourceCommit,omitempty"`
	PipelineRun  string `json:"pipelineRun,omitempty"`
	// Authors are the author emails of the source commits the promotion
	// carries into the stage.
	// +optional
	Authors []string `json:"authors,omitempty"`
	// AuthorUsers are the users Authors map to; they may not approve.
	// +optional
	AuthorUsers []string `json:"authorUsers,omitempty"`
	// UnmappedAuthors map to no user: nobody can be told apart from them,
	// so no approval counts until they are mapped.
	// +optional
	UnmappedAuthors []string `json:"unmappedAuthors,omitempty"`
}

// PromotionStatus is where a promotion stands.
type PromotionStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// Phase is Pending, Landed, Rejected, Expired or Failed.
	// +optional
	Phase string `json:"phase,omitempty"`
	// Freight is resolved once, when the promotion is first seen.
	// +optional
	Freight *Freight `json:"freight,omitempty"`
	// Approvers are the users whose approvals count.
	// +optional
	Approvers []string `json:"approvers,omitempty"`
	// Missing lists what the promotion still needs.
	// +optional
	Missing []string `json:"missing,omitempty"`
	// Commit is the ops repository commit that landed the promotion.
	// +optional
	Commit string `json:"commit,omitempty"`
	// +optional
	LandedAt *metav1.Time `json:"landedAt,omitempty"`
	// ExpiresAt is when a pending promotion expires.
	// +optional
	ExpiresAt *metav1.Time `json:"expiresAt,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
}

// Promotion moves one build from a stage into the next, once the stage's
// rules are met.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:categories=slipway
// +kubebuilder:printcolumn:name="Delivery",type=string,JSONPath=`.spec.delivery`
// +kubebuilder:printcolumn:name="Stage",type=string,JSONPath=`.spec.stage`
// +kubebuilder:printcolumn:name="Phase",type=string,JSONPath=`.status.phase`
// +kubebuilder:printcolumn:name="Requested-By",type=string,JSONPath=`.spec.requestedBy`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Promotion struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PromotionSpec `json:"spec"`
	// +optional
	Status PromotionStatus `json:"status,omitempty"`
}

// PromotionList is a list of Promotions.
// +kubebuilder:object:root=true
type PromotionList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Promotion `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Delivery{}, &DeliveryList{}, &Promotion{}, &PromotionList{})
}
