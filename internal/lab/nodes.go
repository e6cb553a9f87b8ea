package lab

import (
	"context"
	"fmt"
	"net/http"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// kwokNodeAnnotation marks the nodes KWOK simulates.
const kwokNodeAnnotation = "kwok.x-k8s.io/node"

// SubnetLabel records which subnet of the reference VPC a node sits in.
const SubnetLabel = "slipway.dev/subnet"

// Nodes of the reference architecture: one control-plane node, two workers.
var (
	ControlPlaneNode = "master"
	WorkerNodes      = []string{"worker-01", "worker-02"}
)

func labNode(name string, controlPlane bool) *corev1.Node {
	capacity := corev1.ResourceList{
		corev1.ResourceCPU:    resource.MustParse("8"),
		corev1.ResourceMemory: resource.MustParse("32Gi"),
		corev1.ResourcePods:   resource.MustParse("110"),
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{
			Name:        name,
			Annotations: map[string]string{kwokNodeAnnotation: "fake", "node.alpha.kubernetes.io/ttl": "0"},
			Labels: map[string]string{
				"kubernetes.io/hostname": name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
				"type": "kwok", SubnetLabel: "private",
			},
		},
		Status: corev1.NodeStatus{Capacity: capacity, Allocatable: capacity},
	}
	if controlPlane {
		n.Labels["node-role.kubernetes.io/control-plane"] = ""
		n.Spec.Taints = []corev1.Taint{{Key: "node-role.kubernetes.io/control-plane", Effect: corev1.TaintEffectNoSchedule}}
	} else {
		n.Labels["node-role.kubernetes.io/worker"] = ""
	}
	return n
}

// ensureNodes creates the three nodes of the reference architecture and
// waits until KWOK reports them Ready.
func (l *Lab) ensureNodes(ctx context.Context) error {
	if err := l.addNodes(ctx, []string{ControlPlaneNode}, true); err != nil {
		return err
	}
	return l.addNodes(ctx, WorkerNodes, false)
}

// AddWorkers adds simulated worker nodes (110 pods each, as a real node),
// e.g. for scale runs with more pods than the two workers hold.
func (l *Lab) AddWorkers(ctx context.Context, names ...string) error {
	return l.addNodes(ctx, names, false)
}

func (l *Lab) addNodes(ctx context.Context, names []string, controlPlane bool) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	for _, name := range names {
		n := labNode(name, controlPlane)
		status := n.Status
		if err := c.Create(ctx, n); err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("creating node %s: %w", name, err)
		}
		if err == nil {
			// Capacity lives in status, which Create ignores; KWOK and the
			// controller-manager update the node too, so patch without a
			// resourceVersion precondition.
			base := n.DeepCopy()
			n.Status = status
			if err := c.Status().Patch(ctx, n, client.MergeFrom(base)); err != nil {
				return fmt.Errorf("setting capacity of node %s: %w", name, err)
			}
		}
	}
	start := time.Now()
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		for _, name := range names {
			n := &corev1.Node{}
			if err := c.Get(ctx, client.ObjectKey{Name: name}, n); err != nil {
				return false, nil
			}
			if !nodeReady(n) {
				return false, nil
			}
		}
		return true, nil
	})
	if err != nil {
		return fmt.Errorf("nodes %v not Ready within 60s (see the kwok log): %w", names, err)
	}
	l.progress("nodes %v Ready in %.1fs", names, time.Since(start).Seconds())
	return nil
}

func nodeReady(n *corev1.Node) bool {
	for _, c := range n.Status.Conditions {
		if c.Type == corev1.NodeReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// waitDefaultServiceAccount waits for the controller-manager to create the
// default ServiceAccount: pods are refused until it exists.
func (l *Lab) waitDefaultServiceAccount(ctx context.Context) error {
	c, _, err := l.Client()
	if err != nil {
		return err
	}
	err = wait.PollUntilContextTimeout(ctx, 200*time.Millisecond, 60*time.Second, true, func(ctx context.Context) (bool, error) {
		return c.Get(ctx, client.ObjectKey{Namespace: "default", Name: "default"}, &corev1.ServiceAccount{}) == nil, nil
	})
	if err != nil {
		return fmt.Errorf("default ServiceAccount not created within 60s (see the kube-controller-manager log): %w", err)
	}
	return nil
}

func restHTTPClient(cfg *rest.Config) (*http.Client, error) {
	c, err := rest.HTTPClientFor(cfg)
	if err != nil {
		return nil, err
	}
	c.Timeout = 2 * time.Second
	return c, nil
}
