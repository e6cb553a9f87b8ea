package lab

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"regexp"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// Answer is what a demo service says: which pod on which node served.
type Answer struct {
	Body, Pod, Node string
}

var answerPattern = regexp.MustCompile(`from pod (\S+) on node (\S+)`)

// Ask sends one GET to url and reads the demo service's answer. Any status
// but 200 is an error.
func Ask(ctx context.Context, c *http.Client, url string) (Answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return Answer{}, err
	}
	resp, err := c.Do(req)
	if err != nil {
		return Answer{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64*1024))
	if err != nil {
		return Answer{}, fmt.Errorf("GET %s: reading the answer: %w", url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return Answer{}, fmt.Errorf("GET %s: %s: %s", url, resp.Status, strings.TrimSpace(string(body)))
	}
	a := Answer{Body: strings.TrimSpace(string(body))}
	m := answerPattern.FindStringSubmatch(a.Body)
	if m == nil {
		return a, fmt.Errorf("GET %s: the answer %q names no pod and node", url, a.Body)
	}
	a.Pod, a.Node = m[1], m[2]
	return a, nil
}

// EdgeClient is for requests through the edge: a fresh connection each
// time, as separate clients make, so the edge spreads them over workers.
func EdgeClient() *http.Client {
	return &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
}

// waitServedThroughEdge waits until the edge address has answered for app
// from every ready pod of its Deployment, with answers that contain brew,
// and those pods run on more than one node.
func (l *Lab) waitServedThroughEdge(ctx context.Context, c client.Client, info *Info, app, brew string) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	url := info.Edge.URL + "/" + app
	hc := EdgeClient()
	seen := map[string]string{}
	var last error
	for {
		want, err := readyPods(ctx, c, app)
		if err != nil {
			return err
		}
		a, err := Ask(ctx, hc, url)
		if err == nil && strings.Contains(a.Body, brew) {
			seen[a.Pod] = a.Node
		} else if err != nil {
			last = err
		}
		if covered(seen, want) {
			nodes := map[string]bool{}
			var pods []string
			for pod := range want {
				nodes[want[pod]] = true
				pods = append(pods, pod+" on "+want[pod])
			}
			sort.Strings(pods)
			if len(nodes) > 1 {
				l.progress("curl %s answers from %s", url, strings.Join(pods, ", "))
				return nil
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s did not answer %q from every pod of %s on more than one node within 2m (answers from %v, pods %v, last error %v)",
				url, brew, app, seen, want, last)
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func covered(seen, want map[string]string) bool {
	if len(want) == 0 {
		return false
	}
	for pod, node := range want {
		if seen[pod] != node {
			return false
		}
	}
	return true
}

// readyPods maps the ready pods of app's Deployment to their nodes.
func readyPods(ctx context.Context, c client.Client, app string) (map[string]string, error) {
	var pods corev1.PodList
	if err := c.List(ctx, &pods, client.InNamespace(DemoNamespace), client.MatchingLabels{"app.kubernetes.io/name": app}); err != nil {
		return nil, fmt.Errorf("listing the pods of %s: %w", app, err)
	}
	out := map[string]string{}
	for _, p := range pods.Items {
		if p.DeletionTimestamp != nil {
			continue
		}
		for _, cond := range p.Status.Conditions {
			if cond.Type == corev1.PodReady && cond.Status == corev1.ConditionTrue {
				out[p.Name] = p.Spec.NodeName
			}
		}
	}
	return out, nil
}
