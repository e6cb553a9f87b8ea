package gitops

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/imagetrust"
	"slipway.dev/slipway/internal/policy"
)

// ReasonPolicyViolation is the Ready reason when the policy gate blocks a sync.
const ReasonPolicyViolation = "PolicyViolation"

// maxReportedViolations bounds status.policy.violations.
const maxReportedViolations = 50

var policyViolations = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "slipway_policy_violations_total",
	Help: "Policy rule failures found by the sync gate, by rule, severity and outcome (fail or waived).",
}, []string{"rule", "severity", "outcome"})

var policyGateChecks = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "slipway_policy_gate_checks_total",
	Help: "Revisions checked by the sync gate against a PolicyProfile, by the profile's mode (enforce, audit) and outcome (passed, failed); failed in enforce mode blocked the sync.",
}, []string{"mode", "outcome"})

func init() {
	metrics.Registry.MustRegister(policyViolations, policyGateChecks)
	for _, mode := range []string{slipwayv1.PolicyModeEnforce, slipwayv1.PolicyModeAudit} {
		for _, outcome := range []string{"passed", "failed"} {
			policyGateChecks.WithLabelValues(mode, outcome)
		}
	}
}

// PolicyGate evaluates rendered manifests against the Application's
// PolicyProfile and the cluster's PolicyWaivers before anything is applied.
type PolicyGate struct {
	Client  client.Reader
	Catalog *policy.Catalog
	// Mapper resolves the kinds cross-object rules read (NetworkPolicies) to
	// list the live ones; nil means only the rendered objects count.
	Mapper apimeta.RESTMapper

	mu       sync.Mutex
	compiled map[string]compiledProfile // by profile name
	images   *imagetrust.Verifier
}

type compiledProfile struct {
	key    string // changes when the profile or any waiver changes
	policy *policy.Policy
}

// Check evaluates desired against the namespace's profile (adminProfile,
// chosen by a cluster administrator through the Tenant, or else the profile
// named "default" when it exists) and, in addition, the profile the
// Application names: an Application can add checks, never remove them. It
// returns nil when no profile applies, and a stalled error when a profile
// enforces and a rule at or above its failOn fails.
//
// Cross-object rules see the live objects of cluster, where the revision
// goes; nil means the gate's own reader and mapper.
func (g *PolicyGate) Check(ctx context.Context, app *slipwayv1.Application, adminProfile string, desired *Desired, cluster *Cluster) (*slipwayv1.PolicyStatus, error) {
	if cluster == nil {
		cluster = &Cluster{Reader: g.Client, Mapper: g.Mapper}
	}
	type gate struct {
		name     string
		required bool
	}
	gates := []gate{{slipwayv1.DefaultPolicyProfile, false}}
	if adminProfile != "" {
		gates = []gate{{adminProfile, true}}
	}
	if own := app.Spec.PolicyProfile; own != "" && own != gates[0].name {
		gates = append(gates, gate{own, true})
	}
	var combined *slipwayv1.PolicyStatus
	var blocked, retry error
	for _, g2 := range gates {
		st, err := g.checkProfile(ctx, app, g2.name, g2.required, desired, cluster)
		combined = mergePolicyStatus(combined, st)
		var se *stalledError
		switch {
		case err == nil:
		case !errors.As(err, &se):
			retry = cmp.Or(retry, err)
		default:
			blocked = cmp.Or(blocked, err)
		}
	}
	if combined != nil && len(combined.Violations) > maxReportedViolations {
		combined.Violations = combined.Violations[:maxReportedViolations]
	}
	// An answer that may change by itself (a registry that did not reply)
	// is retried with backoff; a verdict on the revision waits for a change.
	return combined, cmp.Or(retry, blocked)
}

