package cli

import (
	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/lab"
)

type monitoringFlags struct {
	enabled  bool
	webhooks []string
}

func addMonitoringFlags(cmd *cobra.Command) *monitoringFlags {
	f := &monitoringFlags{}
	cmd.PersistentFlags().BoolVar(&f.enabled, "monitoring", false,
		"also run Prometheus and Alertmanager (Debian's packages, installed when missing) scraping slipway server, the API server and "+
			"real nodes' kubelets, with Slipway's rules; their data stays in the lab directory, and the lab keeps them once added")
	cmd.PersistentFlags().StringArrayVar(&f.webhooks, "alert-webhook", nil,
		"a URL Alertmanager posts every alert to (repeatable; replaces the ones given before)")
	return f
}

func (f *monitoringFlags) apply(cmd *cobra.Command, l *lab.Lab) {
	l.Monitoring = f.enabled || len(f.webhooks) > 0
	if cmd.Flags().Changed("alert-webhook") {
		l.AlertWebhooks = f.webhooks
	}
}
