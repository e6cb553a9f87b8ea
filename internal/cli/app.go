package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pmezard/go-difflib/difflib"
	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
	"slipway.dev/slipway/internal/gitops"
	"slipway.dev/slipway/internal/gitsource"
	"slipway.dev/slipway/internal/upstream"
)

func newAppCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:     "app",
		Aliases: []string{"apps", "application"},
		Short:   "Inspect and operate Applications: list, get, diff, sync, history, rollback",
	}
	cmd.AddCommand(newAppListCommand(), newAppGetCommand(), newAppDiffCommand(), newAppSyncCommand(),
		newAppHistoryCommand(), newAppRollbackCommand())
	return cmd
}

func newAppListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List Applications with their sync state and health", Args: cobra.NoArgs}
	kube := withKube(cmd, true)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var list slipwayv1.ApplicationList
		if err := kube.list(cmd.Context(), &list, "Applications"); err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, list.Items); done {
			return err
		}
		if len(list.Items) == 0 {
			fmt.Fprintln(cmd.ErrOrStderr(), "No Applications found.")
			return nil
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tSYNC\tHEALTH\tREVISION\tREADY\tMESSAGE")
		for _, a := range list.Items {
			ready, msg := readyOf(&a)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", a.Namespace, a.Name, orDash(a.Status.Sync.Status), orDash(a.Status.Health.Status),
				orDash(shortRev(a.Status.LastAppliedRevision)), ready, oneLine(msg, 80))
		}
		return tw.Flush()
	}
	return cmd
}

func newAppGetCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "get NAME", Short: "Show one Application: source, sync, health, objects and conditions", Args: cobra.ExactArgs(1)}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		_, app, err := getApp(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, app); done {
			return err
		}
		return printApp(cmd.OutOrStdout(), app)
	}
	return cmd
}

