package cli

import (
	"strings"
	"testing"

	slipwayv1 "slipway.dev/slipway/api/v1alpha1"
)

func TestRollbackTarget(t *testing.T) {
	const (
		a = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
		b = "bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
		c = "cccccccccccccccccccccccccccccccccccccccc"
		d = "abcdef0123456789abcdef0123456789abcdef01"
	)
	app := &slipwayv1.Application{}
	app.Name = "tea"
	app.Status.LastAppliedRevision = c
	app.Status.History = []slipwayv1.RevisionHistory{
		{ID: 4, Revision: c, Result: "Succeeded"},
		{ID: 3, Revision: b, Result: "Failed"},
		{ID: 2, Revision: a, Result: "Succeeded"},
		{ID: 1, Revision: d, Result: "Succeeded"},
	}
	cases := []struct {
		want, got, err string
	}{
		{want: "", got: a},                     // last successful before the current, skipping the failed one
		{want: "2", got: a},                    // history ID
		{want: "bbbb", got: b},                 // unique prefix
		{want: strings.ToUpper(d[:8]), got: d}, // prefixes are case-insensitive
		{want: "a", err: "ambiguous"},          // a... and abcdef...
		{want: "99", err: "no history entry"},  // unknown ID
		{want: "deadbeef", err: "not in the history"},
		{want: "0123456789012345678901234567890123456789", got: "0123456789012345678901234567890123456789"}, // any full SHA
	}
	for _, tc := range cases {
		got, err := rollbackTarget(app, tc.want)
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("rollbackTarget(%q) error = %v, want %q", tc.want, err, tc.err)
			}
			continue
		}
		if err != nil || got != tc.got {
			t.Errorf("rollbackTarget(%q) = %q, %v; want %q", tc.want, got, err, tc.got)
		}
	}
	app.Status.History = app.Status.History[:1]
	if _, err := rollbackTarget(app, ""); err == nil {
		t.Error("rollback with a single revision in the history should fail")
	}
}
