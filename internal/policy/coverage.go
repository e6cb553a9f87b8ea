package policy

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// A profile checks the kinds its rules match and nothing else: an object of
// any other kind passes because nothing looks at it. That is not the same as
// passing a check, so reports list those objects by kind as not checked, and
// a profile may refuse the cluster-scoped ones (UncheckedPolicy): a kind the
// policy knows nothing about can still change the whole cluster (a
// StorageClass, a CRD, a webhook in a profile without fin-kr).

// Scope says whether objects of a kind live in a namespace.
type Scope string

// Scopes; ScopeUnknown when nothing tells.
const (
	ScopeNamespaced Scope = "Namespaced"
	ScopeCluster    Scope = "Cluster"
	ScopeUnknown    Scope = ""
)

// ScopeFunc returns the scope of a kind written Kind.group ("StorageClass.storage.k8s.io").
type ScopeFunc func(kind string) Scope

// Or asks s, then next for the kinds s does not know.
func (s ScopeFunc) Or(next ScopeFunc) ScopeFunc {
	return func(kind string) Scope {
		if sc := s(kind); sc != ScopeUnknown {
			return sc
		}
		return next(kind)
	}
}

// builtinClusterScoped are the cluster-scoped kinds of the groups a Kubernetes
// v1.34 API server serves, MutatingAdmissionPolicy (beta, off by default)
// included; TestBuiltinScopeMatchesDiscovery compares them with a real one.
var builtinClusterScoped = []string{
	"Namespace", "Node", "PersistentVolume", "ComponentStatus",
	"MutatingWebhookConfiguration.admissionregistration.k8s.io", "ValidatingWebhookConfiguration.admissionregistration.k8s.io",
	"ValidatingAdmissionPolicy.admissionregistration.k8s.io", "ValidatingAdmissionPolicyBinding.admissionregistration.k8s.io",
	"MutatingAdmissionPolicy.admissionregistration.k8s.io", "MutatingAdmissionPolicyBinding.admissionregistration.k8s.io",
	"CustomResourceDefinition.apiextensions.k8s.io", "APIService.apiregistration.k8s.io",
	"TokenReview.authentication.k8s.io", "SelfSubjectReview.authentication.k8s.io",
	"SubjectAccessReview.authorization.k8s.io", "SelfSubjectAccessReview.authorization.k8s.io", "SelfSubjectRulesReview.authorization.k8s.io",
	"CertificateSigningRequest.certificates.k8s.io",
	"FlowSchema.flowcontrol.apiserver.k8s.io", "PriorityLevelConfiguration.flowcontrol.apiserver.k8s.io",
	"IngressClass.networking.k8s.io", "IPAddress.networking.k8s.io", "ServiceCIDR.networking.k8s.io",
	"RuntimeClass.node.k8s.io",
	"ClusterRole.rbac.authorization.k8s.io", "ClusterRoleBinding.rbac.authorization.k8s.io",
	"DeviceClass.resource.k8s.io", "ResourceSlice.resource.k8s.io",
	"PriorityClass.scheduling.k8s.io",
	"CSIDriver.storage.k8s.io", "CSINode.storage.k8s.io", "StorageClass.storage.k8s.io", "VolumeAttachment.storage.k8s.io",
	"VolumeAttributesClass.storage.k8s.io",
}

// builtinNamespaced are the namespaced kinds of the same groups.
var builtinNamespaced = []string{
	"Binding", "ConfigMap", "Endpoints", "Event", "LimitRange", "PersistentVolumeClaim", "Pod", "PodTemplate",
	"ReplicationController", "ResourceQuota", "Secret", "Service", "ServiceAccount",
	"ControllerRevision.apps", "DaemonSet.apps", "Deployment.apps", "ReplicaSet.apps", "StatefulSet.apps",
	"LocalSubjectAccessReview.authorization.k8s.io",
	"HorizontalPodAutoscaler.autoscaling", "CronJob.batch", "Job.batch",
	"Lease.coordination.k8s.io", "EndpointSlice.discovery.k8s.io", "Event.events.k8s.io",
	"Ingress.networking.k8s.io", "NetworkPolicy.networking.k8s.io", "PodDisruptionBudget.policy",
	"Role.rbac.authorization.k8s.io", "RoleBinding.rbac.authorization.k8s.io",
	"ResourceClaim.resource.k8s.io", "ResourceClaimTemplate.resource.k8s.io",
	"CSIStorageCapacity.storage.k8s.io",
}

var builtinScopes = func() map[string]Scope {
	m := map[string]Scope{}
	for _, k := range builtinClusterScoped {
		m[k] = ScopeCluster
	}
	for _, k := range builtinNamespaced {
		m[k] = ScopeNamespaced
	}
	return m
}()

// BuiltinScope knows the kinds Kubernetes v1.34 serves itself; the kinds of
// CustomResourceDefinitions and aggregated APIs are ScopeUnknown to it.
func BuiltinScope(kind string) Scope { return builtinScopes[kind] }

