package cli

import (
	"context"
	"crypto/ecdsa"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"slipway.dev/slipway/internal/audit"
	"slipway.dev/slipway/internal/signing"
)

func newAuditCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "audit",
		Short: "Verify, read and export the tamper-evident audit trail",
		Long: `Slipway records every security-relevant event (runs, signatures, promotions and
their decisions, syncs, rollbacks, repaired drift, policy blocks, waivers,
refused webhooks) in a hash chain with signed checkpoints.

  slipway audit verify                    check the chain, the signatures and the checkpoints
  slipway audit log                       list records, filtered
  slipway audit export --from --to        the evidence pack of a period (HTML in Korean or English, or JSON)

--store is the server's --audit-store: a directory (read without locking it,
beside the running server) or a postgres:// connection string. --key is the
audit public key (default: DIR/audit.pub of a file store).`,
	}
	cmd.AddCommand(newAuditVerifyCommand(), newAuditLogCommand(), newAuditExportCommand(), newAuditSetupPostgresCommand(), newAuditArchiveCommand())
	return cmd
}

// auditFlags are how a command reaches a store and checks it.
type auditFlags struct {
	store, passwordFile, key    string
	witness, witnessCredentials string
	from, to                    string
}

func addAuditFlags(cmd *cobra.Command) *auditFlags {
	f := &auditFlags{}
	cmd.Flags().StringVar(&f.store, "store", defaultAuditStore(), "audit store: a directory or a postgres:// connection string")
	cmd.Flags().StringVar(&f.passwordFile, "store-password-file", "", "file holding the PostgreSQL password (or PGPASSWORD)")
	cmd.Flags().StringVar(&f.key, "key", "", "audit public key, PEM (default: DIR/audit.pub of a file store)")
	cmd.Flags().StringVar(&f.witness, "witness", "", "git repository holding the witnessed checkpoints")
	cmd.Flags().StringVar(&f.witnessCredentials, "witness-credentials-file", "", "file holding username:password for --witness")
	cmd.Flags().StringVar(&f.from, "from", "", "start of the period, inclusive: RFC 3339 or YYYY-MM-DD (UTC)")
	cmd.Flags().StringVar(&f.to, "to", "", "end of the period, exclusive: RFC 3339 or YYYY-MM-DD (UTC)")
	return f
}

func (f *auditFlags) open(ctx context.Context) (audit.Store, error) {
	var password string
	if f.passwordFile != "" {
		b, err := os.ReadFile(f.passwordFile)
		if err != nil {
			return nil, usageError(fmt.Errorf("reading the store's password: %w", err))
		}
		password = strings.TrimSpace(string(b))
	}
	if !audit.IsPostgres(f.store) {
		if _, err := os.Stat(filepath.Join(strings.TrimPrefix(f.store, "file://"), "log.json")); err != nil {
			return nil, usageError(fmt.Errorf("%s holds no audit log (--store)", f.store))
		}
	}
	return audit.OpenStore(ctx, f.store, password, true)
}

// openChecked opens the store read-only with what checks it: the public
// key and, when given, the witness. The caller closes the store.
func (f *auditFlags) openChecked(ctx context.Context) (audit.Store, *ecdsa.PublicKey, audit.Witness, error) {
	store, err := f.open(ctx)
	if err != nil {
		return nil, nil, nil, err
	}
	pub, err := f.publicKey()
	if err != nil {
		store.Close()
		return nil, nil, nil, err
	}
	w, err := f.witnessOf()
	if err != nil {
		store.Close()
		return nil, nil, nil, err
	}
	return store, pub, w, nil
}

func (f *auditFlags) publicKey() (*ecdsa.PublicKey, error) {
	path := f.key
	if path == "" {
		if audit.IsPostgres(f.store) {
			return nil, usageError(errors.New("--key is required with a PostgreSQL store"))
		}
		path = filepath.Join(strings.TrimPrefix(f.store, "file://"), "audit.pub")
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, usageError(fmt.Errorf("reading the audit public key: %w", err))
	}
	pub, err := signing.DecodePublicKey(b)
	if err != nil {
		return nil, usageError(fmt.Errorf("the audit public key %s: %w", path, err))
	}
	return pub, nil
}

