package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/gitserver"
	"slipway.dev/slipway/internal/gitsource"
)

const (
	kubeTestCommit = "0123456789abcdef0123456789abcdef01234567"
	kubeDeployKey  = "hunter2-deploy-token"
	kubeGitPass    = "git-pa55word-secret"
	kubeIdentity   = "fake-ssh-identity-material"
)

// TestKubeExecutor runs the Kubernetes executor against a real API server.
// Nothing runs the Pods (there is no kubelet): each test plays the kubelet
// by writing the status a kubelet would once the containers ended.
func TestKubeExecutor(t *testing.T) {
	env := startAPIServer(t)
	c := env.Client
	newExecutor := func(t *testing.T) *KubeExecutor {
		t.Helper()
		e, err := NewKubeExecutor(c, env.Config, env.Namespace(t), "registry.example/ci/go:1")
		if err != nil {
			t.Fatal(err)
		}
		return e
	}

	t.Run("PodSpec", func(t *testing.T) {
		e := newExecutor(t)
		ctx, cancel := context.WithTimeout(t.Context(), 10*time.Minute)
		defer cancel()
		var out bytes.Buffer
		cmd := kubeCommand(&out)
		cmd.Image = "registry.example/dev/tea-tests:2"
		errc := execAsync(ctx, e, cmd)
		pod := releasedPod(t, c, e.Namespace)

		podJSON, err := json.Marshal(pod)
		if err != nil {
			t.Fatal(err)
		}
		for _, secret := range []string{kubeDeployKey, kubeGitPass} {
			if bytes.Contains(podJSON, []byte(secret)) {
				t.Fatalf("the pod reveals %q:\n%s", secret, podJSON)
			}
		}
		secret := &corev1.Secret{}
		if err := c.Get(ctx, client.ObjectKey{Namespace: e.Namespace, Name: pod.Name}, secret); err != nil {
			t.Fatal(err)
		}
		if string(secret.Data["git-password"]) != kubeGitPass || !secretHolds(secret, kubeDeployKey) {
			t.Fatalf("the secret lacks the credentials: keys %v", keys(secret.Data))
		}
		if o := secret.OwnerReferences; len(o) != 1 || o[0].Kind != "Pod" || o[0].UID != pod.UID {
			t.Fatalf("the secret is not owned by the pod: %+v", o)
		}

		s := pod.Spec
		if s.RestartPolicy != corev1.RestartPolicyNever || !isFalse(s.AutomountServiceAccountToken) || !isFalse(s.EnableServiceLinks) {
			t.Fatalf("restartPolicy %s, automountServiceAccountToken %v, enableServiceLinks %v", s.RestartPolicy, s.AutomountServiceAccountToken, s.EnableServiceLinks)
		}
		if d := s.ActiveDeadlineSeconds; d == nil || *d < 590 || *d > 600 {
			t.Fatalf("activeDeadlineSeconds %v, want the 10 minutes left of the context", d)
		}
		if pod.Labels[RunLabel] != "tea-run-1" {
			t.Fatalf("labels %v do not name the run", pod.Labels)
		}
		if psc := s.SecurityContext; !isTrue(psc.RunAsNonRoot) || psc.RunAsUser == nil || *psc.RunAsUser == 0 ||
			psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
			t.Fatalf("pod security context %+v", psc)
		}
		if len(s.InitContainers) != 1 || len(s.Containers) != 1 {
			t.Fatalf("%d init containers and %d containers, want 1 and 1", len(s.InitContainers), len(s.Containers))
		}
		for _, ctr := range append(s.InitContainers, s.Containers...) {
			sc := ctr.SecurityContext
			if sc == nil || !isTrue(sc.RunAsNonRoot) || sc.RunAsUser == nil || *sc.RunAsUser == 0 || !isFalse(sc.AllowPrivilegeEscalation) ||
				!isTrue(sc.ReadOnlyRootFilesystem) || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" ||
				sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
				t.Fatalf("container %s security context %+v", ctr.Name, sc)
			}
			for _, want := range []string{"/tmp", kubeMount} {
				if !mountsEmptyDir(s, ctr, want) {
					t.Fatalf("container %s has no emptyDir at %s: %+v", ctr.Name, want, ctr.VolumeMounts)
				}
			}
			wantRes := corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1500m"), corev1.ResourceMemory: resource.MustParse("2Gi")}
			for _, got := range []corev1.ResourceList{ctr.Resources.Limits, ctr.Resources.Requests} {
				if !got.Cpu().Equal(wantRes[corev1.ResourceCPU]) || !got.Memory().Equal(wantRes[corev1.ResourceMemory]) {
					t.Fatalf("container %s resources %+v, want %v as requests and limits", ctr.Name, ctr.Resources, wantRes)
				}
			}
			if disk := ctr.Resources.Limits[corev1.ResourceEphemeralStorage]; !disk.Equal(resource.MustParse("4Gi")) {
				t.Fatalf("container %s ephemeral storage limit %v, want the step's disk", ctr.Name, ctr.Resources.Limits)
			}
			if req := ctr.Resources.Requests[corev1.ResourceEphemeralStorage]; !req.IsZero() {
				t.Fatalf("container %s requests ephemeral storage: %v", ctr.Name, ctr.Resources.Requests)
			}
		}
		test := s.Containers[0]
		if test.Image != cmd.Image || s.InitContainers[0].Image != e.Image {
			t.Fatalf("images: test %s, checkout %s", test.Image, s.InitContainers[0].Image)
		}
		if test.WorkingDir != kubeWorkspace+"/svc" {
			t.Fatalf("working directory %s", test.WorkingDir)
		}
		script := strings.Join(test.Command, " ")
		for _, want := range []string{"ulimit -t 600", "ulimit -v 2097152", "ulimit -n 1024", "ulimit -f 2097152", cmd.Script} {
			if !strings.Contains(script, want) {
				t.Fatalf("command %q lacks %q", test.Command, want)
			}
		}
		for _, name := range []string{"DEPLOY_TOKEN", "GOFLAGS"} {
			if v := envVar(test.Env, name); v == nil || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef.Name != pod.Name {
				t.Fatalf("%s does not come from the secret: %+v", name, v)
			}
		}
		for _, name := range []string{"SLIPWAY_GIT_USERNAME", "SLIPWAY_GIT_PASSWORD"} {
			if v := envVar(s.InitContainers[0].Env, name); v == nil || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef.Name != pod.Name {
				t.Fatalf("the checkout's %s does not come from the secret: %+v", name, v)
			}
		}

		exitPod(t, c, pod, 0)
		if err := awaitExec(t, errc); err != nil {
			t.Fatalf("exit code 0: %v\n%s", err, out.String())
		}
		assertDeleted(t, c, pod)
	})

	t.Run("ExitCode", func(t *testing.T) {
		e := newExecutor(t)
		var out bytes.Buffer
		errc := execAsync(t.Context(), e, kubeCommand(&out))
		pod := releasedPod(t, c, e.Namespace)
		exitPod(t, c, pod, 3)
		err := awaitExec(t, errc)
		var exit *ExitError
		if !errors.As(err, &exit) || exit.Code != 3 {
			t.Fatalf("error %v, want *ExitError{Code: 3}", err)
		}
		// No scheduler bound the pod: no kubelet has its log.
		if want := "is unavailable: the pod was never bound to a node"; !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
		assertDeleted(t, c, pod)
	})

	t.Run("SSHCheckoutAndLogsUnavailable", func(t *testing.T) {
		e := newExecutor(t)
		var out bytes.Buffer
		cmd := kubeCommand(&out)
		cmd.Source.URL = "ssh://git@git.example/shop/tea.git"
		cmd.Source.Auth = &gitsource.Credentials{Identity: []byte(kubeIdentity), KnownHosts: []byte("git.example ssh-ed25519 AAAA\n")}
		errc := execAsync(t.Context(), e, cmd)
		pod := releasedPod(t, c, e.Namespace)
		podJSON, _ := json.Marshal(pod)
		if bytes.Contains(podJSON, []byte(kubeIdentity)) {
			t.Fatalf("the pod reveals the SSH identity:\n%s", podJSON)
		}
		ssh := envVar(pod.Spec.InitContainers[0].Env, "GIT_SSH_COMMAND")
		if ssh == nil || !strings.Contains(ssh.Value, "-i "+kubeGitAuth+"/identity") || !strings.Contains(ssh.Value, "StrictHostKeyChecking=yes") {
			t.Fatalf("GIT_SSH_COMMAND %+v", ssh)
		}
		// Bound to a node that does not exist, the pod's log is one the API
		// server tries to fetch and cannot.
		binding := &corev1.Binding{ObjectMeta: metav1.ObjectMeta{Name: pod.Name}, Target: corev1.ObjectReference{Kind: "Node", Name: "no-such-node"}}
		if err := c.SubResource("binding").Create(t.Context(), pod, binding); err != nil {
			t.Fatal(err)
		}
		if err := c.Get(t.Context(), client.ObjectKeyFromObject(pod), pod); err != nil {
			t.Fatal(err)
		}
		exitPod(t, c, pod, 0)
		if err := awaitExec(t, errc); err != nil {
			t.Fatal(err)
		}
		want := "slipway: the log of container test of pod " + e.Namespace + "/" + pod.Name + " is unavailable (the API server could not serve pods/log"
		if !strings.Contains(out.String(), want) {
			t.Fatalf("output lacks %q:\n%s", want, out.String())
		}
	})

	t.Run("NoLogClient", func(t *testing.T) {
		e := newExecutor(t)
		e.Logs = nil
		var out bytes.Buffer
		errc := execAsync(t.Context(), e, kubeCommand(&out))
		exitPod(t, c, releasedPod(t, c, e.Namespace), 0)
		if err := awaitExec(t, errc); err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(out.String(), "is unavailable: the executor has no client for pods/log") {
			t.Fatalf("output:\n%s", out.String())
		}
	})

	t.Run("CheckoutFails", func(t *testing.T) {
		e := newExecutor(t)
		errc := execAsync(t.Context(), e, kubeCommand(nil))
		pod := releasedPod(t, c, e.Namespace)
		pod.Status = corev1.PodStatus{
			Phase:                 corev1.PodFailed,
			InitContainerStatuses: []corev1.ContainerStatus{terminatedStatus(kubeCheckoutContainer, pod, 128)},
			ContainerStatuses: []corev1.ContainerStatus{{Name: kubeTestContainer, Image: pod.Spec.Containers[0].Image,
				State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "PodInitializing"}}}},
		}
		if err := c.Status().Update(t.Context(), pod); err != nil {
			t.Fatal(err)
		}
		err := awaitExec(t, errc)
		var exit *ExitError
		if err == nil || errors.As(err, &exit) || !strings.Contains(err.Error(), "checkout of "+kubeTestCommit) {
			t.Fatalf("error %v, want a failed checkout, not an exit status of the command", err)
		}
	})

	t.Run("Cancel", func(t *testing.T) {
		e := newExecutor(t)
		ctx, cancel := context.WithCancel(t.Context())
		defer cancel()
		errc := execAsync(ctx, e, kubeCommand(nil))
		pod := releasedPod(t, c, e.Namespace)
		cancel()
		if err := awaitExec(t, errc); !errors.Is(err, context.Canceled) {
			t.Fatalf("error %v, want one wrapping context.Canceled", err)
		}
		assertDeleted(t, c, pod)
	})

	t.Run("Deadline", func(t *testing.T) {
		e := newExecutor(t)
		ctx, cancel := context.WithTimeout(t.Context(), 3*time.Second)
		defer cancel()
		err := e.Exec(ctx, kubeCommand(nil))
		if !errors.Is(err, context.DeadlineExceeded) || !strings.Contains(err.Error(), "wait for pod "+e.Namespace+"/") {
			t.Fatalf("error %v, want one naming the pod and wrapping context.DeadlineExceeded", err)
		}
		var pods corev1.PodList
		var secrets corev1.SecretList
		if err := c.List(t.Context(), &pods, client.InNamespace(e.Namespace)); err != nil || len(pods.Items) != 0 {
			t.Fatalf("pods left: %d (%v)", len(pods.Items), err)
		}
		if err := c.List(t.Context(), &secrets, client.InNamespace(e.Namespace), client.HasLabels{RunLabel}); err != nil || len(secrets.Items) != 0 {
			t.Fatalf("secrets left: %d (%v)", len(secrets.Items), err)
		}
	})

	t.Run("RunnerImage", func(t *testing.T) {
		const runner = "registry.example/slipway/runner@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
		e, err := NewKubeExecutor(c, env.Config, env.Namespace(t), "")
		if err != nil {
			t.Fatal(err)
		}
		e.RunnerImage = runner
		for name, auth := range map[string]*gitsource.Credentials{
			"https": {Username: "slipway", Password: kubeGitPass},
			"ssh":   {Identity: []byte(kubeIdentity), KnownHosts: []byte("git.example ssh-ed25519 AAAA\n")},
		} {
			cmd := kubeCommand(nil)
			cmd.Source.Auth = auth
			errc := execAsync(t.Context(), e, cmd)
			pod := releasedPod(t, c, e.Namespace)
			podJSON, _ := json.Marshal(pod)
			for _, secret := range []string{kubeGitPass, kubeIdentity} {
				if bytes.Contains(podJSON, []byte(secret)) {
					t.Fatalf("%s: the pod reveals %q:\n%s", name, secret, podJSON)
				}
			}
			checkout, test := pod.Spec.InitContainers[0], pod.Spec.Containers[0]
			if checkout.Image != runner || strings.Join(checkout.Command[:2], " ") != "slipway checkout" || test.Image != runner {
				t.Fatalf("%s: checkout %s %v, test in %s; want slipway checkout and the test in the runner image", name, checkout.Image, checkout.Command, test.Image)
			}
			if v := envVar(checkout.Env, "GIT_CONFIG_COUNT"); v != nil {
				t.Fatalf("%s: git's settings in slipway checkout's environment: %+v", name, v)
			}
			if name == "https" {
				if v := envVar(checkout.Env, CheckoutEnvPassword); v == nil || v.ValueFrom == nil || v.ValueFrom.SecretKeyRef.Name != pod.Name {
					t.Fatalf("the checkout's password does not come from the secret: %+v", v)
				}
			} else if v := envVar(checkout.Env, CheckoutEnvIdentityFile); v == nil || v.Value != kubeGitAuth+"/identity" {
				t.Fatalf("the checkout's identity file: %+v", v)
			}
			exitPod(t, c, pod, 0)
			if err := awaitExec(t, errc); err != nil {
				t.Fatal(err)
			}
		}
	})

	t.Run("Refusals", func(t *testing.T) {
		e := newExecutor(t)
		for name, edit := range map[string]func(*Command){
			"password in URL":    func(c *Command) { c.Source.URL = "https://u:" + kubeGitPass + "@git.example/tea.git" },
			"SSH passphrase":     func(c *Command) { c.Source.Auth = &gitsource.Credentials{Identity: []byte("k"), Password: "p"} },
			"short commit":       func(c *Command) { c.Source.Commit = "0123456" },
			"dir outside":        func(c *Command) { c.Dir = "/etc" },
			"run id not a label": func(c *Command) { c.RunID = "" },
		} {
			cmd := kubeCommand(nil)
			edit(&cmd)
			err := e.Exec(t.Context(), cmd)
			if err == nil || strings.Contains(err.Error(), kubeGitPass) {
				t.Errorf("%s: error %v", name, err)
			}
		}
		var pods corev1.PodList
		if err := c.List(t.Context(), &pods, client.InNamespace(e.Namespace)); err != nil || len(pods.Items) != 0 {
			t.Fatalf("a refused command created %d pods (%v)", len(pods.Items), err)
		}
	})
}

