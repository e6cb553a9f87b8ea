package pipeline

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/apimachinery/pkg/util/validation"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// DefaultKubeImage runs the checkout and the test command when neither the
// operator nor slipway.yaml names an image: Slipway builds Go services, and
// the Go image also carries git and ssh for the checkout.
const DefaultKubeImage = "docker.io/library/golang:1.26"

// DefaultKubeUser is the user the Pod's containers run as: non-root, and
// "nobody" in Debian and Alpine images, because OpenSSH refuses to run as
// a user id the image's /etc/passwd does not know.
const DefaultKubeUser int64 = 65534

// RunLabel names, on a test Pod and its Secret, the run they belong to.
const RunLabel = "slipway.dev/run"

const (
	kubeCheckoutContainer = "checkout"
	kubeTestContainer     = "test"
	// kubeGate holds the Pod back from scheduling until its Secret, which
	// can only be owned by a Pod that exists, has been created.
	kubeGate = "slipway.dev/secret"
	// kubeMount is the workspace volume. The checkout is a directory the
	// checkout creates inside it rather than the volume's root, which
	// root owns: git refuses repositories owned by another user.
	kubeMount     = "/slipway"
	kubeWorkspace = kubeMount + "/workspace"
	kubeGitAuth   = "/var/run/slipway/git"
	kubePollMin   = 200 * time.Millisecond
	kubePollMax   = 5 * time.Second
	// kubeReadFailures is how many reads of the Pod in a row may fail (an
	// API server restarting, throttling) before Exec gives up on it.
	kubeReadFailures = 5
	// kubeCleanupTimeout bounds deleting the Pod and Secret, which happens
	// even when the run's own context is done.
	kubeCleanupTimeout = 15 * time.Second
	// kubeCheckoutTimeout bounds `slipway checkout`'s clone, as the run's
	// own checkout is bounded (the Pod's deadline bounds it too).
	kubeCheckoutTimeout = 2 * time.Minute
)

// checkoutScript fetches exactly one commit into the workspace. Fetching a
// commit by its id is not allowed by every server, so it falls back to the
// branch, or to every branch. Credentials never appear on a command line
// or in the URL: a credential helper reads them from the environment,
// which the Pod fills from its Secret.
const checkoutScript = `set -eu
git init -q "$SLIPWAY_WORKSPACE"
cd "$SLIPWAY_WORKSPACE"
git remote add origin "$SLIPWAY_SOURCE_URL"
if ! git fetch -q --no-tags --depth=1 origin "$SLIPWAY_COMMIT" 2>/dev/null; then
  git fetch -q --no-tags origin ${SLIPWAY_BRANCH:+"+refs/heads/$SLIPWAY_BRANCH:refs/remotes/origin/$SLIPWAY_BRANCH"}
fi
git -c advice.detachedHead=false checkout -q "$SLIPWAY_COMMIT"
echo "checked out $SLIPWAY_COMMIT"
`

// credentialHelper answers git's "get" with the variables the Pod takes
// from its Secret.
const credentialHelper = `!f() { if [ "$1" = get ]; then printf 'username=%s\npassword=%s\n' "$SLIPWAY_GIT_USERNAME" "$SLIPWAY_GIT_PASSWORD"; fi; }; f`