// mergePolicyStatus adds the result of one more profile to a.
func mergePolicyStatus(a, b *slipwayv1.PolicyStatus) *slipwayv1.PolicyStatus {
	switch {
	case b == nil:
		return a
	case a == nil:
		return b
	}
	a.Profile += ", " + b.Profile
	if b.Mode == slipwayv1.PolicyModeEnforce {
		a.Mode = b.Mode
	}
	a.Passed = a.Passed && b.Passed
	a.Failed += b.Failed
	a.Waived += b.Waived
	if e := b.WaiversExpireAt; e != nil && (a.WaiversExpireAt == nil || e.Before(a.WaiversExpireAt)) {
		a.WaiversExpireAt = e
	}
	a.Violations = append(a.Violations, b.Violations...)
	for _, k := range b.NotChecked {
		if len(a.NotChecked) < maxNotChecked && !slices.Contains(a.NotChecked, k) {
			a.NotChecked = append(a.NotChecked, k)
		}
	}
	sort.SliceStable(a.Violations, func(i, j int) bool { return a.Violations[i].Waiver == "" && a.Violations[j].Waiver != "" })
	return a
}

// checkProfile evaluates desired against one profile. A missing profile
// that is not required (the default) gates nothing.
func (g *PolicyGate) checkProfile(ctx context.Context, app *slipwayv1.Application, name string, explicit bool, desired *Desired, cluster *Cluster) (*slipwayv1.PolicyStatus, error) {
	profile := &slipwayv1.PolicyProfile{}
	if err := g.Client.Get(ctx, client.ObjectKey{Name: name}, profile); err != nil {
		if apierrors.IsNotFound(err) && !explicit {
			return nil, nil
		}
		if apierrors.IsNotFound(err) {
			return nil, stalled(ReasonPolicyViolation, fmt.Errorf("PolicyProfile %q does not exist", name))
		}
		return nil, fmt.Errorf("reading PolicyProfile %s: %w", name, err)
	}
	compiled, err := g.compile(ctx, profile)
	if err != nil {
		return nil, stalled(ReasonPolicyViolation, err)
	}
	failOn, err := policy.ParseSeverity(orDefault(profile.Spec.FailOn, "high"))
	if err != nil {
		return nil, stalled(ReasonPolicyViolation, fmt.Errorf("PolicyProfile %s: %w", name, err))
	}
	live, err := liveNeighbours(ctx, cluster, app, desired, compiled.NamespaceObjectKinds())
	if err != nil {
		return nil, err
	}
	results, err := compiled.EvaluateSet(ctx, desired.Objects, live, time.Now())
	if err != nil {
		return nil, fmt.Errorf("evaluating policy %s: %w", name, err)
	}

	st := &slipwayv1.PolicyStatus{Profile: name, Mode: orDefault(profile.Spec.Mode, slipwayv1.PolicyModeEnforce), Revision: desired.Revision, Passed: true}
	for _, r := range results {
		for _, f := range r.Findings {
			blocking := f.Severity.Rank() >= failOn.Rank()
			switch f.Outcome {
			case policy.OutcomeFail, policy.OutcomeError:
				if !blocking {
					continue
				}
				st.Failed++
				st.Passed = false
				policyViolations.WithLabelValues(f.Rule, string(f.Severity), "fail").Inc()
			case policy.OutcomeWaived:
				st.Waived++
				policyViolations.WithLabelValues(f.Rule, string(f.Severity), "waived").Inc()
			default:
				continue
			}
			v := slipwayv1.PolicyViolation{Rule: f.Rule, Severity: string(f.Severity), Object: objectName(r.Object), Path: f.Path, Message: f.Message}
			if f.Waiver != nil {
				v.Waiver = f.Waiver.Name
				if e := f.Waiver.Expires; st.WaiversExpireAt == nil || e.Before(st.WaiversExpireAt.Time) {
					st.WaiversExpireAt = &metav1.Time{Time: e}
				}
			}
			st.Violations = append(st.Violations, v)
		}
	}
	checkUnchecked(compiled, name, results, desired, cluster.Mapper, st)
	unreachable := g.checkImages(ctx, profile, desired, st)
	outcome := "passed"
	if !st.Passed {
		outcome = "failed"
	}
	policyGateChecks.WithLabelValues(st.Mode, outcome).Inc()
	// Failures first, so the truncated list keeps what blocks.
	sort.SliceStable(st.Violations, func(i, j int) bool { return st.Violations[i].Waiver == "" && st.Violations[j].Waiver != "" })
	if !st.Passed && st.Mode == slipwayv1.PolicyModeEnforce {
		blocked := fmt.Errorf("policy %s blocks revision %s: %s", name, short(desired.Revision), summarizeViolations(st))
		if unreachable != nil {
			return st, retryable(ReasonImageUnverified, blocked)
		}
		return st, stalled(ReasonPolicyViolation, blocked)
	}
	return st, nil
}

