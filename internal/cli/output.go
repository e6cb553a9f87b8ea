package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Output formats every command understands.
const (
	outputHuman = ""
	outputJSON  = "json"
	outputYAML  = "yaml"
)

// addOutputFlag registers -o/--output on cmd and returns the bound value.
func addOutputFlag(cmd *cobra.Command, extra ...string) *string {
	formats := append([]string{outputJSON, outputYAML}, extra...)
	var out string
	cmd.Flags().StringVarP(&out, "output", "o", outputHuman, fmt.Sprintf("output format: one of %v (default: human-readable)", formats))
	return &out
}

// printStructured writes v as JSON or YAML and reports whether format was one of them.
func printStructured(w io.Writer, format string, v any) (bool, error) {
	switch format {
	case outputJSON:
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return true, enc.Encode(v)
	case outputYAML:
		b, err := yaml.Marshal(v)
		if err != nil {
			return true, err
		}
		_, err = w.Write(b)
		return true, err
	case outputHuman:
		return false, nil
	default:
		return true, usageError(fmt.Errorf("unknown output format %q: use json or yaml", format))
	}
}

// newTable returns a tabwriter aligned like kubectl's tables.
func newTable(w io.Writer) *tabwriter.Writer {
	return tabwriter.NewWriter(w, 0, 4, 3, ' ', 0)
}
