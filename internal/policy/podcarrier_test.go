package policy

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// podCarrier is a kind that holds a pod spec, and where.
type podCarrier struct {
	apiVersion, kind string
	// wrap returns the object's own fields besides apiVersion, kind and
	// metadata, holding template (the pod's metadata and spec).
	wrap func(template map[string]any) map[string]any
}

// podCarriers are the kinds Pod Security Admission checks, Pod first.
var podCarriers = []podCarrier{
	{"v1", "Pod", nil},
	{"v1", "ReplicationController", func(t map[string]any) map[string]any {
		return map[string]any{"spec": map[string]any{"replicas": int64(1), "template": t}}
	}},
	{"v1", "PodTemplate", func(t map[string]any) map[string]any { return map[string]any{"template": t} }},
	{"apps/v1", "Deployment", func(t map[string]any) map[string]any {
		return map[string]any{"spec": map[string]any{"replicas": int64(1), "template": t}}
	}},
	{"apps/v1", "StatefulSet", func(t map[string]any) map[string]any {
		return map[string]any{"spec": map[string]any{"replicas": int64(1), "template": t}}
	}},
	{"apps/v1", "DaemonSet", func(t map[string]any) map[string]any { return map[string]any{"spec": map[string]any{"template": t}} }},
	{"apps/v1", "ReplicaSet", func(t map[string]any) map[string]any {
		return map[string]any{"spec": map[string]any{"replicas": int64(1), "template": t}}
	}},
	{"batch/v1", "Job", func(t map[string]any) map[string]any { return map[string]any{"spec": map[string]any{"template": t}} }},
	{"batch/v1", "CronJob", func(t map[string]any) map[string]any {
		return map[string]any{"spec": map[string]any{"schedule": "0 * * * *", "jobTemplate": map[string]any{"spec": map[string]any{"template": t}}}}
	}},
}

// carry puts a pod (its object metadata, pod metadata and spec) into the
// carrier: a Pod holds it as it is; other kinds keep name and namespace on
// the object and labels and annotations on the template, as a workload does.
func (pc podCarrier) carry(name, namespace string, podMeta, spec map[string]any) map[string]any {
	meta := map[string]any{"name": name}
	if namespace != "" {
		meta["namespace"] = namespace
	}
	if pc.wrap == nil {
		maps.Copy(meta, podMeta)
		return map[string]any{"apiVersion": pc.apiVersion, "kind": pc.kind, "metadata": meta, "spec": deepCopyJSON(spec)}
	}
	template := map[string]any{"metadata": deepCopyJSON(podMeta), "spec": deepCopyJSON(spec)}
	obj := pc.wrap(template)
	obj["apiVersion"], obj["kind"], obj["metadata"] = pc.apiVersion, pc.kind, meta
	return obj
}

// podPaths returns where the carrier holds the pod spec and pod metadata.
func (pc podCarrier) podPaths() (spec, meta string) {
	var pv podView
	pv.reset(map[string]any{"kind": pc.kind})
	return pv.specPath, pv.metaPath
}

// asPodPath rewrites a field path of the carrier into the path of the same
// field in a Pod; paths outside the pod template (metadata.namespace) stay.
func (pc podCarrier) asPodPath(path string) string {
	spec, meta := pc.podPaths()
	for _, m := range [][2]string{{spec, "spec"}, {meta, "metadata"}} {
		if rest, ok := strings.CutPrefix(path, m[0]); ok && (rest == "" || rest[0] == '.' || rest[0] == '[') {
			return m[1] + rest
		}
	}
	return path
}

// podOf takes the pod out of a Pod or of any carrier: name, namespace, pod
// metadata (labels, annotations) and spec; ok is false for other objects.
func podOf(obj map[string]any) (name, namespace string, podMeta, spec map[string]any, ok bool) {
	kind, _ := obj["kind"].(string)
	u := unstructured.Unstructured{Object: obj}
	if !slices.ContainsFunc(podCarriers, func(pc podCarrier) bool { return pc.kind == kind && pc.apiVersion == u.GetAPIVersion() }) {
		return "", "", nil, nil, false
	}
	var pv podView
	pv.reset(obj)
	pv.resolve()
	spec, isMap := pv.spec.(map[string]any)
	meta, metaIsMap := pv.meta.(map[string]any)
	if !pv.specOK || !isMap || !pv.metaOK || !metaIsMap {
		return "", "", nil, nil, false
	}
	podMeta = map[string]any{}
	for _, k := range []string{"labels", "annotations"} {
		if v, present := meta[k]; present {
			podMeta[k] = v
		}
	}
	return u.GetName(), u.GetNamespace(), podMeta, spec, true
}