func (f *auditFlags) witnessOf() (audit.Witness, error) {
	if f.witness == "" {
		return nil, nil
	}
	w, err := audit.NewGitWitness(f.witness, f.witnessCredentials)
	if err != nil {
		return nil, usageError(err)
	}
	return w, nil
}

// period parses --from and --to; zero times when not given.
func (f *auditFlags) period() (from, to time.Time, err error) {
	parse := func(flag, s string) (time.Time, error) {
		if s == "" {
			return time.Time{}, nil
		}
		for _, layout := range []string{time.RFC3339, "2006-01-02"} {
			if t, err := time.Parse(layout, s); err == nil {
				return t.UTC(), nil
			}
		}
		return time.Time{}, usageError(fmt.Errorf("--%s %q: want RFC 3339 (2026-03-31T00:00:00Z) or a date (2026-03-31)", flag, s))
	}
	if from, err = parse("from", f.from); err != nil {
		return
	}
	if to, err = parse("to", f.to); err != nil {
		return
	}
	if !to.IsZero() && !from.IsZero() && !to.After(from) {
		err = usageError(errors.New("--to must be after --from"))
	}
	return
}

func newAuditVerifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "verify",
		Short: "Check every record, its link to the one before, the signed checkpoints and the witness",
		Long: `Read the whole log and check that every record is intact and linked to the one
before it, that the checkpoints kept by the store and by the witness are signed
by the audit key and match the records, and that nothing a checkpoint covers is
missing from the end. The first record that fails is named, and how: changed,
missing, reordered, truncated. Exit code 1 when anything fails.

With --pack, check an evidence pack (HTML or JSON) offline instead: its records,
their links, its signed checkpoint, and that its changes are what its records say.
--from and --to count the records of a period; the whole chain is always checked,
since any part is only as good as what links it to a checkpoint.`,
		Args: cobra.NoArgs,
	}
	f := addAuditFlags(cmd)
	pack := cmd.Flags().String("pack", "", "an evidence pack file (HTML or JSON) to check offline")
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		var res *audit.Result
		var inPeriod int
		if *pack != "" {
			b, err := os.ReadFile(*pack)
			if err != nil {
				return usageError(err)
			}
			p, err := audit.ReadPack(b)
			if err != nil {
				return usageError(err)
			}
			pub, err := packKey(f, p, cmd.ErrOrStderr())
			if err != nil {
				return err
			}
			if res, err = audit.VerifyPack(p, pub); err != nil {
				return err
			}
		} else {
			from, to, err := f.period()
			if err != nil {
				return err
			}
			store, pub, w, err := f.openChecked(ctx)
			if err != nil {
				return err
			}
			defer store.Close()
			if res, err = audit.Verify(ctx, store, pub, audit.VerifyOptions{Witness: w}); err != nil {
				return err
			}
			if !from.IsZero() || !to.IsZero() {
				inPeriod, err = countPeriod(ctx, store, from, to)
				if err != nil {
					return err
				}
			}
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, res); done {
			if err == nil && !res.OK() {
				return &exitError{code: ExitFailure, err: errors.New(res.Problems[0].String())}
			}
			return err
		}
		w := cmd.OutOrStdout()
		fmt.Fprintf(w, "log %s, key %s\n", res.LogID, res.KeyID)
		fmt.Fprintf(w, "records %d to %d read and linked (%d); head %s\n", res.First, res.Last, res.Records, res.Head)
		fmt.Fprintf(w, "checkpoints matched: %d in the store, %d witnessed\n", res.Checkpoints, res.Witnessed)
		if f.from != "" || f.to != "" {
			fmt.Fprintf(w, "records in the period: %d\n", inPeriod)
		}
		for _, n := range res.Notes {
			fmt.Fprintf(w, "note: %s\n", n)
		}
		if !res.OK() {
			for _, p := range res.Problems {
				fmt.Fprintf(w, "FAILED %s\n", p)
			}
			return &exitError{code: ExitFailure, err: fmt.Errorf("the audit log fails verification: %s", res.Problems[0])}
		}
		fmt.Fprintln(w, "OK")
		return nil
	}
	return cmd
}

