package pipeline

import (
	"strings"
	"testing"
)

func TestParseConfig(t *testing.T) {
	c, err := ParseConfig([]byte("test:\n  command: go test ./...\nbuild:\n  package: ./cmd/tea\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := Config{Test: TestConfig{Command: "go test ./..."}, Build: BuildConfig{Context: ".", Package: "./cmd/tea"}}
	if *c != want {
		t.Fatalf("got %+v, want %+v", *c, want)
	}
	c, err = ParseConfig([]byte("build:\n  context: web\n  dockerfile: web/Dockerfile\n"))
	if err != nil || c.Build.Package != "" || c.Test.Command != "" {
		t.Fatalf("Dockerfile config: %+v, %v", c, err)
	}
}

func TestParseConfigErrors(t *testing.T) {
	for in, want := range map[string]string{
		"tset:\n  command: x\n":                        `unknown field "tset"`,
		"test: go test ./...\n":                        "cannot unmarshal",
		"build:\n  package: cmd/tea\n":                 "starting with ./",
		"build:\n  context: ../other\n":                "inside the repository",
		"build:\n  dockerfile: /etc/Dockerfile\n":      "inside the repository",
		"build:\n  package: ./a\n  dockerfile: D\n":    "exclude each other",
		"build:\n  context: .git\n":                    "must not point into .git",
		"test:\n  command: \"  \"\n":                   "blank",
		"test:\n  command: a\ntest:\n  command: b\n":   "already set",
		"build:\n  package: ./a\n  package: ./b\n":     "already set",
		strings.Repeat("# padding\n", 8000):            "byte limit",
		"build:\n  package: ./a\n  entrypoint: [x]\n":  `unknown field "entrypoint"`,
		"test:\n  command: make test\n  timeout: 5m\n": `unknown field "timeout"`,
		"build:\n  dockerfile: ..\\\\Dockerfile\n":     "inside the repository",
		"build:\n  package: ./../../etc\n":             "inside the repository",
		"- a list\n":                                   "cannot unmarshal",
		"test:\n  command: x\n  image: Not An Image\n": "test.image",
	} {
		_, err := ParseConfig([]byte(in))
		if err == nil || !strings.Contains(err.Error(), want) || !strings.HasPrefix(err.Error(), ConfigFile) {
			t.Errorf("ParseConfig(%q) = %v, want an error about %s containing %q", in, err, ConfigFile, want)
		}
	}
}

func FuzzParseConfig(f *testing.F) {
	f.Add("test:\n  command: go test ./...\nbuild:\n  package: ./cmd/tea\n")
	f.Add("build:\n  context: web\n  dockerfile: Dockerfile\n")
	f.Fuzz(func(t *testing.T, in string) {
		c, err := ParseConfig([]byte(in))
		if err != nil {
			return
		}
		for _, p := range []string{c.Build.Context, c.Build.Package, c.Build.Dockerfile} {
			if strings.HasPrefix(p, "/") || p == ".." || strings.HasPrefix(p, "../") {
				t.Fatalf("accepted a path outside the repository: %+v", c)
			}
		}
	})
}