// KubeExecutor runs each command as a Pod of its own, for a server that
// runs inside a cluster. The Pod checks the source out itself (an init
// container fetches Command.Source) and runs the command in
// Command.Image, under the restricted Pod Security Standard, with
// Command.Limits as its resources and the step's deadline as its
// activeDeadlineSeconds. The values of Command.Env, and the git
// credentials, go into a Secret made for the execution and owned by the
// Pod; the Pod spec names variables, never values. Both are deleted when
// Exec returns.
//
// It needs, in Namespace: pods create, get, patch, delete; pods/log get;
// secrets create, delete.
type KubeExecutor struct {
	// Client creates, reads and deletes Pods and Secrets. It should not
	// read from a cache: a cached client would watch every Pod of the
	// cluster to see one.
	Client client.Client
	// Logs reads container logs (pods/log), which Client cannot; when nil
	// the step log says the logs are unavailable.
	Logs corev1client.PodsGetter
	// Namespace holds the Pods and Secrets.
	Namespace string
	// Image runs the test command when Command.Image is empty;
	// RunnerImage, else DefaultKubeImage, when empty too.
	Image string
	// CheckoutImage runs the checkout when RunnerImage is empty; it needs
	// sh, git and, for SSH remotes, ssh. Image when empty (not
	// Command.Image: the developers' test image need not have git).
	CheckoutImage string
	// RunnerImage is Slipway's runner image: the slipway binary, a static
	// sh and the Go toolchain. When set, the checkout runs `slipway
	// checkout` in it (go-git, the server's own checkout code, so no image
	// needs git or ssh and the Pod tests exactly what the server builds),
	// and the command runs in it when neither Command.Image nor Image
	// names an image. The git script in CheckoutImage stays for operators
	// who bring their own images.
	RunnerImage string
	// RunAsUser is the user and group id of every container;
	// DefaultKubeUser when zero.
	RunAsUser int64
}

// The rights above, in the namespace `slipway install` makes for test
// Pods (config/rbac is generated from these lines by `make generate`).
//
// +kubebuilder:rbac:groups="",namespace=slipway-runs,resources=pods,verbs=create;get;patch;delete
// +kubebuilder:rbac:groups="",namespace=slipway-runs,resources=pods/log,verbs=get
// +kubebuilder:rbac:groups="",namespace=slipway-runs,resources=secrets,verbs=create;delete

// NewKubeExecutor returns an executor that runs commands as Pods in
// namespace, with image as the default image ("" for DefaultKubeImage).
// c should be an uncached client; cfg, when not nil, gives the client
// that reads container logs.
func NewKubeExecutor(c client.Client, cfg *rest.Config, namespace, image string) (*KubeExecutor, error) {
	if c == nil || namespace == "" {
		return nil, errors.New("kubernetes executor: a client and a namespace are required")
	}
	e := &KubeExecutor{Client: c, Namespace: namespace, Image: image}
	if cfg != nil {
		logs, err := corev1client.NewForConfig(cfg)
		if err != nil {
			return nil, fmt.Errorf("kubernetes executor: the client for pod logs: %w", err)
		}
		e.Logs = logs
	}
	return e, nil
}

// Name implements Executor.
func (*KubeExecutor) Name() string { return "kubernetes" }

// Isolation implements Executor.
func (*KubeExecutor) Isolation() Isolation { return IsolationPod }

// Exec implements Executor.
func (e *KubeExecutor) Exec(ctx context.Context, c Command) (err error) {
	out := c.Output
	if out == nil {
		out = io.Discard
	}
	if e.Client == nil || e.Namespace == "" {
		return errors.New("kubernetes executor: a client and a namespace are required")
	}
	if ctx.Err() != nil {
		return fmt.Errorf("kubernetes executor: not started: %w", ctx.Err())
	}
	pod, secret, err := e.objects(ctx, c)
	if err != nil {
		return fmt.Errorf("kubernetes executor: %w", err)
	}
	where := pod.Namespace + "/" + pod.Name
	if err := e.Client.Create(ctx, pod); err != nil {
		return kubeFailed(ctx, "create pod "+where, err)
	}
	defer func() { err = errors.Join(err, e.cleanup(ctx, pod, secret)) }()

	// The Secret is owned by the Pod, so that the garbage collector
	// deletes it with the Pod even if this process dies before cleanup.
	secret.OwnerReferences = []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID}}
	if err := e.Client.Create(ctx, secret); err != nil {
		return kubeFailed(ctx, "create secret "+where, err)
	}
	release := client.MergeFrom(pod.DeepCopy())
	pod.Spec.SchedulingGates = nil
	if err := e.Client.Patch(ctx, pod, release); err != nil {
		return kubeFailed(ctx, "remove the scheduling gate of pod "+where, err)
	}
	fmt.Fprintf(out, "slipway: pod %s checks out %s and runs the command in %s\n", where, c.Source.Commit, pod.Spec.Containers[0].Image)
	fmt.Fprintf(out, "slipway: the pod's network is what the NetworkPolicies of namespace %s allow\n", e.Namespace)
	return e.wait(ctx, client.ObjectKeyFromObject(pod), c, out)
}

