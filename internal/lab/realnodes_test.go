package lab_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/edge"
	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gittest"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/lab"
	"slipway.dev/slipway/internal/testenv"
	"slipway.dev/slipway/internal/upstream"
	"slipway.dev/slipway/internal/version"
)

// killWindow is how long traffic may fail after a pod is killed: the
// endpoint's removal reaching both ingress controllers (a watch event) and
// kube-proxy (its 1 s minimum sync) is well inside it.
const killWindow = 10 * time.Second

// TestRealNodesEndToEnd brings the real-node lab up (kubelet, containerd and
// kube-proxy on worker-01 and worker-02, CoreDNS, MetalLB, Traefik and the
// edge load balancer), delivers tea and coffee from source, and drives
// traffic through the one edge address while pods die, a rollout breaks and
// a kubelet stops; then `lab down` must leave the host as it found it.
func TestRealNodesEndToEnd(t *testing.T) {
	ctx := requireRealNodes(t, "starts the whole lab with real nodes", 25*time.Minute)
	exe := buildSlipway(t)
	dir := t.TempDir()
	before := takeHostSnapshot(t, dir)

	l := &lab.Lab{Dir: dir, BinDir: testenv.BinDir(), Slipway: exe, RealNodes: true, Progress: t.Logf}
	downed := false
	t.Cleanup(func() {
		if !downed {
			_ = l.Down(false)
		}
	})

	// An up interrupted half way (here: once worker-01's kubelet runs, with
	// namespaces, cgroups, mounts and kernel settings changed) is undone by
	// down all the same.
	interrupted, interrupt := context.WithCancel(ctx)
	l.Progress = func(format string, args ...any) {
		t.Logf(format, args...)
		if strings.HasPrefix(fmt.Sprintf(format, args...), "kubelet-worker-01 ready") {
			interrupt()
		}
	}
	_, err := l.Up(interrupted)
	interrupt()
	l.Progress = t.Logf
	if err == nil {
		t.Fatal("an up interrupted once worker-01's kubelet ran succeeded")
	}
	t.Logf("interrupted up: %v", err)
	if err := l.Down(false); err != nil {
		t.Fatalf("down after an interrupted up: %v", err)
	}
	if diff := before.diff(takeHostSnapshot(t, dir)); len(diff) > 0 {
		t.Fatalf("the host differs after an interrupted up and lab down:\n%s", strings.Join(diff, "\n"))
	}

	start := time.Now()
	info, err := l.Up(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("real-node lab up in %.1fs", time.Since(start).Seconds())
	if !info.AllRunning() || info.Edge == nil || len(info.Nodes) != 2 {
		t.Fatalf("after up: components %+v, edge %+v, nodes %+v", info.Components, info.Edge, info.Nodes)
	}
	c, _, err := l.Client()
	if err != nil {
		t.Fatal(err)
	}
	checkRealNodes(t, c, info)

	if err := l.Demo(ctx, info); err != nil {
		t.Fatal(err)
	}
	edgeURL := info.Edge.URL
	hc := lab.EdgeClient()

	// 200 requests through the one address reach all four pods, on both workers.
	answers := requests(t, hc, edgeURL, 200)
	pods, nodes := map[string]bool{}, map[string]bool{}
	for _, a := range answers {
		pods[a.Pod], nodes[a.Node] = true, true
	}
	if len(pods) != 4 || len(nodes) != 2 || !nodes["worker-01"] || !nodes["worker-02"] {
		t.Fatalf("200 requests through %s answered from pods %v on nodes %v, want 4 pods on worker-01 and worker-02", edgeURL, pods, nodes)
	}

	// The ingress controller's LoadBalancer address, from MetalLB's pool,
	// routes to it too.
	var ingress corev1.Service
	if err := c.Get(ctx, client.ObjectKey{Namespace: lab.IngressNamespace, Name: lab.IngressService}, &ingress); err != nil {
		t.Fatal(err)
	}
	if len(ingress.Status.LoadBalancer.Ingress) == 0 || !strings.HasPrefix(ingress.Status.LoadBalancer.Ingress[0].IP, "10.210.0.2") {
		t.Fatalf("ingress Service status %+v, want an address from the pool %s", ingress.Status.LoadBalancer, info.Edge.LoadBalancerPool)
	}
	lbURL := "http://" + ingress.Status.LoadBalancer.Ingress[0].IP
	if a, err := lab.Ask(ctx, hc, lbURL+"/coffee"); err != nil || !strings.Contains(a.Body, "coffee") {
		t.Fatalf("GET %s/coffee: %+v, %v", lbURL, a, err)
	}

	t.Run("a killed pod is replaced and traffic continues", func(t *testing.T) {
		ready := readyTeaPods(t, c)
		var victim corev1.Pod
		for name := range ready {
			if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: name}, &victim); err != nil {
				t.Fatal(err)
			}
			break
		}
		killed := time.Now()
		if err := c.Delete(ctx, &victim, client.GracePeriodSeconds(0)); err != nil {
			t.Fatal(err)
		}
		var late []string
		early := 0
		replacement := ""
		deadline := time.Now().Add(3 * time.Minute)
		for replacement == "" {
			if time.Now().After(deadline) {
				t.Fatalf("no new tea pod answered within 3m of killing %s", victim.Name)
			}
			a, err := lab.Ask(ctx, hc, edgeURL+"/tea")
			switch {
			case err != nil && time.Since(killed) > killWindow:
				late = append(late, err.Error())
			case err != nil:
				early++
			case err == nil && a.Pod == victim.Name && time.Since(killed) > killWindow:
				late = append(late, "answered by the killed pod "+a.Pod)
			case err == nil && !ready[a.Pod]:
				replacement = a.Pod
			}
		}
		if len(late) > 0 {
			t.Fatalf("%d requests failed more than %s after the kill: %v", len(late), killWindow, late)
		}
		t.Logf("killed %s; %s answers through the edge %.1fs later; %d requests failed within %s of the kill",
			victim.Name, replacement, time.Since(killed).Seconds(), early, killWindow)
	})

	t.Run("a rollout to a broken image keeps the old pods serving and is Degraded", func(t *testing.T) {
		app := &slipwayv1.Application{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "tea"}, app); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(app.DeepCopy())
		app.Spec.RolloutTimeout = &metav1.Duration{Duration: 20 * time.Second}
		if err := c.Patch(ctx, app, patch); err != nil {
			t.Fatal(err)
		}
		serving := readyTeaPods(t, c)
		_, kustomization := gittest.Head(t, info.Git.OpsRepo, info.Git.Username, info.Git.Password, "apps/tea/kustomization.yaml")
		digest := regexp.MustCompile(`sha256:[0-9a-f]{64}`)
		if !digest.MatchString(kustomization) {
			t.Fatalf("apps/tea/kustomization.yaml pins no digest:\n%s", kustomization)
		}
		broken := digest.ReplaceAllString(kustomization, "sha256:"+strings.Repeat("0", 64))
		commitOps(t, ctx, info, "apps/tea/kustomization.yaml", broken, "Deploy an image that does not exist")

		waitFor(t, 3*time.Minute, "tea reports Degraded", func() (bool, string) {
			a := &slipwayv1.Application{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "tea"}, a); err != nil {
				return false, err.Error()
			}
			// Meanwhile every request is answered, by the pods of before.
			ans, err := lab.Ask(ctx, hc, edgeURL+"/tea")
			if err != nil {
				t.Fatalf("during the broken rollout: %v", err)
			}
			if !serving[ans.Pod] {
				t.Fatalf("during the broken rollout %s answered; the old pods are %v", ans.Pod, serving)
			}
			return a.Status.Health.Status == slipwayv1.HealthDegraded, a.Status.Health.Status + ": " + a.Status.Health.Message
		})
		commitOps(t, ctx, info, "apps/tea/kustomization.yaml", kustomization, "Back to the working image")
		waitFor(t, 3*time.Minute, "tea is Healthy again", func() (bool, string) {
			a := &slipwayv1.Application{}
			if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "tea"}, a); err != nil {
				return false, err.Error()
			}
			return apimeta.IsStatusConditionTrue(a.Status.Conditions, slipwayv1.ConditionReady) && a.Status.Health.Status == slipwayv1.HealthHealthy,
				a.Status.Health.Status
		})
	})

	t.Run("a stopped kubelet takes its worker out of the edge's rotation", func(t *testing.T) {
		status, err := l.Status()
		if err != nil {
			t.Fatal(err)
		}
		node := info.Nodes[1]
		var kubelet lab.ComponentInfo
		for _, comp := range status.Components {
			if comp.Name == "kubelet-"+node.Name {
				kubelet = comp
			}
		}
		if !kubelet.Running {
			t.Fatalf("kubelet of %s not running: %+v", node.Name, status.Components)
		}
		if err := syscall.Kill(kubelet.PID, syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		backend := fmt.Sprintf("%s:%d", node.IP, lab.IngressNodePort)
		waitFor(t, 3*time.Minute, node.Name+" leaves the edge's rotation", func() (bool, string) {
			healthy, err := edgeHealthy(ctx, info, backend)
			if err != nil {
				return false, err.Error()
			}
			return !healthy, "still healthy"
		})
		// Every request is answered, and by pods of the other worker only.
		for _, a := range requests(t, hc, edgeURL, 40) {
			if a.Node == node.Name {
				t.Fatalf("%s answered from %s, whose kubelet is stopped", a.Pod, a.Node)
			}
		}
		// lab up restarts the kubelet, and the worker comes back.
		if _, err := l.Up(ctx); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 3*time.Minute, node.Name+" is back in the edge's rotation", func() (bool, string) {
			healthy, err := edgeHealthy(ctx, info, backend)
			if err != nil {
				return false, err.Error()
			}
			return healthy, "not healthy yet"
		})
	})

	t.Run("Slipway in the cluster reconciles, and a new leader completes a sync", func(t *testing.T) {
		inCluster(t, ctx, l, info, c)
	})

	downStart := time.Now()
	if err := l.Down(false); err != nil {
		t.Fatal(err)
	}
	downed = true
	t.Logf("lab down in %.1fs", time.Since(downStart).Seconds())
	if diff := before.diff(takeHostSnapshot(t, dir)); len(diff) > 0 {
		t.Fatalf("the host differs after lab down:\n%s", strings.Join(diff, "\n"))
	}
}

