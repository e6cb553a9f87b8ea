package gitsource

import (
	"strings"
	"testing"
)

func TestCredentialsFromSecretData(t *testing.T) {
	cases := []struct {
		name string
		data map[string][]byte
		err  string
	}{
		{"basic auth", map[string][]byte{"username": []byte("u"), "password": []byte("pw-secret-123")}, ""},
		{"token only", map[string][]byte{"password": []byte("tok-secret-456")}, ""},
		{"ssh without known_hosts", map[string][]byte{"identity": []byte("key")}, "no known_hosts"},
		{"empty", map[string][]byte{}, "neither"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := CredentialsFromSecretData(tc.data)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if s := c.String(); strings.Contains(s, string(tc.data["password"])) {
				t.Fatalf("String() reveals the password: %q", s)
			}
		})
	}
}

func TestSSHIdentityMustParse(t *testing.T) {
	c := &Credentials{Identity: []byte("not a key"), KnownHosts: []byte("host ssh-ed25519 AAAA\n")}
	if _, err := c.AuthMethod(); err == nil || strings.Contains(err.Error(), "not a key") {
		t.Fatalf("a malformed identity must fail without echoing it: %v", err)
	}
}

func TestRedactURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://user:tok@git.example.com/org/repo.git": "https://git.example.com/org/repo.git",
		"https://git.example.com/org/repo.git":          "https://git.example.com/org/repo.git",
		"ssh://git@host/repo.git":                       "ssh://host/repo.git",
	} {
		if got := RedactURL(in); got != want {
			t.Errorf("RedactURL(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestCheckCredentialScope(t *testing.T) {
	scoped := map[string]string{AllowedURLsAnnotation: "https://git.example.com/team-a/, ssh://git.example.com/infra\nhttps://mirror.example.com"}
	for url, ok := range map[string]bool{
		"https://git.example.com/team-a/ops.git":                        true,
		"https://GIT.example.com/team-a/ops.git":                        true,
		"https://user@git.example.com/team-a/x":                         true,
		"https://git.example.com/team-ab/ops.git":                       false,
		"https://git.example.com/team-b/ops.git":                        false,
		"http://git.example.com/team-a/ops.git":                         false,
		"https://git.example.com.evil.net/team-a/x":                     false,
		"ssh://git.example.com/infra/ops.git":                           true,
		"ssh://git.example.com/infrastructure":                          false,
		"https://mirror.example.com/anything/at/all":                    true,
		"https://mirror.example.com:8443/anything":                      false,
		"https://attacker.example.net/?https://git.example.com/team-a/": false,
	} {
		err := CheckCredentialScope("ns/git", scoped, url, true)
		if (err == nil) != ok {
			t.Errorf("%s: %v, want allowed=%v", url, err, ok)
		}
	}
	registry := map[string]string{AllowedURLsAnnotation: "registry.example.com:5000/cafe/"}
	for ref, ok := range map[string]bool{
		"registry.example.com:5000/cafe/tea":         true,
		"https://registry.example.com:5000/cafe/tea": true,
		"registry.example.com:5000/cafe-evil/tea":    false,
		"attacker.example.net/cafe/tea":              false,
	} {
		if err := CheckCredentialScope("ns/registry", registry, ref, true); (err == nil) != ok {
			t.Errorf("registry %s: %v, want allowed=%v", ref, err, ok)
		}
	}
	err := CheckCredentialScope("ns/git", nil, "https://git.example.com/x", true)
	if err == nil || !strings.Contains(err.Error(), AllowedURLsAnnotation) {
		t.Errorf("unscoped Secret when scopes are required: %v", err)
	}
	if err := CheckCredentialScope("ns/git", nil, "https://git.example.com/x", false); err != nil {
		t.Errorf("unscoped Secret when scopes are optional: %v", err)
	}
}
