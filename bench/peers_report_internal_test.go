package bench

import (
	"encoding/json"
	"image/png"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPeerReportMerges: a second N is added beside the first, a repeated N
// replaces its earlier entry, and the table and the plot cover what the
// results file holds.
func TestPeerReportMerges(t *testing.T) {
	dir := t.TempDir()
	run := func(system string, update float64) peerRun {
		return peerRun{System: system, Run: 1, FirstSync: 1, Update: update, CPU: update / 2, ClientRequests: 10, ServerRequests: 20, Trigger: "push of " + system}
	}
	write := func(n int, update float64) {
		t.Helper()
		r := peerReport{N: n, Runs: 1, Started: hostState(), Finished: hostState(),
			Results: []peerRun{run(systemSlipway, update), run(systemFlux, update*2), run(systemApply, update/2)}}
		if err := writePeerReport(dir, r); err != nil {
			t.Fatal(err)
		}
	}
	write(1000, 100)
	write(100, 10)
	write(100, 12) // replaces the first N=100

	var reports []peerReport
	raw, err := os.ReadFile(filepath.Join(dir, peerResultsFile))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &reports); err != nil {
		t.Fatal(err)
	}
	if len(reports) != 2 || reports[0].N != 100 || reports[1].N != 1000 || reports[0].Results[0].Update != 12 {
		t.Fatalf("results file holds %+v, want N=100 (update 12) then N=1000", reports)
	}
	table, err := os.ReadFile(filepath.Join(dir, peerTableFile))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## N = 100 ", "## N = 1000 ", "| Slipway | 1.0 s | 12.0 s |", "| Flux v1.9.6 | 1.0 s | 24.0 s |", "push of apply"} {
		if !strings.Contains(string(table), want) {
			t.Errorf("table lacks %q:\n%s", want, table)
		}
	}
	f, err := os.Open(filepath.Join(dir, peerPlotFile))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the plot is not a PNG: %v", err)
	}
	if b := img.Bounds(); b.Dx() < 500 || b.Dy() < 200 {
		t.Errorf("the plot is %v, too small to read", b)
	}
}
