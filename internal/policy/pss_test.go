package policy

import (
	"context"
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
	psaapi "k8s.io/pod-security-admission/api"
	psa "k8s.io/pod-security-admission/policy"
)

// pssVersion is the Pod Security Standards version the pss packs follow.
var pssVersion = psaapi.MajorMinorVersion(1, 34)

// pssRuleOf maps each check of Pod Security Admission to the rule of the
// pss packs that implements it.
var pssRuleOf = map[psa.CheckID]string{
	"windowsHostProcess":         "PSS-B-001",
	"hostNamespaces":             "PSS-B-002",
	"privileged":                 "PSS-B-003",
	"capabilities_baseline":      "PSS-B-004",
	"hostPathVolumes":            "PSS-B-005",
	"hostPorts":                  "PSS-B-006",
	"appArmorProfile":            "PSS-B-007",
	"seLinuxOptions":             "PSS-B-008",
	"procMount":                  "PSS-B-009",
	"seccompProfile_baseline":    "PSS-B-010",
	"sysctls":                    "PSS-B-011",
	"hostProbesAndHostLifecycle": "PSS-B-012",
	"restrictedVolumes":          "PSS-R-001",
	"allowPrivilegeEscalation":   "PSS-R-002",
	"runAsNonRoot":               "PSS-R-003",
	"runAsUser":                  "PSS-R-004",
	"seccompProfile_restricted":  "PSS-R-005",
	"capabilities_restricted":    "PSS-R-006",
}

// versionedCheck returns the revision of check in force at version v.
func versionedCheck(check psa.Check, v psaapi.Version) (psa.VersionedCheck, bool) {
	var found psa.VersionedCheck
	ok := false
	for _, vc := range check.Versions {
		if !v.Older(vc.MinimumVersion) {
			found, ok = vc, true
		}
	}
	return found, ok
}

// TestPSSMatchesPodSecurityAdmission runs Pod Security Admission's own checks
// (k8s.io/pod-security-admission at the v1.34 policy version, with the v1.34
// default feature gates) and the pss packs on the same generated pods, each
// put into one of the kinds that carry a pod: every control must allow and
// refuse the same pods, and so must each level as a whole (where Restricted
// checks override Baseline ones).
func TestPSSMatchesPodSecurityAdmission(t *testing.T) {
	cat := mustCatalog(t)
	profiles := map[psaapi.Level]*Policy{}
	for level, pack := range map[psaapi.Level]string{psaapi.LevelBaseline: "pss-baseline", psaapi.LevelRestricted: "pss-restricted"} {
		pol, err := cat.Compile(Profile{Packs: []string{pack}})
		if err != nil {
			t.Fatal(err)
		}
		profiles[level] = pol
	}
	type control struct {
		id    psa.CheckID
		level psaapi.Level
		check psa.CheckPodFn
		rule  string
	}
	var controls []control
	for _, c := range psa.DefaultChecks() {
		vc, ok := versionedCheck(c, pssVersion)
		if !ok {
			continue
		}
		rule, mapped := pssRuleOf[c.ID]
		if !mapped {
			t.Fatalf("Pod Security Admission check %s (%s) has no rule in the pss packs", c.ID, c.Level)
		}
		controls = append(controls, control{c.ID, c.Level, vc.CheckPod, rule})
	}
	if len(controls) != len(pssRuleOf) {
		t.Fatalf("%d checks in force at %s, %d rules mapped", len(controls), pssVersion, len(pssRuleOf))
	}
	evaluator, err := psa.NewEvaluator(psa.DefaultChecks())
	if err != nil {
		t.Fatal(err)
	}
	// fin-kr builds on Restricted: whatever a control refuses, the fin-kr rule
	// that implements it (the pss rule, or the FIN rule replacing it) refuses.
	finKR, err := cat.Compile(Profile{Packs: []string{"fin-kr"}})
	if err != nil {
		t.Fatal(err)
	}
	finRuleOf := map[string]string{}
	for _, rule := range pssRuleOf {
		finRuleOf[rule] = successor(cat, finKR, rule)
	}

	rng := rand.New(rand.NewPCG(34, 1))
	const pods = 4000
	refused := map[psa.CheckID]int{}
	for i := range pods {
		pod := randomPod(rng, i)
		content, err := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
		if err != nil {
			t.Fatal(err)
		}
		carrier := podCarriers[i%len(podCarriers)]
		podMeta := map[string]any{}
		if a, ok := content["metadata"].(map[string]any)["annotations"]; ok {
			podMeta["annotations"] = a
		}
		obj := carrier.carry(pod.Name, "team-a", podMeta, content["spec"].(map[string]any))

		finFindings := map[string]bool{}
		for _, f := range finKR.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now()).Findings {
			finFindings[f.Rule] = true
		}
		findings := map[psaapi.Level]map[string][]string{}
		for level, pol := range profiles {
			findings[level] = map[string][]string{}
			for _, f := range pol.EvaluateObject(context.Background(), obj, ObjectRef{}, time.Now()).Findings {
				findings[level][f.Rule] = append(findings[level][f.Rule], fmt.Sprintf("%s %s", f.Outcome, f.Path))
			}
		}
		describe := func() string {
			y, _ := runtime.DefaultUnstructuredConverter.ToUnstructured(pod)
			return fmt.Sprintf("pod %d as %s: %v", i, carrier.kind, y)
		}
		for _, c := range controls {
			res := c.check(&pod.ObjectMeta, &pod.Spec)
			got := findings[c.level][c.rule]
			if !res.Allowed {
				refused[c.id]++
				if !finFindings[finRuleOf[c.rule]] {
					t.Errorf("%s refuses the pod, fin-kr's %s does not\n%s", c.id, finRuleOf[c.rule], describe())
				}
			}
			if res.Allowed != (len(got) == 0) {
				t.Errorf("%s (%s): Pod Security Admission allowed=%v (%s: %s), %s findings %v\n%s",
					c.id, c.level, res.Allowed, res.ForbiddenReason, res.ForbiddenDetail, c.rule, got, describe())
			}
		}
		for level, pol := range profiles {
			agg := psa.AggregateCheckResults(evaluator.EvaluatePod(psaapi.LevelVersion{Level: level, Version: pssVersion}, &pod.ObjectMeta, &pod.Spec))
			if agg.Allowed != (len(findings[level]) == 0) {
				t.Errorf("level %s: Pod Security Admission allowed=%v (%s), profile %s findings %v\n%s",
					level, agg.Allowed, agg.ForbiddenDetail(), pol.Name(), findings[level], describe())
			}
		}
		if t.Failed() {
			return
		}
	}
	// Every control must have seen pods it allows and pods it refuses.
	for _, c := range controls {
		if n := refused[c.id]; n == 0 || n == pods {
			t.Errorf("%s refused %d of %d generated pods: the generator does not exercise it", c.id, n, pods)
		}
	}
}

