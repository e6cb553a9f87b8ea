package v1alpha1

import (
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Policy modes.
const (
	// PolicyModeEnforce blocks a sync when a rule at or above failOn fails.
	PolicyModeEnforce = "enforce"
	// PolicyModeAudit applies and reports.
	PolicyModeAudit = "audit"
)

// DefaultPolicyProfile is used by Applications that name no profile, when it exists.
const DefaultPolicyProfile = "default"

// What a profile does with cluster-scoped objects of kinds no rule checks.
const (
	// UncheckedAllow reports them as not checked.
	UncheckedAllow = "allow"
	// UncheckedRefuse refuses them (in enforce mode, the sync is blocked).
	UncheckedRefuse = "refuse"
)

// PolicyProfileSpec chooses the rule packs, their parameters and what a failure does.
type PolicyProfileSpec struct {
	// Packs evaluated together, e.g. [fin-kr] or [pss-restricted].
	// +kubebuilder:validation:MinItems=1
	Packs []string `json:"packs"`
	// Parameters override the packs' defaults (e.g. the registry allowlist).
	// +optional
	Parameters map[string]apiextensionsv1.JSON `json:"parameters,omitempty"`
	// Mode is enforce (block the sync) or audit (apply and report).
	// +kubebuilder:validation:Enum=enforce;audit
	// +kubebuilder:default=enforce
	// +optional
	Mode string `json:"mode,omitempty"`
	// FailOn is the lowest severity that counts as a failure.
	// +kubebuilder:validation:Enum=critical;high;medium;low
	// +kubebuilder:default=high
	// +optional
	FailOn string `json:"failOn,omitempty"`
	// Unchecked decides what happens to objects of kinds no rule of the packs
	// checks. They are always reported as not checked.
	// +optional
	Unchecked *UncheckedKinds `json:"unchecked,omitempty"`
	// ImageVerification, when set, requires every image the revision runs
	// to be pinned by digest, signed by a trusted key and to carry SLSA
	// provenance from an allowed builder and source repository, as the
	// pipeline signs and attests its builds. An image that fails blocks the
	// whole revision (in enforce mode) whatever failOn says.
	// +optional
	ImageVerification *ImageVerification `json:"imageVerification,omitempty"`
}

// ImageVerification says which images a profile trusts.
type ImageVerification struct {
	// PublicKeys are the trusted cosign public keys (PEM); a signature by
	// any of them counts.
	// +kubebuilder:validation:MinItems=1
	PublicKeys []string `json:"publicKeys"`
	// Builders are the allowed SLSA builder ids, as prefixes matched on
	// whole path elements; empty allows any builder.
	// +optional
	Builders []string `json:"builders,omitempty"`
	// SourceRepositories are the allowed source repository URLs, as
	// prefixes matched on whole path elements; empty allows any.
	// +optional
	SourceRepositories []string `json:"sourceRepositories,omitempty"`
	// RegistryCredentials are read from Secrets (username, password), each
	// sent only to its registry host; other registries are read anonymously.
	// +optional
	RegistryCredentials []RegistryCredential `json:"registryCredentials,omitempty"`
	// Timeout bounds the verification of one image; a registry that does
	// not answer in time fails the check.
	// +kubebuilder:default="30s"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('2m')",message="timeout must be more than 0s and at most 2m"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
}

// RegistryCredential names the Secret holding one registry's credentials.
type RegistryCredential struct {
	// Host is the registry host (and port), e.g. registry.example.com.
	// +kubebuilder:validation:MinLength=1
	Host string `json:"host"`
	// SecretRef names the Secret (namespace and name).
	SecretRef NamespacedReference `json:"secretRef"`
}

// NamespacedReference names an object in a namespace.
type NamespacedReference struct {
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// UncheckedKinds is a profile's choice about objects of kinds no rule checks.
type UncheckedKinds struct {
	// ClusterScoped is allow (report them) or refuse (treat them as a failure:
	// an enforcing profile blocks the sync). A kind whose scope is unknown
	// counts as cluster-scoped.
	// +kubebuilder:validation:Enum=allow;refuse
	// +kubebuilder:default=allow
	// +optional
	ClusterScoped string `json:"clusterScoped,omitempty"`
	// Allowed kinds, written Kind.group as policy rules match them (Namespace,
	// StorageClass.storage.k8s.io), are never refused.
	// +kubebuilder:validation:items:Pattern=`^[A-Z][A-Za-z0-9]*(\.[a-z0-9.-]+)?$`
	// +listType=set
	// +optional
	Allowed []string `json:"allowed,omitempty"`
}

// PolicyProfile is the cluster's choice of policy packs and how they gate syncs.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=slipway
// +kubebuilder:printcolumn:name="Packs",type=string,JSONPath=`.spec.packs`
// +kubebuilder:printcolumn:name="Mode",type=string,JSONPath=`.spec.mode`
// +kubebuilder:printcolumn:name="Fail-On",type=string,JSONPath=`.spec.failOn`
type PolicyProfile struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PolicyProfileSpec `json:"spec"`
}

// PolicyProfileList is a list of PolicyProfiles.
// +kubebuilder:object:root=true
type PolicyProfileList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PolicyProfile `json:"items"`
}

