package webhook

import (
	"context"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"slipway.dev/slipway/internal/audit"
)

// maxRefusalRecords bounds the refusals recorded one by one each minute,
// so a flood of forged deliveries cannot flood the audit trail; the ones
// beyond are counted in the next record.
const maxRefusalRecords = 30

// refusals counts refusals per minute.
type refusals struct {
	mu         sync.Mutex
	window     time.Time
	recorded   int
	suppressed int
}

// take reports whether this refusal is recorded, and how many were not
// since the last one that was.
func (r *refusals) take(now time.Time) (bool, int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if w := now.Truncate(time.Minute); !w.Equal(r.window) {
		r.window, r.recorded = w, 0
	}
	if r.recorded >= maxRefusalRecords {
		r.suppressed++
		return false, 0
	}
	r.recorded++
	n := r.suppressed
	r.suppressed = 0
	return true, n
}

// recordRefusal records a delivery no secret verified: who sent it, what
// it claimed to be about, and why it was refused. Nothing of the payload
// but the repository it names is kept.
func (h *Handler) recordRefusal(ctx context.Context, r *http.Request, body []byte, reason string) error {
	if h.Audit == nil {
		return nil
	}
	ok, suppressed := h.refused.take(time.Now())
	if !ok {
		return nil
	}
	d := map[string]string{"remote": r.RemoteAddr, "reason": reason, "delivery": delivery(r.Header),
		"event": r.Header.Get("X-GitHub-Event") + r.Header.Get("X-Gitea-Event"), "userAgent": r.UserAgent(),
		"repository": strings.Join(RepositoryURLs(body), " ")}
	if suppressed > 0 {
		d["notRecordedBefore"] = strconv.Itoa(suppressed)
	}
	return h.Audit.Record(ctx, audit.Event{Kind: audit.KindWebhookRefused, Actor: "unauthenticated " + r.RemoteAddr,
		Subject: "webhook " + r.URL.Path, Outcome: audit.OutcomeRefused, Details: d})
}
