// Package v1alpha1 contains the slipway.dev/v1alpha1 API: the resources users
// write to tell Slipway what to deliver and where.
// +kubebuilder:object:generate=true
// +groupName=slipway.dev
package v1alpha1

import (
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/scheme"
)

var (
	// GroupVersion is the group and version of every Slipway resource.
	GroupVersion = schema.GroupVersion{Group: "slipway.dev", Version: "v1alpha1"}

	// SchemeBuilder registers the Slipway types with a runtime.Scheme.
	SchemeBuilder = &scheme.Builder{GroupVersion: GroupVersion}

	// AddToScheme adds the Slipway types to a scheme.
	AddToScheme = SchemeBuilder.AddToScheme
)
