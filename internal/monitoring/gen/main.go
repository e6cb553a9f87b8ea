// Command gen writes what internal/monitoring generates into the
// repository at the given root: the dashboards and the PrometheusRule in
// config/monitoring, and docs/runbooks.md.
package main

import (
	"fmt"
	"os"
	"path/filepath"

	"slipway.dev/slipway/internal/monitoring"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gen REPOSITORY-ROOT")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gen:", err)
		os.Exit(1)
	}
}

func run(root string) error {
	files, err := monitoring.Generated()
	if err != nil {
		return err
	}
	for rel, content := range files {
		p := filepath.Join(root, filepath.FromSlash(rel))
		if err := os.WriteFile(p, content, 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", p, err)
		}
	}
	return nil
}