// successor returns the rule of pol that holds rule id: itself, or the rule
// of the catalogue replacing it, through any chain of replacements.
func successor(cat *Catalog, pol *Policy, id string) string {
	for {
		if _, ok := pol.Rule(id); ok {
			return id
		}
		next := ""
		for _, name := range cat.PackNames() {
			pack, _ := cat.Pack(name)
			for _, r := range pack.Rules {
				if slices.Contains(r.Replaces, id) {
					next = r.ID
				}
			}
		}
		if next == "" {
			return id
		}
		id = next
	}
}

// randomPod generates a pod whose security-relevant fields take values each
// control allows and refuses, Windows pods included.
func randomPod(rng *rand.Rand, n int) *corev1.Pod {
	pick := func(k int) int { return rng.IntN(k) }
	chance := func(p float64) bool { return rng.Float64() < p }
	boolPtr := func() *bool {
		switch pick(3) {
		case 0:
			return nil
		case 1:
			return new(false)
		}
		return new(true)
	}
	seccomp := func() *corev1.SeccompProfile {
		switch pick(6) {
		case 0:
			return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}
		case 1:
			return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeLocalhost, LocalhostProfile: new("profile.json")}
		case 2:
			return &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeUnconfined}
		case 3:
			return &corev1.SeccompProfile{}
		}
		return nil
	}
	appArmor := func() *corev1.AppArmorProfile {
		switch pick(8) {
		case 0:
			return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeRuntimeDefault}
		case 1:
			return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeLocalhost, LocalhostProfile: new("k8s-app")}
		case 2:
			return &corev1.AppArmorProfile{Type: corev1.AppArmorProfileTypeUnconfined}
		case 3:
			return &corev1.AppArmorProfile{}
		}
		return nil
	}
	seLinux := func() *corev1.SELinuxOptions {
		if !chance(0.3) {
			return nil
		}
		types := []string{"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t", "spc_t", "unconfined_t"}
		o := &corev1.SELinuxOptions{Type: types[pick(len(types))], Level: []string{"", "s0:c1,c2"}[pick(2)]}
		if chance(0.15) {
			o.User = "system_u"
		}
		if chance(0.15) {
			o.Role = "sysadm_r"
		}
		return o
	}
	windowsOptions := func() *corev1.WindowsSecurityContextOptions {
		if !chance(0.15) {
			return nil
		}
		return &corev1.WindowsSecurityContextOptions{HostProcess: boolPtr(), RunAsUserName: new("ContainerUser")}
	}
	uid := func() *int64 {
		switch pick(4) {
		case 0:
			return new(int64(0))
		case 1:
			return new(int64(10001))
		}
		return nil
	}
	handler := func() (*corev1.HTTPGetAction, *corev1.TCPSocketAction, *corev1.ExecAction) {
		host := []string{"", "", "", "10.0.0.1", "metadata.internal"}[pick(5)]
		switch pick(3) {
		case 0:
			return &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromInt32(8080), Host: host}, nil, nil
		case 1:
			return nil, &corev1.TCPSocketAction{Port: intstr.FromInt32(8080), Host: host}, nil
		}
		return nil, nil, &corev1.ExecAction{Command: []string{"true"}}
	}
	probe := func() *corev1.Probe {
		if !chance(0.4) {
			return nil
		}
		h, s, e := handler()
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: h, TCPSocket: s, Exec: e}}
	}
	lifecycleHandler := func() *corev1.LifecycleHandler {
		if !chance(0.3) {
			return nil
		}
		h, s, e := handler()
		return &corev1.LifecycleHandler{HTTPGet: h, TCPSocket: s, Exec: e}
	}
	capabilities := []corev1.Capability{"CHOWN", "NET_BIND_SERVICE", "KILL", "SYS_ADMIN", "NET_RAW", "ALL"}
	container := func(name string) corev1.Container {
		c := corev1.Container{Name: name, Image: "registry.example/app:1"}
		if chance(0.9) {
			sc := &corev1.SecurityContext{
				Privileged:               []*bool{nil, nil, new(false), new(true)}[pick(4)],
				AllowPrivilegeEscalation: boolPtr(),
				RunAsNonRoot:             boolPtr(),
				RunAsUser:                uid(),
				SeccompProfile:           seccomp(),
				AppArmorProfile:          appArmor(),
				SELinuxOptions:           seLinux(),
				WindowsOptions:           windowsOptions(),
			}
			if chance(0.8) {
				caps := &corev1.Capabilities{}
				if chance(0.8) {
					caps.Drop = []corev1.Capability{[]corev1.Capability{"ALL", "NET_RAW"}[pick(2)]}
				}
				for range pick(3) {
					caps.Add = append(caps.Add, capabilities[pick(len(capabilities))])
				}
				sc.Capabilities = caps
			}
			if chance(0.2) {
				pm := []corev1.ProcMountType{corev1.DefaultProcMount, corev1.UnmaskedProcMount}[pick(2)]
				sc.ProcMount = &pm
			}
			c.SecurityContext = sc
		}
		for range pick(3) {
			c.Ports = append(c.Ports, corev1.ContainerPort{ContainerPort: 8080, HostPort: []int32{0, 0, 0, 80, 9100}[pick(5)]})
		}
		c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = probe(), probe(), probe()
		if post, pre := lifecycleHandler(), lifecycleHandler(); post != nil || pre != nil {
			c.Lifecycle = &corev1.Lifecycle{PostStart: post, PreStop: pre}
		}
		return c
	}
	volume := func(i int) corev1.Volume {
		v := corev1.Volume{Name: fmt.Sprintf("v%d", i)}
		src := &v.VolumeSource
		switch pick(13) {
		case 0:
			src.EmptyDir = &corev1.EmptyDirVolumeSource{}
		case 1:
			src.ConfigMap = &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "c"}}
		case 2:
			src.Secret = &corev1.SecretVolumeSource{SecretName: "s"}
		case 3:
			src.PersistentVolumeClaim = &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "data"}
		case 4:
			src.Projected = &corev1.ProjectedVolumeSource{}
		case 5:
			src.DownwardAPI = &corev1.DownwardAPIVolumeSource{}
		case 6:
			src.CSI = &corev1.CSIVolumeSource{Driver: "csi.example"}
		case 7:
			src.Ephemeral = &corev1.EphemeralVolumeSource{}
		case 8:
			src.Image = &corev1.ImageVolumeSource{Reference: "registry.example/data:1"}
		case 9:
			src.HostPath = &corev1.HostPathVolumeSource{Path: "/var/log"}
		case 10:
			src.NFS = &corev1.NFSVolumeSource{Server: "nfs", Path: "/"}
		case 11:
			src.GitRepo = &corev1.GitRepoVolumeSource{Repository: "https://git.example/x"}
		default:
			src.ISCSI = &corev1.ISCSIVolumeSource{TargetPortal: "10.0.0.2", IQN: "iqn", Lun: 0}
		}
		return v
	}

	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("p%d", n)}}
	spec := &pod.Spec
	spec.HostNetwork, spec.HostPID, spec.HostIPC = chance(0.05), chance(0.05), chance(0.05)
	if chance(0.7) {
		psc := &corev1.PodSecurityContext{
			RunAsNonRoot:    boolPtr(),
			RunAsUser:       uid(),
			SeccompProfile:  seccomp(),
			AppArmorProfile: appArmor(),
			SELinuxOptions:  seLinux(),
			WindowsOptions:  windowsOptions(),
		}
		sysctls := []string{"kernel.shm_rmid_forced", "net.ipv4.tcp_rmem", "net.ipv4.tcp_wmem", "net.ipv4.ip_local_port_range", "kernel.msgmax", "net.ipv4.ip_forward"}
		for range pick(2) {
			psc.Sysctls = append(psc.Sysctls, corev1.Sysctl{Name: sysctls[pick(len(sysctls))], Value: "1"})
		}
		spec.SecurityContext = psc
	}
	switch pick(4) {
	case 0:
		spec.OS = &corev1.PodOS{Name: corev1.Windows}
	case 1:
		spec.OS = &corev1.PodOS{Name: corev1.Linux}
	}
	for i := range 1 + pick(2) {
		spec.Containers = append(spec.Containers, container(fmt.Sprintf("app%d", i)))
	}
	for i := range pick(2) {
		spec.InitContainers = append(spec.InitContainers, container(fmt.Sprintf("init%d", i)))
	}
	if chance(0.1) {
		spec.EphemeralContainers = []corev1.EphemeralContainer{{EphemeralContainerCommon: corev1.EphemeralContainerCommon(container("debug"))}}
	}
	for i := range pick(3) {
		spec.Volumes = append(spec.Volumes, volume(i))
	}
	if chance(0.2) {
		pod.Annotations = map[string]string{
			"container.apparmor.security.beta.kubernetes.io/app0": []string{"", "runtime/default", "localhost/k8s-app", "unconfined"}[pick(4)],
		}
	}
	return pod
}