// kubeFailed names the operation that failed. Once ctx is done, ctx is
// the cause, whatever the call returned.
func kubeFailed(ctx context.Context, op string, err error) error {
	if ctx.Err() != nil {
		return fmt.Errorf("kubernetes executor: %s: stopped, the pod deleted: %w", op, ctx.Err())
	}
	return fmt.Errorf("kubernetes executor: %s: %w", op, err)
}

// cleanup deletes the Secret and the Pod (stopping its containers). It
// uses a context of its own: when the run's is done is when the Pod most
// needs deleting.
func (e *KubeExecutor) cleanup(ctx context.Context, pod *corev1.Pod, secret *corev1.Secret) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), kubeCleanupTimeout)
	defer cancel()
	var errs []error
	for _, o := range []struct {
		kind string
		obj  client.Object
	}{{"secret", secret}, {"pod", pod}} {
		err := e.Client.Delete(ctx, o.obj, client.PropagationPolicy(metav1.DeletePropagationBackground))
		if client.IgnoreNotFound(err) != nil {
			errs = append(errs, fmt.Errorf("kubernetes executor: delete %s %s/%s: %w", o.kind, o.obj.GetNamespace(), o.obj.GetName(), err))
		}
	}
	return errors.Join(errs...)
}

// wait polls the Pod with backoff until it ends or ctx is done, copying
// the test container's log once it has started.
func (e *KubeExecutor) wait(ctx context.Context, key client.ObjectKey, c Command, out io.Writer) error {
	delay, failures, logged := kubePollMin, 0, false
	for {
		pod := &corev1.Pod{}
		err := e.Client.Get(ctx, key, pod)
		switch {
		case ctx.Err() != nil:
			return kubeFailed(ctx, "wait for pod "+key.String(), ctx.Err())
		case apierrors.IsNotFound(err):
			return fmt.Errorf("kubernetes executor: pod %s was deleted by someone else before it finished", key)
		case err != nil:
			if failures++; failures >= kubeReadFailures {
				return fmt.Errorf("kubernetes executor: read pod %s (%d attempts): %w", key, failures, err)
			}
		default:
			failures = 0
			done := pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed
			if !logged && (done || started(pod.Status.ContainerStatuses, kubeTestContainer)) {
				// Following returns when the container ends; read the Pod
				// again at once for its exit code.
				logged = true
				e.copyLog(ctx, pod, kubeTestContainer, out)
				delay = kubePollMin
				continue
			}
			if done {
				return e.outcome(ctx, pod, c, out)
			}
		}
		select {
		case <-ctx.Done():
			return kubeFailed(ctx, "wait for pod "+key.String(), ctx.Err())
		case <-time.After(delay):
		}
		delay = min(2*delay, kubePollMax)
	}
}

// copyLog follows a container's log into out. A missing log does not fail
// the command: the exit code comes from the Pod's status either way.
func (e *KubeExecutor) copyLog(ctx context.Context, pod *corev1.Pod, container string, out io.Writer) {
	where := fmt.Sprintf("container %s of pod %s/%s", container, pod.Namespace, pod.Name)
	switch {
	case e.Logs == nil:
		fmt.Fprintf(out, "slipway: the log of %s is unavailable: the executor has no client for pods/log\n", where)
		return
	case pod.Spec.NodeName == "":
		// The API server answers an empty log for such a Pod rather than
		// an error, which would read as a command that printed nothing.
		fmt.Fprintf(out, "slipway: the log of %s is unavailable: the pod was never bound to a node, so no kubelet holds it\n", where)
		return
	}
	rc, err := e.Logs.Pods(pod.Namespace).GetLogs(pod.Name, &corev1.PodLogOptions{Container: container, Follow: true}).Stream(ctx)
	if err != nil {
		if ctx.Err() == nil {
			fmt.Fprintf(out, "slipway: the log of %s is unavailable (the API server could not serve pods/log: %v); the outcome comes from the pod's status\n", where, err)
		}
		return
	}
	defer rc.Close()
	if _, err := io.Copy(out, rc); err != nil && ctx.Err() == nil {
		fmt.Fprintf(out, "\nslipway: the log of %s broke off: %v\n", where, err)
	}
}

