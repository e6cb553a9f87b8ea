package webhook

import (
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"sigs.k8s.io/controller-runtime/pkg/metrics"
)

// The event label takes three values whatever a sender writes in its
// event header, which anyone can set: push, ping or other.
var (
	deliveries = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "slipway_webhook_deliveries_total",
		Help: "Webhook deliveries to /hooks/git by event (push, ping, other) and result (accepted, ignored, invalid_signature, bad_request, error).",
	}, []string{"event", "result"})
	lastDelivery = prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Name: "slipway_webhook_last_delivery_timestamp_seconds",
		Help: "When the last delivery with each result arrived (Unix time); 0 when none has.",
	}, []string{"result"})
	secretConfigured = prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "slipway_webhook_secret_configured",
		Help: "1 when the server has a webhook secret of its own (--webhook-secret-file, read when scraped), else 0: then only Pipelines' own secrets verify deliveries.",
	}, func() float64 {
		if f := secretCheck.Load(); f != nil && (*f)() {
			return 1
		}
		return 0
	})
	// secretCheck reports whether the serving Handler has a secret.
	secretCheck atomic.Pointer[func() bool]
)

// Delivery results, the values of the result label.
const (
	ResultAccepted         = "accepted"
	ResultIgnored          = "ignored"
	ResultInvalidSignature = "invalid_signature"
	ResultBadRequest       = "bad_request"
	ResultError            = "error"
)

// Results lists every delivery result.
var Results = []string{ResultAccepted, ResultIgnored, ResultInvalidSignature, ResultBadRequest, ResultError}

func init() {
	metrics.Registry.MustRegister(deliveries, lastDelivery, secretConfigured)
	for _, event := range []string{"push", "ping", "other"} {
		for _, result := range Results {
			deliveries.WithLabelValues(event, result)
		}
	}
	for _, result := range Results {
		lastDelivery.WithLabelValues(result)
	}
}

// ExportSecretConfigured makes slipway_webhook_secret_configured say
// whether h has a secret of its own, read afresh at every scrape: a
// mounted Secret can appear or go while the server runs.
func (h *Handler) ExportSecretConfigured() {
	f := func() bool {
		s, err := h.secret()
		return err == nil && len(s) > 0
	}
	secretCheck.Store(&f)
}

func observeDelivery(event, result string) {
	switch event {
	case "push", "ping":
	default:
		event = "other"
	}
	deliveries.WithLabelValues(event, result).Inc()
	lastDelivery.WithLabelValues(result).Set(float64(time.Now().UnixNano()) / 1e9)
}
