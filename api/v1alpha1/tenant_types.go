package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// TenantSpec is what a cluster administrator grants the Applications of a
// team's namespaces. A namespace no Tenant names gets the server's
// defaults: its Applications apply as the server's default ServiceAccount
// (none, and so nothing, in the installed configuration), deploy only into
// their own namespace, apply no cluster-scoped kind, and are gated by the
// PolicyProfile named "default" when it exists.
type TenantSpec struct {
	// Namespaces the tenant's Applications live in. A namespace belongs to
	// at most one Tenant.
	// +kubebuilder:validation:MinItems=1
	// +listType=set
	Namespaces []string `json:"namespaces"`
	// ServiceAccountName is the ServiceAccount, in the Application's own
	// namespace, that an Application naming none applies as. Kubernetes
	// RBAC then decides what it may create, change and delete.
	// +optional
	ServiceAccountName string `json:"serviceAccountName,omitempty"`
	// ServerRights applies with slipway server's own identity instead of a
	// ServiceAccount: for platform namespaces whose Applications install
	// what no tenant role allows. Every other check below still applies.
	// +optional
	ServerRights bool `json:"serverRights,omitempty"`
	// Destinations are namespaces, besides an Application's own, that its
	// namespaced objects may land in.
	// +optional
	// +listType=set
	Destinations []string `json:"destinations,omitempty"`
	// ClusterResources are the cluster-scoped kinds the tenant's
	// Applications may apply; none by default. A kind or group of "*"
	// matches any.
	// +optional
	ClusterResources []metav1.GroupKind `json:"clusterResources,omitempty"`
	// PolicyProfile gates every Application of the tenant. An Application
	// naming a profile of its own is checked against both: it can make its
	// gate stricter, never weaker.
	// +optional
	PolicyProfile string `json:"policyProfile,omitempty"`
}

// Tenant binds a team's namespaces to what their Applications may do.
// Cluster-scoped, so only cluster administrators write it.
// +kubebuilder:object:root=true
// +kubebuilder:resource:scope=Cluster,categories=slipway
// +kubebuilder:printcolumn:name="Namespaces",type=string,JSONPath=`.spec.namespaces`
// +kubebuilder:printcolumn:name="ServiceAccount",type=string,JSONPath=`.spec.serviceAccountName`
// +kubebuilder:printcolumn:name="Profile",type=string,JSONPath=`.spec.policyProfile`
type Tenant struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              TenantSpec `json:"spec"`
}

// TenantList is a list of Tenants.
// +kubebuilder:object:root=true
type TenantList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Tenant `json:"items"`
}

func init() {
	SchemeBuilder.Register(&Tenant{}, &TenantList{})
}