// outcome reads the result of an ended Pod.
func (e *KubeExecutor) outcome(ctx context.Context, pod *corev1.Pod, c Command, out io.Writer) error {
	where := pod.Namespace + "/" + pod.Name
	if st := terminated(pod.Status.ContainerStatuses, kubeTestContainer); st != nil {
		if st.ExitCode == 0 && pod.Status.Phase == corev1.PodSucceeded {
			return nil
		}
		if st.Reason != "" && st.Reason != "Error" && st.Reason != "Completed" {
			// OOMKilled, for one, explains an exit code of 137.
			fmt.Fprintf(out, "slipway: container %s of pod %s: %s %s\n", kubeTestContainer, where, st.Reason, st.Message)
		}
		if st.ExitCode != 0 {
			return &ExitError{Code: int(st.ExitCode)}
		}
	}
	if st := terminated(pod.Status.InitContainerStatuses, kubeCheckoutContainer); st != nil && st.ExitCode != 0 {
		e.copyLog(ctx, pod, kubeCheckoutContainer, out)
		return fmt.Errorf("kubernetes executor: the checkout of %s in pod %s exited with status %d %s", c.Source.Commit, where, st.ExitCode, st.Reason)
	}
	// A pod that ends without the test container exiting 0 and the pod
	// succeeding (evicted, say) has not passed the tests.
	return fmt.Errorf("kubernetes executor: pod %s ended %s without container %s passing: %s %s",
		where, pod.Status.Phase, kubeTestContainer, pod.Status.Reason, pod.Status.Message)
}

func containerStatus(sts []corev1.ContainerStatus, name string) *corev1.ContainerStatus {
	for i := range sts {
		if sts[i].Name == name {
			return &sts[i]
		}
	}
	return nil
}

func started(sts []corev1.ContainerStatus, name string) bool {
	st := containerStatus(sts, name)
	return st != nil && (st.State.Running != nil || st.State.Terminated != nil)
}

func terminated(sts []corev1.ContainerStatus, name string) *corev1.ContainerStateTerminated {
	if st := containerStatus(sts, name); st != nil {
		return st.State.Terminated
	}
	return nil
}