// checkRealNodes: both workers are real kubelets of the pinned version on
// containerd, at their lab addresses, and CoreDNS answers in the cluster.
func checkRealNodes(t *testing.T, c client.Client, info *lab.Info) {
	t.Helper()
	for _, want := range info.Nodes {
		var n corev1.Node
		if err := c.Get(context.Background(), client.ObjectKey{Name: want.Name}, &n); err != nil {
			t.Fatal(err)
		}
		if n.Status.NodeInfo.KubeletVersion != version.Kubernetes || !strings.HasPrefix(n.Status.NodeInfo.ContainerRuntimeVersion, "containerd://") {
			t.Errorf("node %s runs kubelet %q on %q", n.Name, n.Status.NodeInfo.KubeletVersion, n.Status.NodeInfo.ContainerRuntimeVersion)
		}
		internal := ""
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if internal != want.IP || n.Spec.PodCIDR != want.PodCIDR {
			t.Errorf("node %s at %q with pods %q, want %s and %s", n.Name, internal, n.Spec.PodCIDR, want.IP, want.PodCIDR)
		}
	}
	var dns appsv1.Deployment
	if err := c.Get(context.Background(), client.ObjectKey{Namespace: "kube-system", Name: "coredns"}, &dns); err != nil || dns.Status.AvailableReplicas < 1 {
		t.Fatalf("CoreDNS Deployment: %v, available %d", err, dns.Status.AvailableReplicas)
	}
	// Each CoreDNS pod answers for the cluster's names; pod addresses are
	// routed from the host.
	var pods corev1.PodList
	if err := c.List(context.Background(), &pods, client.InNamespace("kube-system"), client.MatchingLabels{"k8s-app": "kube-dns"}); err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{Timeout: 2 * time.Second}).DialContext(ctx, network, net.JoinHostPort(p.Status.PodIP, "1053"))
		}}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		addrs, err := r.LookupHost(ctx, "kubernetes.default.svc.cluster.local")
		cancel()
		if err != nil || len(addrs) != 1 || addrs[0] != "10.96.0.1" {
			t.Errorf("CoreDNS pod %s on %s resolves kubernetes.default.svc.cluster.local to %v (%v), want 10.96.0.1", p.Name, p.Spec.NodeName, addrs, err)
		}
	}
}