func printApp(w io.Writer, a *slipwayv1.Application) error {
	src := a.Spec.Source
	ref := gitsource.Ref{Branch: src.Ref.Branch, Tag: src.Ref.Tag, Commit: src.Ref.Commit}
	fmt.Fprintf(w, "Name:        %s/%s\n", a.Namespace, a.Name)
	fmt.Fprintf(w, "Source:      %s (%s, path %s)\n", gitsource.RedactURL(src.URL), ref, orDash(src.Path))
	fmt.Fprintf(w, "Destination: namespace %s\n", a.Spec.Destination.Namespace)
	sp := a.Spec.SyncPolicy
	fmt.Fprintf(w, "Sync policy: automated=%v prune=%v selfHeal=%v suspend=%v\n", sp.Automated, sp.Prune, sp.SelfHeal, a.Spec.Suspend)
	if a.Spec.PinnedRevision != "" {
		fmt.Fprintf(w, "Pinned to:   %s (rollback; `slipway app rollback %s --clear` follows the ref again)\n", a.Spec.PinnedRevision, a.Name)
	}
	fmt.Fprintf(w, "Sync:        %s %s\n", orDash(a.Status.Sync.Status), shortRev(a.Status.Sync.Revision))
	if a.Status.Sync.Message != "" {
		fmt.Fprintf(w, "             %s\n", a.Status.Sync.Message)
	}
	fmt.Fprintf(w, "Health:      %s\n", orDash(a.Status.Health.Status))
	fmt.Fprintf(w, "Applied:     %s\n", orDash(a.Status.LastAppliedRevision))
	fmt.Fprintln(w, "\nConditions:")
	tw := newTable(w)
	fmt.Fprintln(tw, "  TYPE\tSTATUS\tREASON\tMESSAGE")
	for _, c := range a.Status.Conditions {
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", c.Type, c.Status, c.Reason, oneLine(c.Message, 120))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if p := a.Status.Policy; p != nil {
		verdict := "passed"
		if !p.Passed {
			verdict = "FAILED"
		}
		fmt.Fprintf(w, "\nPolicy:      %s (%s mode) %s on %s: %d failed, %d waived\n", p.Profile, p.Mode, verdict, shortRev(p.Revision), p.Failed, p.Waived)
		if len(p.NotChecked) > 0 {
			fmt.Fprintf(w, "Not checked: %s\n", strings.Join(p.NotChecked, ", "))
		}
		if len(p.Violations) > 0 {
			tw := newTable(w)
			fmt.Fprintln(tw, "  RULE\tSEVERITY\tOBJECT\tFIELD\tWAIVER\tMESSAGE")
			for _, v := range p.Violations {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\t%s\n", v.Rule, v.Severity, v.Object, orDash(v.Path), orDash(v.Waiver), oneLine(v.Message, 80))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
	}
	if len(a.Status.Resources) > 0 {
		fmt.Fprintln(w, "\nObjects:")
		tw = newTable(w)
		fmt.Fprintln(tw, "  KIND\tNAMESPACE\tNAME\tHEALTH\tMESSAGE")
		for _, r := range a.Status.Resources {
			fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", r.Kind, orDash(r.Namespace), r.Name, r.Health, oneLine(r.Message, 80))
		}
		return tw.Flush()
	}
	return nil
}

func newAppDiffCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "diff NAME",
		Short: "Show what a sync would change, as a unified diff (server-side dry-run; changes nothing)",
		Long: `Fetch the Application's revision, render it, and compare it with the cluster
by server-side dry-run. Exit code 0 when there is no difference, 1 when there is.`,
		Args: cobra.ExactArgs(1),
	}
	kube := withKube(cmd, false)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, app, err := getApp(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		// The comparison is made where the Application deploys, with the
		// caller's rights here or the cluster Secret's there.
		var target client.Client = c
		if ref := app.Spec.Destination.ClusterRef; ref != nil {
			var secret corev1.Secret
			if err := c.Get(cmd.Context(), client.ObjectKey{Namespace: app.Namespace, Name: ref.Name}, &secret); err != nil {
				return fmt.Errorf("reading the destination cluster's kubeconfig: %w", err)
			}
			cluster, err := gitops.NewClusters(c.Scheme()).For(&secret)
			if err != nil {
				return err
			}
			target = cluster.Client
		}
		loader := &gitops.Loader{Client: c, Mapper: target.RESTMapper(), Fetcher: gitsource.NewFetcher(filepath.Join(upstream.CacheDir(), "git-cli"))}
		desired, err := loader.Load(cmd.Context(), app, nil, time.Time{})
		if err != nil {
			return err
		}
		changes, err := gitops.Plan(cmd.Context(), target, app, desired)
		if err != nil {
			return err
		}
		w := cmd.OutOrStdout()
		if len(changes) == 0 {
			fmt.Fprintf(w, "No differences: the cluster matches revision %s.\n", shortRev(desired.Revision))
			return nil
		}
		for _, ch := range changes {
			if err := writeDiff(w, ch); err != nil {
				return err
			}
		}
		return &exitError{code: ExitFailure, err: fmt.Errorf("%d object(s) differ from revision %s", len(changes), shortRev(desired.Revision))}
	}
	return cmd
}

func writeDiff(w io.Writer, ch gitops.Change) error {
	toYAML := func(o *unstructured.Unstructured) []string {
		if o == nil {
			return nil
		}
		o = o.DeepCopy()
		// Server-managed bookkeeping is noise in a review.
		for _, f := range []string{"managedFields", "resourceVersion", "uid", "generation", "creationTimestamp"} {
			unstructured.RemoveNestedField(o.Object, "metadata", f)
		}
		unstructured.RemoveNestedField(o.Object, "status")
		b, _ := yaml.Marshal(o.Object)
		return difflib.SplitLines(string(b))
	}
	text, err := difflib.GetUnifiedDiffString(difflib.UnifiedDiff{
		A: toYAML(ch.Live), B: toYAML(ch.Merged),
		FromFile: "live/" + ch.Subject, ToFile: "git/" + ch.Subject, Context: 3,
	})
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "# %s %s\n%s\n", ch.Subject, ch.Action, text)
	return err
}

