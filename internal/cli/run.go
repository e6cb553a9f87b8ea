package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"time"

	"github.com/spf13/cobra"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func newRunCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Inspect pipeline runs: list, get, logs, cancel",
	}
	cmd.AddCommand(newRunListCommand(), newRunGetCommand(), newRunLogsCommand(), newRunCancelCommand())
	return cmd
}

func newRunListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List PipelineRuns, newest first", Args: cobra.NoArgs}
	kube := withKube(cmd, true)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var list slipwayv1.PipelineRunList
		if err := kube.list(cmd.Context(), &list, "PipelineRuns"); err != nil {
			return err
		}
		items := list.Items
		sort.SliceStable(items, func(i, j int) bool {
			return items[j].CreationTimestamp.Before(&items[i].CreationTimestamp)
		})
		if done, err := printStructured(cmd.OutOrStdout(), *out, items); done {
			return err
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tPIPELINE\tCOMMIT\tPHASE\tDURATION\tDIGEST")
		for _, r := range items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Namespace, r.Name, r.Spec.PipelineRef.Name, shortRev(r.Spec.Commit),
				orDash(r.Status.Phase), runDuration(&r), orDash(shortRev(r.Status.Digest)))
		}
		return tw.Flush()
	}
	return cmd
}

func runDuration(r *slipwayv1.PipelineRun) string {
	if r.Status.StartTime == nil {
		return "-"
	}
	end := time.Now()
	if r.Status.CompletionTime != nil {
		end = r.Status.CompletionTime.Time
	}
	return end.Sub(r.Status.StartTime.Time).Round(100 * time.Millisecond).String()
}

// leadTimes says how long the built commit took, from its committer time,
// to be promoted into the ops repository and to run in an Application.
func leadTimes(r *slipwayv1.PipelineRun) string {
	if r.Status.CommitTime == nil {
		return "-"
	}
	since := func(t *metav1.Time) string {
		if t == nil {
			return "-"
		}
		return t.Sub(r.Status.CommitTime.Time).Round(time.Second).String()
	}
	var promoted *metav1.Time
	for _, s := range r.Status.Steps {
		if s.Name == "promote" && s.State == "Succeeded" && r.Status.PromotionCommit != "" {
			promoted = s.Finished
		}
	}
	running := since(r.Status.DeployedAt) + " to running"
	if r.Status.DeployedApplication != "" {
		running += " in " + r.Status.DeployedApplication
	}
	return since(promoted) + " to promoted, " + running
}

func newRunGetCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "get NAME", Short: "Show a run: commit, steps, digest, promotion", Args: cobra.ExactArgs(1)}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		_, run, err := getRun(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, run); done {
			return err
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "Name:      %s/%s\nPipeline:  %s\nCommit:    %s (%s, by %s)\nPhase:     %s (%s)\n", run.Namespace, run.Name,
			run.Spec.PipelineRef.Name, run.Spec.Commit, orDash(run.Spec.Branch), orDash(run.Spec.Author), orDash(run.Status.Phase), runDuration(run))
		if c := apimeta.FindStatusCondition(run.Status.Conditions, slipwayv1.ConditionReady); c != nil {
			fmt.Fprintf(w, "Message:   %s\n", c.Message)
		}
		if iso := run.Status.TestIsolation; iso != "" {
			if iso == "none" {
				iso += " (UNISOLATED: the test command ran as the server's user)"
			}
			fmt.Fprintf(w, "Isolation: %s\n", iso)
		}
		if run.Spec.Rollback {
			fmt.Fprintln(w, "Rollback:  yes (may promote a commit older than the one running)")
		}
		fmt.Fprintf(w, "Image:     %s\nPromoted:  %s\nLead time: %s\n\n", orDash(run.Status.Image), orDash(run.Status.PromotionCommit), leadTimes(run))
		tw := newTable(w)
		fmt.Fprintln(tw, "STEP\tSTATE\tDURATION\tMESSAGE")
		for _, s := range run.Status.Steps {
			d := "-"
			if s.Started != nil && s.Finished != nil {
				d = s.Finished.Sub(s.Started.Time).Round(time.Millisecond).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", s.Name, s.State, d, oneLine(s.Message, 100))
		}
		return tw.Flush()
	}
	return cmd
}

func newRunLogsCommand() *cobra.Command {
	var follow bool
	var step string
	cmd := &cobra.Command{
		Use:   "logs NAME",
		Short: "Print a run's step logs (secrets masked); -f follows until the run ends",
		Long: `Print the logs of a run's steps. Logs are files on the machine that ran the
run (the local executor of slipway server), so this works where the server runs.`,
		Args: cobra.ExactArgs(1),
	}
	kube := withKube(cmd, false)
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "wait for the run to end, printing logs as steps finish")
	cmd.Flags().StringVar(&step, "step", "", "only this step (checkout, test, build, provenance, push, sign, promote)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, run, err := getRun(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		printed := map[string]bool{}
		for {
			for _, s := range run.Status.Steps {
				if printed[s.Name] || s.Log == "" || (step != "" && s.Name != step) {
					continue
				}
				printed[s.Name] = true
				if err := printLog(cmd.OutOrStdout(), s); err != nil {
					return err
				}
			}
			if !follow || run.Status.Phase == slipwayv1.RunSucceeded || run.Status.Phase == slipwayv1.RunFailed || run.Status.Phase == slipwayv1.RunCancelled {
				if run.Status.Phase == slipwayv1.RunFailed {
					return &exitError{code: ExitFailure, err: fmt.Errorf("run %s failed", run.Name)}
				}
				return nil
			}
			select {
			case <-cmd.Context().Done():
				return cmd.Context().Err()
			case <-time.After(time.Second):
			}
			if err := c.Get(cmd.Context(), client.ObjectKeyFromObject(run), run); err != nil {
				return fmt.Errorf("reading run %s: %w", run.Name, err)
			}
		}
	}
	return cmd
}

func printLog(w io.Writer, s slipwayv1.StepStatus) error {
	fmt.Fprintf(w, "==> %s (%s)\n", s.Name, s.State)
	f, err := os.Open(s.Log)
	if errors.Is(err, os.ErrNotExist) {
		fmt.Fprintf(w, "(log %s is not on this machine: run this where slipway server runs)\n", s.Log)
		return nil
	}
	if err != nil {
		return fmt.Errorf("reading the %s log: %w", s.Name, err)
	}
	defer f.Close()
	_, err = io.Copy(w, f)
	return err
}

func newRunCancelCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "cancel NAME", Short: "Cancel a run; its processes are stopped", Args: cobra.ExactArgs(1)}
	kube := withKube(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, run, err := getRun(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		patch := client.MergeFrom(run.DeepCopy())
		run.Spec.Cancel = true
		if err := c.Patch(cmd.Context(), run, patch); err != nil {
			return fmt.Errorf("cancelling run %s: %w", run.Name, err)
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "run %s/%s cancelled\n", run.Namespace, run.Name)
		return nil
	}
	return cmd
}

func getRun(ctx context.Context, kube *kubeFlags, name string) (client.Client, *slipwayv1.PipelineRun, error) {
	c, err := kube.client()
	if err != nil {
		return nil, nil, err
	}
	ns, err := kube.ns()
	if err != nil {
		return nil, nil, err
	}
	run := &slipwayv1.PipelineRun{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, run); err != nil {
		return nil, nil, fmt.Errorf("getting PipelineRun %s/%s: %w", ns, name, err)
	}
	return c, run, nil
}