// requests sends n requests alternately for tea and coffee through url;
// every one must be answered.
func requests(t *testing.T, hc *http.Client, url string, n int) []lab.Answer {
	t.Helper()
	var out []lab.Answer
	for i := 0; i < n; i++ {
		app := lab.DemoApps[i%len(lab.DemoApps)]
		a, err := lab.Ask(context.Background(), hc, url+"/"+app)
		if err != nil {
			t.Fatalf("request %d of %d: %v", i+1, n, err)
		}
		if !strings.Contains(a.Body, "a cup of "+app) {
			t.Fatalf("request %d for %s answered %q", i+1, app, a.Body)
		}
		out = append(out, a)
	}
	return out
}

// readyTeaPods names the two ready tea pods that are not terminating
// (a rollout's old pods drain for a few seconds).
func readyTeaPods(t *testing.T, c client.Client) map[string]bool {
	t.Helper()
	var pods corev1.PodList
	if err := c.List(context.Background(), &pods, client.InNamespace(lab.DemoNamespace), client.MatchingLabels{"app.kubernetes.io/name": "tea"}); err != nil {
		t.Fatal(err)
	}
	out := map[string]bool{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				out[p.Name] = true
			}
		}
	}
	if len(out) != 2 {
		t.Fatalf("%d tea pods ready, want 2", len(out))
	}
	return out
}

