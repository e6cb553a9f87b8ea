package monitoring_test

import (
	"os"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	ctrlmetrics "sigs.k8s.io/controller-runtime/pkg/metrics"

	"slipway.dev/slipway/internal/monitoring"
	// The server imports every package that registers metrics: what it
	// serves on /metrics is what these tests see.
	_ "slipway.dev/slipway/internal/server"
)

// exportedMetric is one metric family the server's registry describes.
type exportedMetric struct {
	name, help string
	labels     []string
}

var descPattern = regexp.MustCompile(`^Desc\{fqName: ("(?:[^"\\]|\\.)*"), help: ("(?:[^"\\]|\\.)*"), unit: "[^"]*", constLabels: \{[^}]*\}, variableLabels: \{([^}]*)\}\}$`)

// exported lists every metric registered with the registry slipway server
// serves, whether or not it has a series yet.
func exported(t *testing.T, reg prometheus.Collector) map[string]exportedMetric {
	t.Helper()
	ch := make(chan *prometheus.Desc)
	go func() {
		reg.Describe(ch)
		close(ch)
	}()
	out := map[string]exportedMetric{}
	for d := range ch {
		m := descPattern.FindStringSubmatch(d.String())
		if m == nil {
			t.Fatalf("cannot read metric description %s", d)
		}
		name, _ := strconv.Unquote(m[1])
		help, _ := strconv.Unquote(m[2])
		var labels []string
		if m[3] != "" {
			labels = strings.Split(m[3], ",")
		}
		out[name] = exportedMetric{name: name, help: help, labels: labels}
	}
	return out
}

func serverRegistry(t *testing.T) prometheus.Collector {
	t.Helper()
	reg, ok := ctrlmetrics.Registry.(prometheus.Collector)
	if !ok {
		t.Fatalf("controller-runtime's registry %T cannot describe its metrics", ctrlmetrics.Registry)
	}
	return reg
}

// boundedLabels are the labels a Slipway series may carry, each with why
// its values are few. A label not listed here fails the test: a commit, a
// run, a delivery id, a URL or a message would add series without end.
var boundedLabels = map[string]string{
	"result":    "an outcome from a fixed list",
	"status":    "a sync or health status from a fixed list",
	"reason":    "a condition reason the controller names from a fixed list",
	"state":     "a step's state from a fixed list",
	"step":      "a pipeline step from a fixed list",
	"operation": "a git or registry operation from a fixed list",
	"outcome":   "a policy outcome from a fixed list",
	"mode":      "a policy mode from a fixed list",
	"severity":  "a rule severity from a fixed list",
	"event":     "push, ping or other, whatever a sender writes",
	"decision":  "Approve or Reject (the CRD's enum)",
	"namespace": "an Application's or Pipeline's namespace: objects the cluster holds",
	"name":      "an Application's name: one series per object the cluster holds",
	"pipeline":  "a Pipeline's name: one series per object the cluster holds",
	"rule":      "a policy rule of the loaded packs",
	"remote":    "a git host (never a URL or repository)",
	"registry":  "a registry host (never a repository, tag or digest)",
	"version":   "the running build's version",
	"kind":      "an audit record kind from a fixed list",
	"action":    "what a sync did to an object, from a fixed list",
	"goversion": "the running build's Go version",
}

// unboundedLabels reports the labels of Slipway's metrics that boundedLabels
// does not allow.
func unboundedLabels(metrics map[string]exportedMetric) []string {
	var bad []string
	for _, m := range metrics {
		if !strings.HasPrefix(m.name, "slipway_") {
			continue
		}
		for _, l := range m.labels {
			if _, ok := boundedLabels[l]; !ok {
				bad = append(bad, m.name+"{"+l+"}")
			}
		}
	}
	sort.Strings(bad)
	return bad
}

