package bench

import (
	"context"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/lab"
)

// envCount reads a positive count from the environment variable name, or
// gives def when it is unset.
func envCount(b *testing.B, name string, def int) int {
	spec := os.Getenv(name)
	if spec == "" {
		return def
	}
	n, err := strconv.Atoi(spec)
	if err != nil || n <= 0 {
		b.Fatalf("%s=%q is not a positive count", name, spec)
	}
	return n
}

func namespace(name string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}
}

func credentials(info *lab.Info) *corev1.Secret {
	return &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: "ops-repo",
			Annotations: map[string]string{gitsource.AllowedURLsAnnotation: info.Git.URL + "/"}},
		Data: map[string][]byte{"username": []byte(info.Git.Username), "password": []byte(info.Git.Password)},
	}
}

// tenancy sets the bench namespace up as a tenant's: its Applications apply
// as a ServiceAccount bound to slipway-tenant, or, with
// SLIPWAY_BENCH_SERVER_RIGHTS=1, with the server's own identity, to measure
// what impersonation costs.
func tenancy(ctx context.Context, c client.Client) error {
	const sa = "slipway-deployer"
	spec := slipwayv1.TenantSpec{Namespaces: []string{benchNamespace}, ServiceAccountName: sa}
	objs := []client.Object{
		&corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: sa}},
		&rbacv1.RoleBinding{
			ObjectMeta: metav1.ObjectMeta{Namespace: benchNamespace, Name: sa},
			RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "ClusterRole", Name: "slipway-tenant"},
			Subjects:   []rbacv1.Subject{{Kind: rbacv1.ServiceAccountKind, Namespace: benchNamespace, Name: sa}},
		},
	}
	if os.Getenv("SLIPWAY_BENCH_SERVER_RIGHTS") == "1" {
		spec = slipwayv1.TenantSpec{Namespaces: []string{benchNamespace}, ServerRights: true}
	}
	objs = append(objs, &slipwayv1.Tenant{ObjectMeta: metav1.ObjectMeta{Name: benchNamespace}, Spec: spec})
	for _, o := range objs {
		if err := c.Create(ctx, o); err != nil {
			return fmt.Errorf("creating %T %s: %w", o, o.GetName(), err)
		}
	}
	return nil
}

func serverPID(b *testing.B, info *lab.Info) int {
	for _, c := range info.Components {
		if c.Name == "slipway-server" {
			return c.PID
		}
	}
	b.Fatal("the lab has no slipway-server component")
	return 0
}

// cpuSeconds is the process's user+system CPU time.
func cpuSeconds(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatal(err)
	}
	// Fields after the command name, which may contain spaces, start after ")".
	fields := strings.Fields(string(raw[strings.LastIndexByte(string(raw), ')')+2:]))
	utime, _ := strconv.ParseFloat(fields[11], 64)
	stime, _ := strconv.ParseFloat(fields[12], 64)
	return (utime + stime) / 100 // USER_HZ is 100 on Linux
}

// peakRSSMiB reads VmHWM, the process's peak resident set.
func peakRSSMiB(b *testing.B, pid int) float64 {
	raw, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatal(err)
	}
	for _, line := range strings.Split(string(raw), "\n") {
		if rest, ok := strings.CutPrefix(line, "VmHWM:"); ok {
			kb, _ := strconv.ParseFloat(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 64)
			return kb / 1024
		}
	}
	b.Fatal("no VmHWM in /proc status")
	return 0
}

// reportErrors prints how many reconcile errors the server logged, and the
// first few, so a slow run can be explained.
func reportErrors(b *testing.B, info *lab.Info) {
	for _, c := range info.Components {
		if c.Name != "slipway-server" {
			continue
		}
		raw, err := os.ReadFile(c.Log)
		if err != nil {
			b.Fatal(err)
		}
		var errs []string
		for _, line := range strings.Split(string(raw), "\n") {
			if strings.Contains(line, `"level":"error"`) {
				errs = append(errs, line)
			}
		}
		fmt.Printf("slipway server logged %d errors\n", len(errs))
		for i := 0; i < len(errs) && i < 3; i++ {
			fmt.Println("  ", errs[i])
		}
	}
}

// serverMetrics reads the server's /metrics in the text format.
func serverMetrics(b *testing.B, info *lab.Info) string {
	return metricsText(b, http.DefaultClient, info.Server.Metrics)
}

