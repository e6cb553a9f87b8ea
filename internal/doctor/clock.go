package doctor

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"time"
)

// clockReading is a server's clock, as its Date header gave it, and the
// local time around the request that read it.
type clockReading struct {
	who        string
	date       time.Time
	sent, came time.Time
}

// readClock records a server's Date header, if it sent one.
func (r *run) readClock(who, header string, sent, came time.Time) {
	date, err := http.ParseTime(header)
	if err != nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, c := range r.clocks {
		if c.who == who {
			return
		}
	}
	r.clocks = append(r.clocks, clockReading{who: who, date: date, sent: sent, came: came})
}

// skew is how far the server's clock is from this machine's, beyond what
// the reading cannot tell: a Date header has whole seconds, and the server
// wrote it at some moment of the round trip.
func (c clockReading) skew() time.Duration {
	// The server's second started at date and ended a second later; this
	// machine's clock read sent..came meanwhile.
	earliest, latest := c.date, c.date.Add(time.Second)
	switch {
	case c.came.Before(earliest):
		return earliest.Sub(c.came) // the server is ahead
	case c.sent.After(latest):
		return latest.Sub(c.sent) // the server is behind
	}
	return 0
}

// Clock skew thresholds: beyond a couple of seconds leases, lead times and
// certificates start to disagree; beyond half a minute, expect failures.
const (
	skewWarn = 2 * time.Second
	skewFail = 30 * time.Second
)

// checkClocks compares this machine's clock with those of the API server
// and the git servers the other checks reached.
func checkClocks(ctx context.Context, r *run) []Result {
	return []Result{step(ctx, r.StepTimeout, func(context.Context) Result {
		res := Result{Check: "clock", Status: Pass}
		r.mu.Lock()
		readings := append([]clockReading(nil), r.clocks...)
		r.mu.Unlock()
		if len(readings) == 0 {
			res.Status, res.Message = Warn, "no server's clock could be read (the API server and the git servers did not answer)"
			res.Action = "see the cluster and git checks"
			return res
		}
		sort.Slice(readings, func(i, j int) bool { return readings[i].who < readings[j].who })
		worst := Pass
		var parts []string
		for _, c := range readings {
			s := c.skew()
			abs := s
			if abs < 0 {
				abs = -abs
			}
			switch {
			case abs > skewFail:
				worst = Fail
			case abs > skewWarn && worst == Pass:
				worst = Warn
			}
			switch {
			case s == 0:
				parts = append(parts, c.who+" agrees within a second")
			case s > 0:
				parts = append(parts, fmt.Sprintf("%s is %s ahead", c.who, s.Round(time.Second)))
			default:
				parts = append(parts, fmt.Sprintf("%s is %s behind", c.who, (-s).Round(time.Second)))
			}
		}
		res.Status = worst
		res.Message = "against this machine's clock: " + strings.Join(parts, "; ")
		if worst != Pass {
			res.Action = "synchronise the clocks with NTP (chrony or systemd-timesyncd) on this machine, the nodes and the git server"
		}
		return res
	})}
}
