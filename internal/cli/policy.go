package cli

import (
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/apimachinery/pkg/api/resource"

	"slipway.dev/slipway/internal/policy"
	"slipway.dev/slipway/internal/version"
)

// Output formats only policy check understands.
const (
	outputSARIF = "sarif"
	outputJUnit = "junit"
)

// policyFlags are shared by every policy subcommand: which packs exist and which
// profile (packs plus parameters) is meant.
type policyFlags struct {
	profile string
	params  string
	packs   []string
}

func (f *policyFlags) register(cmd *cobra.Command) {
	cmd.PersistentFlags().StringVar(&f.profile, "profile", policy.DefaultProfile, "policy packs to apply, comma-separated")
	cmd.PersistentFlags().StringVar(&f.params, "params", "", "file of PolicyParameters overriding pack defaults")
	cmd.PersistentFlags().StringArrayVar(&f.packs, "pack", nil, "extra PolicyPack file to load (repeatable); select it with --profile")
}

// load builds the catalogue and compiles the profile; every failure is bad input.
func (f *policyFlags) load(waivers []policy.Waiver, unchecked policy.UncheckedPolicy) (*policy.Policy, error) {
	cat, err := policy.NewCatalog()
	if err != nil {
		return nil, err
	}
	for _, file := range f.packs {
		if err := cat.AddFile(file); err != nil {
			return nil, usageError(err)
		}
	}
	prof := policy.Profile{Waivers: waivers, Unchecked: unchecked}
	for _, p := range strings.Split(f.profile, ",") {
		if p = strings.TrimSpace(p); p != "" {
			prof.Packs = append(prof.Packs, p)
		}
	}
	if f.params != "" {
		data, err := os.ReadFile(f.params)
		if err != nil {
			return nil, usageError(fmt.Errorf("reading policy parameters: %w", err))
		}
		if prof.Parameters, err = policy.ParseParameters(data, f.params); err != nil {
			return nil, usageError(err)
		}
	}
	pol, err := cat.Compile(prof)
	if err != nil {
		return nil, usageError(err)
	}
	return pol, nil
}

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Check manifests against the security policy, and show or export its rules",
	}
	flags := &policyFlags{}
	flags.register(cmd)
	cmd.AddCommand(newPolicyCheckCommand(flags), newPolicyListCommand(flags), newPolicyExplainCommand(flags), newPolicyExportCommand(flags))
	return cmd
}

