// Package cli builds the slipway command tree. Each verb lives in its own file;
// the commands are thin and call into the domain packages under internal/.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRootCommand returns the slipway command with every verb attached.
func NewRootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:           "slipway",
		Short:         "Compliance-first delivery from git push to a running, audited Kubernetes workload",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(
		newVersionCommand(),
		newLabCommand(),
		newServerCommand(),
		newInstallCommand(),
		newUninstallCommand(),
		newAppCommand(),
		newPolicyCommand(),
		newRunCommand(),
		newPromoteCommand(),
		newApproveCommand(),
		newRejectCommand(),
		newPromotionCommand(),
		newDoctorCommand(),
		newAuditCommand(),
		newCheckoutCommand(),
	)
	return root
}
