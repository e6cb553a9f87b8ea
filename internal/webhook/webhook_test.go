package webhook

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func TestVerify(t *testing.T) {
	secret, body := []byte("hook-secret"), []byte(`{"ref":"refs/heads/main"}`)
	good := Sign(secret, body)
	cases := []struct {
		name    string
		header  string
		value   string
		wantErr bool
	}{
		{"github signature", "X-Hub-Signature-256", good, false},
		{"gitea signature", "X-Gitea-Signature", good[len("sha256="):], false},
		{"signed with another secret", "X-Hub-Signature-256", Sign([]byte("other"), body), true},
		{"missing prefix", "X-Hub-Signature-256", good[len("sha256="):], true},
		{"not hex", "X-Hub-Signature-256", "sha256=nothex", true},
		{"no header", "X-Other", good, true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			h := http.Header{}
			h.Set(tc.header, tc.value)
			if err := Verify(secret, body, h); (err != nil) != tc.wantErr {
				t.Fatalf("Verify() error = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}

func TestParsePush(t *testing.T) {
	push, err := ParsePush([]byte(`{"ref":"refs/heads/main","after":"0123","repository":{"clone_url":"https://git.example.com/org/ops.git","ssh_url":"git@git.example.com:org/ops.git"}}`))
	if err != nil {
		t.Fatal(err)
	}
	if push.Ref != "refs/heads/main" || push.After != "0123" || len(push.RepoURLs) != 2 {
		t.Fatalf("ParsePush = %+v", push)
	}
	for _, bad := range []string{`not json`, `{"ref":"refs/heads/main"}`, `{"repository":{"clone_url":"http://x/y"}}`} {
		if _, err := ParsePush([]byte(bad)); err == nil {
			t.Errorf("ParsePush(%s) accepted", bad)
		}
	}
}

func TestParsePushChangedFiles(t *testing.T) {
	const repo = `"repository":{"clone_url":"https://git.example.com/org/tea.git"}`
	push, err := ParsePush([]byte(`{"ref":"refs/heads/main","before":"` + strings.Repeat("9", 40) + `","after":"1",` + repo + `,"commits":[` +
		`{"added":["docs/new.md"],"removed":[],"modified":["README.md"]},{"added":[],"removed":["old.go"],"modified":[]}]}`))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"docs/new.md", "README.md", "old.go"}; !slices.Equal(push.ChangedFiles, want) {
		t.Fatalf("ChangedFiles = %q, want %q", push.ChangedFiles, want)
	}
	// Without a commit list, or with one the sender may have truncated, the
	// change is unknown: nil, so that no Pipeline skips it.
	many := strings.Repeat(`{"modified":["README.md"]},`, maxListedCommits)
	for name, body := range map[string]string{
		"no commits":        `{"ref":"refs/heads/main","after":"1",` + repo + `}`,
		"truncated commits": `{"ref":"refs/heads/main","before":"` + strings.Repeat("9", 40) + `","after":"1",` + repo + `,"commits":[` + strings.TrimSuffix(many, ",") + `]}`,
	} {
		push, err := ParsePush([]byte(body))
		if err != nil {
			t.Fatal(err)
		}
		if push.ChangedFiles != nil {
			t.Errorf("%s: ChangedFiles = %q, want nil", name, push.ChangedFiles)
		}
	}
}

func TestIgnored(t *testing.T) {
	patterns := []string{"*.md", "docs/**", "deploy/*.yaml", "[bad"}
	for file, want := range map[string]bool{
		"README.md":            true,
		"cmd/tea/NOTES.md":     true,
		"docs/guide/index.md":  true,
		"docs/img/a.png":       true,
		"deploy/values.yaml":   true,
		"deploy/x/values.yaml": false,
		"main.go":              false,
		"docsx/a.go":           false,
		"[bad":                 false,
	} {
		if got := Ignored(patterns, file); got != want {
			t.Errorf("Ignored(%q) = %v, want %v", file, got, want)
		}
	}
	if Ignored(nil, "README.md") {
		t.Error("no patterns ignored a file")
	}
}

func TestNormalizeURL(t *testing.T) {
	want := "git.example.com/org/ops"
	for _, in := range []string{
		"https://git.example.com/org/ops.git",
		"http://Git.Example.com/org/ops",
		"https://user:token@git.example.com/org/ops/",
		"ssh://git@git.example.com/org/ops.git",
		"git@git.example.com:org/ops.git",
	} {
		if got := NormalizeURL(in); got != want {
			t.Errorf("NormalizeURL(%q) = %q, want %q", in, got, want)
		}
	}
	if NormalizeURL("https://git.example.com/org/other") == want {
		t.Error("different repositories normalised to the same URL")
	}
}

// TestChangedFilesOnlyWithinSenderLimits feeds payloads whose commit list
// looks short but is not the whole push.
func TestChangedFilesOnlyWithinSenderLimits(t *testing.T) {
	const repo = `"repository":{"clone_url":"https://git.example.com/org/tea.git"}`
	docs := func(n int) string {
		return strings.TrimSuffix(strings.Repeat(`{"modified":["README.md"]},`, n), ",")
	}
	for name, tc := range map[string]struct {
		body     string
		complete bool
	}{
		// Gitea lists at most 5 commits (FEED_MAX_COMMIT_NUM) and counts
		// them all in total_commits.
		"gitea, 5 of 7 listed": {`{"ref":"refs/heads/main","before":"` + strings.Repeat("1", 40) + `","after":"` + strings.Repeat("2", 40) + `","total_commits":7,` + repo + `,"commits":[` + docs(5) + `]}`, false},
		"gitea, 3 of 3 listed": {`{"ref":"refs/heads/main","before":"` + strings.Repeat("1", 40) + `","after":"` + strings.Repeat("2", 40) + `","total_commits":3,` + repo + `,"commits":[` + docs(3) + `]}`, true},
		"github, 19 listed":    {`{"ref":"refs/heads/main","before":"` + strings.Repeat("1", 40) + `","after":"` + strings.Repeat("2", 40) + `",` + repo + `,"commits":[` + docs(19) + `]}`, true},
		"github, forced":       {`{"ref":"refs/heads/main","before":"` + strings.Repeat("1", 40) + `","after":"` + strings.Repeat("2", 40) + `","forced":true,` + repo + `,"commits":[` + docs(1) + `]}`, false},
		// A new branch lists commits that need not be what changed
		// against anything built before (Gitea lists the last 10).
		"new branch": {`{"ref":"refs/heads/main","before":"` + strings.Repeat("0", 40) + `","after":"` + strings.Repeat("2", 40) + `","created":true,` + repo + `,"commits":[` + docs(1) + `]}`, false},
	} {
		t.Run(name, func(t *testing.T) {
			push, err := ParsePush([]byte(tc.body))
			if err != nil {
				t.Fatal(err)
			}
			if got := push.ChangedFiles != nil; got != tc.complete {
				t.Fatalf("commit list counted complete = %v, want %v (ChangedFiles %q)", got, tc.complete, push.ChangedFiles)
			}
		})
	}
}

// TestWakeOrder: the Applications whose path a push changed are woken
// first, the others keep their order; without a full list of changed files
// nothing moves.
func TestWakeOrder(t *testing.T) {
	apps := func(paths ...string) []slipwayv1.Application {
		out := make([]slipwayv1.Application, len(paths))
		for i, p := range paths {
			out[i].Name = fmt.Sprintf("app-%d", i)
			out[i].Spec.Source.Path = p
		}
		return out
	}
	names := func(list []slipwayv1.Application) string {
		var out []string
		for _, a := range list {
			out = append(out, a.Name)
		}
		return strings.Join(out, " ")
	}
	list := apps("apps/a", "apps/b", "apps/c", "apps/bb", "apps/b")
	wakeOrder(list, []string{"apps/b/deployment.yaml", "README.md"})
	if got, want := names(list), "app-1 app-4 app-0 app-2 app-3"; got != want {
		t.Errorf("order %s, want %s", got, want)
	}
	list = apps("apps/a", "apps/b")
	wakeOrder(list, nil)
	if got, want := names(list), "app-0 app-1"; got != want {
		t.Errorf("order without the changed files %s, want %s", got, want)
	}
}