// carrierFindings evaluates obj alone and returns its findings of rules that
// apply to every pod carrier, as "RULE outcome path" with the path rewritten
// into a Pod's.
func carrierFindings(t *testing.T, pol *Policy, pc podCarrier, obj map[string]any) (findings, checked []string) {
	t.Helper()
	res, err := pol.Evaluate(context.Background(), []*unstructured.Unstructured{{Object: obj}}, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	podRule := func(id string) bool {
		r, ok := pol.Rule(id)
		if !ok {
			t.Fatalf("unknown rule %s", id)
		}
		return r.Match.PodTemplates
	}
	for _, f := range res[0].Findings {
		if podRule(f.Rule) && !(f.Rule == "FIN-NET-009" && pc.kind == "StatefulSet") {
			findings = append(findings, fmt.Sprintf("%s %s %s", f.Rule, f.Outcome, pc.asPodPath(f.Path)))
		}
	}
	for _, id := range res[0].Checked {
		if podRule(id) {
			checked = append(checked, id)
		}
	}
	slices.Sort(findings)
	slices.Sort(checked)
	return findings, checked
}

// TestPodCarriersCheckedLikePods: every kind that carries a pod template is
// checked exactly like a Pod. Every pod of the rule fixtures, the corpus and
// the generated workloads is put into each carrier kind, and every rule that
// applies to pods must give the same findings at the same fields of the pod,
// in every pack.
func TestPodCarriersCheckedLikePods(t *testing.T) {
	type pod struct {
		name, namespace string
		meta, spec      map[string]any
	}
	var pods []pod
	for _, obj := range variableTestObjects(t) {
		if name, ns, meta, spec, ok := podOf(obj); ok {
			pods = append(pods, pod{name, ns, meta, spec})
		}
	}
	if len(pods) < 50 {
		t.Fatalf("only %d pods to carry", len(pods))
	}
	for _, pol := range nativeProfiles(t) {
		compared := 0
		for i, p := range pods {
			wantFindings, wantChecked := carrierFindings(t, pol, podCarriers[0], podCarriers[0].carry(p.name, p.namespace, p.meta, p.spec))
			if len(wantChecked) == 0 {
				t.Fatalf("profile %s checks no pod rule on a Pod", pol.Name())
			}
			for _, pc := range podCarriers[1:] {
				obj := pc.carry(p.name, p.namespace, p.meta, p.spec)
				got, checked := carrierFindings(t, pol, pc, obj)
				if !slices.Equal(checked, wantChecked) {
					t.Errorf("profile %s, pod %d as %s: rules checked %v, on a Pod %v", pol.Name(), i, pc.kind, checked, wantChecked)
				}
				want := wantFindings
				if pc.kind == "StatefulSet" {
					// FIN-NET-009 refuses a StatefulSet in the edge for being one, whatever its pod.
					want = slices.DeleteFunc(slices.Clone(want), func(f string) bool { return strings.HasPrefix(f, "FIN-NET-009 ") })
				}
				if !slices.Equal(got, want) {
					t.Errorf("profile %s, pod %d as %s:\n got %q\nPod %q", pol.Name(), i, pc.kind, got, want)
				}
				compared++
			}
		}
		t.Logf("profile %s: %d pods compared in %d carriers", pol.Name(), len(pods), compared/len(pods))
	}
}

// TestPodCarrierAttack: a privileged container in the host's PID namespace
// mounting the host's root directory fails the same rules, at the same
// fields of the pod, in every kind that can carry it.
func TestPodCarrierAttack(t *testing.T) {
	spec := map[string]any{
		"hostPID": true,
		"containers": []any{map[string]any{"name": "root", "image": "busybox:1.36",
			"securityContext": map[string]any{"privileged": true},
			"volumeMounts":    []any{map[string]any{"name": "host", "mountPath": "/host"}}}},
		"volumes": []any{map[string]any{"name": "host", "hostPath": map[string]any{"path": "/"}}},
	}
	want := map[string][]string{
		"pss-baseline":   {"PSS-B-002 .hostPID", "PSS-B-003 .containers[0].securityContext.privileged", "PSS-B-005 .volumes[0].hostPath"},
		"pss-restricted": {"PSS-B-002 .hostPID", "PSS-B-003 .containers[0].securityContext.privileged", "PSS-R-001 .volumes[0].hostPath"},
		"fin-kr":         {"FIN-WL-001 .containers[0].securityContext.privileged", "FIN-WL-002 .hostPID", "FIN-WL-003 .volumes[0].hostPath"},
	}
	cat := mustCatalog(t)
	for pack, rules := range want {
		pol, err := cat.Compile(Profile{Packs: []string{pack}})
		if err != nil {
			t.Fatal(err)
		}
		for _, pc := range podCarriers {
			obj := pc.carry("escape", "team-a", map[string]any{}, spec)
			specPath, _ := pc.podPaths()
			res := pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now())
			got := map[string]bool{}
			for _, f := range res.Findings {
				got[f.Rule+" "+f.Path] = f.Outcome == OutcomeFail
			}
			for _, r := range rules {
				id, field, _ := strings.Cut(r, " ")
				if key := id + " " + specPath + field; !got[key] {
					t.Errorf("%s, %s: no failing finding %s; findings %v", pack, pc.kind, key, slices.Sorted(maps.Keys(got)))
				}
			}
		}
	}
}
