package pipeline

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func write(t *testing.T, dir string, files map[string]string) {
	t.Helper()
	for name, content := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

// TestLinksStayInside lays out checkouts whose links lead out, as a
// developer can commit them, and some that do not.
func TestLinksStayInside(t *testing.T) {
	for name, tc := range map[string]struct {
		link, target string
		refused      bool
	}{
		"absolute":                  {"main.go", "/etc/passwd", true},
		"climbing":                  {"pkg/key.go", "../../outside", true},
		"through a link to the top": {"b", "a/..", true},
		"inside":                    {"pkg/x.go", "../real.go", false},
		"dangling inside":           {"gone.go", "missing.go", false},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			write(t, dir, map[string]string{"real.go": "package main\n", "pkg/doc.go": "package pkg\n"})
			if err := os.Symlink(".", filepath.Join(dir, "a")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(tc.target, filepath.Join(dir, tc.link)); err != nil {
				t.Fatal(err)
			}
			err := linksStayInside(dir)
			if (err != nil) != tc.refused {
				t.Fatalf("linksStayInside = %v, want refused %v", err, tc.refused)
			}
			if err != nil && !strings.Contains(err.Error(), "out of the repository") {
				t.Fatalf("the refusal does not say why: %v", err)
			}
		})
	}
}

func TestReplacementsStayInside(t *testing.T) {
	for name, tc := range map[string]struct {
		replace string
		refused bool
	}{
		"module version":   {"example.com/x => example.com/y v1.0.0", false},
		"inside":           {"example.com/x => ./third_party/x", false},
		"absolute":         {"example.com/x => /root/go/src/secret", true},
		"climbing":         {"example.com/x => ../../other-team/source", true},
		"through a link":   {"example.com/x => ./out/x", true},
		"up from a subdir": {"example.com/x => ../x", false},
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "repo")
			write(t, dir, map[string]string{
				"svc/go.mod":               "module example.com/svc\n\ngo 1.26\n\nreplace " + tc.replace + "\n",
				"svc/third_party/x/go.mod": "module example.com/x\n",
				"x/go.mod":                 "module example.com/x\n",
			})
			outside := t.TempDir()
			write(t, outside, map[string]string{"x/go.mod": "module example.com/x\n"})
			if err := os.Symlink(outside, filepath.Join(dir, "svc", "out")); err != nil {
				t.Fatal(err)
			}
			err := replacementsStayInside(dir, filepath.Join(dir, "svc", "cmd"))
			if (err != nil) != tc.refused {
				t.Fatalf("replacementsStayInside = %v, want refused %v", err, tc.refused)
			}
		})
	}
}
