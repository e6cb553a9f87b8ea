package bench

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"

	"slipway.dev/slipway/internal/version"
)

// The files BenchmarkGitOpsPeers writes: the raw results of every N
// measured so far (a run replaces the entry of its N), and the table and
// the plot rendered from them.
const (
	peerResultsFile = "benchmarks-peers.json"
	peerTableFile   = "benchmarks-peers.md"
	peerPlotFile    = "benchmarks-peers.png"
)

// peerReport is one N's runs.
type peerReport struct {
	N       int       `json:"n"`
	Runs    int       `json:"runs"`
	Started host      `json:"started"`
	Results []peerRun `json:"results"`
	// Finished is the machine's state at the end (its load average).
	Finished host `json:"finished"`
}

// host is when and on what a measurement ran.
type host struct {
	Time    string `json:"time"`
	Machine string `json:"machine"`
	Load    string `json:"loadAverage"`
}

func hostState() host {
	h := host{Time: time.Now().UTC().Format(time.RFC3339)}
	model := "unknown CPU"
	if raw, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(raw), "\n") {
			if v, ok := strings.CutPrefix(line, "model name"); ok {
				model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(v), ":"))
				break
			}
		}
	}
	h.Machine = fmt.Sprintf("%d × %s, %s", runtime.NumCPU(), model, runtime.Version())
	if raw, err := os.ReadFile("/proc/loadavg"); err == nil {
		h.Load = strings.Join(strings.Fields(string(raw))[:3], " ")
	}
	return h
}

// spread is the median, min and max of one measure over the runs.
type spread struct{ Median, Min, Max float64 }

func spreadOf(xs []float64) spread {
	if len(xs) == 0 {
		return spread{}
	}
	return spread{Median: median(xs), Min: slices.Min(xs), Max: slices.Max(xs)}
}

func (s spread) format(unit string, digits int) string {
	if s.Min == s.Max {
		return fmt.Sprintf("%.*f%s", digits, s.Median, unit)
	}
	return fmt.Sprintf("%.*f%s (%.*f–%.*f)", digits, s.Median, unit, digits, s.Min, digits, s.Max)
}

// peerSummary is one system's runs at one N.
type peerSummary struct {
	System                                                  string
	Runs                                                    int
	FirstSync, Update, CPU, PeakRSS, ClientReqs, ServerReqs spread
	Trigger                                                 string
}

func summarize(results []peerRun) []peerSummary {
	var out []peerSummary
	for _, system := range []string{systemSlipway, systemFlux, systemApply} {
		var first, update, cpu, rss, creq, sreq []float64
		s := peerSummary{System: system}
		for _, r := range results {
			if r.System != system {
				continue
			}
			s.Runs++
			s.Trigger = r.Trigger
			first, update, cpu = append(first, r.FirstSync), append(update, r.Update), append(cpu, r.CPU)
			rss, creq, sreq = append(rss, r.PeakRSS), append(creq, r.ClientRequests), append(sreq, r.ServerRequests)
		}
		if s.Runs == 0 {
			continue
		}
		s.FirstSync, s.Update, s.CPU, s.PeakRSS = spreadOf(first), spreadOf(update), spreadOf(cpu), spreadOf(rss)
		s.ClientReqs, s.ServerReqs = spreadOf(creq), spreadOf(sreq)
		out = append(out, s)
	}
	return out
}

var systemNames = map[string]string{
	systemSlipway: "Slipway",
	systemFlux:    "Flux " + version.Flux,
	systemApply:   "direct server-side apply",
}