// WaiverScope says which objects a waiver covers; empty fields match all.
// The namespace is required: names, kinds and labels are chosen by whoever
// writes the manifests, the namespace by the cluster administrator who
// gives it to a team. Cluster-scoped objects are never waived: what they
// may do is the Tenant's and the profile's decision.
type WaiverScope struct {
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// +optional
	Kind string `json:"kind,omitempty"`
	// +optional
	Name string `json:"name,omitempty"`
	// +optional
	Selector *metav1.LabelSelector `json:"selector,omitempty"`
}

// PolicyWaiverSpec exempts objects from one rule, with a reason, an owner and an expiry.
type PolicyWaiverSpec struct {
	// Rule is the rule id, e.g. FIN-WL-001.
	// +kubebuilder:validation:MinLength=1
	Rule  string      `json:"rule"`
	Scope WaiverScope `json:"scope"`
	// +kubebuilder:validation:MinLength=1
	Reason string `json:"reason"`
	// Approver is who accepted the risk.
	// +kubebuilder:validation:MinLength=1
	Approver string `json:"approver"`
	// Expires is when the waiver stops applying, by itself.
	Expires metav1.Time `json:"expires"`
}

// PolicyWaiver exempts objects from a rule until it expires. Waived
// violations are still reported, as waived.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=slipway
// +kubebuilder:printcolumn:name="Rule",type=string,JSONPath=`.spec.rule`
// +kubebuilder:printcolumn:name="Approver",type=string,JSONPath=`.spec.approver`
// +kubebuilder:printcolumn:name="Expires",type=string,JSONPath=`.spec.expires`
type PolicyWaiver struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PolicyWaiverSpec `json:"spec"`
}

// PolicyWaiverList is a list of PolicyWaivers.
// +kubebuilder:object:root=true
type PolicyWaiverList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []PolicyWaiver `json:"items"`
}

// PolicyStatus is the result of the policy gate on the last revision checked.
type PolicyStatus struct {
	// Profile is the PolicyProfile evaluated.
	Profile string `json:"profile"`
	// Mode is enforce or audit.
	Mode string `json:"mode"`
	// Revision is the commit evaluated.
	Revision string `json:"revision"`
	// Passed is false when a rule at or above the profile's failOn failed.
	Passed bool `json:"passed"`
	// Failed and Waived count the findings.
	Failed int `json:"failed"`
	Waived int `json:"waived"`
	// Violations lists the findings (failed and waived), at most 50.
	// +optional
	Violations []PolicyViolation `json:"violations,omitempty"`
	// WaiversExpireAt is when the first waiver that covered a finding
	// expires; the Application is checked again then, so an expired waiver
	// shows without waiting for a commit or the interval.
	// +optional
	WaiversExpireAt *metav1.Time `json:"waiversExpireAt,omitempty"`
	// NotChecked lists the kinds (Kind.group) of the revision that no rule
	// of the profile checks, with their object counts, at most 20.
	// +optional
	NotChecked []string `json:"notChecked,omitempty"`
}

// PolicyViolation is one rule failing on one object.
type PolicyViolation struct {
	Rule     string `json:"rule"`
	Severity string `json:"severity"`
	// Object is Kind/namespace/name.
	Object string `json:"object"`
	// +optional
	Path    string `json:"path,omitempty"`
	Message string `json:"message"`
	// Waiver names the PolicyWaiver that covers this finding, if any.
	// +optional
	Waiver string `json:"waiver,omitempty"`
}

func init() {
	SchemeBuilder.Register(&PolicyProfile{}, &PolicyProfileList{}, &PolicyWaiver{}, &PolicyWaiverList{})
}
