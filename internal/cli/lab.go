package cli

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/upstream"
)

func newLabCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "lab",
		Short: "Run Slipway and a real Kubernetes control plane on this machine",
		Long: `The lab runs etcd, kube-apiserver, kube-controller-manager and kube-scheduler
from pinned upstream versions, KWOK nodes named master, worker-01 and worker-02,
and a git server holding an ops repository. No cloud account, no Docker.`,
	}
	cmd.AddCommand(newLabBuildCommand())
	return cmd
}

func newLabBuildCommand() *cobra.Command {
	var binDir string
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build and cache the pinned upstream binaries (etcd, Kubernetes, KWOK)",
		Long: `Build the pinned upstream binaries from the Go module proxy and cache them.
The first build takes several minutes; later runs return at once.
The directory is printed on success (tests read it from SLIPWAY_BIN_DIR).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			progress := func(format string, args ...any) {
				fmt.Fprintf(cmd.ErrOrStderr(), "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
			}
			if err := upstream.Ensure(cmd.Context(), binDir, progress); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), binDir)
			return nil
		},
	}
	cmd.Flags().StringVar(&binDir, "bin-dir", upstream.DefaultBinDir(), "directory to build the binaries into")
	return cmd
}