func newPolicyCheckCommand(flags *policyFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "check PATH... | -",
		Short: "Check manifests (files, directories, kustomizations, or - for stdin) against a policy profile",
		Long: `Check reads YAML or JSON manifests as a stream and evaluates them against the
profile. A directory holding a kustomization is rendered first.

All inputs form one set: rules about a namespace (a workload must be selected
by a NetworkPolicy, say) see the objects of that namespace in every input.
Objects without metadata.namespace are taken to share the namespace they will
be deployed to.

Objects of kinds no rule of the profile checks are listed as not checked, by
kind and scope (built-in kinds, and the kinds of CustomResourceDefinitions in
the input); --unchecked-cluster-scoped refuse fails the check on the
cluster-scoped ones (and those of unknown scope) but the kinds
--unchecked-allowed names, as a PolicyProfile's spec.unchecked does.

Exit status: 0 when no finding at or above --fail-on failed and nothing was
refused, 1 otherwise, 2 on bad input (unreadable or invalid manifests, unknown
packs, bad flags).`,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageError(errors.New("name at least one file or directory, or - for stdin"))
			}
			return nil
		},
	}
	out := addOutputFlag(cmd, outputSARIF, outputJUnit)
	waiversFile := cmd.Flags().String("waivers", "", "file of PolicyWaiver documents")
	failOn := cmd.Flags().String("fail-on", string(policy.SeverityLow), "lowest severity that fails the check: critical, high, medium or low")
	maxDoc := cmd.Flags().String("max-document-size", resource.NewQuantity(policy.DefaultMaxDocumentSize, resource.BinarySI).String(), "largest accepted document, e.g. 4Mi")
	uncheckedClusterScoped := cmd.Flags().String("unchecked-cluster-scoped", "allow", "allow (report) or refuse cluster-scoped objects of kinds no rule checks")
	uncheckedAllowed := cmd.Flags().StringSlice("unchecked-allowed", nil, "kinds, written Kind.group, never refused unchecked (e.g. Namespace)")
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		threshold, err := policy.ParseSeverity(*failOn)
		if err != nil {
			return usageError(fmt.Errorf("--fail-on: %w", err))
		}
		limit, err := resource.ParseQuantity(*maxDoc)
		if err != nil || limit.Value() <= 0 || limit.Value() > 1<<30 {
			return usageError(fmt.Errorf("--max-document-size %q: want a size between 1 and 1Gi, e.g. 4Mi", *maxDoc))
		}
		switch *out {
		case outputHuman, outputJSON, outputYAML, outputSARIF, outputJUnit:
		default:
			return usageError(fmt.Errorf("unknown output format %q: use json, yaml, sarif or junit", *out))
		}
		unchecked := policy.UncheckedPolicy{Allowed: *uncheckedAllowed}
		switch *uncheckedClusterScoped {
		case "allow":
		case "refuse":
			unchecked.RefuseClusterScoped = true
		default:
			return usageError(fmt.Errorf("--unchecked-cluster-scoped %q: use allow or refuse", *uncheckedClusterScoped))
		}
		var waivers []policy.Waiver
		if *waiversFile != "" {
			data, err := os.ReadFile(*waiversFile)
			if err != nil {
				return usageError(fmt.Errorf("reading policy waivers: %w", err))
			}
			if waivers, err = policy.ParseWaivers(data, *waiversFile); err != nil {
				return usageError(err)
			}
		}
		pol, err := flags.load(waivers, unchecked)
		if err != nil {
			return err
		}

		ctx := cmd.Context()
		// Every input is one set, so a NetworkPolicy in one file counts for the
		// Deployment of another; the SetEvaluator keeps of the stream only what
		// cross-object rules need, so memory stays bounded by that.
		set := pol.NewSetEvaluator(time.Now())
		declared := policy.DeclaredScopes{}
		var progress *checkProgress
		if isTerminal(cmd.ErrOrStderr()) {
			progress = &checkProgress{w: cmd.ErrOrStderr(), start: time.Now()}
		}
		err = policy.ReadManifests(ctx, args, policy.ReadOptions{MaxDocumentSize: int(limit.Value()), Stdin: cmd.InOrStdin()}, func(m policy.Manifest) error {
			declared.Add(m.Object)
			set.Add(ctx, m.Object, m.Ref)
			progress.add(time.Now)
			return nil
		})
		progress.done()
		if err != nil {
			if ctx.Err() != nil {
				return err
			}
			return usageError(err)
		}
		results, err := set.Results(ctx)
		if err != nil {
			return err
		}
		report := policy.NewReportWithScopes(pol, results, policy.ScopeFunc(policy.BuiltinScope).Or(declared.Scope))
		if err := writeReport(cmd.OutOrStdout(), *out, report); err != nil {
			return fmt.Errorf("writing the policy report: %w", err)
		}
		if report.Refused() {
			return &exitError{code: ExitFailure, err: fmt.Errorf("policy %s: refuses cluster-scoped objects of kinds no rule checks", pol.Name())}
		}
		if report.Failed(threshold) {
			return &exitError{code: ExitFailure, err: fmt.Errorf("policy %s: violations at or above %s severity", pol.Name(), threshold)}
		}
		return nil
	}
	return cmd
}

func writeReport(w io.Writer, format string, r *policy.Report) error {
	switch format {
	case outputJSON:
		return r.WriteJSON(w)
	case outputSARIF:
		return r.WriteSARIF(w, version.Version)
	case outputJUnit:
		return r.WriteJUnit(w)
	case outputYAML:
		_, err := printStructured(w, outputYAML, r)
		return err
	}
	return r.WriteText(w, colorEnabled(w))
}