// writePeerReport merges report into dir's results file and renders the
// table and the plot from all of it.
func writePeerReport(dir string, report peerReport) error {
	path := filepath.Join(dir, peerResultsFile)
	var reports []peerReport
	if raw, err := os.ReadFile(path); err == nil {
		if err := json.Unmarshal(raw, &reports); err != nil {
			return fmt.Errorf("reading %s: %w", path, err)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	reports = slices.DeleteFunc(reports, func(r peerReport) bool { return r.N == report.N })
	reports = append(reports, report)
	slices.SortFunc(reports, func(a, b peerReport) int { return a.N - b.N })
	raw, err := json.MarshalIndent(reports, "", "  ")
	if err != nil {
		return err
	}
	if err := os.WriteFile(path, append(raw, '\n'), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, peerTableFile), []byte(peerTable(reports)), 0o644); err != nil {
		return err
	}
	return peerPlot(reports, filepath.Join(dir, peerPlotFile))
}

// peerTable renders the reports as Markdown: medians with the range over
// the runs in brackets.
func peerTable(reports []peerReport) string {
	var sb strings.Builder
	sb.WriteString("# GitOps peers: Slipway, Flux and a direct server-side apply\n\n")
	sb.WriteString("Written by `BenchmarkGitOpsPeers` (`make bench-peers`); see `benchmarks.md` for what is measured.\n")
	sb.WriteString("Median over the runs, (min–max) when they differ. Requests: the system's own client count / the API server's count of all requests it served in the same time.\n\n")
	for _, r := range reports {
		fmt.Fprintf(&sb, "## N = %d Applications × 10 objects, %d run(s) each\n\n", r.N, r.Runs)
		fmt.Fprintf(&sb, "%s to %s; %s; load average %s at the start, %s at the end.\n\n",
			r.Started.Time, r.Finished.Time, r.Started.Machine, r.Started.Load, r.Finished.Load)
		sb.WriteString("| system | first sync | commit → all Ready | CPU seconds (commit → all Ready) | peak RSS | API requests (own / API server) |\n")
		sb.WriteString("| --- | --- | --- | --- | --- | --- |\n")
		for _, s := range summarize(r.Results) {
			rss := s.PeakRSS.format(" MiB", 0)
			if s.PeakRSS.Max == 0 {
				rss = "not measured"
			}
			fmt.Fprintf(&sb, "| %s | %s | %s | %s | %s | %s / %s |\n", systemNames[s.System],
				s.FirstSync.format(" s", 1), s.Update.format(" s", 1), s.CPU.format(" s", 1), rss,
				s.ClientReqs.format("", 0), s.ServerReqs.format("", 0))
		}
		sb.WriteString("\nHow the push reached each system:\n\n")
		for _, s := range summarize(r.Results) {
			fmt.Fprintf(&sb, "- %s: %s\n", systemNames[s.System], s.Trigger)
		}
		for _, run := range r.Results {
			if run.OneChange != nil {
				fmt.Fprintf(&sb, "\nSlipway, one Application of %d changed, push → that Application Synced: p50 %.2f s over %d tries (%s s).\n",
					r.N, run.OneChange.P50, run.OneChange.Tries, joinFloats(run.OneChange.Seconds))
			}
			if run.Steady != nil {
				fmt.Fprintf(&sb, "\nSlipway, %d Applications and nothing changing for %.0f s: %.2f CPU seconds per minute, %.0f requests per minute by slipway server, %.0f served by the API server (all components).\n",
					r.N, run.Steady.Seconds, run.Steady.CPUPerMinute, run.Steady.ClientRequestsPerMinute, run.Steady.ServerRequestsPerMinute)
			}
		}
		sb.WriteString("\n")
	}
	return sb.String()
}

func joinFloats(xs []float64) string {
	var parts []string
	for _, x := range xs {
		parts = append(parts, fmt.Sprintf("%.2f", x))
	}
	return strings.Join(parts, ", ")
}

// peerPlot draws, one row per N, the time from commit to all Ready and
// the CPU seconds the system spent on it: a bar per system at the median,
// whiskers from the fastest to the slowest run.
func peerPlot(reports []peerReport, path string) error {
	var rows [][]*plot.Plot
	for _, r := range reports {
		update, err := barPlot(r, "commit → all Ready", "seconds", func(s peerSummary) spread { return s.Update })
		if err != nil {
			return err
		}
		cpu, err := barPlot(r, "CPU of the system, commit → all Ready", "CPU seconds", func(s peerSummary) spread { return s.CPU })
		if err != nil {
			return err
		}
		rows = append(rows, []*plot.Plot{update, cpu})
	}
	img := vgimg.New(12*vg.Inch, vg.Length(len(rows))*3.5*vg.Inch)
	tiles := draw.Tiles{Rows: len(rows), Cols: 2, PadX: vg.Points(30), PadY: vg.Points(20),
		PadTop: vg.Points(5), PadBottom: vg.Points(5), PadLeft: vg.Points(5), PadRight: vg.Points(10)}
	canvases := plot.Align(rows, tiles, draw.New(img))
	for i, row := range rows {
		for j, p := range row {
			p.Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return f.Close()
}

// barPlot is one N's measure: a bar per system at the median and whiskers
// over the range of the runs.
func barPlot(r peerReport, title, unit string, measure func(peerSummary) spread) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("N = %d, %d run(s): %s", r.N, r.Runs, title)
	p.Y.Label.Text = unit
	var medians plotter.Values
	var names []string
	var whiskers struct {
		plotter.XYs
		plotter.YErrors
	}
	for i, s := range summarize(r.Results) {
		m := measure(s)
		medians = append(medians, m.Median)
		names = append(names, systemNames[s.System])
		whiskers.XYs = append(whiskers.XYs, plotter.XY{X: float64(i), Y: m.Median})
		whiskers.YErrors = append(whiskers.YErrors, struct{ Low, High float64 }{m.Median - m.Min, m.Max - m.Median})
	}
	bars, err := plotter.NewBarChart(medians, vg.Points(50))
	if err != nil {
		return nil, err
	}
	bars.LineStyle.Width = 0
	bars.Color = plotutil.Color(2)
	errorBars, err := plotter.NewYErrorBars(whiskers)
	if err != nil {
		return nil, err
	}
	p.Add(bars, errorBars)
	p.NominalX(names...)
	p.Y.Min = 0
	return p, nil
}
