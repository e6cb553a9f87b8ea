package cli

import (
	"fmt"

	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/version"
)

type versionInfo struct {
	Version    string `json:"version"`
	Kubernetes string `json:"kubernetes"`
	Etcd       string `json:"etcd"`
	KWOK       string `json:"kwok"`
}

func newVersionCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print Slipway's version and the Kubernetes line it targets",
		Args:  cobra.NoArgs,
	}
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		info := versionInfo{Version: version.Version, Kubernetes: version.Kubernetes, Etcd: version.Etcd, KWOK: version.KWOK}
		if done, err := printStructured(cmd.OutOrStdout(), *out, info); done {
			return err
		}
		_, err := fmt.Fprintf(cmd.OutOrStdout(), "slipway %s (Kubernetes %s, etcd %s, KWOK %s)\n", info.Version, info.Kubernetes, info.Etcd, info.KWOK)
		return err
	}
	return cmd
}