func commitOps(t *testing.T, ctx context.Context, info *lab.Info, path, content, message string) string {
	t.Helper()
	auth := gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}
	sha, err := gitserver.CommitFiles(ctx, info.Git.OpsRepo, auth, gitserver.Commit{
		Files: map[string][]byte{path: []byte(content)}, Message: message,
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return sha
}

func edgeHealthy(ctx context.Context, info *lab.Info, backend string) (bool, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, info.Edge.Status, nil)
	if err != nil {
		return false, err
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	var s edge.Status
	if err := json.NewDecoder(resp.Body).Decode(&s); err != nil {
		return false, err
	}
	for _, b := range s.Backends {
		if b.Address == backend {
			return b.Healthy, nil
		}
	}
	return false, fmt.Errorf("the edge has no backend %s: %+v", backend, s.Backends)
}

func waitFor(t *testing.T, timeout time.Duration, what string, cond func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	last := ""
	for {
		ok, state := cond()
		if ok {
			return
		}
		last = state
		if time.Now().After(deadline) {
			t.Fatalf("%s: not within %s (last: %s)", what, timeout, last)
		}
		time.Sleep(500 * time.Millisecond)
	}
}

// inCluster replaces the host's slipway server with Slipway installed in
// the cluster (its image built by Slipway's builder and pulled by the nodes
// from the lab registry): the server pods reconcile a change pushed to the
// ops repository, and when the leader is killed during a sync, the other
// replica takes over and the sync completes.
func inCluster(t *testing.T, ctx context.Context, l *lab.Lab, info *lab.Info, c client.Client) {
	status, err := l.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, comp := range status.Components {
		if comp.Name == "slipway-server" && comp.Running {
			if err := syscall.Kill(comp.PID, syscall.SIGTERM); err != nil {
				t.Fatal(err)
			}
			waitFor(t, time.Minute, "the host's slipway server stops", func() (bool, string) {
				return syscall.Kill(comp.PID, 0) != nil, "still running"
			})
		}
	}
	start := time.Now()
	images, err := l.BuildServerImage(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("server image %s and runner image %s built and pushed in %.1fs", images.Server, images.Runner, time.Since(start).Seconds())
	opts, err := l.ServerInstallOptions(images)
	if err != nil {
		t.Fatal(err)
	}
	api, err := url.Parse(info.APIServer)
	if err != nil {
		t.Fatal(err)
	}
	opts.APIServerCIDRs = []string{api.Hostname() + "/32"}
	opts.Timeout = 3 * time.Minute
	if _, err := install.Apply(ctx, c, opts); err != nil {
		t.Fatal(err)
	}
	serverPods := func() map[string]string {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(install.Namespace), client.MatchingLabels{"app.kubernetes.io/component": "server"}); err != nil {
			t.Fatal(err)
		}
		out := map[string]string{}
		for _, p := range pods.Items {
			for _, cond := range p.Status.Conditions {
				if p.DeletionTimestamp == nil && cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
					out[p.Name] = p.Spec.NodeName
				}
			}
		}
		return out
	}
	waitFor(t, 5*time.Minute, "two server pods ready, one on each worker", func() (bool, string) {
		pods := serverPods()
		nodes := map[string]bool{}
		for _, n := range pods {
			nodes[n] = true
		}
		return len(pods) == 2 && len(nodes) == 2, fmt.Sprintf("ready: %v", pods)
	})
	leader := func() string {
		var lease coordinationv1.Lease
		if err := c.Get(ctx, client.ObjectKey{Namespace: install.Namespace, Name: "slipway-controller"}, &lease); err != nil || lease.Spec.HolderIdentity == nil {
			return ""
		}
		pod, _, _ := strings.Cut(*lease.Spec.HolderIdentity, "_")
		return pod
	}
	waitFor(t, 2*time.Minute, "a server pod leads", func() (bool, string) {
		_, ok := serverPods()[leader()]
		return ok, "leader " + leader()
	})
	// Push events from now on go to the server pods, through the edge.
	hook, err := l.RouteWebhooksToCluster(ctx, c, info)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("the lab's git server delivers push events to %s", hook)

	_, deployment := gittest.Head(t, info.Git.OpsRepo, info.Git.Username, info.Git.Password, "apps/coffee/deployment.yaml")
	if !strings.Contains(deployment, "replicas: 2") {
		t.Fatalf("apps/coffee/deployment.yaml has no replicas: 2:\n%s", deployment)
	}
	syncTo := func(content, message string) string {
		sha := commitOps(t, ctx, info, "apps/coffee/deployment.yaml", content, message)
		app := &slipwayv1.Application{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "coffee"}, app); err != nil {
			t.Fatal(err)
		}
		patch := client.MergeFrom(app.DeepCopy())
		if app.Annotations == nil {
			app.Annotations = map[string]string{}
		}
		app.Annotations[slipwayv1.SyncRequestAnnotation] = time.Now().Format(time.RFC3339Nano)
		if err := c.Patch(ctx, app, patch); err != nil {
			t.Fatal(err)
		}
		return sha
	}
	synced := func(sha string, replicas int32) func() (bool, string) {
		return func() (bool, string) {
			app := &slipwayv1.Application{}
			var d appsv1.Deployment
			if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "coffee"}, app); err != nil {
				return false, err.Error()
			}
			if err := c.Get(ctx, client.ObjectKey{Namespace: lab.DemoNamespace, Name: "coffee"}, &d); err != nil {
				return false, err.Error()
			}
			return app.Status.Sync.Revision == sha && app.Status.Health.Status == slipwayv1.HealthHealthy &&
					d.Status.ReadyReplicas == replicas && *d.Spec.Replicas == replicas,
				fmt.Sprintf("revision %s, %s, %d of %d ready", app.Status.Sync.Revision, app.Status.Health.Status, d.Status.ReadyReplicas, replicas)
		}
	}
	sha := syncTo(strings.Replace(deployment, "replicas: 2", "replicas: 3", 1), "Three coffee replicas")
	waitFor(t, 3*time.Minute, "the server pods deploy three coffee replicas", synced(sha, 3))

	first := leader()
	sha = syncTo(deployment, "Back to two coffee replicas")
	if err := c.Delete(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: first}}, client.GracePeriodSeconds(0)); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	waitFor(t, 3*time.Minute, "another server pod leads", func() (bool, string) {
		now := leader()
		_, ready := serverPods()[now]
		return now != "" && now != first && ready, "leader " + now
	})
	t.Logf("killed the leader %s; %s leads %.1fs later", first, leader(), time.Since(killed).Seconds())
	waitFor(t, 3*time.Minute, "the new leader completes the sync to two coffee replicas", synced(sha, 2))

	pipelineInCluster(t, ctx, info, c, images.Runner)
}