func newAppSyncCommand() *cobra.Command {
	var wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "sync NAME",
		Short: "Sync an Application now and wait for the result",
		Long: `Ask the controller to fetch and apply the Application's revision now, even
when automated sync is off, then wait until it is Synced and Healthy (or fails).`,
		Args: cobra.ExactArgs(1),
	}
	kube := withKube(cmd, false)
	cmd.Flags().BoolVar(&wait, "wait", true, "wait for the sync to finish")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, app, err := getApp(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		token := time.Now().UTC().Format(time.RFC3339Nano)
		if err := annotate(cmd.Context(), c, app, slipwayv1.SyncRequestAnnotation, token); err != nil {
			return err
		}
		fmt.Fprintf(cmd.ErrOrStderr(), "sync requested for %s/%s\n", app.Namespace, app.Name)
		if !wait {
			return nil
		}
		return waitSettled(cmd, c, app, timeout, func(a *slipwayv1.Application) bool { return a.Status.LastHandledSyncAt == token })
	}
	return cmd
}

// waitSettled waits until handled(app) and the Application is Ready or has
// definitely failed, printing progress as it changes.
func waitSettled(cmd *cobra.Command, c client.Client, app *slipwayv1.Application, timeout time.Duration, handled func(*slipwayv1.Application) bool) error {
	ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
	defer cancel()
	start := time.Now()
	var last string
	for {
		got := &slipwayv1.Application{}
		if err := c.Get(ctx, client.ObjectKeyFromObject(app), got); err != nil {
			return fmt.Errorf("waiting for %s/%s: %w", app.Namespace, app.Name, err)
		}
		if handled(got) && got.Status.ObservedGeneration == got.Generation {
			ready := apimeta.FindStatusCondition(got.Status.Conditions, slipwayv1.ConditionReady)
			if ready != nil {
				line := fmt.Sprintf("%s %s: %s", got.Status.Sync.Status, got.Status.Health.Status, oneLine(ready.Message, 120))
				if line != last {
					fmt.Fprintf(cmd.ErrOrStderr(), "[%4.0fs] %s\n", time.Since(start).Seconds(), line)
					last = line
				}
				switch ready.Status {
				case "True":
					fmt.Fprintf(cmd.OutOrStdout(), "%s/%s synced to %s and healthy\n", got.Namespace, got.Name, shortRev(got.Status.LastAppliedRevision))
					return nil
				case "False":
					return fmt.Errorf("%s/%s: %s: %s", got.Namespace, got.Name, ready.Reason, ready.Message)
				}
			}
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s/%s did not settle within %s (last: %s); is `slipway server` running?", app.Namespace, app.Name, timeout, orDash(last))
		case <-time.After(500 * time.Millisecond):
		}
	}
}

func newAppHistoryCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "history NAME", Short: "List the revisions an Application deployed, newest first", Args: cobra.ExactArgs(1)}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		_, app, err := getApp(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, app.Status.History); done {
			return err
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "ID\tREVISION\tDEPLOYED\tRESULT\tMESSAGE")
		for _, h := range app.Status.History {
			fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\n", h.ID, h.Revision, h.DeployedAt.UTC().Format(time.RFC3339), h.Result, oneLine(h.Message, 80))
		}
		return tw.Flush()
	}
	return cmd
}

