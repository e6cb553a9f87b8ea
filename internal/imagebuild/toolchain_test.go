package imagebuild

import (
	"path"
	"testing"
)

// TestToolchainSelection: what of a GOROOT goes into the image.
func TestToolchainSelection(t *testing.T) {
	const tools = "pkg/tool/linux_amd64"
	files := map[string]bool{
		"VERSION":                       true,
		"go.env":                        true,
		"bin/go":                        true,
		"bin/gofmt":                     false,
		"pkg/tool/linux_amd64/compile":  true,
		"pkg/tool/linux_amd64/link":     true,
		"pkg/include/textflag.h":        true,
		"src/fmt/print.go":              true,
		"src/runtime/asm_amd64.s":       true,
		"src/vendor/modules.txt":        true,
		"src/fmt/fmt_test.go":           false,
		"api/go1.txt":                   false,
		"doc/go_spec.html":              false,
		"lib/time/zoneinfo.zip":         false,
		"test/fixedbugs/issue1.go":      false,
		"misc/wasm/wasm_exec.js":        false,
		"CONTRIBUTING.md":               false,
		"pkg/tool/linux_arm64/compile":  false,
		"src/cmd/go/main.go":            false,
		"src/net/http/testdata/file":    false,
		"src/cmd/compile/internal/a.go": false,
	}
	for file, want := range files {
		// A file is copied when every directory above it is entered and
		// the file itself is selected.
		got := toolchainFile(file, tools)
		for dir := path.Dir(file); dir != "."; dir = path.Dir(dir) {
			got = got && toolchainDir(dir, tools)
		}
		if got != want {
			t.Errorf("%s: copied %v, want %v", file, got, want)
		}
	}
}
