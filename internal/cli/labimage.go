package cli

import (
	"fmt"

	"github.com/spf13/cobra"
)

func newLabImageCommand(newLab labFactory) *cobra.Command {
	var source string
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Build Slipway's server and runner images from a checkout, push them to the lab's registry and sign them",
		Long: `Build ./cmd/slipway of a checkout of Slipway with Slipway's own daemonless
builder, onto the Go toolchain (the server runs go build for the Go images its
pipelines build), push it to the lab's registry as slipway/server:VERSION, sign
it and its SPDX SBOM with the lab's key, and print it pinned by digest: what
'slipway install --image' takes. The same commit gives the same digest.

Then push the runner image, slipway/runner:VERSION: the same layers plus
Debian's static busybox (package busybox-static) for sh, in which pipeline
test Pods check out with 'slipway checkout' and run their tests; signed with
the lab's key and printed by digest on the second line: what
'slipway install --runner-image' takes.

  slipway lab image | { read server; read runner; slipway install --image "$server" --runner-image "$runner"; }

  cosign verify --key $(slipway lab status -o json | jq -r .dir)/cosign.pub \
    --insecure-ignore-tlog --allow-http-registry IMAGE`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().StringVar(&source, "source", ".", "checkout of Slipway to build (its module root or a directory in it)")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		images, err := newLab(cmd).BuildServerImage(cmd.Context(), source)
		if err != nil {
			return err
		}
		_, err = fmt.Fprintf(cmd.OutOrStdout(), "%s\n%s\n", images.Server, images.Runner)
		return err
	}
	return cmd
}