func newAppRollbackCommand() *cobra.Command {
	var clear, wait bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "rollback NAME [REVISION|ID]",
		Short: "Deploy an earlier revision (default: the one before the current) and pin it",
		Long: `Roll an Application back to an earlier revision from its history, given as a
commit SHA (or a unique prefix) or a history ID; by default the last successful
revision before the one deployed now. The Application stays pinned to that
revision (new commits are not deployed) until ` + "`slipway app rollback NAME --clear`" + `.`,
		Args: cobra.RangeArgs(1, 2),
	}
	kube := withKube(cmd, false)
	cmd.Flags().BoolVar(&clear, "clear", false, "remove the pin and follow the ref again")
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until the revision is deployed")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, app, err := getApp(cmd.Context(), kube, args[0])
		if err != nil {
			return err
		}
		target := ""
		if !clear {
			want := ""
			if len(args) == 2 {
				want = args[1]
			}
			if target, err = rollbackTarget(app, want); err != nil {
				return usageError(err)
			}
		} else if len(args) == 2 {
			return usageError(errors.New("--clear takes no revision"))
		}
		patch := client.MergeFrom(app.DeepCopy())
		app.Spec.PinnedRevision = target
		if err := c.Patch(cmd.Context(), app, patch); err != nil {
			return fmt.Errorf("updating %s/%s: %w", app.Namespace, app.Name, err)
		}
		if clear {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s/%s follows its ref again\n", app.Namespace, app.Name)
		} else {
			fmt.Fprintf(cmd.ErrOrStderr(), "%s/%s rolling back to %s\n", app.Namespace, app.Name, target)
		}
		// A rollback must happen even when automated sync is off.
		token := time.Now().UTC().Format(time.RFC3339Nano)
		if err := annotate(cmd.Context(), c, app, slipwayv1.SyncRequestAnnotation, token); err != nil {
			return err
		}
		if !wait {
			return nil
		}
		return waitSettled(cmd, c, app, timeout, func(a *slipwayv1.Application) bool {
			return a.Status.LastHandledSyncAt == token && (target == "" || a.Status.LastAppliedRevision == target)
		})
	}
	return cmd
}

// rollbackTarget resolves want (SHA, SHA prefix or history ID) against the
// history; empty means the last successful revision before the current one.
func rollbackTarget(app *slipwayv1.Application, want string) (string, error) {
	hist := app.Status.History
	if want == "" {
		current := app.Status.LastAppliedRevision
		for _, h := range hist {
			if h.Result == "Succeeded" && h.Revision != current {
				return h.Revision, nil
			}
		}
		return "", fmt.Errorf("%s has no earlier successful revision in its history", app.Name)
	}
	if id, err := strconv.ParseInt(want, 10, 64); err == nil && len(want) < 7 {
		for _, h := range hist {
			if h.ID == id {
				return h.Revision, nil
			}
		}
		return "", fmt.Errorf("no history entry with ID %d (see `slipway app history %s`)", id, app.Name)
	}
	var found []string
	for _, h := range hist {
		if strings.HasPrefix(h.Revision, strings.ToLower(want)) && !contains(found, h.Revision) {
			found = append(found, h.Revision)
		}
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		if len(want) == 40 {
			return strings.ToLower(want), nil
		}
		return "", fmt.Errorf("revision %q is not in the history; give the full 40-character SHA to deploy any commit", want)
	default:
		return "", fmt.Errorf("revision prefix %q is ambiguous: %v", want, found)
	}
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func getApp(ctx context.Context, kube *kubeFlags, name string) (client.Client, *slipwayv1.Application, error) {
	c, err := kube.client()
	if err != nil {
		return nil, nil, err
	}
	ns, err := kube.ns()
	if err != nil {
		return nil, nil, err
	}
	app := &slipwayv1.Application{}
	if err := c.Get(ctx, client.ObjectKey{Namespace: ns, Name: name}, app); err != nil {
		return nil, nil, fmt.Errorf("getting Application %s/%s: %w", ns, name, err)
	}
	return c, app, nil
}

func annotate(ctx context.Context, c client.Client, app *slipwayv1.Application, key, value string) error {
	patch := client.MergeFrom(app.DeepCopy())
	if app.Annotations == nil {
		app.Annotations = map[string]string{}
	}
	app.Annotations[key] = value
	if err := c.Patch(ctx, app, patch); err != nil {
		return fmt.Errorf("annotating %s/%s: %w", app.Namespace, app.Name, err)
	}
	return nil
}

func readyOf(a *slipwayv1.Application) (string, string) {
	c := apimeta.FindStatusCondition(a.Status.Conditions, slipwayv1.ConditionReady)
	if c == nil {
		return "-", ""
	}
	return string(c.Status), c.Message
}

func shortRev(r string) string {
	if len(r) > 12 {
		return r[:12]
	}
	return r
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func oneLine(s string, n int) string {
	s = strings.Join(strings.Fields(s), " ")
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