// packKey is --key, or the key the pack carries, with a warning: a key
// taken from the file it checks proves only that the file is consistent.
func packKey(f *auditFlags, p *audit.Pack, stderr io.Writer) (*ecdsa.PublicKey, error) {
	if f.key != "" {
		return f.publicKey()
	}
	pub, err := signing.DecodePublicKey([]byte(p.Verification.PublicKey))
	if err != nil {
		return nil, usageError(fmt.Errorf("the pack's public key: %w (give --key)", err))
	}
	fmt.Fprintf(stderr, "warning: checking with the key inside the pack (fingerprint %s); give --key with the key its owner gave you\n", p.Verification.KeyID)
	return pub, nil
}

func countPeriod(ctx context.Context, store audit.Store, from, to time.Time) (int, error) {
	n := 0
	err := store.Scan(ctx, func(it audit.Item) error {
		if it.Record != nil && inPeriod(it.Record.Time, from, to) {
			n++
		}
		return nil
	})
	return n, err
}

func inPeriod(t, from, to time.Time) bool {
	return (from.IsZero() || !t.Before(from)) && (to.IsZero() || t.Before(to))
}

func newAuditLogCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "log",
		Short: "List audit records, filtered by application, stage, person, kind and time",
		Long: `List the records of the log, oldest first. The chain is verified as it is read;
records after the first that fails are not shown.

Filters combine: --application NAME or NAMESPACE/NAME, --namespace, --stage
(records of promotions into it and of its Applications), --person (the actor,
or a requester, approver, author or pusher named in the record), --kind
(e.g. sync.applied, promotion.approved; a prefix like promotion. matches all).`,
		Args: cobra.NoArgs,
	}
	f := addAuditFlags(cmd)
	var app, namespace, stage, person, kind string
	var since time.Duration
	cmd.Flags().StringVar(&app, "application", "", "Application name, or NAMESPACE/NAME")
	cmd.Flags().StringVar(&namespace, "namespace", "", "namespace of the objects")
	cmd.Flags().StringVar(&stage, "stage", "", "stage of a Delivery")
	cmd.Flags().StringVar(&person, "person", "", "a user or commit author")
	cmd.Flags().StringVar(&kind, "kind", "", "record kind, or a prefix ending in a dot")
	cmd.Flags().DurationVar(&since, "since", 0, "only records younger than this (e.g. 24h)")
	out := addOutputFlag(cmd)
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		from, to, err := f.period()
		if err != nil {
			return err
		}
		if since > 0 {
			from = time.Now().Add(-since).UTC()
		}
		store, err := f.open(ctx)
		if err != nil {
			return err
		}
		defer store.Close()
		pub, err := f.publicKey()
		if err != nil {
			return err
		}
		var records []*audit.Record
		stages := map[string]string{} // namespace/application → stage
		res, err := audit.VerifyEach(ctx, store, pub, func(r *audit.Record) {
			if r.Kind == audit.KindPromotionLanded {
				stages[r.Details["namespace"]+"/"+r.Details["application"]] = r.Details["stage"]
			}
			if !inPeriod(r.Time, from, to) || (kind != "" && r.Kind != kind && !(strings.HasSuffix(kind, ".") && strings.HasPrefix(r.Kind, kind))) {
				return
			}
			d := r.Details
			if namespace != "" && d["namespace"] != namespace {
				return
			}
			if app != "" && d["application"] != app && d["namespace"]+"/"+d["application"] != app {
				return
			}
			if stage != "" && d["stage"] != stage && stages[d["namespace"]+"/"+d["application"]] != stage {
				return
			}
			if person != "" && !mentions(r, person) {
				return
			}
			records = append(records, r)
		})
		if err != nil {
			return err
		}
		if !res.OK() {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: the log fails verification (%s): records after it are not shown\n", res.Problems[0])
		}
		if records == nil {
			records = []*audit.Record{}
		}
		if done, err := printStructured(cmd.OutOrStdout(), *out, records); done {
			return err
		}
		t := newTable(cmd.OutOrStdout())
		fmt.Fprintln(t, "SEQ\tTIME\tKIND\tOUTCOME\tACTOR\tSUBJECT\tDETAILS")
		for _, r := range records {
			fmt.Fprintf(t, "%d\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Seq, r.Time.Format(time.RFC3339), r.Kind, r.Outcome, r.Actor, r.Subject, keyDetails(r))
		}
		return t.Flush()
	}
	return cmd
}

