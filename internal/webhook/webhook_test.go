package webhook

import (
	"net/http"
	"testing"
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