// MapperScope asks a RESTMapper (the cluster's discovery) for the scope of a
// kind; a kind it cannot resolve is ScopeUnknown.
func MapperScope(m apimeta.RESTMapper) ScopeFunc {
	return func(kind string) Scope {
		k, group, _ := strings.Cut(kind, ".")
		mapping, err := m.RESTMapping(schema.GroupKind{Group: group, Kind: k})
		if err != nil {
			return ScopeUnknown
		}
		if mapping.Scope.Name() == apimeta.RESTScopeNameRoot {
			return ScopeCluster
		}
		return ScopeNamespaced
	}
}

// DeclaredScopes holds the scopes CustomResourceDefinitions declare, by the
// Kind.group of the kind each defines: a revision that adds a CRD and objects
// of its kind is applied before the cluster serves the kind.
type DeclaredScopes map[string]Scope

// Add records the scope obj declares if it is a CustomResourceDefinition.
func (d DeclaredScopes) Add(obj map[string]any) {
	if obj["kind"] != "CustomResourceDefinition" {
		return
	}
	if apiVersion, _ := obj["apiVersion"].(string); !strings.HasPrefix(apiVersion, "apiextensions.k8s.io/") {
		return
	}
	spec, _ := obj["spec"].(map[string]any)
	names, _ := spec["names"].(map[string]any)
	group, _ := spec["group"].(string)
	kind, _ := names["kind"].(string)
	if kind == "" {
		return
	}
	key := kind
	if group != "" {
		key += "." + group
	}
	switch spec["scope"] {
	case "Namespaced":
		d[key] = ScopeNamespaced
	case "Cluster":
		d[key] = ScopeCluster
	}
}

// Scope is a ScopeFunc of the declared scopes.
func (d DeclaredScopes) Scope(kind string) Scope { return d[kind] }

// UncheckedPolicy is what a profile does with objects of the kinds no rule of
// it checks. They are always reported.
type UncheckedPolicy struct {
	// RefuseClusterScoped refuses the cluster-scoped ones, and those whose
	// scope is unknown: a kind the cluster does not serve yet may well be.
	RefuseClusterScoped bool
	// Allowed kinds, written Kind.group as rules match them ("Namespace",
	// "StorageClass.storage.k8s.io"), are never refused.
	Allowed []string
}

func (u UncheckedPolicy) validate() error {
	for _, k := range u.Allowed {
		if !kindPattern.MatchString(k) {
			return fmt.Errorf("unchecked kind %q allowed by the profile must be written Kind or Kind.group", k)
		}
	}
	return nil
}

// UncheckedKind counts the objects of one kind that no rule of the profile checks.
type UncheckedKind struct {
	// Kind is written Kind.group.
	Kind    string `json:"kind"`
	Scope   Scope  `json:"scope,omitempty"`
	Objects int    `json:"objects"`
	// Refused is true when the profile refuses these objects (Profile.Unchecked).
	Refused bool `json:"refused,omitempty"`
}

// KindKey returns the object's kind written Kind.group, as rules match it.
func (o ObjectRef) KindKey() string { return kindKey(o.APIVersion, o.Kind) }

// Checks reports whether some rule of the profile checks objects of kind
// (Kind.group).
func (p *Policy) Checks(kind string) bool { return p.plans[kind] != nil }

// RefusesUnchecked reports whether the profile refuses an object of kind
// (Kind.group) with the given scope because no rule checks it: false for a
// kind some rule checks.
func (p *Policy) RefusesUnchecked(kind string, scope Scope) bool {
	return !p.Checks(kind) && p.unchecked.RefuseClusterScoped && scope != ScopeNamespaced && !slices.Contains(p.unchecked.Allowed, kind)
}

// Unchecked lists by kind, in Kind.group order, the objects of results that
// no rule of the profile checks, with their scope as scope tells it and
// whether the profile refuses them.
func (p *Policy) Unchecked(results []ObjectResult, scope ScopeFunc) []UncheckedKind {
	byKind := map[string]*UncheckedKind{}
	for i := range results {
		kk := results[i].Object.KindKey()
		if p.Checks(kk) {
			continue
		}
		u := byKind[kk]
		if u == nil {
			u = &UncheckedKind{Kind: kk, Scope: scope(kk)}
			u.Refused = p.RefusesUnchecked(kk, u.Scope)
			byKind[kk] = u
		}
		u.Objects++
	}
	out := make([]UncheckedKind, 0, len(byKind))
	for _, u := range byKind {
		out = append(out, *u)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Kind < out[j].Kind })
	return out
}

// RefusedUnchecked returns, in input order, the objects of results that the
// profile refuses because no rule checks them (see UncheckedPolicy). The sync
// gate blocks them in enforce mode as it blocks a failing rule.
func (p *Policy) RefusedUnchecked(results []ObjectResult, scope ScopeFunc) []ObjectRef {
	var out []ObjectRef
	for i := range results {
		o := results[i].Object
		if kk := o.KindKey(); p.RefusesUnchecked(kk, scope(kk)) {
			out = append(out, o)
		}
	}
	return out
}