// mentions reports whether a record names person as its actor or in a
// role it records.
func mentions(r *audit.Record, person string) bool {
	if r.Actor == person {
		return true
	}
	for _, k := range []string{"requestedBy", "commitAuthor", "pushedBy", "approver"} {
		if r.Details[k] == person {
			return true
		}
	}
	return slices.Contains(strings.Fields(r.Details["approvers"]), person)
}

// keyDetails is the few details a table row has room for.
func keyDetails(r *audit.Record) string {
	var parts []string
	for _, k := range []string{"revision", "image", "stage", "changeID", "commit", "rule", "reason", "changes", "error"} {
		if v := r.Details[k]; v != "" {
			if len(v) > 60 {
				v = v[:57] + "..."
			}
			parts = append(parts, k+"="+v)
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}

func newAuditExportCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "export --from DATE --to DATE",
		Short: "Write the evidence pack of a period: every production change and the verification of the log",
		Long: `For each production change in the period: the source commit and its author, the
test result, the image digest and its signature, the SBOM and provenance, the
policy result and the waivers used, the promotion's requester, approvers and
change id, the apply time, the outcome, and whether it was a rollback. Then the
verification of the whole log, and how to re-verify the file offline: the
records the pack is built from are inside it, with a signed checkpoint.

--format html (default) writes one self-contained, printable file in --lang ko
or en; --format json the same data. --stage, --namespace and --application
choose which Applications count as production (default: every sync).`,
		Args: cobra.NoArgs,
	}
	f := addAuditFlags(cmd)
	var format, lang, file string
	var filter audit.Filter
	cmd.Flags().StringVar(&format, "format", "html", "html or json")
	cmd.Flags().StringVar(&lang, "lang", "ko", "language of the HTML pack: ko or en")
	cmd.Flags().StringVar(&file, "file", "", "write the pack to this file (default: standard output)")
	cmd.Flags().StringVar(&filter.Stage, "stage", "", "only Applications that are this stage of a Delivery")
	cmd.Flags().StringVar(&filter.Namespace, "namespace", "", "only Applications of this namespace")
	cmd.Flags().StringVar(&filter.Application, "application", "", "only the Application of this name")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx := cmd.Context()
		from, to, err := f.period()
		if err != nil {
			return err
		}
		if from.IsZero() || to.IsZero() {
			return usageError(errors.New("--from and --to are required"))
		}
		if format != "html" && format != "json" {
			return usageError(fmt.Errorf("--format %q: use html or json", format))
		}
		if !slices.Contains(audit.Languages, lang) {
			return usageError(fmt.Errorf("--lang %q: use ko or en", lang))
		}
		store, pub, w, err := f.openChecked(ctx)
		if err != nil {
			return err
		}
		defer store.Close()
		pack, err := audit.Export(ctx, store, pub, audit.ExportOptions{From: from, To: to, Filter: filter, Witness: w})
		if err != nil {
			return err
		}
		dst, name := cmd.OutOrStdout(), "evidence."+format
		if file != "" {
			fh, err := os.OpenFile(file, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
			if err != nil {
				return usageError(err)
			}
			defer fh.Close()
			dst, name = fh, filepath.Base(file)
		}
		if format == "json" {
			_, err = printStructured(dst, outputJSON, pack)
		} else {
			err = audit.WriteHTML(dst, pack, lang, name)
		}
		if err != nil {
			return err
		}
		if !pack.Verification.OK {
			return &exitError{code: ExitFailure, err: fmt.Errorf("the pack was written, but the log fails verification: %s", pack.Verification.Problems[0])}
		}
		return nil
	}
	return cmd
}

func newAuditSetupPostgresCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "setup-postgres --owner OWNER-CONNECTION --role ROLE",
		Short: "Create the audit tables (owned by --owner) and give ROLE INSERT and SELECT only",
		Long: `Run once, as the database user who will own the audit tables (not the one the
server connects as). The server's role gets INSERT and SELECT on the records and
checkpoints and SELECT on the rest: it can add records, never change or remove
one. With --role-password-file the role is created, or its password set.
Idempotent.`,
		Args: cobra.NoArgs,
	}
	var owner, ownerPasswordFile, role, rolePasswordFile string
	cmd.Flags().StringVar(&owner, "owner", "", "postgres:// connection string of the tables' owner")
	cmd.Flags().StringVar(&ownerPasswordFile, "owner-password-file", "", "file holding the owner's password (or PGPASSWORD)")
	cmd.Flags().StringVar(&role, "role", "slipway_audit", "the role `slipway server` connects as")
	cmd.Flags().StringVar(&rolePasswordFile, "role-password-file", "", "create the role as a login role with this password")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if !audit.IsPostgres(owner) {
			return usageError(errors.New("--owner must be a postgres:// connection string"))
		}
		dsn, err := withPassword(owner, ownerPasswordFile)
		if err != nil {
			return err
		}
		var password string
		if rolePasswordFile != "" {
			b, err := os.ReadFile(rolePasswordFile)
			if err != nil {
				return usageError(err)
			}
			password = strings.TrimSpace(string(b))
		}
		ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
		defer cancel()
		if err := audit.SetupPostgres(ctx, dsn, role, password); err != nil {
			return err
		}
		fmt.Fprintf(cmd.OutOrStdout(), "audit tables ready; %s may insert and select\n", role)
		return nil
	}
	return cmd
}

// withPassword sets the password of a connection string from a file.
func withPassword(dsn, file string) (string, error) {
	if file == "" {
		return dsn, nil
	}
	b, err := os.ReadFile(file)
	if err != nil {
		return "", usageError(err)
	}
	return audit.WithPassword(dsn, strings.TrimSpace(string(b)))
}

func newAuditArchiveCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "archive --store OWNER-CONNECTION --key-file KEY",
		Short: "Move records past retention to the archive (PostgreSQL, as the tables' owner)",
		Long: `The server archives a file store by itself. A PostgreSQL store's rows can only be
moved by the tables' owner: run this as the owner, with the audit key (the move
is recorded). Records older than --retention-days move, in one transaction, to
the archive table, where verification still reads them.`,
		Args: cobra.NoArgs,
	}
	var store, passwordFile, keyFile string
	var days int
	cmd.Flags().StringVar(&store, "store", "", "postgres:// connection string of the tables' owner")
	cmd.Flags().StringVar(&passwordFile, "store-password-file", "", "file holding the owner's password")
	cmd.Flags().StringVar(&keyFile, "key-file", "", "the audit private key")
	cmd.Flags().IntVar(&days, "retention-days", 400, "records older than this many days move")
	cmd.RunE = func(cmd *cobra.Command, _ []string) error {
		if days < 366 {
			return usageError(fmt.Errorf("--retention-days %d: records stay at least a year (366 days)", days))
		}
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return usageError(fmt.Errorf("reading the audit key: %w", err))
		}
		key, err := signing.DecodePrivateKey(b)
		if err != nil {
			return usageError(err)
		}
		f := &auditFlags{store: store, passwordFile: passwordFile}
		s, err := f.open(cmd.Context())
		if err != nil {
			return err
		}
		l, _, err := audit.Open(cmd.Context(), s, audit.Options{Key: key})
		if err != nil {
			return err
		}
		a, err := l.ArchiveBefore(cmd.Context(), time.Now().Add(-time.Duration(days)*24*time.Hour))
		if cerr := l.Close(cmd.Context()); err == nil {
			err = cerr
		}
		if err != nil {
			return err
		}
		if a == nil {
			fmt.Fprintln(cmd.OutOrStdout(), "nothing is past retention")
			return nil
		}
		fmt.Fprintf(cmd.OutOrStdout(), "archived records %d to %d\n", a.First, a.Last)
		return nil
	}
	return cmd
}
