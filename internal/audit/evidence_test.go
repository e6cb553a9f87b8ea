package audit_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/testenv"
)

const (
	digestNew = "sha256:1111111111111111111111111111111111111111111111111111111111111111"
	digestOld = "sha256:0000000000000000000000000000000000000000000000000000000000000000"
	imageNew  = "registry.example.com/cafe/tea@" + digestNew
	imageOld  = "registry.example.com/cafe/tea@" + digestOld
)

// deliveryLog records a delivery of tea from a push to prod, with the
// details the controllers write: a run, its signature, staging, a waiver,
// a promotion with one approval that counts and one that does not, prod,
// a blocked revision, a rollback and a forged webhook.
func deliveryLog(t *testing.T, store audit.Store, key *ecdsa.PrivateKey) {
	t.Helper()
	clock := time.Date(2026, 4, 1, 9, 0, 0, 0, time.UTC)
	l, _, err := audit.Open(testCtx, store, audit.Options{Key: key, Now: func() time.Time { clock = clock.Add(time.Minute); return clock }})
	if err != nil {
		t.Fatal(err)
	}
	run := map[string]string{"namespace": "cafe", "pipelineRun": "tea-1a2b3c", "commit": "c0ffee0000000000000000000000000000000001"}
	with := func(base map[string]string, kv ...string) map[string]string {
		d := map[string]string{}
		for k, v := range base {
			d[k] = v
		}
		for i := 0; i < len(kv); i += 2 {
			d[kv[i]] = kv[i+1]
		}
		return d
	}
	sync := func(app, rev, prev, image, waivers string) map[string]string {
		return map[string]string{"namespace": "cafe", "application": app, "revision": rev, "previousRevision": prev, "images": image,
			"changes": "Deployment/cafe/tea configured", "policy": "passed", "policy.profile": "fin-kr-prod", "policy.waivers": waivers}
	}
	promo := map[string]string{"namespace": "cafe", "promotion": "tea-to-prod-x7k2p", "delivery": "tea", "stage": "prod", "changeID": "CHG-2041",
		"requestedBy": "dev@slipway-lab", "image": imageNew}
	for _, e := range []audit.Event{
		{Kind: audit.KindRunStarted, Actor: "Alice", Subject: "PipelineRun cafe/tea-1a2b3c", Outcome: "succeeded", Details: run},
		{Kind: audit.KindRunFinished, Actor: audit.SystemActor, Subject: "PipelineRun cafe/tea-1a2b3c", Outcome: "succeeded",
			Details: with(run, "image", imageNew, "digest", digestNew, "commitAuthor", "Alice <alice@example.com>", "test", "Succeeded", "testIsolation", "container")},
		{Kind: audit.KindImageSigned, Actor: audit.SystemActor, Subject: "PipelineRun cafe/tea-1a2b3c", Outcome: "succeeded",
			Details: with(run, "image", imageNew, "digest", digestNew, "signingKey", "ab12cd34ef56ab12cd34", "signature", "registry.example.com/cafe/tea:sha256-1111.sig",
				"sbom", "spdxjson attestation in registry.example.com/cafe/tea:sha256-1111.att", "provenance", "slsaprovenance1 attestation in registry.example.com/cafe/tea:sha256-1111.att")},
		{Kind: audit.KindSyncApplied, Actor: "ServiceAccount cafe/deployer", Subject: "Application cafe/tea-staging", Outcome: "succeeded", Details: sync("tea-staging", "5a000001", "", imageNew, "")},
		{Kind: audit.KindWaiverCreated, Actor: "security-officer@example.com", Subject: "PolicyWaiver agent-hostnet", Outcome: "succeeded",
			Details: map[string]string{"rule": "FIN-WL-002", "reason": "node metrics need the host network", "approver": "security-officer@example.com", "expires": "2027-03-31T00:00:00Z"}},
		{Kind: audit.KindPromotionRequested, Actor: "dev@slipway-lab", Subject: "Promotion cafe/tea-to-prod-x7k2p", Outcome: "succeeded", Details: promo},
		{Kind: audit.KindPromotionApprovalIgnored, Actor: "dev@slipway-lab", Subject: "Promotion cafe/tea-to-prod-x7k2p", Outcome: "refused", Details: with(promo, "notCounted", "requested the promotion")},
		{Kind: audit.KindPromotionApproved, Actor: "reviewer@slipway-lab", Subject: "Promotion cafe/tea-to-prod-x7k2p", Outcome: "succeeded", Details: promo},
		{Kind: audit.KindPromotionLanded, Actor: audit.SystemActor, Subject: "Promotion cafe/tea-to-prod-x7k2p", Outcome: "succeeded",
			Details: with(promo, "application", "tea-prod", "commit", "9f000002", "approvers", "reviewer@slipway-lab")},
		{Kind: audit.KindSyncApplied, Actor: "ServiceAccount cafe/deployer", Subject: "Application cafe/tea-prod", Outcome: "succeeded", Details: sync("tea-prod", "9f000002", "9f000001", imageNew, "agent-hostnet")},
		{Kind: audit.KindPolicyBlocked, Actor: audit.SystemActor, Subject: "Application cafe/tea-prod", Outcome: "blocked",
			Details: map[string]string{"namespace": "cafe", "application": "tea-prod", "revision": "9f000003", "policy.violations": "FIN-WL-001 (critical) Deployment/cafe/tea"}},
		{Kind: audit.KindRollback, Actor: "ServiceAccount cafe/deployer", Subject: "Application cafe/tea-prod", Outcome: "succeeded", Details: sync("tea-prod", "9f000001", "9f000002", imageOld, "")},
		{Kind: audit.KindWebhookRefused, Actor: "unauthenticated 10.0.0.9:4711", Subject: "webhook /hooks/git", Outcome: "refused", Details: map[string]string{"reason": "signature does not match the payload"}},
	} {
		if err := l.Record(testCtx, e); err != nil {
			t.Fatal(err)
		}
	}
	if err := l.Close(testCtx); err != nil {
		t.Fatal(err)
	}
}

