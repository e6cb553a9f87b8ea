package lab

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	networkingv1 "k8s.io/api/networking/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"slipway.dev/slipway/internal/install"
)

// webhookIngress names the Ingress that takes push webhooks to Slipway
// installed in the lab's cluster.
const webhookIngress = "slipway-webhooks"

// webhookRouteFile holds, once RouteWebhooksToCluster has run, the URL the
// lab's git server delivers push events to instead of the host's server.
func (l *Lab) webhookRouteFile() string { return l.path("webhook-route") }

// RouteWebhooksToCluster sends the lab's push webhooks to Slipway
// installed in its cluster, as an organisation points its git host's
// webhook at the server's Service: an Ingress takes the edge's /hooks/git
// to Service slipway-system/slipway-server, and from now on the lab's git
// server delivers every push event there instead of to the host's server.
// The route is the lab's, kept in its directory with the cluster's
// state: it holds across `lab down` and `up` (where the in-cluster server
// comes back too) until `lab down --purge`.
// It needs real nodes (the edge and the ingress controller) and returns
// the webhook's URL once the edge routes it to the server (which answers
// a GET with 405, where the ingress controller would answer 404).
func (l *Lab) RouteWebhooksToCluster(ctx context.Context, c client.Client, info *Info) (string, error) {
	if info.Edge == nil {
		return "", errors.New("webhooks reach the cluster through the edge and its ingress controller: the lab needs real nodes (--real-nodes)")
	}
	prefix := networkingv1.PathTypePrefix
	class := "traefik" // the class the lab's Traefik serves, as the demo's Ingresses name it
	ing := &networkingv1.Ingress{ObjectMeta: metav1.ObjectMeta{Namespace: install.Namespace, Name: webhookIngress}}
	if _, err := upsert(ctx, c, ing, func() error {
		ing.Labels = map[string]string{"app.kubernetes.io/name": "slipway", "app.kubernetes.io/component": "server"}
		ing.Spec = networkingv1.IngressSpec{
			IngressClassName: &class,
			Rules: []networkingv1.IngressRule{{IngressRuleValue: networkingv1.IngressRuleValue{HTTP: &networkingv1.HTTPIngressRuleValue{
				Paths: []networkingv1.HTTPIngressPath{{
					Path: "/hooks/git", PathType: &prefix,
					Backend: networkingv1.IngressBackend{Service: &networkingv1.IngressServiceBackend{
						Name: install.ServerName, Port: networkingv1.ServiceBackendPort{Name: "http"},
					}},
				}},
			}}}},
		}
		return nil
	}); err != nil {
		return "", fmt.Errorf("creating Ingress %s/%s for the in-cluster server's webhooks: %w", install.Namespace, webhookIngress, err)
	}
	url := info.Edge.URL + "/hooks/git"
	if err := awaitServerAnswers(ctx, url); err != nil {
		return "", err
	}
	if err := os.WriteFile(l.webhookRouteFile(), []byte(url+"\n"), 0o600); err != nil {
		return "", fmt.Errorf("routing the git server's webhooks to %s: %w", url, err)
	}
	return url, nil
}

// awaitServerAnswers waits up to a minute for slipway server's answer to
// a GET of its webhook URL: 405, use POST.
func awaitServerAnswers(ctx context.Context, url string) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	hc := EdgeClient()
	last := "no answer yet"
	for {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusMethodNotAllowed && resp.Header.Get("Allow") == http.MethodPost {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s does not reach slipway server within a minute (last: %s): see Ingress %s/%s", url, last, install.Namespace, webhookIngress)
		case <-time.After(500 * time.Millisecond):
		}
	}
}