func TestSlipwayMetricsHaveOnlyBoundedLabels(t *testing.T) {
	metrics := exported(t, serverRegistry(t))
	if bad := unboundedLabels(metrics); len(bad) > 0 {
		t.Errorf("labels whose values are not known to be bounded (a series per commit, run or URL grows without end): %v", bad)
	}
	// The check itself catches a series that gains a run's name or a commit.
	reg := prometheus.NewRegistry()
	reg.MustRegister(prometheus.NewCounterVec(prometheus.CounterOpts{Name: "slipway_example_total", Help: "An example."}, []string{"result", "commit"}))
	reg.MustRegister(prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "slipway_example_run", Help: "An example."}, []string{"run"}))
	if got, want := unboundedLabels(exported(t, reg)), []string{"slipway_example_run{run}", "slipway_example_total{commit}"}; !slices.Equal(got, want) {
		t.Errorf("the check found %v in metrics labelled by commit and run, want %v", got, want)
	}
}

func TestSlipwayMetricsFollowConventions(t *testing.T) {
	name := regexp.MustCompile(`^slipway_[a-z]+(_[a-z0-9]+)*$`)
	// A gauge counting things is named by the things, in the plural
	// (slipway_audit_records), as a unit.
	units := regexp.MustCompile(`_(seconds|bytes|records|total|info|status|ready|leader|verified|configured|timestamp_seconds)$`)
	n := 0
	for _, m := range exported(t, serverRegistry(t)) {
		if !strings.HasPrefix(m.name, "slipway_") {
			continue
		}
		n++
		if !name.MatchString(m.name) {
			t.Errorf("%s: not a snake_case name under slipway_", m.name)
		}
		if !units.MatchString(m.name) {
			t.Errorf("%s: the name ends neither in a base unit (_seconds, _bytes), _total for a counter, nor a state suffix", m.name)
		}
		if m.help == "" || !strings.HasSuffix(m.help, ".") || strings.ToUpper(m.help[:1]) != m.help[:1] {
			t.Errorf("%s: help %q is not a sentence", m.name, m.help)
		}
		if strings.HasSuffix(m.name, "_seconds") && !strings.Contains(strings.ToLower(m.help), "time") {
			t.Errorf("%s: a duration whose help does not say what time it measures: %q", m.name, m.help)
		}
	}
	if n < 20 {
		t.Fatalf("only %d slipway_ metrics registered: the server's packages did not register theirs", n)
	}
}

// The README's metrics table lists every metric the server exports under
// slipway_, with its labels, and nothing else.
func TestREADMEListsEveryMetric(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	row := regexp.MustCompile("(?m)^\\| `(slipway_[a-z0-9_]+)(?:\\{([a-z_,]*)\\})?` \\|")
	documented := map[string][]string{}
	for _, m := range row.FindAllStringSubmatch(string(readme), -1) {
		var labels []string
		if m[2] != "" {
			labels = strings.Split(m[2], ",")
		}
		documented[m[1]] = labels
	}
	for _, m := range exported(t, serverRegistry(t)) {
		if !strings.HasPrefix(m.name, "slipway_") {
			continue
		}
		labels, ok := documented[m.name]
		switch {
		case !ok:
			t.Errorf("README's metrics table lacks %s%v", m.name, m.labels)
		case !slices.Equal(sortedCopy(labels), sortedCopy(m.labels)):
			t.Errorf("README documents %s with labels %v; it has %v", m.name, labels, m.labels)
		}
		delete(documented, m.name)
	}
	for name := range documented {
		t.Errorf("README documents %s, which the server does not export", name)
	}
}

func sortedCopy(s []string) []string {
	c := slices.Clone(s)
	sort.Strings(c)
	return c
}

// prometheusOwn are series Prometheus itself writes for every target.
var prometheusOwn = []string{"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}

func TestRulesAndDashboardsUseExportedMetrics(t *testing.T) {
	metrics := exported(t, serverRegistry(t))
	known := map[string]bool{}
	for name := range metrics {
		known[name] = true
		// A histogram is queried by its series.
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			known[name+suffix] = true
		}
	}
	for _, name := range prometheusOwn {
		known[name] = true
	}
	groups, err := monitoring.RuleGroups()
	if err != nil {
		t.Fatal(err)
	}
	type use struct{ where, expr string }
	var uses []use
	for _, g := range groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				known[r.Record] = true
			}
			uses = append(uses, use{"rule " + r.Alert + r.Record, r.Expr})
		}
	}
	queries, err := monitoring.PanelQueries("5m")
	if err != nil {
		t.Fatal(err)
	}
	if len(queries) < 30 {
		t.Fatalf("only %d panel queries in the dashboards", len(queries))
	}
	for _, q := range queries {
		uses = append(uses, use{"dashboard " + q.Dashboard + ", panel " + q.Panel, q.Expr})
	}
	vars, err := monitoring.VariableQueries()
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range vars {
		uses = append(uses, use{"dashboard variable", v})
	}
	for _, u := range uses {
		names := metricNames(u.expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric found in %q", u.where, u.expr)
		}
		for _, n := range names {
			if !known[n] {
				t.Errorf("%s uses %s, which slipway server does not export: %s", u.where, n, u.expr)
			}
		}
	}
}