func exportProd(t *testing.T, store audit.Store, key *ecdsa.PrivateKey) *audit.Pack {
	t.Helper()
	p, err := audit.Export(testCtx, store, &key.PublicKey, audit.ExportOptions{
		From: time.Date(2026, 4, 1, 0, 0, 0, 0, time.UTC), To: time.Date(2026, 4, 2, 0, 0, 0, 0, time.UTC), Filter: audit.Filter{Stage: "prod"}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestEvidencePack: the pack lists each prod change with its supply
// chain, its promotion and its waivers, counts the period right, and
// checks offline, failing when anything of it is edited.
func TestEvidencePack(t *testing.T) {
	b := fileBackend(t)
	key := newKey(t)
	deliveryLog(t, b.open(t), key)
	store := b.reader(t)
	p := exportProd(t, store, key)

	want := audit.Summary{Changes: 2, Succeeded: 2, Rollbacks: 1, Promotions: 1, Approvals: 1, NotCounted: 1, PolicyBlocks: 1,
		WaiverChanges: 1, WebhookRefusals: 1, Records: 14}
	if p.Summary != want {
		t.Fatalf("summary %+v, want %+v", p.Summary, want)
	}
	c := p.Changes[0]
	img := c.Images[0]
	if c.Stage != "prod" || c.Revision != "9f000002" || c.Rollback || img.Digest != digestNew || img.SourceCommit != "c0ffee0000000000000000000000000000000001" ||
		img.Author != "Alice <alice@example.com>" || img.Test != "Succeeded" || !img.Signed || !strings.Contains(img.SBOM, ".att") ||
		img.Requester != "dev@slipway-lab" || strings.Join(img.Approvers, ",") != "reviewer@slipway-lab" || img.ChangeID != "CHG-2041" ||
		len(c.Waivers) != 1 || c.Waivers[0].Approver != "security-officer@example.com" {
		t.Fatalf("the prod change lacks evidence: %+v", c)
	}
	if r := p.Changes[1]; !r.Rollback || r.Images[0].Digest != digestOld || r.Images[0].Signed {
		t.Fatalf("the rollback: %+v", r)
	}
	if !p.Verification.OK || p.Verification.Records != 14 || p.Segment.Last != 14 {
		t.Fatalf("verification %+v, segment %d-%d", p.Verification, p.Segment.First, p.Segment.Last)
	}

	res, err := audit.VerifyPack(p, &key.PublicKey)
	if err != nil || !res.OK() {
		t.Fatalf("the pack as exported fails offline: %v %+v", err, res)
	}
	edit := func(f func(*audit.Pack)) *audit.Result {
		b, _ := json.Marshal(p)
		var q audit.Pack
		json.Unmarshal(b, &q)
		f(&q)
		res, err := audit.VerifyPack(&q, &key.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		return res
	}
	for name, f := range map[string]func(*audit.Pack){
		"an approver added": func(q *audit.Pack) {
			q.Changes[0].Images[0].Approvers = append(q.Changes[0].Images[0].Approvers, "mallory")
		},
		"a change removed": func(q *audit.Pack) { q.Changes = q.Changes[:1]; q.Summary.Changes-- },
		"a count lowered":  func(q *audit.Pack) { q.Summary.PolicyBlocks = 0 },
		"a record changed": func(q *audit.Pack) { q.Segment.Records = strings.Replace(q.Segment.Records, "CHG-2041", "CHG-2042", 1) },
		"the tail cut": func(q *audit.Pack) {
			q.Segment.Records = q.Segment.Records[:strings.LastIndex(strings.TrimSuffix(q.Segment.Records, "\n"), "\n")+1]
		},
		"the checkpoint edited": func(q *audit.Pack) {
			q.Segment.Checkpoint = strings.Replace(q.Segment.Checkpoint, "size 14", "size 13", 1)
		},
	} {
		if res := edit(f); res.OK() {
			t.Errorf("%s: the pack still verifies", name)
		} else {
			t.Logf("%s: %s", name, res.Problems[0])
		}
	}
	if res, _ := audit.VerifyPack(p, &newKey(t).PublicKey); res.OK() {
		t.Fatal("the pack verifies with a key that did not sign it")
	}

	// A record no checkpoint covers yet ends the period before it.
	var last *audit.Record
	store.Scan(testCtx, func(it audit.Item) error { last = it.Record; return nil })
	next := &audit.Record{Seq: last.Seq + 1, Time: last.Time.Add(time.Minute), Kind: audit.KindSyncApplied, Actor: "x", Subject: "Application cafe/tea-prod",
		Outcome: "succeeded", Details: map[string]string{"namespace": "cafe", "application": "tea-prod", "revision": "9f000004", "changes": "ConfigMap/cafe/x created"}, Prev: last.Hash}
	next.Hash = next.ComputeHash()
	w := b.open(t)
	if err := w.Append(testCtx, []*audit.Record{next}); err != nil {
		t.Fatal(err)
	}
	w.Close()
	q := exportProd(t, b.reader(t), key)
	if q.Uncovered == "" || !q.To.Equal(next.Time) || q.Summary.Changes != 2 {
		t.Fatalf("a record past the newest checkpoint: to %s, uncovered %q, %d changes", q.To, q.Uncovered, q.Summary.Changes)
	}
	if res, err := audit.VerifyPack(q, &key.PublicKey); err != nil || !res.OK() {
		t.Fatalf("the pack ending at the checkpoint: %v %+v", err, res)
	}
}

// TestEvidenceHTMLInChromium: the HTML pack, in Korean and in English,
// renders in headless Chromium from one file with no request of its own,
// shows the numbers of the JSON, carries the pack for `verify --pack`, and
// a screenshot of each is saved.
func TestEvidenceHTMLInChromium(t *testing.T) {
	b := fileBackend(t)
	key := newKey(t)
	deliveryLog(t, b.open(t), key)
	p := exportProd(t, b.reader(t), key)
	browser, err := exec.LookPath("chromium")
	if err != nil {
		testenv.MissingDependency(t, "Debian's chromium is not installed (make deps installs it): %v", err)
	}
	shots := filepath.Join(os.TempDir(), "slipway-evidence-screenshots")
	if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, lang := range audit.Languages {
		t.Run(lang, func(t *testing.T) {
			var html bytes.Buffer
			if err := audit.WriteHTML(&html, p, lang, "evidence.html"); err != nil {
				t.Fatal(err)
			}
			again, err := audit.ReadPack(html.Bytes())
			if err != nil {
				t.Fatal(err)
			}
			if res, err := audit.VerifyPack(again, &key.PublicKey); err != nil || !res.OK() {
				t.Fatalf("the pack read back from the HTML fails: %v %+v", err, res)
			}
			file := filepath.Join(t.TempDir(), "evidence.html")
			if err := os.WriteFile(file, html.Bytes(), 0o644); err != nil {
				t.Fatal(err)
			}
			fields, title, requests, shot := render(t, browser, file)
			png := filepath.Join(shots, fmt.Sprintf("evidence-%s.png", lang))
			if err := os.WriteFile(png, shot, 0o644); err != nil {
				t.Fatal(err)
			}
			t.Logf("screenshot of the %s pack: %s", lang, png)

			wantTitle := map[string]string{"ko": "운영 환경 변경 증적", "en": "Production change evidence"}[lang]
			if !strings.HasPrefix(title, wantTitle) {
				t.Fatalf("title %q, want it to start with %q", title, wantTitle)
			}
			if requests != 1 {
				t.Fatalf("the page made %d requests, want only its own file", requests)
			}
			for field, want := range expectedFields(p) {
				if got, ok := fields[field]; !ok || got != want {
					t.Errorf("the page shows %s = %q, the JSON has %q", field, got, want)
				}
			}
		})
	}
}

// expectedFields are the values the page must show, from the pack's JSON.
func expectedFields(p *audit.Pack) map[string]string {
	var m map[string]any
	b, _ := json.Marshal(p)
	json.Unmarshal(b, &m)
	s := m["summary"].(map[string]any)
	v := m["verification"].(map[string]any)
	want := map[string]string{
		"verification.logID": v["logID"].(string), "verification.keyID": v["keyID"].(string), "verification.head": v["head"].(string),
		"verification.records": num(v["records"]), "verification.first": num(v["first"]), "verification.last": num(v["last"]),
		"verification.checkpoints": num(v["checkpoints"]), "verification.witnessed": num(v["witnessed"]),
		"segment.first": num(m["segment"].(map[string]any)["first"]), "segment.last": num(m["segment"].(map[string]any)["last"]),
	}
	for k, n := range s {
		want["summary."+k] = num(n)
	}
	for i, c := range m["changes"].([]any) {
		c := c.(map[string]any)
		want[fmt.Sprintf("changes.%d.revision", i)] = c["revision"].(string)
		for j, img := range c["images"].([]any) {
			img := img.(map[string]any)
			want[fmt.Sprintf("changes.%d.images.%d.digest", i, j)] = img["digest"].(string)
			if sc, ok := img["sourceCommit"].(string); ok {
				want[fmt.Sprintf("changes.%d.images.%d.sourceCommit", i, j)] = sc
			}
			if id, ok := img["changeID"].(string); ok {
				want[fmt.Sprintf("changes.%d.images.%d.changeID", i, j)] = id
			}
		}
	}
	return want
}

func num(v any) string { return strconv.FormatFloat(v.(float64), 'f', -1, 64) }

// render opens file in headless Chromium and returns the text of every
// element with a data-field, the title, how many resources were fetched
// (the document included) and a full-page screenshot (PNG).
func render(t *testing.T, browser, file string) (map[string]string, string, int, []byte) {
	t.Helper()
	ctx, cancel := context.WithTimeout(testCtx, 90*time.Second)
	defer cancel()
	alloc, cancelAlloc := chromedp.NewExecAllocator(ctx,
		chromedp.ExecPath(browser), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-dev-shm-usage", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1200, 900))
	defer cancelAlloc()
	tab, cancelTab := chromedp.NewContext(alloc)
	defer cancelTab()
	if err := chromedp.Do(tab, chromedp.Navigate("file://"+file)); err != nil {
		t.Fatalf("opening %s in %s: %v", file, browser, err)
	}
	fields, err := chromedp.Run(tab, chromedp.Evaluate[map[string]string](
		`Object.fromEntries([...document.querySelectorAll('[data-field]')].map(e => [e.dataset.field, e.textContent.trim()]))`))
	if err != nil {
		t.Fatal(err)
	}
	title, err := chromedp.Run(tab, chromedp.Title())
	if err != nil {
		t.Fatal(err)
	}
	requests, err := chromedp.Run(tab, chromedp.Evaluate[int](`performance.getEntriesByType('navigation').length + performance.getEntriesByType('resource').length`))
	if err != nil {
		t.Fatal(err)
	}
	shot, err := chromedp.Run(tab, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	return fields, title, requests, shot
}