// TestWindowsPodExemptions: a pod whose spec.os.name is windows need not set
// what Kubernetes refuses on Windows pods. Restricted exempts it from the
// privilege escalation, seccomp and capabilities controls outright, as Pod
// Security Admission does; fin-kr exempts it from setting them (and from the
// read-only root filesystem) but still refuses a dangerous value it sets.
func TestWindowsPodExemptions(t *testing.T) {
	bare := func(os string, sc map[string]any) map[string]any {
		c := map[string]any{"name": "app", "image": "registry.slipway.internal/app:1"}
		if sc != nil {
			c["securityContext"] = sc
		}
		spec := map[string]any{"containers": []any{c}, "securityContext": map[string]any{"runAsNonRoot": true}}
		if os != "" {
			spec["os"] = map[string]any{"name": os}
		}
		return map[string]any{"apiVersion": "v1", "kind": "Pod", "metadata": map[string]any{"name": "p", "namespace": "app"}, "spec": spec}
	}
	cases := []struct {
		name, pack string
		obj        map[string]any
		want       []string // failing rules among those Windows pods are exempt from
	}{
		{"linux, restricted", "pss-restricted", bare("linux", nil), []string{"PSS-R-002", "PSS-R-005", "PSS-R-006"}},
		{"windows, restricted", "pss-restricted", bare("windows", nil), nil},
		{"windows setting escalation, restricted", "pss-restricted", bare("windows", map[string]any{"allowPrivilegeEscalation": true}), nil},
		{"linux, fin-kr", "fin-kr", bare("", nil), []string{"FIN-WL-004", "FIN-WL-006", "FIN-WL-007", "FIN-WL-008"}},
		{"windows, fin-kr", "fin-kr", bare("windows", nil), nil},
		{"windows setting escalation, fin-kr", "fin-kr", bare("windows", map[string]any{
			"allowPrivilegeEscalation": true, "capabilities": map[string]any{"add": []any{"SYS_ADMIN"}},
			"seccompProfile": map[string]any{"type": "Unconfined"}}), []string{"FIN-WL-004", "FIN-WL-006", "FIN-WL-007"}},
	}
	exempt := []string{"PSS-R-002", "PSS-R-005", "PSS-R-006", "FIN-WL-004", "FIN-WL-006", "FIN-WL-007", "FIN-WL-008"}
	cat := mustCatalog(t)
	for _, c := range cases {
		pol, err := cat.Compile(Profile{Packs: []string{c.pack}})
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, f := range pol.EvaluateObject(context.Background(), c.obj, ObjectRef{}, time.Now()).Findings {
			if slices.Contains(exempt, f.Rule) && !slices.Contains(got, f.Rule) {
				got = append(got, f.Rule)
			}
		}
		slices.Sort(got)
		if !slices.Equal(got, c.want) {
			t.Errorf("%s: failing %v, want %v", c.name, got, c.want)
		}
	}
}