// objects builds the Pod, held back by its scheduling gate, and the
// Secret holding every value the Pod must not show.
func (e *KubeExecutor) objects(ctx context.Context, c Command) (*corev1.Pod, *corev1.Secret, error) {
	src := c.Source
	switch {
	case src.URL == "" || !commitPattern.MatchString(src.Commit):
		return nil, nil, errors.New("the source URL and full commit are required: the pod checks the source out itself")
	case len(validation.IsValidLabelValue(labelValue(c.RunID))) > 0 || c.RunID == "":
		return nil, nil, fmt.Errorf("run id %q cannot name a pod", c.RunID)
	}
	if u, err := url.Parse(src.URL); err == nil && u.User != nil {
		if _, ok := u.User.Password(); ok {
			return nil, nil, fmt.Errorf("the source URL %s carries a password; the source secret must hold it", u.Redacted())
		}
	}
	dir, err := kubeDir(c)
	if err != nil {
		return nil, nil, err
	}
	name := podName(c.RunID)
	meta := metav1.ObjectMeta{
		Name: name, Namespace: e.Namespace,
		Labels:      map[string]string{RunLabel: labelValue(c.RunID), "app.kubernetes.io/managed-by": "slipway"},
		Annotations: map[string]string{RunLabel: c.RunID, "slipway.dev/commit": src.Commit},
	}
	secret := &corev1.Secret{ObjectMeta: *meta.DeepCopy(), Type: corev1.SecretTypeOpaque, Data: map[string][]byte{}, Immutable: pointer(true)}
	withSlipway := e.RunnerImage != ""
	checkoutEnv, authVolume, err := checkoutAuth(src, name, secret.Data, withSlipway)
	if err != nil {
		return nil, nil, err
	}
	checkoutImage := cmp.Or(e.CheckoutImage, e.Image, DefaultKubeImage)
	checkoutCommand := []string{"sh", "-c", checkoutScript}
	if withSlipway {
		checkoutImage = e.RunnerImage
		checkoutCommand = []string{"slipway", "checkout", "--timeout=" + kubeCheckoutTimeout.String()}
	}

	uid := e.RunAsUser
	if uid == 0 {
		uid = DefaultKubeUser
	}
	image := cmp.Or(c.Image, e.Image, e.RunnerImage, DefaultKubeImage)
	mounts := []corev1.VolumeMount{{Name: "workspace", MountPath: kubeMount}, {Name: "tmp", MountPath: "/tmp"}}
	volumes := []corev1.Volume{
		{Name: "workspace", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
	}
	checkoutMounts := mounts
	if authVolume != nil {
		volumes = append(volumes, *authVolume)
		checkoutMounts = append(append([]corev1.VolumeMount{}, mounts...), corev1.VolumeMount{Name: authVolume.Name, MountPath: kubeGitAuth, ReadOnly: true})
	}
	resources := c.Limits.resources()

	pod := &corev1.Pod{
		ObjectMeta: meta,
		Spec: corev1.PodSpec{
			RestartPolicy:                corev1.RestartPolicyNever,
			ActiveDeadlineSeconds:        activeDeadline(ctx),
			AutomountServiceAccountToken: pointer(false),
			EnableServiceLinks:           pointer(false),
			// On deletion the command has 10s after SIGTERM to end.
			TerminationGracePeriodSeconds: pointer(int64(10)),
			SchedulingGates:               []corev1.PodSchedulingGate{{Name: kubeGate}},
			SecurityContext: &corev1.PodSecurityContext{
				RunAsNonRoot: pointer(true), RunAsUser: &uid, RunAsGroup: &uid, FSGroup: &uid,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
			},
			InitContainers: []corev1.Container{{
				Name:            kubeCheckoutContainer,
				Image:           checkoutImage,
				Command:         checkoutCommand,
				Env:             checkoutEnv,
				WorkingDir:      "/tmp",
				VolumeMounts:    checkoutMounts,
				Resources:       resources,
				SecurityContext: restricted(uid),
			}},
			Containers: []corev1.Container{{
				Name:  kubeTestContainer,
				Image: image,
				// The limits each process of the command has locally
				// (prlimit there, ulimit here) on top of the Pod's own.
				Command:         []string{"sh", "-c", c.Limits.ulimits() + `exec sh -c "$1"`, "sh", c.Script},
				Env:             commandEnv(c.Env, name, secret.Data),
				WorkingDir:      dir,
				VolumeMounts:    mounts,
				Resources:       resources,
				SecurityContext: restricted(uid),
			}},
			Volumes: volumes,
		},
	}
	return pod, secret, nil
}

// commandEnv is what the local executor adds to the command's environment,
// then Env. Every value of Env goes into data, not only the secrets'
// (Env does not say which are), under keys of their own, so that any
// variable name works, not only those a Secret key may be. As locally, a
// variable of Env overrides one the executor sets.
func commandEnv(env []string, secretName string, data map[string][]byte) []corev1.EnvVar {
	values := map[string]string{}
	var names []string
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, dup := values[k]; !dup {
			names = append(names, k)
		}
		values[k] = v
	}
	var vars []corev1.EnvVar
	for _, v := range []corev1.EnvVar{
		{Name: "HOME", Value: kubeWorkspace},
		{Name: "TMPDIR", Value: "/tmp"},
		{Name: "GIT_TERMINAL_PROMPT", Value: "0"},
		{Name: "GIT_SSH_COMMAND", Value: "ssh -o BatchMode=yes"},
		// The image's GOPATH is on its read-only root; the caches stay
		// out of the checkout, as the local executor's do.
		{Name: "GOPATH", Value: kubeMount + "/go"},
		{Name: "GOCACHE", Value: kubeMount + "/cache/go-build"},
	} {
		if _, set := values[v.Name]; !set {
			vars = append(vars, v)
		}
	}
	for i, k := range names {
		key := "env-" + strconv.Itoa(i)
		data[key] = []byte(values[k])
		vars = append(vars, fromSecret(k, secretName, key))
	}
	return vars
}