func TestMetricNames(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (le, result) (rate(slipway_a_bucket{x="y", z=~"a|b"}[5m])) / on (job) group_left (version) b`: {"slipway_a_bucket", "b"},
		`absent(up{job="slipway"})`: {"up"},
		`histogram_quantile(0.5, sum without (instance) (rate(x_bucket[1d]))) > 0 and y offset 5m`: {"x_bucket", "y"},
		`count by (version) (slipway_build_info{job="slipway"}) unless ignoring (a) :rec:ord`:      {"slipway_build_info", ":rec:ord"},
		`label_values(slipway_application_ready, namespace)`:                                       {"slipway_application_ready"},
		`1 - m{reason!~"A|B|"} == bool 0`:                                                          {"m"},
	} {
		if got := metricNames(expr); !slices.Equal(got, want) {
			t.Errorf("metricNames(%q) = %v, want %v", expr, got, want)
		}
	}
}

var (
	promqlKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
		"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true}
	labelListKeywords = map[string]bool{"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
)

// metricNames returns the metric names a PromQL expression (or a Grafana
// label_values query) reads, in order: identifiers outside strings, label
// matchers, ranges and label lists, that do not call a function.
func metricNames(expr string) []string {
	var names []string
	isIdent := func(c byte, first bool) bool {
		return c == '_' || c == ':' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || !first && c >= '0' && c <= '9'
	}
	skipLabelList := false
	for i := 0; i < len(expr); {
		c := expr[i]
		switch {
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			for j < len(expr) && expr[j] != c {
				if expr[j] == '\\' {
					j++
				}
				j++
			}
			i = j + 1
		case c == '{':
			i = strings.IndexByte(expr[i:], '}') + i + 1
		case c == '[':
			i = strings.IndexByte(expr[i:], ']') + i + 1
		case c == '(' && skipLabelList:
			i = strings.IndexByte(expr[i:], ')') + i + 1
			skipLabelList = false
		case c >= '0' && c <= '9' || c == '.':
			for i < len(expr) && (expr[i] >= '0' && expr[i] <= '9' || expr[i] == '.' || expr[i] == 'e' || isIdent(expr[i], false) && expr[i] != ':') {
				i++
			}
		case isIdent(c, true):
			j := i
			for j < len(expr) && isIdent(expr[j], false) {
				j++
			}
			word := expr[i:j]
			k := j
			for k < len(expr) && expr[k] == ' ' {
				k++
			}
			switch {
			case labelListKeywords[word]:
				skipLabelList = true
			case promqlKeywords[strings.ToLower(word)]:
			case k < len(expr) && expr[k] == '(',
				strings.HasPrefix(expr[k:], "by ") || strings.HasPrefix(expr[k:], "by(") ||
					strings.HasPrefix(expr[k:], "without ") || strings.HasPrefix(expr[k:], "without("):
				// A function or an aggregation (sum by (x) (...)).
			default:
				names = append(names, word)
			}
			i = j
			if word == "label_values" {
				// label_values(metric, label): the label is no metric.
				end := strings.IndexByte(expr[i:], ')')
				if comma := strings.IndexByte(expr[i:], ','); comma >= 0 && (end < 0 || comma < end) {
					names = append(names, metricNames(strings.Trim(expr[i:i+comma], "( "))...)
					i += max(end, comma) + 1
				}
			}
		default:
			i++
		}
	}
	return names
}
