package cli

import (
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/doctor"
)

type doctorFlags struct {
	server, prometheus, identity string
	stepTimeout, timeout         time.Duration
}

func (f *doctorFlags) addTo(cmd *cobra.Command, fromLab bool) {
	if !fromLab {
		cmd.Flags().StringVar(&f.server, "server", "", "slipway server's HTTP address, e.g. http://127.0.0.1:8080 (default: the installed server, through the API server's proxy)")
		cmd.Flags().StringVar(&f.prometheus, "prometheus", "", "the Prometheus that should scrape Slipway, e.g. http://prometheus:9090 (default: not checked)")
	}
	cmd.Flags().StringVar(&f.identity, "server-identity", doctor.DefaultServerIdentity, "the user slipway server runs as, whose rights are checked by impersonating it")
	cmd.Flags().DurationVar(&f.stepTimeout, "step-timeout", doctor.DefaultStepTimeout, "deadline of each step of each check (DNS, TCP, TLS, a request)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", doctor.DefaultTimeout, "bound of the whole run; checks not finished by then fail")
}

const doctorLong = `Check what Slipway depends on, each step under a deadline of its own, and say
for each what is wrong, why, and what to do:

  cluster             the API server answers; its Kubernetes version is supported
  crds                Slipway's CRDs are installed, established and current
  rbac                the server's identity has every right its generated roles grant
                      (a SelfSubjectAccessReview per right, impersonating it)
  git.*               for every repository an Application, Pipeline or Delivery names:
                      dns, tcp, tls (and the certificate's expiry), auth (the refs
                      advertisement with its credentials), read (the refs they follow);
                      for ops repositories write (the receive-pack advertisement a
                      push starts with) and push (a push of no refs: nothing changes)
  registry.*          for every Pipeline's image repository: dns, tcp, tls, auth, push
                      (an upload started and cancelled)
  webhook             the server has a webhook secret; how its last delivery went
  prometheus*         Prometheus is ready, scrapes every slipway server target and
                      holds Slipway's rules
  clock               this machine's clock against the API server's and the git servers'
  keys                every Pipeline's signing key is present and readable
  nodes               the nodes are Ready; on real nodes, the CNI too

A remote that accepts connections and never answers (a hung git push) is
reported by the step it hangs in, when that step's deadline passes.
Exit code: 0 when nothing failed (warnings included), 1 when a check failed,
2 for bad flags.`

func newDoctorCommand() *cobra.Command {
	var kube kubeFlags
	var f doctorFlags
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Check the cluster, Slipway's CRDs and rights, every git remote and registry, the webhook, Prometheus, clocks, keys and nodes",
		Long:  doctorLong,
		Args:  cobra.NoArgs,
	}
	kube.addTo(cmd.Flags(), false)
	f.addTo(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		cfg, err := kube.restConfig()
		if err != nil {
			return usageError(err)
		}
		return runDoctor(cmd, *out, doctor.Options{Config: cfg, ServerURL: f.server, PrometheusURL: f.prometheus}, f)
	}
	return cmd
}

func newLabDoctorCommand(newLab labFactory) *cobra.Command {
	var f doctorFlags
	cmd := &cobra.Command{
		Use:   "doctor",
		Short: "Run `slipway doctor` against the lab: its kubeconfig, its slipway server and (with --monitoring) its Prometheus",
		Long:  doctorLong,
		Args:  cobra.NoArgs,
	}
	f.addTo(cmd, true)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		l := newLab(cmd)
		info, err := l.Status()
		if err != nil {
			return err
		}
		kube := kubeFlags{kubeconfig: info.Kubeconfig, timeout: 30 * time.Second}
		cfg, err := kube.restConfig()
		if err != nil {
			return err
		}
		opts := doctor.Options{Config: cfg, ServerURL: info.Server.URL}
		if info.Monitoring != nil {
			opts.PrometheusURL = info.Monitoring.Prometheus
		}
		return runDoctor(cmd, *out, opts, f)
	}
	return cmd
}

func runDoctor(cmd *cobra.Command, format string, opts doctor.Options, f doctorFlags) error {
	if f.stepTimeout <= 0 || f.timeout <= 0 {
		return usageError(fmt.Errorf("--step-timeout and --timeout must be positive"))
	}
	opts.ServerIdentity, opts.StepTimeout, opts.Timeout = f.identity, f.stepTimeout, f.timeout
	results := doctor.Run(cmd.Context(), opts)
	done, err := printStructured(cmd.OutOrStdout(), format, results)
	if err != nil {
		return err
	}
	if !done {
		printDoctor(cmd.OutOrStdout(), results)
	}
	if doctor.Failed(results) {
		return &exitError{code: ExitFailure, err: fmt.Errorf("doctor: %s failed", plural(countStatus(results, doctor.Fail), "check", "checks"))}
	}
	return nil
}

func countStatus(results []doctor.Result, s doctor.Status) int {
	n := 0
	for _, r := range results {
		if r.Status == s {
			n++
		}
	}
	return n
}

func printDoctor(w io.Writer, results []doctor.Result) {
	tw := newTable(w)
	fmt.Fprintln(tw, "STATUS\tCHECK\tTARGET\tMESSAGE")
	for _, r := range results {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", strings.ToUpper(string(r.Status)), r.Check, orDash(r.Target), r.Message)
		if r.Action != "" {
			fmt.Fprintf(tw, "\t\t\t→ %s\n", r.Action)
		}
	}
	_ = tw.Flush()
	fmt.Fprintf(w, "\n%d passed, %s, %d failed\n", countStatus(results, doctor.Pass), plural(countStatus(results, doctor.Warn), "warning", "warnings"), countStatus(results, doctor.Fail))
}

func plural(n int, one, many string) string {
	if n == 1 {
		return "1 " + one
	}
	return fmt.Sprintf("%d %s", n, many)
}