// TestKubePodScripts runs the Pod's two containers as local processes,
// with the environment the kubelet would give them from the Secret: the
// checkout fetches an exact commit (not the branch head) from a git server
// that demands the credentials, and the command runs where it would in the
// Pod, with its variables and limits and without the git credentials.
func TestKubePodScripts(t *testing.T) {
	if _, err := exec.LookPath("git"); err != nil {
		t.Skip("the checkout script needs git")
	}
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	gs, err := gitserver.New(t.TempDir(), gitUser, gitPass)
	if err != nil {
		t.Fatal(err)
	}
	if err := gs.CreateRepo(ctx, "tea.git"); err != nil {
		t.Fatal(err)
	}
	if _, err := gs.Start(t.Context(), ""); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = gs.Close() })
	url := gs.RepoURL("tea.git")
	var commits []string
	for _, marker := range []string{"first", "second"} {
		sha, err := gitserver.CommitFiles(ctx, url, gitAuth, gitserver.Commit{
			Files: map[string][]byte{"svc/marker.txt": []byte(marker + "\n")}, Message: marker,
			Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
		})
		if err != nil {
			t.Fatal(err)
		}
		commits = append(commits, sha)
	}

	cmd := kubeCommand(nil)
	cmd.Script = `cat marker.txt; pwd; echo "token=$DEPLOY_TOKEN home=$HOME"; ulimit -n; env | grep -c SLIPWAY_GIT || true`
	cmd.Source = Source{URL: url, Commit: commits[0], Branch: "main", Auth: &gitsource.Credentials{Username: gitUser, Password: gitPass}}
	pod, secret, err := (&KubeExecutor{Namespace: "ci"}).objects(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	// The Pod's volumes become directories of a temporary one.
	root := t.TempDir()
	local := func(p string) string { return strings.Replace(p, kubeMount, root, 1) }
	run := func(ctr corev1.Container) string {
		t.Helper()
		env := []string{"PATH=" + os.Getenv("PATH")}
		for _, v := range ctr.Env {
			val := v.Value
			if v.ValueFrom != nil {
				val = string(secret.Data[v.ValueFrom.SecretKeyRef.Key])
			}
			if v.Name == "HOME" && val == "/tmp" {
				val = t.TempDir()
			}
			env = append(env, v.Name+"="+local(val))
		}
		c := exec.CommandContext(ctx, ctr.Command[0], ctr.Command[1:]...)
		c.Dir, c.Env = local(ctr.WorkingDir), env
		if ctr.WorkingDir == "/tmp" {
			c.Dir = t.TempDir()
		}
		out, err := c.CombinedOutput()
		if err != nil {
			t.Fatalf("container %s: %v\n%s", ctr.Name, err, out)
		}
		return string(out)
	}

	out := run(pod.Spec.InitContainers[0])
	if !strings.Contains(out, "checked out "+commits[0]) {
		t.Fatalf("checkout output:\n%s", out)
	}
	config, err := os.ReadFile(filepath.Join(local(kubeWorkspace), ".git", "config"))
	if err != nil || bytes.Contains(config, []byte(gitPass)) {
		t.Fatalf("the checkout's git config holds the password (%v):\n%s", err, config)
	}
	out = run(pod.Spec.Containers[0])
	want := "first\n" + local(kubeWorkspace) + "/svc\ntoken=" + kubeDeployKey + " home=" + local(kubeWorkspace) + "\n1024\n0\n"
	if out != want {
		t.Fatalf("command output:\n%s\nwant:\n%s", out, want)
	}

	// With the runner image, the checkout is `slipway checkout`, which
	// reads the same Pod environment with CheckoutFromEnv.
	pod, secret, err = (&KubeExecutor{Namespace: "ci", RunnerImage: "registry.example/slipway/runner:1"}).objects(ctx, cmd)
	if err != nil {
		t.Fatal(err)
	}
	root = t.TempDir()
	ctr := pod.Spec.InitContainers[0]
	getenv := func(name string) string {
		for _, v := range ctr.Env {
			if v.Name == name && v.ValueFrom != nil {
				return string(secret.Data[v.ValueFrom.SecretKeyRef.Key])
			} else if v.Name == name {
				return local(v.Value)
			}
		}
		return ""
	}
	var log bytes.Buffer
	if err := CheckoutFromEnv(ctx, getenv, time.Minute, &log); err != nil {
		t.Fatalf("slipway checkout: %v\n%s", err, log.String())
	}
	if marker, err := os.ReadFile(filepath.Join(local(kubeWorkspace), "svc", "marker.txt")); err != nil || string(marker) != "first\n" {
		t.Fatalf("slipway checkout wrote marker.txt %q (%v), want the first commit's", marker, err)
	}
	if strings.Contains(log.String(), gitPass) || !strings.Contains(log.String(), "checked out "+commits[0]) {
		t.Fatalf("slipway checkout's log:\n%s", log.String())
	}
}