// ruleNotChecked is the rule a violation names when a profile refuses an
// object because none of its rules checks the object's kind.
const ruleNotChecked = "NOT-CHECKED"

// maxNotChecked bounds status.policy.notChecked.
const maxNotChecked = 20

// checkUnchecked lists in st the kinds no rule of the profile checks, and
// blocks the objects the profile refuses for it (cluster-scoped kinds, with
// the profile's unchecked.clusterScoped: refuse) whatever its failOn: an
// unchecked webhook configuration or ClusterRole is a hole, not a finding
// of some severity.
func checkUnchecked(compiled *policy.Policy, profile string, results []policy.ObjectResult, desired *Desired, mapper apimeta.RESTMapper, st *slipwayv1.PolicyStatus) {
	declared := policy.DeclaredScopes{}
	for _, o := range desired.Objects {
		declared.Add(o.Object)
	}
	scope := policy.ScopeFunc(policy.BuiltinScope).Or(declared.Scope)
	if mapper != nil {
		scope = policy.MapperScope(mapper).Or(declared.Scope)
	}
	for _, k := range compiled.Unchecked(results, scope) {
		if len(st.NotChecked) < maxNotChecked {
			st.NotChecked = append(st.NotChecked, fmt.Sprintf("%s (%d)", k.Kind, k.Objects))
		}
	}
	for _, o := range compiled.RefusedUnchecked(results, scope) {
		st.Failed++
		st.Passed = false
		policyViolations.WithLabelValues(ruleNotChecked, "high", "fail").Inc()
		st.Violations = append(st.Violations, slipwayv1.PolicyViolation{
			Rule: ruleNotChecked, Severity: "high", Object: objectName(o),
			Message: fmt.Sprintf("no rule of profile %s checks %s, and the profile refuses cluster-scoped kinds it does not check", profile, o.KindKey()),
		})
	}
}

// compile returns the profile compiled with the current waivers, reusing the
// last compilation while neither changed.
func (g *PolicyGate) compile(ctx context.Context, profile *slipwayv1.PolicyProfile) (*policy.Policy, error) {
	var list slipwayv1.PolicyWaiverList
	if err := g.Client.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("listing PolicyWaivers: %w", err)
	}
	key := profile.ResourceVersion
	for _, w := range list.Items {
		key += "," + w.ResourceVersion
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if c, ok := g.compiled[profile.Name]; ok && c.key == key {
		return c.policy, nil
	}
	p := policy.Profile{Packs: profile.Spec.Packs, Parameters: map[string]json.RawMessage{}}
	for k, v := range profile.Spec.Parameters {
		p.Parameters[k] = v.Raw
	}
	if u := profile.Spec.Unchecked; u != nil {
		p.Unchecked = policy.UncheckedPolicy{RefuseClusterScoped: u.ClusterScoped == slipwayv1.UncheckedRefuse, Allowed: u.Allowed}
	}
	// Waivers are cluster-wide and profiles differ: a waiver applies to the
	// profiles that contain its rule and is no business of the others.
	rules, err := g.Catalog.RuleIDs(p.Packs)
	if err != nil {
		return nil, fmt.Errorf("PolicyProfile %s: %w", profile.Name, err)
	}
	for _, w := range list.Items {
		// A waiver without a namespace (made before the field was required)
		// could be matched by names and labels a repository author chooses.
		if !rules[w.Spec.Rule] || w.Spec.Scope.Namespace == "" {
			continue
		}
		s := w.Spec.Scope
		waiver, err := policy.NewWaiver(w.Name, w.Spec.Rule, policy.WaiverScope{Namespace: s.Namespace, Kind: s.Kind, Name: s.Name, Selector: s.Selector},
			w.Spec.Reason, w.Spec.Approver, w.Spec.Expires.Time)
		if err != nil {
			return nil, fmt.Errorf("PolicyWaiver %s: %w", w.Name, err)
		}
		p.Waivers = append(p.Waivers, waiver)
	}
	compiled, err := g.Catalog.Compile(p)
	if err != nil {
		return nil, fmt.Errorf("PolicyProfile %s: %w", profile.Name, err)
	}
	if g.compiled == nil {
		g.compiled = map[string]compiledProfile{}
	}
	g.compiled[profile.Name] = compiledProfile{key: key, policy: compiled}
	return compiled, nil
}

