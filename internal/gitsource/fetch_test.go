package gitsource

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"slipway.dev/slipway/internal/gitserver"
)

var (
	server  *gitserver.Server
	auth    = gitserver.BasicAuth{Username: "team-a", Password: "private-repo-password"}
	repoSeq atomic.Int64
)

func TestMain(m *testing.M) {
	os.Exit(run(m))
}

func run(m *testing.M) int {
	root, err := os.MkdirTemp("", "gitsource-test-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer os.RemoveAll(root)
	server, err = gitserver.New(root, auth.Username, auth.Password)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if _, err := server.Start(ctx, ""); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	defer server.Close()
	return m.Run()
}

// newRepo creates a repository with one commit of files and returns its URL
// and the commit.
func newRepo(t *testing.T, files map[string][]byte) (string, string) {
	t.Helper()
	name := fmt.Sprintf("repo-%d.git", repoSeq.Add(1))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if err := server.CreateRepo(ctx, name); err != nil {
		t.Fatal(err)
	}
	url := server.RepoURL(name)
	sha, err := gitserver.CommitFiles(ctx, url, auth, gitserver.Commit{
		Files: files, Message: "content", Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}
	return url, sha
}

func creds(password string) *Credentials {
	return &Credentials{Username: auth.Username, Password: password}
}

// TestCachedCommitNeedsCredentials: once a caller with credentials has
// fetched a private commit, a caller without them (or with wrong ones)
// asking for the same commit is refused by the server, not served from the
// cache.
func TestCachedCommitNeedsCredentials(t *testing.T) {
	url, sha := newRepo(t, map[string][]byte{"deploy/secret-plan.yaml": []byte("kind: ConfigMap\n")})
	f := NewFetcher(t.TempDir())
	ctx := context.Background()
	snap, err := f.Fetch(ctx, Request{URL: url, Ref: Ref{Commit: sha}, Auth: creds(auth.Password)}, "")
	if err != nil || snap.Revision != sha {
		t.Fatalf("fetch with credentials: %v", err)
	}
	for name, c := range map[string]*Credentials{"anonymous": nil, "wrong password": creds("guess")} {
		_, err := f.Fetch(ctx, Request{URL: url, Ref: Ref{Commit: sha}, Auth: c, Timeout: 10 * time.Second}, "")
		if !errors.Is(err, ErrAuthentication) {
			t.Errorf("%s caller asking for the cached private commit: %v, want an authentication failure", name, err)
		}
	}
	// The same credentials share the clone: no second fetch of the commit.
	again, err := f.Fetch(ctx, Request{URL: url + "/", Ref: Ref{Commit: sha}, Auth: creds(auth.Password)}, "")
	if err == nil && again.Revision != sha {
		t.Fatalf("second fetch = %s", again.Revision)
	}
}

// repeated returns n bytes of one repeated line, distinct per seed, which
// git compresses a thousandfold.
func repeated(n int, seed int) []byte {
	line := []byte(fmt.Sprintf("# filler %d: the same line over and over\n", seed))
	return bytes.Repeat(line, n/len(line)+1)[:n]
}

// TestLargeObjectsAreRefusedBeforeTheyCostMemory: a repository whose pack
// is a few hundred kilobytes but whose blobs inflate to hundreds of
// megabytes is refused while the pack arrives, and the attempt allocates
// a small fraction of what the blobs stand for.
func TestLargeObjectsAreRefusedBeforeTheyCostMemory(t *testing.T) {
	files := map[string][]byte{}
	for i := range 4 {
		files[fmt.Sprintf("blobs/%d.txt", i)] = repeated(64<<20, i)
	}
	url, _ := newRepo(t, files)
	dir := t.TempDir()
	f := NewFetcher(dir)
	runtime.GC()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	_, err := f.Fetch(context.Background(), Request{URL: url, Auth: creds(auth.Password)}, "")
	runtime.ReadMemStats(&after)
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "over the 16 MiB limit") {
		t.Fatalf("fetching 256 MiB of blobs: %v, want ErrTooLarge naming the limit", err)
	}
	if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
		t.Errorf("refusing the repository allocated %d MiB", alloc>>20)
	}
	if tmp, _ := filepath.Glob(filepath.Join(dir, "*", "objects", "pack", "tmp_*")); len(tmp) > 0 {
		t.Errorf("a refused pack left %v behind", tmp)
	}
}

