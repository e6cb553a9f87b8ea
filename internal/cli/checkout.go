package cli

import (
	"errors"
	"os"
	"time"

	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/pipeline"
)

// newCheckoutCommand is what the Kubernetes executor's test Pods run to
// check the source out: the server's own checkout (go-git), so the image
// that runs it needs neither git nor ssh. Hidden: it reads its settings
// from the Pod's environment, not from a person.
func newCheckoutCommand() *cobra.Command {
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:    "checkout",
		Short:  "Check out one commit of a branch into a workspace (in pipeline test Pods)",
		Hidden: true,
		Long: `Clone the branch ` + pipeline.CheckoutEnvBranch + ` of ` + pipeline.CheckoutEnvURL + ` into the empty directory
` + pipeline.CheckoutEnvWorkspace + ` and check out ` + pipeline.CheckoutEnvCommit + `, refusing a commit the branch does not
reach. Credentials come from the environment, never from arguments or the URL:
` + pipeline.CheckoutEnvUsername + ` and ` + pipeline.CheckoutEnvPassword + ` for HTTPS, or the files
` + pipeline.CheckoutEnvIdentityFile + ` and ` + pipeline.CheckoutEnvKnownHostsFile + ` for SSH.`,
		Args: cobra.NoArgs,
	}
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "deadline of the clone")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if timeout <= 0 {
			return usageError(errors.New("--timeout must be positive"))
		}
		return pipeline.CheckoutFromEnv(cmd.Context(), os.Getenv, timeout, cmd.OutOrStdout())
	}
	return cmd
}