func kubeCommand(out *bytes.Buffer) Command {
	c := Command{
		Script:    "go test ./...",
		Workspace: "/srv/slipway/runs/tea-run-1/workspace",
		Dir:       "/srv/slipway/runs/tea-run-1/workspace/svc",
		Env:       []string{"GOFLAGS=-mod=mod", "DEPLOY_TOKEN=" + kubeDeployKey},
		Limits:    Limits{CPUTime: 10 * time.Minute, Memory: 2 << 30, OpenFiles: 1024, CPU: 1500, FileSize: 1 << 30, Disk: 4 << 30},
		RunID:     "tea-run-1",
		Source: Source{
			URL: "https://git.example/shop/tea.git", Commit: kubeTestCommit, Branch: "main",
			Auth: &gitsource.Credentials{Username: "slipway", Password: kubeGitPass},
		},
	}
	if out != nil {
		c.Output = out
	}
	return c
}

func execAsync(ctx context.Context, e *KubeExecutor, c Command) <-chan error {
	errc := make(chan error, 1)
	go func() { errc <- e.Exec(ctx, c) }()
	return errc
}

func awaitExec(t *testing.T, errc <-chan error) error {
	t.Helper()
	select {
	case err := <-errc:
		return err
	case <-time.After(time.Minute):
		t.Fatal("Exec did not return within a minute of the pod ending")
		return nil
	}
}

