// Command gendocs writes docs/policies.md from the embedded policy packs.
package main

import (
	"fmt"
	"os"

	"slipway.dev/slipway/internal/policy"
)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: gendocs OUTPUT.md")
		os.Exit(2)
	}
	if err := run(os.Args[1]); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}

func run(out string) error {
	cat, err := policy.NewCatalog()
	if err != nil {
		return err
	}
	if err := os.WriteFile(out, policy.GenerateDocs(cat), 0o644); err != nil {
		return fmt.Errorf("writing policy documentation: %w", err)
	}
	return nil
}
