package cli

import (
	"fmt"
	"os"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"slipway.dev/slipway/internal/lab"
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
	var dir, binDir string
	var realNodes bool
	cmd.PersistentFlags().StringVar(&dir, "dir", "", "lab directory (state, certificates, logs, repositories; default "+lab.DefaultDir()+
		", with --real-nodes "+lab.DefaultRealNodesDir()+")")
	cmd.PersistentFlags().StringVar(&binDir, "bin-dir", "", "directory of upstream release binaries (default: build once from the Go module proxy and cache)")
	cmd.PersistentFlags().BoolVar(&realNodes, "real-nodes", false, "the lab with real nodes: worker-01 and worker-02 run kubelet, containerd and kube-proxy "+
		"in network namespaces of their own, with CoreDNS, Traefik, MetalLB and an edge load balancer (needs root; installs containerd, runc, "+
		"CNI plugins, iptables and conntrack with apt-get when missing)")
	var clusters []string
	cmd.PersistentFlags().StringSliceVar(&clusters, "clusters", nil, "further clusters besides the lab's own (dev), each a control plane of its own with its own CA, "+
		"e.g. --clusters prod; `lab demo` always runs prod, where tea's prod stage deploys")
	monitoring := addMonitoringFlags(cmd)
	newLab := func(cmd *cobra.Command) *lab.Lab {
		exe, _ := os.Executable()
		start := time.Now()
		d := dir
		if d == "" {
			d = lab.DefaultDir()
			if realNodes {
				d = lab.DefaultRealNodesDir()
			}
		}
		var extra []string
		for _, c := range clusters {
			if c != "dev" && !slices.Contains(extra, c) {
				extra = append(extra, c)
			}
		}
		if cmd.Name() == "demo" && !slices.Contains(extra, lab.ProdCluster) {
			extra = append(extra, lab.ProdCluster)
		}
		l := &lab.Lab{Dir: d, BinDir: binDir, Slipway: exe, RealNodes: realNodes, Clusters: extra, Progress: func(format string, args ...any) {
			fmt.Fprintf(cmd.ErrOrStderr(), "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
		}}
		monitoring.apply(cmd, l)
		return l
	}
	cmd.AddCommand(newLabBuildCommand(), newLabUpCommand(newLab), newLabDownCommand(newLab), newLabStatusCommand(newLab),
		newLabDemoCommand(newLab), newLabGitServerCommand(newLab), newLabRegistryCommand(newLab), newLabImageCommand(newLab),
		newLabEdgeCommand(newLab), newLabDoctorCommand(newLab))
	return cmd
}

func newLabBuildCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "build",
		Short: "Build and cache the pinned upstream binaries (etcd, Kubernetes, KWOK; kubelet, kube-proxy, CoreDNS, Traefik, MetalLB)",
		Long: `Build the pinned upstream binaries from the Go module proxy and cache them:
the control plane's and KWOK, and what real nodes run (kubelet, kube-proxy,
CoreDNS, Traefik, MetalLB), in a directory of their own.
The first build takes several minutes; later runs return at once.
The control plane's directory is printed on success (tests read it from SLIPWAY_BIN_DIR).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			start := time.Now()
			progress := func(format string, args ...any) {
				fmt.Fprintf(cmd.ErrOrStderr(), "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
			}
			binDir, _ := cmd.Flags().GetString("bin-dir")
			if binDir == "" {
				binDir = upstream.DefaultBinDir()
			}
			if err := upstream.Ensure(cmd.Context(), binDir, progress); err != nil {
				return err
			}
			if err := upstream.EnsureNodes(cmd.Context(), upstream.NodeBinDir(), progress); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), binDir)
			return nil
		},
	}
	return cmd
}

type labFactory func(*cobra.Command) *lab.Lab

func newLabUpCommand(newLab labFactory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Start the lab (idempotent): control plane, KWOK nodes, git server, slipway server",
		Long: `Start every lab component that is not running yet and wait until each is ready.
The first run builds the upstream binaries (several minutes); later runs take seconds.
Prints the kubeconfig path and the addresses of the git server and slipway server.

The audit trail goes to an append-only file store in the lab directory, or,
with --audit postgres, to Debian's PostgreSQL run by the lab, where the server's
role may only insert. Checkpoints are also committed to the git server's
audit.git, which has a credential of its own and refuses forced pushes.`,
		Args: cobra.NoArgs,
	}
	out := addOutputFlag(cmd)
	auditStore := cmd.Flags().String("audit", "", "audit store: file (the default) or postgres; empty keeps the lab's")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		l := newLab(cmd)
		l.Audit = *auditStore
		info, err := l.Up(cmd.Context())
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, info); done {
			return err
		}
		printLabInfo(cmd, info)
		return nil
	}
	return cmd
}

func printLabInfo(cmd *cobra.Command, info *lab.Info) {
	w := cmd.OutOrStdout()
	fmt.Fprintf(w, "Kubeconfig:     %s\n", info.Kubeconfig)
	fmt.Fprintf(w, "                export KUBECONFIG=%s\n", info.Kubeconfig)
	fmt.Fprintf(w, "API server:     %s\n", info.APIServer)
	fmt.Fprintf(w, "Git server:     %s (user %s, password in `slipway lab status -o json`)\n", info.Git.URL, info.Git.Username)
	fmt.Fprintf(w, "Ops repo:       %s\n", info.Git.OpsRepo)
	fmt.Fprintf(w, "Registry:       %s (user %s, password in `slipway lab status -o json`)\n", info.Registry.Host, info.Registry.Username)
	fmt.Fprintf(w, "Slipway server: %s\n", info.Server.URL)
	fmt.Fprintf(w, "Metrics:        %s\n", info.Server.Metrics)
	fmt.Fprintf(w, "Git webhook:    %s\n", info.Server.Webhook)
	for _, n := range info.Nodes {
		fmt.Fprintf(w, "Node %-10s %s (pods %s; `ip netns exec %s ...`)\n", n.Name+":", n.IP, n.PodCIDR, n.Netns)
	}
	for _, c := range info.Clusters {
		fmt.Fprintf(w, "Cluster %-8s %s (kubeconfig %s)\n", c.Name+":", c.APIServer, c.Kubeconfig)
	}
	a := info.Audit
	verify := fmt.Sprintf("slipway audit verify --store '%s' --key %s --witness %s --witness-credentials-file %s", a.Store, a.PublicKey, a.Witness, a.WitnessCredentialsFile)
	if a.PasswordFile != "" {
		verify += " --store-password-file " + a.PasswordFile
	}
	fmt.Fprintf(w, "Audit trail:    %s store; check it with\n                %s\n", a.Mode, verify)
	if info.Edge != nil {
		fmt.Fprintf(w, "Edge:           %s (the load balancer in front of every worker's ingress; status %s)\n", info.Edge.URL, info.Edge.Status)
		fmt.Fprintf(w, "LoadBalancers:  %s (MetalLB's pool)\n", info.Edge.LoadBalancerPool)
	}
	if m := info.Monitoring; m != nil {
		fmt.Fprintf(w, "Prometheus:     %s\n", m.Prometheus)
		fmt.Fprintf(w, "Alertmanager:   %s\n", m.Alertmanager)
	}
}

func newLabDownCommand(newLab labFactory) *cobra.Command {
	var purge bool
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop every process the lab started; --purge also deletes its state",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := newLab(cmd)
			if err := l.Down(purge); err != nil {
				return err
			}
			if purge {
				fmt.Fprintf(cmd.ErrOrStderr(), "lab stopped and %s removed\n", l.Dir)
			} else {
				fmt.Fprintf(cmd.ErrOrStderr(), "lab stopped (state kept in %s; --purge removes it)\n", l.Dir)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also delete the lab directory: certificates, etcd data, repositories, logs")
	return cmd
}

func newLabStatusCommand(newLab labFactory) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "status",
		Short: "Show which lab components run, their pids and logs (exit 1 unless all run)",
		Args:  cobra.NoArgs,
	}
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		info, err := newLab(cmd).Status()
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, info); !done {
			tw := newTable(cmd.OutOrStdout())
			fmt.Fprintln(tw, "COMPONENT\tSTATE\tPID\tLOG")
			for _, c := range info.Components {
				state := "stopped"
				if c.Running {
					state = "running"
				}
				fmt.Fprintf(tw, "%s\t%s\t%d\t%s\n", c.Name, state, c.PID, c.Log)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout())
			printLabInfo(cmd, info)
		} else if err != nil {
			return err
		}
		if !info.AllRunning() {
			return &exitError{code: ExitFailure, err: fmt.Errorf("not every lab component is running (start them with `slipway lab up`)")}
		}
		return nil
	}
	return cmd
}

func newLabDemoCommand(newLab labFactory) *cobra.Command {
	var keep bool
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "Bring the lab up, deploy the tea and coffee services from the ops repo, and keep running until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l := newLab(cmd)
			ctx := cmd.Context()
			info, err := l.Up(ctx)
			if err == nil {
				err = l.Demo(ctx, info)
			}
			if err != nil {
				if !keep {
					_ = l.Down(false)
				}
				return err
			}
			printLabInfo(cmd, info)
			printDemoNextSteps(cmd, l, info)
			if keep {
				fmt.Fprintf(cmd.OutOrStdout(), "\nThe lab keeps running: `%s lab down --dir %s` stops it.\n", os.Args[0], l.Dir)
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "\nPress Ctrl-C to stop the lab.\n")
			<-ctx.Done()
			fmt.Fprintln(cmd.ErrOrStderr(), "\nstopping the lab")
			return l.Down(false)
		},
	}
	cmd.Flags().BoolVar(&keep, "detach", false, "return once the demo is healthy and leave the lab running")
	return cmd
}

func printDemoNextSteps(cmd *cobra.Command, l *lab.Lab, info *lab.Info) {
	// Show the binary as it was invoked (e.g. bin/slipway from make demo).
	slipway := os.Args[0]
	fmt.Fprintf(cmd.OutOrStdout(), `
The tea and coffee services were tested, built, signed and promoted from their
source repos by their Pipelines, and run in namespace %[1]s, two replicas each,
spread over worker-01 and worker-02.

Try it (the git password is in `+"`%[5]s lab status -o json`"+`, key git.password):
  export KUBECONFIG=%[2]s
  %[5]s run list -n %[1]s
  %[5]s app list -n %[1]s
  git clone http://%[3]s@%[6]s /tmp/tea && cd /tmp/tea
  sed -i 's/a cup of tea/a pot of tea/' main.go
  git commit -am "Serve a pot" && git push
  %[5]s run list -n %[1]s              # the push started a run: follow it with
  %[5]s run logs -n %[1]s -f RUN-NAME
  %[5]s app get tea -n %[1]s        # the new digest runs within seconds
  %[5]s app history tea -n %[1]s
  %[5]s app rollback tea -n %[1]s

Images are signed with %[7]s; the ops repo is http://%[3]s@%[4]s.
`, lab.DemoNamespace, info.Kubeconfig, info.Git.Username, strings.TrimPrefix(info.Git.OpsRepo, "http://"), slipway,
		strings.TrimPrefix(info.Git.SourceRepos["tea"], "http://"), l.PublicKeyFile())
	if prod := info.Cluster(lab.ProdCluster); prod != nil {
		fmt.Fprintf(cmd.OutOrStdout(), `
Production is a cluster of its own (%[3]s). tea enters it only through a
Promotion that a release approver, other than its requester and the authors
of its code, approves. The lab's people have contexts of their own:
  %[2]s promote tea --to prod -n %[1]s --context dev@slipway-lab
  %[2]s promotion list -n %[1]s
  %[2]s approve PROMOTION -n %[1]s --context dev@slipway-lab        # refused: the requester
  %[2]s approve PROMOTION -n %[1]s --context reviewer@slipway-lab   # lands it
  %[2]s app get %[4]s -n %[1]s                                     # prod runs what ran in dev
  kubectl --kubeconfig %[5]s -n %[1]s get deployment tea -o wide
`, lab.DemoNamespace, slipway, prod.APIServer, lab.ProdStageApp, prod.Kubeconfig)
	}
	if info.Edge != nil {
		fmt.Fprintf(cmd.OutOrStdout(), `
The services run on the real workers and answer through one address, the
edge load balancer (it stands in for a cloud load balancer in front of the
ingress controller's NodePort on every worker):
  curl %[1]s/tea
  curl %[1]s/coffee
Each answer names the pod and the node that served it.
`, info.Edge.URL)
	}
}

func newLabGitServerCommand(newLab labFactory) *cobra.Command {
	return &cobra.Command{
		Use:    "git-server",
		Short:  "Serve the lab's git repositories (started by `lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctrl.SetLogger(zap.New())
			return newLab(cmd).ServeGit(cmd.Context(), ctrl.Log.WithName("git-server"))
		},
	}
}

func newLabEdgeCommand(newLab labFactory) *cobra.Command {
	return &cobra.Command{
		Use:    "edge",
		Short:  "Run the real-node lab's edge load balancer (started by `lab up --real-nodes`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctrl.SetLogger(zap.New())
			return newLab(cmd).ServeEdge(cmd.Context(), ctrl.Log.WithName("edge"))
		},
	}
}

func newLabRegistryCommand(newLab labFactory) *cobra.Command {
	return &cobra.Command{
		Use:    "registry",
		Short:  "Serve the lab's OCI registry (started by `lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctrl.SetLogger(zap.New())
			return newLab(cmd).ServeRegistry(cmd.Context(), ctrl.Log.WithName("registry"))
		},
	}
}
