package webhook

import (
	"testing"
	"time"
)

// TestRefusalsAreBounded: forged deliveries are recorded one by one up to
// the limit of a minute; the rest are counted in the first record of the
// next minute.
func TestRefusalsAreBounded(t *testing.T) {
	var r refusals
	now := time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC)
	recorded := 0
	for range 100 {
		if ok, _ := r.take(now); ok {
			recorded++
		}
	}
	if recorded != maxRefusalRecords {
		t.Fatalf("%d of 100 refusals in a minute recorded, want %d", recorded, maxRefusalRecords)
	}
	ok, suppressed := r.take(now.Add(time.Minute))
	if !ok || suppressed != 100-maxRefusalRecords {
		t.Fatalf("the next minute's first refusal: recorded %v, counting %d not recorded, want %d", ok, suppressed, 100-maxRefusalRecords)
	}
	if _, again := r.take(now.Add(time.Minute)); again != 0 {
		t.Fatalf("the count is carried twice: %d", again)
	}
}