// TestFetchAndTreeLimits: deltas count at the size they build, the objects
// of a fetch count together, and files are refused before they are read.
func TestFetchAndTreeLimits(t *testing.T) {
	base := repeated(600<<10, 1)
	grown := append(append([]byte{}, base...), base...) // a delta of base, 1.2 MiB
	url, _ := newRepo(t, map[string][]byte{"a.txt": base, "b.txt": grown})
	small := Limits{MaxObjectBytes: 1 << 20, MaxFetchBytes: 64 << 20, MaxFileBytes: 8 << 20, MaxTreeBytes: 32 << 20}
	f := NewFetcher(t.TempDir())
	f.Limits = small
	if _, err := f.Fetch(context.Background(), Request{URL: url, Auth: creds(auth.Password)}, ""); !errors.Is(err, ErrTooLarge) {
		t.Errorf("a 1.2 MiB object under a 1 MiB limit: %v", err)
	}

	files := map[string][]byte{}
	for i := range 6 {
		files[fmt.Sprintf("deploy/%d.yaml", i)] = repeated(900<<10, 10+i)
	}
	url, _ = newRepo(t, files)
	f = NewFetcher(t.TempDir())
	f.Limits = Limits{MaxObjectBytes: 1 << 20, MaxFetchBytes: 4 << 20, MaxFileBytes: 8 << 20, MaxTreeBytes: 32 << 20}
	if _, err := f.Fetch(context.Background(), Request{URL: url, Auth: creds(auth.Password)}, ""); !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "more than 4 MiB") {
		t.Errorf("5.4 MiB of objects under a 4 MiB fetch limit: %v", err)
	}

	f = NewFetcher(t.TempDir())
	f.Limits = Limits{MaxObjectBytes: 1 << 20, MaxFetchBytes: 64 << 20, MaxFileBytes: 512 << 10, MaxTreeBytes: 32 << 20}
	_, err := f.Fetch(context.Background(), Request{URL: url, Path: "deploy", Auth: creds(auth.Password)}, "")
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "limit for one file") {
		t.Errorf("900 KiB files under a 512 KiB file limit: %v", err)
	}
	f.Limits.MaxFileBytes, f.Limits.MaxTreeBytes = 1<<20, 2<<20
	_, err = f.Fetch(context.Background(), Request{URL: url, Path: "deploy", Auth: creds(auth.Password)}, "")
	if !errors.Is(err, ErrTooLarge) || !strings.Contains(err.Error(), "add up to more than 2 MiB") {
		t.Errorf("5.4 MiB of files under a 2 MiB tree limit: %v", err)
	}
	f.Limits.MaxTreeBytes = 8 << 20
	snap, err := f.Fetch(context.Background(), Request{URL: url, Path: "deploy", Auth: creds(auth.Password)}, "")
	if err != nil || len(snap.Files) != 6 {
		t.Fatalf("within every limit: %v", err)
	}
}

func TestDeltaHeader(t *testing.T) {
	d := &deltaHeader{}
	// base 300 (0xac 0x02), target 1<<20 (0x80 0x80 0x40).
	d.Write([]byte{0xac, 0x02, 0x80})
	d.Write([]byte{0x80, 0x40, 0x90, 0x01})
	if got := d.targetSize(); got != 1<<20 {
		t.Fatalf("targetSize = %d, want %d", got, 1<<20)
	}
	if got := (&deltaHeader{}).targetSize(); got < 1<<40 {
		t.Fatalf("an empty delta header counts as %d, want unlimited", got)
	}
}

// TestFetchServesCallersFromTheSameMoment: a caller content with the remote
// as it was when an earlier fetch began (a webhook's Applications) is
// answered by that fetch and sends nothing to the server; a caller who
// wants the remote as it is now fetches again and sees the new commit.
func TestFetchServesCallersFromTheSameMoment(t *testing.T) {
	url, first := newRepo(t, map[string][]byte{"deploy/a.yaml": []byte("v: 1\n")})
	f := NewFetcher(t.TempDir())
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	req := Request{URL: url, Path: "deploy", Auth: creds(auth.Password)}

	webhook := time.Now()
	snap, err := f.Fetch(ctx, req, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision != first {
		t.Fatalf("revision %s, want %s", snap.Revision, first)
	}
	second, err := gitserver.CommitFiles(ctx, url, auth, gitserver.Commit{
		Files: map[string][]byte{"deploy/a.yaml": []byte("v: 2\n")}, Message: "second",
		Author: gitserver.Signature{Name: "Dev", Email: "dev@example.com"},
	})
	if err != nil {
		t.Fatal(err)
	}

	fetchesBefore := fetchCount(t, url)
	req.FreshAfter = webhook
	snap, err = f.Fetch(ctx, req, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision != first || fetchCount(t, url) != fetchesBefore {
		t.Fatalf("a caller from before the first fetch got %s after %.0f more fetches, want %s from the first fetch",
			snap.Revision, fetchCount(t, url)-fetchesBefore, first)
	}

	req.FreshAfter = time.Time{}
	snap, err = f.Fetch(ctx, req, "")
	if err != nil {
		t.Fatal(err)
	}
	if snap.Revision != second {
		t.Fatalf("a caller wanting the remote as it is now got %s, want %s", snap.Revision, second)
	}
}

// fetchCount reads how many fetches from url's host succeeded so far.
func fetchCount(t *testing.T, url string) float64 {
	t.Helper()
	return testutil.ToFloat64(operations.WithLabelValues(OpFetch, RemoteHost(url), ResultSuccess))
}