// pipelineInCluster pushes a change to tea's source and follows it
// through Slipway installed in the cluster: the git server's signed push
// event reaches the server pods through the edge, the test step runs in a
// Pod on a worker in the runner image (checked out by `slipway
// checkout`), the server pod builds, signs and pushes the image and
// promotes its digest into the ops repository, whose push event starts
// the sync, and the new build answers through the edge.
func pipelineInCluster(t *testing.T, ctx context.Context, info *lab.Info, c client.Client, runner string) {
	repoURL := info.Git.URL + "/" + lab.SourceRepo("tea")
	brew := "brewed by Slipway in the cluster " + time.Now().UTC().Format(time.RFC3339)
	pushed := time.Now()
	sha, err := gitserver.CommitFiles(ctx, repoURL, gitserver.BasicAuth{Username: info.Git.Username, Password: info.Git.Password}, gitserver.Commit{
		Files: map[string][]byte{"brew.go": lab.BrewFile(brew)}, Message: "Brew in the cluster",
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}

	// Test Pods are deleted when their step ends: note each one's node
	// while the run goes on.
	testPods := map[string]string{}
	var run slipwayv1.PipelineRun
	waitFor(t, 8*time.Minute, "the PipelineRun of "+sha[:12]+" succeeds", func() (bool, string) {
		var pods corev1.PodList
		if err := c.List(ctx, &pods, client.InNamespace(install.RunNamespace)); err == nil {
			for _, p := range pods.Items {
				if p.Annotations["slipway.dev/commit"] != sha || p.Spec.NodeName == "" {
					continue
				}
				checkout, test := p.Spec.InitContainers[0], p.Spec.Containers[0]
				if checkout.Image != runner || checkout.Command[0] != "slipway" || test.Image != runner {
					t.Fatalf("test Pod %s checks out with %v in %s and tests in %s; want slipway checkout and the tests in the runner image %s",
						p.Name, checkout.Command, checkout.Image, test.Image, runner)
				}
				testPods[p.Name] = p.Spec.NodeName
			}
		}
		var runs slipwayv1.PipelineRunList
		if err := c.List(ctx, &runs, client.InNamespace(lab.DemoNamespace), client.MatchingLabels{"slipway.dev/pipeline": "tea", "slipway.dev/commit": sha}); err != nil {
			return false, err.Error()
		}
		if len(runs.Items) == 0 {
			return false, "no run yet"
		}
		run = runs.Items[0]
		if p := run.Status.Phase; p == slipwayv1.RunFailed || p == slipwayv1.RunCancelled {
			t.Fatalf("PipelineRun %s %s: %+v", run.Name, p, run.Status)
		}
		return run.Status.Phase == slipwayv1.RunSucceeded, fmt.Sprintf("%s %s, steps %+v", run.Name, run.Status.Phase, run.Status.Steps)
	})
	t.Logf("PipelineRun %s succeeded %.1fs after the push: %s", run.Name, time.Since(pushed).Seconds(), run.Status.Image)
	for _, step := range run.Status.Steps {
		if step.Started != nil && step.Finished != nil {
			t.Logf("  step %s %s in %.1fs", step.Name, step.State, step.Finished.Sub(step.Started.Time).Seconds())
		}
	}
	tested := false
	for _, step := range run.Status.Steps {
		tested = tested || step.Name == "test" && step.State == "Succeeded"
	}
	if !tested || run.Status.TestIsolation != "pod" {
		t.Fatalf("PipelineRun %s: isolation %q, steps %+v; want the test step run in a pod", run.Name, run.Status.TestIsolation, run.Status.Steps)
	}
	if len(testPods) == 0 {
		t.Fatalf("no test Pod of commit %s was seen on a node in %s", sha[:12], install.RunNamespace)
	}
	for p, node := range testPods {
		if node != "worker-01" && node != "worker-02" {
			t.Fatalf("test Pod %s ran on %q, not a worker", p, node)
		}
		t.Logf("test Pod %s ran on %s", p, node)
	}
	_, kustomization := gittest.Head(t, info.Git.OpsRepo, info.Git.Username, info.Git.Password, "apps/tea/kustomization.yaml")
	if run.Status.Digest == "" || !strings.Contains(kustomization, run.Status.Digest) {
		t.Fatalf("apps/tea/kustomization.yaml does not pin the run's digest %q:\n%s", run.Status.Digest, kustomization)
	}

	// The new build answers through the edge, ten times in a row once
	// the rollout is done.
	hc := lab.EdgeClient()
	inARow := 0
	waitFor(t, 3*time.Minute, "tea's new build answers through the edge", func() (bool, string) {
		a, err := lab.Ask(ctx, hc, info.Edge.URL+"/tea")
		switch {
		case err != nil:
			inARow = 0
			return false, err.Error()
		case !strings.Contains(a.Body, brew):
			inARow = 0
			return false, a.Body
		}
		inARow++
		return inARow == 10, a.Body
	})
	t.Logf("tea's build of %s answers through the edge %.1fs after the push", sha[:12], time.Since(pushed).Seconds())
}

// requireRealNodes skips a real-node test in -short mode or without root,
// installs the host packages and builds the node binaries, and returns a
// context bounding the test to timeout.
func requireRealNodes(t *testing.T, what string, timeout time.Duration) context.Context {
	t.Helper()
	if testing.Short() {
		t.Skip(what)
	}
	if os.Geteuid() != 0 {
		t.Skip("skipped: real nodes need root (network namespaces, interfaces, cgroups)")
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	t.Cleanup(cancel)
	if err := lab.EnsureHostPackages(ctx, t.Logf); err != nil {
		testenv.MissingDependency(t, "the Debian packages real nodes need cannot be installed here: %v", err)
	}
	if err := upstream.EnsureNodes(ctx, upstream.NodeBinDir(), t.Logf); err != nil {
		t.Fatalf("building the real nodes' binaries: %v", err)
	}
	return ctx
}