// colorEnabled is true only for a terminal, and never when NO_COLOR is set.
func colorEnabled(w io.Writer) bool {
	return os.Getenv("NO_COLOR") == "" && isTerminal(w)
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// checkProgress tells a terminal how far a long check has got: one line on
// stderr, rewritten every progressEvery, erased when the check ends. A nil
// checkProgress (output is not a terminal) does nothing.
type checkProgress struct {
	w       io.Writer
	start   time.Time
	last    time.Time
	objects int
	shown   bool
}

const progressEvery = time.Second

// add counts one checked object; the clock is read every 256 objects.
func (p *checkProgress) add(now func() time.Time) {
	if p == nil {
		return
	}
	p.objects++
	if p.objects%256 != 0 {
		return
	}
	t := now()
	if t.Sub(p.start) < progressEvery || t.Sub(p.last) < progressEvery {
		return
	}
	p.last, p.shown = t, true
	fmt.Fprintf(p.w, "\rchecked %d objects (%.0f s)", p.objects, t.Sub(p.start).Seconds())
}

func (p *checkProgress) done() {
	if p != nil && p.shown {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}

// ruleView is how list and explain print a rule for machines.
type ruleView struct {
	*policy.Rule
	Pack       string         `json:"pack"`
	Parameters map[string]any `json:"parameterValues,omitempty"`
}

func newPolicyListCommand(flags *policyFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List the rules of a profile with their severity and sources",
		Args:  cobra.NoArgs,
	}
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		pol, err := flags.load(nil, policy.UncheckedPolicy{})
		if err != nil {
			return err
		}
		views := make([]ruleView, 0, len(pol.Rules()))
		for _, r := range pol.Rules() {
			views = append(views, ruleView{Rule: r, Pack: r.Pack()})
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, views); done {
			return err
		}
		t := newTable(cmd.OutOrStdout())
		fmt.Fprintln(t, "ID\tSEVERITY\tTARGETS\tTITLE\tSOURCES")
		for _, r := range pol.Rules() {
			var src []string
			for _, m := range r.Mappings {
				src = append(src, m.Framework+" "+m.Clause)
			}
			targets := make([]string, len(r.Targets))
			for i, tg := range r.Targets {
				targets[i] = string(tg)
			}
			fmt.Fprintf(t, "%s\t%s\t%s\t%s\t%s\n", r.ID, r.Severity, strings.Join(targets, ","), r.Title, strings.Join(src, "; "))
		}
		return t.Flush()
	}
	return cmd
}

func newPolicyExplainCommand(flags *policyFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "explain RULE_ID",
		Short: "Show one rule: its check, remediation, parameters and sources",
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 {
				return usageError(errors.New("name exactly one rule id, e.g. FIN-WL-001"))
			}
			return nil
		},
	}
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, args []string) error {
		pol, err := flags.load(nil, policy.UncheckedPolicy{})
		if err != nil {
			return err
		}
		id := strings.ToUpper(args[0])
		r, ok := pol.Rule(id)
		if !ok {
			return usageError(fmt.Errorf("rule %s is not in profile %s: see slipway policy list --profile %s", id, pol.Name(), pol.Name()))
		}
		view := ruleView{Rule: r, Pack: r.Pack(), Parameters: pol.RuleParameters(r.ID)}
		if done, err := printStructured(cmd.OutOrStdout(), *out, view); done {
			return err
		}
		return writeExplanation(cmd.OutOrStdout(), view)
	}
	return cmd
}

