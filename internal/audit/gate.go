package audit

import (
	"context"
	"fmt"
	"sync"
)

// Gate is the Recorder the controllers hold from the start: records wait
// until the leader has opened the log (Set), so that nothing is acted on
// before it can be recorded, and a replica that is not the leader never
// writes.
type Gate struct {
	mu    sync.Mutex
	log   *Log
	ready chan struct{}
}

// NewGate returns a gate with no log yet.
func NewGate() *Gate { return &Gate{ready: make(chan struct{})} }

// Set opens the gate.
func (g *Gate) Set(l *Log) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.log = l
	close(g.ready)
}

// Log returns the log once set, or nil.
func (g *Gate) Log() *Log {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.log
}

// Record waits for the log (within ctx) and records e.
func (g *Gate) Record(ctx context.Context, e Event) error {
	select {
	case <-g.ready:
	case <-ctx.Done():
		return fmt.Errorf("recording %s of %s: the audit log is not open (only the leader writes it): %w", e.Kind, e.Subject, ctx.Err())
	}
	return g.Log().Record(ctx, e)
}

// Refs are how the controllers name events, so that one seen again is
// recorded once, and so that what their objects' status reports can be
// found in the trail (see the server's gap check).

// RefDeploy names the deployment of revision as entry id of an
// Application's history.
func RefDeploy(uid, revision string, id int64) string {
	return fmt.Sprintf("application/%s/deploy/%s/%d", uid, revision, id)
}

// RefSyncFailed names a failed sync of revision as entry id of the history.
func RefSyncFailed(uid, revision string, id int64) string {
	return fmt.Sprintf("application/%s/failed/%s/%d", uid, revision, id)
}

// RefPromotion names what happened to a promotion: requested, or its final phase.
func RefPromotion(uid, what string) string { return fmt.Sprintf("promotion/%s/%s", uid, what) }

// RefRun names what happened to a pipeline run: started, signed, finished.
func RefRun(uid, what string) string { return fmt.Sprintf("pipelinerun/%s/%s", uid, what) }
