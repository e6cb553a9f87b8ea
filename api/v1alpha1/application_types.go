package v1alpha1

import (
	"path"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Condition types, following the Kubernetes conventions (kstatus-compatible).
const (
	ConditionReady       = "Ready"
	ConditionReconciling = "Reconciling"
	ConditionStalled     = "Stalled"
)

// Sync states reported in status.sync.status.
const (
	SyncStatusSynced    = "Synced"
	SyncStatusOutOfSync = "OutOfSync"
	SyncStatusUnknown   = "Unknown"
)

// Health states reported in status.health.status and per resource.
const (
	HealthHealthy     = "Healthy"
	HealthProgressing = "Progressing"
	HealthDegraded    = "Degraded"
	HealthUnknown     = "Unknown"
)

// Annotations the CLI and the webhook receiver set to ask for immediate work.
const (
	// ReconcileRequestAnnotation asks the controller to fetch and reconcile now
	// (set by the git webhook receiver); the value is an opaque token.
	ReconcileRequestAnnotation = "slipway.dev/reconcile-requested-at"
	// SyncRequestAnnotation asks for a sync now, even when automated sync is
	// off or nothing changed in git (set by `slipway app sync`).
	SyncRequestAnnotation = "slipway.dev/sync-requested-at"
)

// GitRef selects the revision to deploy. At most one field is set; when none
// is, the remote's default branch `main` is used.
// +kubebuilder:validation:XValidation:rule="(has(self.branch) ? 1 : 0) + (has(self.tag) ? 1 : 0) + (has(self.commit) ? 1 : 0) <= 1",message="set at most one of branch, tag and commit"
type GitRef struct {
	// Branch to follow.
	// +optional
	Branch string `json:"branch,omitempty"`
	// Tag to deploy.
	// +optional
	Tag string `json:"tag,omitempty"`
	// Commit SHA to deploy (full 40 hex characters).
	// +kubebuilder:validation:Pattern="^[0-9a-f]{40}$"
	// +optional
	Commit string `json:"commit,omitempty"`
}

// LocalObjectReference names an object in the Application's namespace.
type LocalObjectReference struct {
	// Name of the referent.
	// +kubebuilder:validation:MinLength=1
	Name string `json:"name"`
}

// ApplicationSource says where the manifests live.
type ApplicationSource struct {
	// URL of the git repository (https://, http:// or ssh://).
	// +kubebuilder:validation:Pattern="^(https?|ssh)://"
	URL string `json:"url"`
	// Ref to deploy: a branch, a tag or a commit. Defaults to branch main.
	// +optional
	Ref GitRef `json:"ref,omitempty"`
	// Path inside the repository holding plain YAML (read recursively) or a
	// kustomization. Defaults to the repository root.
	// +optional
	Path string `json:"path,omitempty"`
	// Timeout is the deadline of each git operation, at most 5 minutes: a
	// remote that does not answer holds a worker only this long.
	// +kubebuilder:default="60s"
	// +kubebuilder:validation:XValidation:rule="duration(self) > duration('0s') && duration(self) <= duration('5m')",message="timeout must be more than 0s and at most 5m"
	// +optional
	Timeout *metav1.Duration `json:"timeout,omitempty"`
	// SecretRef names a Secret in the Application's namespace holding the
	// credentials: `username` and `password` (HTTPS basic auth or token), or
	// `identity` and `known_hosts` (SSH).
	// +optional
	SecretRef *LocalObjectReference `json:"secretRef,omitempty"`
}

// HoldsFile reports whether file (a path from the repository's root) lies
// below the source's path, so that changing it changes what the
// Application renders. A kustomize overlay elsewhere that includes the
// file is not recognised.
func (s ApplicationSource) HoldsFile(file string) bool {
	dir := strings.Trim(path.Clean("/"+s.Path), "/")
	file = strings.Trim(path.Clean("/"+file), "/")
	return dir == "" || strings.HasPrefix(file, dir+"/")
}

// ApplicationDestination says where the manifests go.
type ApplicationDestination struct {
	// Namespace namespaced objects without a namespace are placed in: the
	// Application's own namespace, or one its Tenant lists as a destination.
	// +kubebuilder:validation:MinLength=1
	Namespace string `json:"namespace"`
	// ClusterRef names a Secret in the Application's namespace whose
	// "kubeconfig" key reaches another cluster to deploy to (for example
	// production, kept apart from development). Empty deploys to the
	// cluster Slipway runs in. The kubeconfig's own identity applies there:
	// that cluster's RBAC decides what it may do. Credential plugins
	// (exec, auth providers) are refused.
	// +optional
	ClusterRef *LocalObjectReference `json:"clusterRef,omitempty"`
}

// SyncPolicy says what the controller may do without being asked.
type SyncPolicy struct {
	// Automated applies each new revision as soon as it is fetched.
	// +optional
	Automated bool `json:"automated,omitempty"`
	// Prune deletes objects that left git (only objects this Application created).
	// +optional
	Prune bool `json:"prune,omitempty"`
	// SelfHeal re-applies git's state when live objects drift from it.
	// +optional
	SelfHeal bool `json:"selfHeal,omitempty"`
}

// ApplicationSpec is the desired state of an Application.
type ApplicationSpec struct {
	Source      ApplicationSource      `json:"source"`
	Destination ApplicationDestination `json:"destination"`
	// +optional
	SyncPolicy SyncPolicy `json:"syncPolicy,omitempty"`
	// Interval between reconciliations (a jitter of up to 10% is added).
	// +kubebuilder:default="1m"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`
	// RolloutTimeout bounds how long applied objects may stay Progressing
	// before the Application is reported Degraded.
	// +kubebuilder:default="5m"
	// +optional
	RolloutTimeout *metav1.Duration `json:"rolloutTimeout,omitempty"`
	// Suspend stops reconciliation; nothing is fetched or applied.
	// +optional
	Suspend bool `json:"suspend,omitempty"`
	// PolicyProfile names a PolicyProfile that gates this Application's
	// syncs in addition to its namespace's: the Tenant's profile, or the
	// profile named "default" when one exists. It can only add checks.
	// +optional
	PolicyProfile string `json:"policyProfile,omitempty"`
	// ServiceAccountName is the ServiceAccount of the Application's
	// namespace its objects are applied, changed and pruned as; empty means
	// the Tenant's, or the server's default. Kubernetes RBAC decides what it
	// may do.
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// PinnedRevision deploys this commit instead of the head of the ref.
	// `slipway app rollback` sets it; `slipway app rollback --clear` removes it.
	// +kubebuilder:validation:Pattern="^[0-9a-f]{40}$"
	// +optional
	PinnedRevision string `json:"pinnedRevision,omitempty"`
	// Monitoring says the workload exposes Prometheus metrics: Slipway
	// renders a ServiceMonitor (the Prometheus Operator's) with the
	// revision, scraping the Application's own Services on this port. The
	// cluster must serve monitoring.coreos.com/v1.
	// +optional
	Monitoring *ApplicationMonitoring `json:"monitoring,omitempty"`
}

// ApplicationMonitoring is how Prometheus scrapes an Application's workload.
type ApplicationMonitoring struct {
	// Port is the name of the Services' port that serves metrics.
	// +kubebuilder:validation:MinLength=1
	// +kubebuilder:validation:MaxLength=63
	Port string `json:"port"`
	// Path of the metrics endpoint.
	// +kubebuilder:default="/metrics"
	// +kubebuilder:validation:Pattern="^/"
	// +optional
	Path string `json:"path,omitempty"`
	// Interval between scrapes.
	// +kubebuilder:default="30s"
	// +optional
	Interval *metav1.Duration `json:"interval,omitempty"`
	// Labels of the ServiceMonitor, for the Prometheus object's
	// serviceMonitorSelector (e.g. release: prometheus).
	// +optional
	Labels map[string]string `json:"labels,omitempty"`
}

// SyncStatus compares the live objects with the desired revision.
type SyncStatus struct {
	// Status is Synced, OutOfSync or Unknown.
	Status string `json:"status"`
	// Revision is the git commit the comparison was made against.
	// +optional
	Revision string `json:"revision,omitempty"`
	// Message explains an OutOfSync status (which objects differ).
	// +optional
	Message string `json:"message,omitempty"`
}

// HealthStatus is the aggregated health of the applied objects.
type HealthStatus struct {
	// Status is Healthy, Progressing, Degraded or Unknown.
	Status string `json:"status"`
	// +optional
	Message string `json:"message,omitempty"`
}

// ResourceStatus is one applied object and its health.
type ResourceStatus struct {
	// +optional
	Group   string `json:"group,omitempty"`
	Version string `json:"version"`
	Kind    string `json:"kind"`
	// +optional
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	Health    string `json:"health"`
	// +optional
	Message string `json:"message,omitempty"`
}

// RevisionHistory records one deployment of a revision.
type RevisionHistory struct {
	// ID increases with every deployment; `slipway app rollback` accepts it.
	ID int64 `json:"id"`
	// Revision is the git commit deployed.
	Revision string `json:"revision"`
	// DeployedAt is when the revision was applied.
	DeployedAt metav1.Time `json:"deployedAt"`
	// Result is Succeeded or Failed.
	Result string `json:"result"`
	// +optional
	Message string `json:"message,omitempty"`
}

// ApplicationStatus is the observed state of an Application.
type ApplicationStatus struct {
	// +optional
	ObservedGeneration int64 `json:"observedGeneration,omitempty"`
	// +optional
	// +listType=map
	// +listMapKey=type
	Conditions []metav1.Condition `json:"conditions,omitempty"`
	// +optional
	Sync SyncStatus `json:"sync,omitempty"`
	// +optional
	Health HealthStatus `json:"health,omitempty"`
	// LastAppliedRevision is the last commit applied successfully.
	// +optional
	LastAppliedRevision string `json:"lastAppliedRevision,omitempty"`
	// LastAppliedTree is the git tree of spec.source.path at
	// LastAppliedRevision. A push that leaves the path's tree as it was
	// changes nothing the Application applies: its webhook pass only moves
	// the revision.
	// +optional
	LastAppliedTree string `json:"lastAppliedTree,omitempty"`
	// LastAppliedAt is when LastAppliedRevision was applied; the rollout
	// timeout counts from here.
	// +optional
	LastAppliedAt *metav1.Time `json:"lastAppliedAt,omitempty"`
	// LastReconcileAt is when the source was last fetched and compared with
	// the cluster. While a rollout is in progress only health is polled in
	// between, so waiting costs the API server reads, not applies.
	// +optional
	LastReconcileAt *metav1.Time `json:"lastReconcileAt,omitempty"`
	// LastAttemptedRevision is the last commit fetched and tried.
	// +optional
	LastAttemptedRevision string `json:"lastAttemptedRevision,omitempty"`
	// LastHandledReconcileAt echoes the last handled ReconcileRequestAnnotation.
	// +optional
	LastHandledReconcileAt string `json:"lastHandledReconcileAt,omitempty"`
	// LastHandledSyncAt echoes the last handled SyncRequestAnnotation.
	// +optional
	LastHandledSyncAt string `json:"lastHandledSyncAt,omitempty"`
	// Inventory lists every object the Application applied, as
	// namespace_name_group_kind identifiers with their API version.
	// +optional
	Inventory []InventoryEntry `json:"inventory,omitempty"`
	// Resources gives the health of each applied object.
	// +optional
	Resources []ResourceStatus `json:"resources,omitempty"`
	// Policy is the policy gate's result for the last revision checked.
	// +optional
	Policy *PolicyStatus `json:"policy,omitempty"`
	// History of deployed revisions, newest first, at most 10.
	// +optional
	History []RevisionHistory `json:"history,omitempty"`
}

// InventoryEntry is one object the Application owns.
type InventoryEntry struct {
	// ID is namespace_name_group_kind.
	ID string `json:"id"`
	// Version is the API version the object was applied with.
	Version string `json:"v"`
	// Applied is a digest of the object as the last sync applied it, and
	// Live a digest of the live object right after: its uid, Slipway's
	// managed fields and the API server's count of changes (generation, or
	// resourceVersion for kinds without one). A sync skips the dry-run and
	// the apply of an object whose desired digest is still Applied and
	// whose live digest is still Live. Empty for objects that are always
	// applied.
	// +optional
	Applied string `json:"applied,omitempty"`
	// +optional
	Live string `json:"live,omitempty"`
}

// Application deploys the manifests of a git path into a namespace and keeps them there.
// +kubebuilder:object:root=true
// +kubebuilder:subresource:status
// +kubebuilder:resource:shortName=app;apps,categories=slipway
// +kubebuilder:printcolumn:name="Sync",type=string,JSONPath=`.status.sync.status`
// +kubebuilder:printcolumn:name="Health",type=string,JSONPath=`.status.health.status`
// +kubebuilder:printcolumn:name="Revision",type=string,JSONPath=`.status.lastAppliedRevision`
// +kubebuilder:printcolumn:name="Ready",type=string,JSONPath=`.status.conditions[?(@.type=="Ready")].status`
// +kubebuilder:printcolumn:name="Age",type=date,JSONPath=`.metadata.creationTimestamp`
type Application struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`

	Spec ApplicationSpec `json:"spec,omitempty"`
	// +optional
	Status ApplicationStatus `json:"status,omitempty"`
}

// ApplicationList is a list of Applications.
// +kubebuilder:object:root=true
type ApplicationList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Application `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Application{}, &ApplicationList{})
}
