package cli

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	authnv1 "k8s.io/api/authentication/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func newPromoteCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "promote DELIVERY --to STAGE",
		Short: "Ask to move what runs in the stage before STAGE into STAGE",
		Long: `Create a Promotion of the Delivery into STAGE, requested by you (the API server
records who you are). It moves exactly the image that runs in the previous
stage, once STAGE's rules hold: approvals by people other than you and the
authors of the code it carries, a change id, a soak time, a deployment window.
See it with ` + "`slipway promotion get NAME`" + `.`,
		Args: cobra.ExactArgs(1),
	}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	var stage, changeID string
	var wait time.Duration
	cmd.Flags().StringVar(&stage, "to", "", "stage to enter (required)")
	cmd.Flags().StringVar(&changeID, "change-id", "", "reference of the approved change, e.g. CHG-2041")
	cmd.Flags().DurationVar(&wait, "wait", 0, "wait this long for the promotion to land, be rejected or expire")
	_ = cmd.MarkFlagRequired("to")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, ns, err := kubeClientNS(kube)
		if err != nil {
			return err
		}
		me, err := whoAmI(cmd.Context(), c)
		if err != nil {
			return err
		}
		var d slipwayv1.Delivery
		if err := c.Get(cmd.Context(), client.ObjectKey{Namespace: ns, Name: args[0]}, &d); err != nil {
			return fmt.Errorf("reading Delivery %s/%s: %w", ns, args[0], err)
		}
		if !hasStage(&d, stage) {
			return usageError(fmt.Errorf("no stage %q in Delivery %s: its stages are %s", stage, d.Name, stageNames(&d)))
		}
		p := &slipwayv1.Promotion{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, GenerateName: d.Name + "-to-" + stage + "-"},
			Spec:       slipwayv1.PromotionSpec{Delivery: d.Name, Stage: stage, ChangeID: changeID, RequestedBy: me.Username},
		}
		if err := c.Create(cmd.Context(), p); err != nil {
			return fmt.Errorf("creating the promotion: %w", err)
		}
		if wait > 0 {
			if p, err = waitPromotion(cmd.Context(), c, client.ObjectKeyFromObject(p), wait); err != nil {
				return err
			}
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, p); done {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "promotion %s/%s requested by %s: %s → %s (%s)\n", ns, p.Name, me.Username, d.Name, stage, orDash(p.Status.Phase))
		return nil
	}
	return cmd
}

func newApproveCommand() *cobra.Command { return newDecisionCommand(slipwayv1.DecisionApprove) }
func newRejectCommand() *cobra.Command  { return newDecisionCommand(slipwayv1.DecisionReject) }

// newDecisionCommand builds `approve` and `reject`: both append your
// decision, under the name and groups the API server knows you by.
func newDecisionCommand(decision string) *cobra.Command {
	verb := strings.ToLower(decision)
	cmd := &cobra.Command{
		Use:   verb + " PROMOTION",
		Short: decision + " a promotion, as yourself",
		Long: decision + ` a promotion. The decision is recorded under the user and groups the API
server authenticated you as; the API server refuses it if you requested the
promotion or wrote a commit it carries.`,
		Args: cobra.ExactArgs(1),
	}
	kube := withKube(cmd, false)
	var reason string
	cmd.Flags().StringVar(&reason, "reason", "", "why (required to reject)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		if decision == slipwayv1.DecisionReject && strings.TrimSpace(reason) == "" {
			return usageError(errors.New("--reason is required to reject"))
		}
		c, ns, err := kubeClientNS(kube)
		if err != nil {
			return err
		}
		me, err := whoAmI(cmd.Context(), c)
		if err != nil {
			return err
		}
		key := client.ObjectKey{Namespace: ns, Name: args[0]}
		err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
			p := &slipwayv1.Promotion{}
			if err := c.Get(cmd.Context(), key, p); err != nil {
				return err
			}
			patch := client.MergeFromWithOptions(p.DeepCopy(), client.MergeFromWithOptimisticLock{})
			p.Spec.Approvals = append(p.Spec.Approvals, slipwayv1.PromotionApproval{
				User: me.Username, Groups: me.Groups, Decision: decision, Reason: reason, At: metav1.Now(),
			})
			return c.Patch(cmd.Context(), p, patch)
		})
		if err != nil {
			if apierrors.IsForbidden(err) || apierrors.IsInvalid(err) {
				return fmt.Errorf("%s refused: %w", verb, err)
			}
			return fmt.Errorf("recording your decision on promotion %s: %w", key, err)
		}
		fmt.Fprintf(cmd.OutOrStdout(), "promotion %s: %s by %s\n", key, strings.ToLower(decision)+"d", me.Username)
		return nil
	}
	return cmd
}

func newPromotionCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "promotion", Aliases: []string{"promotions"}, Short: "Inspect promotions: list, get"}
	cmd.AddCommand(newPromotionListCommand(), newPromotionGetCommand())
	return cmd
}

func newPromotionListCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "list", Aliases: []string{"ls"}, Short: "List promotions, newest first", Args: cobra.NoArgs}
	kube := withKube(cmd, true)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var list slipwayv1.PromotionList
		if err := kube.list(cmd.Context(), &list, "promotions"); err != nil {
			return err
		}
		items := list.Items
		sort.SliceStable(items, func(i, j int) bool { return items[j].CreationTimestamp.Before(&items[i].CreationTimestamp) })
		if done, err := printStructured(cmd.OutOrStdout(), *out, items); done {
			return err
		}
		tw := newTable(cmd.OutOrStdout())
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tDELIVERY\tSTAGE\tPHASE\tREQUESTED-BY\tAPPROVERS\tCHANGE")
		for _, p := range items {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", p.Namespace, p.Name, p.Spec.Delivery, p.Spec.Stage, orDash(p.Status.Phase),
				p.Spec.RequestedBy, orDash(strings.Join(p.Status.Approvers, ",")), orDash(p.Spec.ChangeID))
		}
		return tw.Flush()
	}
	return cmd
}

func newPromotionGetCommand() *cobra.Command {
	cmd := &cobra.Command{Use: "get PROMOTION", Short: "Show a promotion: what it moves, what it waits for, who decided", Args: cobra.ExactArgs(1)}
	kube := withKube(cmd, false)
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		c, ns, err := kubeClientNS(kube)
		if err != nil {
			return err
		}
		p := &slipwayv1.Promotion{}
		if err := c.Get(cmd.Context(), client.ObjectKey{Namespace: ns, Name: args[0]}, p); err != nil {
			return fmt.Errorf("reading promotion %s/%s: %w", ns, args[0], err)
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, p); done {
			return err
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "Promotion:    %s/%s\nDelivery:     %s → %s\nPhase:        %s\nRequested by: %s\nChange id:    %s\n",
			p.Namespace, p.Name, p.Spec.Delivery, p.Spec.Stage, orDash(p.Status.Phase), p.Spec.RequestedBy, orDash(p.Spec.ChangeID))
		if f := p.Status.Freight; f != nil {
			fmt.Fprintf(w, "Image:        %s\nFrom:         ops revision %s, source commit %s (run %s)\nAuthors:      %s\n",
				f.Image, shortRev(f.FromRevision), orDash(shortRev(f.SourceCommit)), orDash(f.PipelineRun), orDash(strings.Join(f.Authors, ", ")))
			if len(f.UnmappedAuthors) > 0 {
				fmt.Fprintf(w, "Unmapped:     %s (no approval counts until they are mapped)\n", strings.Join(f.UnmappedAuthors, ", "))
			}
		}
		if len(p.Status.Missing) > 0 {
			fmt.Fprintln(w, "Waiting for:")
			for _, m := range p.Status.Missing {
				fmt.Fprintf(w, "  - %s\n", m)
			}
		}
		if len(p.Spec.Approvals) > 0 {
			tw := newTable(w)
			fmt.Fprintln(tw, "Decisions:\n  USER\tDECISION\tGROUPS\tAT\tREASON")
			for _, a := range p.Spec.Approvals {
				fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\t%s\n", a.User, a.Decision, orDash(strings.Join(a.Groups, ",")), a.At.UTC().Format(time.RFC3339), orDash(a.Reason))
			}
			if err := tw.Flush(); err != nil {
				return err
			}
		}
		if p.Status.Commit != "" {
			fmt.Fprintf(w, "Landed:       commit %s at %s\n", shortRev(p.Status.Commit), p.Status.LandedAt.UTC().Format(time.RFC3339))
		}
		if ready := apimeta.FindStatusCondition(p.Status.Conditions, slipwayv1.ConditionReady); ready != nil {
			fmt.Fprintf(w, "Ready:        %s %s: %s\n", ready.Status, ready.Reason, ready.Message)
		}
		return nil
	}
	return cmd
}

// whoAmI asks the API server who the caller is: approvals carry that, never
// a name the caller types.
func whoAmI(ctx context.Context, c client.Client) (*authnv1.UserInfo, error) {
	review := &authnv1.SelfSubjectReview{}
	if err := c.Create(ctx, review); err != nil {
		return nil, fmt.Errorf("asking the API server who you are: %w", err)
	}
	return &review.Status.UserInfo, nil
}

func kubeClientNS(kube *kubeFlags) (client.Client, string, error) {
	c, err := kube.client()
	if err != nil {
		return nil, "", err
	}
	ns, err := kube.ns()
	return c, ns, err
}

func hasStage(d *slipwayv1.Delivery, name string) bool {
	for _, s := range d.Spec.Stages {
		if s.Name == name {
			return true
		}
	}
	return false
}

func stageNames(d *slipwayv1.Delivery) string {
	names := make([]string, len(d.Spec.Stages))
	for i, s := range d.Spec.Stages {
		names[i] = s.Name
	}
	return strings.Join(names, ", ")
}

// waitPromotion waits until the promotion leaves Pending, or timeout.
func waitPromotion(ctx context.Context, c client.Client, key client.ObjectKey, timeout time.Duration) (*slipwayv1.Promotion, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for {
		p := &slipwayv1.Promotion{}
		if err := c.Get(ctx, key, p); err != nil {
			return nil, fmt.Errorf("reading promotion %s: %w", key, err)
		}
		switch p.Status.Phase {
		case "", slipwayv1.PromotionPending:
		default:
			return p, nil
		}
		select {
		case <-ctx.Done():
			return p, fmt.Errorf("promotion %s still pending after %s: %s", key, timeout, strings.Join(p.Status.Missing, "; "))
		case <-time.After(time.Second):
		}
	}
}