func writeExplanation(w io.Writer, v ruleView) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s  %s\n\n", v.ID, v.Title)
	fmt.Fprintf(&b, "Severity:     %s\n", v.Severity)
	fmt.Fprintf(&b, "Pack:         %s\n", v.Pack)
	targets := make([]string, len(v.Targets))
	for i, t := range v.Targets {
		targets[i] = string(t)
	}
	fmt.Fprintf(&b, "Targets:      %s\n", strings.Join(targets, ", "))
	fmt.Fprintf(&b, "Applies to:   %s\n", strings.Join(v.MatchedKinds(), ", "))
	if len(v.Replaces) > 0 {
		fmt.Fprintf(&b, "Replaces:     %s\n", strings.Join(v.Replaces, ", "))
	}
	if v.CrossObject() {
		fmt.Fprintf(&b, "Reads:        %s of the object's namespace, as namespaceObjects\n", strings.Join(v.NamespaceObjects, ", "))
	}
	fmt.Fprintf(&b, "\nViolation:    %s\nRemediation:  %s\n", v.Message, v.Remediation)
	if len(v.Parameters) > 0 {
		b.WriteString("\nParameters in force:\n")
		for _, name := range sortedKeys(v.Parameters) {
			fmt.Fprintf(&b, "  %s: %v\n", name, v.Parameters[name])
		}
	}
	b.WriteString("\nSources:\n")
	for _, m := range v.Mappings {
		fmt.Fprintf(&b, "  - %s %s  relation=%s", m.Framework, m.Clause, m.Relation)
		if m.Effective != "" {
			fmt.Fprintf(&b, " effective=%s", m.Effective)
		}
		if m.Source != "" {
			fmt.Fprintf(&b, "  (%s)", m.Source)
		}
		b.WriteString("\n")
	}
	if reason := v.AdmissionSkipReason(); reason != "" {
		fmt.Fprintf(&b, "\nNot exported as an admission policy: %s\n", reason)
	}
	fmt.Fprintf(&b, "\nCheck (CEL, returns the offending field paths):\n  %s\n", strings.TrimSpace(v.Expression))
	_, err := io.WriteString(w, b.String())
	return err
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

func newPolicyExportCommand(flags *policyFlags) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export",
		Short: "Print the profile as ValidatingAdmissionPolicy and ValidatingAdmissionPolicyBinding objects",
		Long: `Export writes one ValidatingAdmissionPolicy and binding per rule, so that the
API server refuses violating objects with the rule id in the message even when
they bypass Slipway. Rules that cannot be enforced at admission are listed as
comments at the top of the output and on stderr. Active waivers become match
conditions; export again before the date in the waivers-valid-until annotation.`,
		Args: cobra.NoArgs,
	}
	mode := cmd.Flags().String("mode", string(policy.ExportEnforce), "enforce (Deny) or audit (Warn and Audit)")
	waiversFile := cmd.Flags().String("waivers", "", "file of PolicyWaiver documents to exempt from the exported policies")
	exempt := cmd.Flags().StringSlice("exempt-namespace", policy.DefaultExemptNamespaces, "namespaces the API server does not check")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		var waivers []policy.Waiver
		if *waiversFile != "" {
			data, err := os.ReadFile(*waiversFile)
			if err != nil {
				return usageError(fmt.Errorf("reading policy waivers: %w", err))
			}
			if waivers, err = policy.ParseWaivers(data, *waiversFile); err != nil {
				return usageError(err)
			}
		}
		pol, err := flags.load(waivers, policy.UncheckedPolicy{})
		if err != nil {
			return err
		}
		exp, err := pol.ExportAdmission(policy.ExportOptions{Mode: policy.ExportMode(*mode), ExemptNamespaces: *exempt, Now: time.Now()})
		if err != nil {
			return usageError(err)
		}
		data, err := exp.YAML()
		if err != nil {
			return err
		}
		for _, s := range exp.Skipped {
			fmt.Fprintf(cmd.ErrOrStderr(), "not exported: %s: %s\n", s.Rule, strings.Join(strings.Fields(s.Reason), " "))
		}
		_, err = cmd.OutOrStdout().Write(data)
		return err
	}
	return cmd
}
