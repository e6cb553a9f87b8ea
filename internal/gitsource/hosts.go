package gitsource

import (
	"context"
	"errors"
	"fmt"
	neturl "net/url"
	"strings"
	"sync"
	"time"
)

// MaxTimeout caps the deadline of one git operation, whatever a caller asks
// for: a remote that never answers holds a worker this long at most.
const MaxTimeout = 5 * time.Minute

// ErrHostBusy is returned when every fetch slot of a host is taken: the
// caller should try again later instead of waiting on a slow host.
var ErrHostBusy = errors.New("every fetch slot for the host is taken")

// hostSlots limits concurrent fetches per host, so that a host that is slow
// or never answers can hold only its share of the callers' workers.
type hostSlots struct {
	mu    sync.Mutex
	limit int
	used  map[string]int
	freed chan struct{}
}

// acquire takes a slot for host, waiting at most wait for one to free up.
func (h *hostSlots) acquire(ctx context.Context, host string, wait time.Duration) (release func(), err error) {
	if h == nil || h.limit <= 0 {
		return func() {}, nil
	}
	timer := time.NewTimer(wait)
	defer timer.Stop()
	for {
		h.mu.Lock()
		if h.used[host] < h.limit {
			h.used[host]++
			h.mu.Unlock()
			return func() { h.release(host) }, nil
		}
		freed := h.freed
		h.mu.Unlock()
		select {
		case <-freed:
		case <-timer.C:
			return nil, fmt.Errorf("%w: %d fetches from %s are in progress", ErrHostBusy, h.limit, host)
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
}

func (h *hostSlots) release(host string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.used[host]--; h.used[host] <= 0 {
		delete(h.used, host)
	}
	close(h.freed)
	h.freed = make(chan struct{})
}

// hostOf is the host (and port) a URL names, in lower case.
func hostOf(raw string) string {
	u, err := neturl.Parse(raw)
	if err != nil || u.Host == "" {
		return raw
	}
	return strings.ToLower(u.Host)
}