// checkoutAuth returns the checkout container's environment and, for
// SSH, the volume with the identity and known_hosts, putting the
// credentials into data. withSlipway gives the variables `slipway
// checkout` reads (CheckoutFromEnv), else those of checkoutScript's git.
func checkoutAuth(src Source, secretName string, data map[string][]byte, withSlipway bool) ([]corev1.EnvVar, *corev1.Volume, error) {
	env := []corev1.EnvVar{
		{Name: CheckoutEnvWorkspace, Value: kubeWorkspace},
		{Name: CheckoutEnvURL, Value: src.URL},
		{Name: CheckoutEnvCommit, Value: src.Commit},
		{Name: CheckoutEnvBranch, Value: src.Branch},
		{Name: "HOME", Value: "/tmp"},
	}
	if !withSlipway {
		env = append(env, corev1.EnvVar{Name: "GIT_TERMINAL_PROMPT", Value: "0"})
	}
	a := src.Auth
	switch {
	case a == nil:
		if !withSlipway {
			env = append(env, corev1.EnvVar{Name: "GIT_SSH_COMMAND", Value: "ssh -o BatchMode=yes"})
		}
		return env, nil, nil
	case len(a.Identity) > 0:
		if a.Password != "" && !withSlipway {
			return nil, nil, errors.New("an SSH identity with a passphrase cannot be used for the checkout: ssh would ask for it")
		}
		data["git-identity"], data["git-known-hosts"] = a.Identity, a.KnownHosts
		user := cmp.Or(a.Username, "git") // as gitsource does; a user in the URL comes first
		if withSlipway {
			data["git-username"] = []byte(user)
			env = append(env,
				fromSecret(CheckoutEnvUsername, secretName, "git-username"),
				corev1.EnvVar{Name: CheckoutEnvIdentityFile, Value: kubeGitAuth + "/identity"},
				corev1.EnvVar{Name: CheckoutEnvKnownHostsFile, Value: kubeGitAuth + "/known_hosts"},
			)
			if a.Password != "" {
				data["git-password"] = []byte(a.Password) // the identity's passphrase
				env = append(env, fromSecret(CheckoutEnvPassword, secretName, "git-password"))
			}
		} else {
			env = append(env, corev1.EnvVar{Name: "GIT_SSH_COMMAND", Value: "ssh -o BatchMode=yes -o IdentitiesOnly=yes -o StrictHostKeyChecking=yes" +
				" -o UserKnownHostsFile=" + kubeGitAuth + "/known_hosts -i " + kubeGitAuth + "/identity -l " + user})
		}
		// Readable by the Pod's group (fsGroup) only; ssh accepts a key
		// another user (root) owns.
		vol := &corev1.Volume{Name: "git-auth", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{
			SecretName:  secretName,
			Items:       []corev1.KeyToPath{{Key: "git-identity", Path: "identity"}, {Key: "git-known-hosts", Path: "known_hosts"}},
			DefaultMode: pointer(int32(0o440)),
		}}}
		return env, vol, nil
	default:
		data["git-username"], data["git-password"] = []byte(cmp.Or(a.Username, "git")), []byte(a.Password)
		env = append(env,
			fromSecret(CheckoutEnvUsername, secretName, "git-username"),
			fromSecret(CheckoutEnvPassword, secretName, "git-password"),
		)
		if !withSlipway {
			env = append(env,
				corev1.EnvVar{Name: "GIT_CONFIG_COUNT", Value: "1"},
				corev1.EnvVar{Name: "GIT_CONFIG_KEY_0", Value: "credential.helper"},
				corev1.EnvVar{Name: "GIT_CONFIG_VALUE_0", Value: credentialHelper},
			)
		}
		return env, nil, nil
	}
}

func fromSecret(name, secret, key string) corev1.EnvVar {
	return corev1.EnvVar{Name: name, ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
		LocalObjectReference: corev1.LocalObjectReference{Name: secret}, Key: key,
	}}}
}