// releasedPod waits for the executor's Pod to lose its scheduling gate,
// which it does once its Secret exists.
func releasedPod(t *testing.T, c client.Client, ns string) *corev1.Pod {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		var pods corev1.PodList
		if err := c.List(t.Context(), &pods, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		if len(pods.Items) == 1 && len(pods.Items[0].Spec.SchedulingGates) == 0 {
			return &pods.Items[0]
		}
	}
	t.Fatalf("no released pod in %s after 30s", ns)
	return nil
}

// exitPod writes what a kubelet would once the test container exited.
func exitPod(t *testing.T, c client.Client, pod *corev1.Pod, code int32) {
	t.Helper()
	phase := corev1.PodSucceeded
	if code != 0 {
		phase = corev1.PodFailed
	}
	pod.Status = corev1.PodStatus{
		Phase:                 phase,
		InitContainerStatuses: []corev1.ContainerStatus{terminatedStatus(kubeCheckoutContainer, pod, 0)},
		ContainerStatuses:     []corev1.ContainerStatus{terminatedStatus(kubeTestContainer, pod, code)},
	}
	if err := c.Status().Update(t.Context(), pod); err != nil {
		t.Fatal(err)
	}
}

func terminatedStatus(name string, pod *corev1.Pod, code int32) corev1.ContainerStatus {
	image := pod.Spec.Containers[0].Image
	if name == kubeCheckoutContainer {
		image = pod.Spec.InitContainers[0].Image
	}
	reason := "Completed"
	if code != 0 {
		reason = "Error"
	}
	now := metav1.Now()
	return corev1.ContainerStatus{Name: name, Image: image, State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
		ExitCode: code, Reason: reason, StartedAt: now, FinishedAt: now,
	}}}
}

func assertDeleted(t *testing.T, c client.Client, pod *corev1.Pod) {
	t.Helper()
	key := client.ObjectKeyFromObject(pod)
	for _, obj := range []client.Object{&corev1.Pod{}, &corev1.Secret{}} {
		if err := c.Get(context.Background(), key, obj); !apierrors.IsNotFound(err) {
			t.Fatalf("%T %s still exists after Exec returned (%v)", obj, key, err)
		}
	}
}

func secretHolds(s *corev1.Secret, value string) bool {
	for _, v := range s.Data {
		if string(v) == value {
			return true
		}
	}
	return false
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}

func envVar(env []corev1.EnvVar, name string) *corev1.EnvVar {
	for i := range env {
		if env[i].Name == name {
			return &env[i]
		}
	}
	return nil
}

func mountsEmptyDir(s corev1.PodSpec, ctr corev1.Container, path string) bool {
	for _, m := range ctr.VolumeMounts {
		if m.MountPath != path {
			continue
		}
		for _, v := range s.Volumes {
			if v.Name == m.Name && v.EmptyDir != nil {
				return true
			}
		}
	}
	return false
}

func isTrue(b *bool) bool  { return b != nil && *b }
func isFalse(b *bool) bool { return b != nil && !*b }