// metricsText reads a Prometheus endpoint in the text format.
func metricsText(b *testing.B, hc *http.Client, url string) string {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		b.Fatal(err)
	}
	resp, err := hc.Do(req)
	if err != nil {
		b.Fatalf("reading the metrics at %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		b.Fatalf("reading the metrics at %s: %v %s", url, err, resp.Status)
	}
	return string(body)
}

// apiRequests counts the requests slipway server has made to API servers,
// by HTTP method (client-go's rest_client_requests_total; server-side
// apply and its dry-run are both PATCH).
func apiRequests(b *testing.B, info *lab.Info) map[string]float64 {
	return clientRequests(b, info.Server.Metrics)
}

// clientRequests counts the requests a controller exposing client-go's
// metrics at url has made, by HTTP method.
func clientRequests(b *testing.B, url string) map[string]float64 {
	by := map[string]float64{}
	for _, line := range strings.Split(metricsText(b, http.DefaultClient, url), "\n") {
		labels, ok := strings.CutPrefix(line, "rest_client_requests_total{")
		if !ok {
			continue
		}
		_, method, _ := strings.Cut(labels, `method="`)
		method, _, _ = strings.Cut(method, `"`)
		value := line[strings.LastIndexByte(line, ' ')+1:]
		f, _ := strconv.ParseFloat(value, 64)
		by[method] += f
	}
	return by
}

// apiserverRequests is the API server's own count of the requests it has
// served (apiserver_request_total over every verb, resource and code):
// whoever made them.
func apiserverRequests(b *testing.B, cfg *rest.Config) float64 {
	hc, err := rest.HTTPClientFor(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(metricsText(b, hc, cfg.Host+"/metrics"), "\n") {
		if strings.HasPrefix(line, "apiserver_request_total{") {
			f, _ := strconv.ParseFloat(line[strings.LastIndexByte(line, ' ')+1:], 64)
			total += f
		}
	}
	return total
}

// sum adds up counts by method.
func sum(by map[string]float64) float64 {
	var total float64
	for _, v := range by {
		total += v
	}
	return total
}

// reportRequests reports the requests per Application made between two
// counts, in all and by method.
func reportRequests(b *testing.B, before, after map[string]float64, n int) {
	var total float64
	var parts []string
	methods := slices.Sorted(maps.Keys(after))
	for _, m := range methods {
		d := after[m] - before[m]
		total += d
		if d > 0 {
			parts = append(parts, fmt.Sprintf("%s %.1f", m, d/float64(n)))
		}
	}
	b.ReportMetric(total/float64(n), "requests/app-update")
	fmt.Printf("| API requests per Application, commit → all Healthy | %.1f | %s |\n", total/float64(n), strings.Join(parts, ", "))
}

// auditShare reads the server's metrics and reports the audit write's
// share of a sync's time: the mean time of recording a deployment
// (waiting for its fsync, shared with other syncs) over the mean time of
// the reconciliations that deployed a revision, which include it.
func auditShare(b *testing.B, info *lab.Info) {
	body := serverMetrics(b, info)
	value := func(series string) float64 {
		for _, line := range strings.Split(body, "\n") {
			if v, ok := strings.CutPrefix(line, series+" "); ok {
				f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
				return f
			}
		}
		return 0
	}
	recSum, recCount := value(`slipway_audit_record_duration_seconds_sum{kind="sync.applied"}`), value(`slipway_audit_record_duration_seconds_count{kind="sync.applied"}`)
	syncSum, syncCount := value("slipway_application_sync_duration_seconds_sum"), value("slipway_application_sync_duration_seconds_count")
	if recCount == 0 || syncCount == 0 {
		b.Logf("no audit records or syncs in the metrics (%v records, %v syncs)", recCount, syncCount)
		return
	}
	record, sync := recSum/recCount, syncSum/syncCount
	share := record / sync * 100
	b.ReportMetric(record*1000, "ms-audit-record")
	b.ReportMetric(share, "%audit-of-sync")
	fmt.Printf("| audit record of a deployment | %.0f records | mean %.2f ms | mean sync %.2f s over %.0f syncs | %.2f %% of a sync's time |\n",
		recCount, record*1000, sync, syncCount, share)
}