// liveNeighbours lists the live objects of kinds (what cross-object rules
// read, e.g. NetworkPolicies) in the namespaces desired deploys to, as the
// namespaces will hold them after the sync: the rendered version of an object
// replaces the live one, and when the Application prunes, a live object it
// owns that the revision no longer has is going away. A namespace default deny
// kept outside the Application (by a platform team, say) thus counts for its
// workloads.
//
// The list is a live read, not a cached one: unstructured reads bypass the
// manager's cache, so the controller needs list on these kinds in the
// destination namespaces only, not a cluster-wide watch.
func liveNeighbours(ctx context.Context, cluster *Cluster, app *slipwayv1.Application, desired *Desired, kinds []string) ([]*unstructured.Unstructured, error) {
	if len(kinds) == 0 || cluster.Mapper == nil {
		return nil, nil
	}
	namespaces := map[string]bool{}
	rendered := map[string]bool{}
	for _, o := range desired.Objects {
		if ns := o.GetNamespace(); ns != "" {
			namespaces[ns] = true
		}
		rendered[objectID(o)] = true
	}
	ownerLabels := resourceManager(nil, nil).GetOwnerLabels(app.Name, app.Namespace)
	var out []*unstructured.Unstructured
	for _, k := range kinds {
		kind, group, _ := strings.Cut(k, ".")
		mapping, err := cluster.Mapper.RESTMapping(schema.GroupKind{Group: group, Kind: kind})
		if apimeta.IsNoMatchError(err) {
			continue // the cluster does not serve the kind, so none are live
		}
		if err != nil {
			return nil, fmt.Errorf("resolving %s for the policy gate: %w", k, err)
		}
		for ns := range namespaces {
			list := &unstructured.UnstructuredList{}
			list.SetGroupVersionKind(mapping.GroupVersionKind.GroupVersion().WithKind(mapping.GroupVersionKind.Kind + "List"))
			if err := cluster.Reader.List(ctx, list, client.InNamespace(ns)); err != nil {
				return nil, fmt.Errorf("listing live %s in namespace %s for the policy gate: %w", k, ns, err)
			}
			for i := range list.Items {
				o := &list.Items[i]
				if rendered[objectID(o)] || o.GetDeletionTimestamp() != nil {
					continue
				}
				if app.Spec.SyncPolicy.Prune && ownedBy(o, ownerLabels) {
					continue
				}
				out = append(out, o)
			}
		}
	}
	return out, nil
}

func ownedBy(o *unstructured.Unstructured, owner map[string]string) bool {
	labels := o.GetLabels()
	for k, v := range owner {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func objectName(o policy.ObjectRef) string {
	if o.Namespace != "" {
		return o.Kind + "/" + o.Namespace + "/" + o.Name
	}
	return o.Kind + "/" + o.Name
}

func summarizeViolations(st *slipwayv1.PolicyStatus) string {
	var parts []string
	for _, v := range st.Violations {
		if v.Waiver != "" {
			continue
		}
		parts = append(parts, fmt.Sprintf("%s (%s) %s %s: %s", v.Rule, v.Severity, v.Object, v.Path, v.Message))
	}
	return fmt.Sprintf("%d violation(s): %s", st.Failed, joinLimited(parts, 5))
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}