// restricted is the container security context the restricted Pod
// Security Standard asks for, with a read-only root: the command writes
// only to the workspace and /tmp volumes.
func restricted(uid int64) *corev1.SecurityContext {
	return &corev1.SecurityContext{
		RunAsNonRoot:             pointer(true),
		RunAsUser:                &uid,
		RunAsGroup:               &uid,
		AllowPrivilegeEscalation: pointer(false),
		Capabilities:             &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}},
		ReadOnlyRootFilesystem:   pointer(true),
		SeccompProfile:           &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault},
	}
}

// activeDeadline is the time left to the step's deadline. The kubelet
// counts it from the Pod's start, so it only ever fires after ctx does;
// it stops the Pod should this process die before deleting it.
func activeDeadline(ctx context.Context) *int64 {
	d, ok := ctx.Deadline()
	if !ok {
		return nil
	}
	return pointer(max(1, int64(time.Until(d).Seconds()+0.999)))
}

// resources maps Limits onto the containers: Memory and CPU bound the Pod
// as a whole, with requests equal to the limits, so a test is only
// scheduled where it fits and is the last to be evicted: a test that
// failed for a neighbour's sake would be noise. Disk becomes a limit of
// ephemeral storage, which the kubelet evicts a Pod for exceeding, with a
// request of zero: most of it is never used, and a request that large
// would keep the Pod off nodes with smaller disks.
func (l Limits) resources() corev1.ResourceRequirements {
	rl := corev1.ResourceList{}
	if l.CPU > 0 {
		rl[corev1.ResourceCPU] = *resource.NewMilliQuantity(l.CPU, resource.DecimalSI)
	}
	if l.Memory > 0 {
		rl[corev1.ResourceMemory] = *resource.NewQuantity(l.Memory, resource.BinarySI)
	}
	limits := rl.DeepCopy()
	if l.Disk > 0 {
		limits[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(l.Disk, resource.BinarySI)
		// Zero, not absent: the API server defaults an absent request to
		// the limit.
		rl[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(0, resource.BinarySI)
	}
	if len(limits) == 0 {
		return corev1.ResourceRequirements{}
	}
	return corev1.ResourceRequirements{Requests: rl, Limits: limits}
}

// ulimits sets the per-process limits prlimit sets locally, as a shell
// prefix.
func (l Limits) ulimits() string {
	var s string
	if l.CPUTime > 0 {
		s += "ulimit -t " + strconv.FormatInt(int64(l.CPUTime.Seconds()+0.5), 10) + " && "
	}
	if l.Memory > 0 {
		s += "ulimit -v " + strconv.FormatInt(max(1, l.Memory>>10), 10) + " && "
	}
	if l.OpenFiles > 0 {
		s += "ulimit -n " + strconv.FormatInt(l.OpenFiles, 10) + " && "
	}
	if l.FileSize > 0 {
		// ulimit -f counts blocks of 512 bytes in POSIX shells.
		s += "ulimit -f " + strconv.FormatInt(max(1, l.FileSize/512), 10) + " && "
	}
	return s
}

// kubeDir is the command's working directory in the Pod: Dir's place in
// Workspace, within the Pod's checkout.
func kubeDir(c Command) (string, error) {
	if c.Workspace == "" || c.Dir == "" {
		return kubeWorkspace, nil
	}
	rel, err := filepath.Rel(c.Workspace, c.Dir)
	if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
		return "", fmt.Errorf("the working directory %s is not inside the workspace %s", c.Dir, c.Workspace)
	}
	return path.Join(kubeWorkspace, filepath.ToSlash(rel)), nil
}

// podName is readable (the run's id) and unique (a run retried under the
// same id makes a new Pod), and short enough to be the Pod's host name.
func podName(runID string) string {
	base := strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			return r
		}
		return '-'
	}, strings.ToLower(runID))
	base = strings.Trim(base[:min(len(base), 40)], "-")
	if base == "" {
		base = "run"
	}
	return base + "-test-" + rand.String(5)
}

// labelValue fits a run id into a label value; the annotation of the same
// name keeps it whole.
func labelValue(runID string) string {
	return strings.TrimRight(runID[:min(len(runID), validation.LabelValueMaxLength)], "-._")
}

func pointer[T any](v T) *T { return &v }
