package registry

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"github.com/google/go-containerregistry/pkg/v1/validate"
)

const (
	testUser     = "slipway"
	testPassword = "s3cret-registry-pass"
)

func startServer(t *testing.T, dir string) *Server {
	t.Helper()
	s, err := New(Config{Dir: dir, Username: testUser, Password: testPassword})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Close() })
	return s
}

func opts(ctx context.Context, user, pass string) []remote.Option {
	return []remote.Option{remote.WithContext(ctx), remote.WithAuth(&authn.Basic{Username: user, Password: pass})}
}

func push(t *testing.T, ctx context.Context, ref string, img v1.Image) name.Tag {
	t.Helper()
	tag, err := name.NewTag(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(tag, img, opts(ctx, testUser, testPassword)...); err != nil {
		t.Fatalf("push %s: %v", tag, err)
	}
	return tag
}

func pullDigest(t *testing.T, ctx context.Context, ref string) v1.Hash {
	t.Helper()
	r, err := name.ParseReference(ref, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	img, err := remote.Image(r, opts(ctx, testUser, testPassword)...)
	if err != nil {
		t.Fatalf("pull %s: %v", ref, err)
	}
	// Reads every layer and checks its digest, so blobs are really served.
	if err := validate.Image(img); err != nil {
		t.Fatalf("validate %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func digestOf(t *testing.T, img v1.Image) v1.Hash {
	t.Helper()
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d
}

func TestPushPull(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := startServer(t, t.TempDir())
	if !strings.HasPrefix(s.Host(), "127.0.0.1:") || s.URL() != "http://"+s.Host() {
		t.Fatalf("host %q, URL %q: want loopback", s.Host(), s.URL())
	}
	img, err := random.Image(1024, 2)
	if err != nil {
		t.Fatal(err)
	}
	push(t, ctx, s.Host()+"/team/app:v1", img)
	if got, want := pullDigest(t, ctx, s.Host()+"/team/app:v1"), digestOf(t, img); got != want {
		t.Fatalf("pulled %s, pushed %s", got, want)
	}
	if got := pullDigest(t, ctx, s.Host()+"/team/app@"+digestOf(t, img).String()); got != digestOf(t, img) {
		t.Fatalf("pull by digest gave %s", got)
	}
}

func TestWrongCredentials(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := startServer(t, t.TempDir())
	img, err := random.Image(512, 1)
	if err != nil {
		t.Fatal(err)
	}
	tag, err := name.NewTag(s.Host()+"/team/app:v1", name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	const wrong = "not-the-password-xyz"
	for _, tc := range []struct {
		name string
		opts []remote.Option
	}{
		{"wrong password", opts(ctx, testUser, wrong)},
		{"wrong user", opts(ctx, "intruder", testPassword)},
		{"anonymous", []remote.Option{remote.WithContext(ctx)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := remote.Write(tag, img, tc.opts...)
			if err == nil {
				t.Fatal("push with bad credentials succeeded")
			}
			var terr *transport.Error
			if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
				t.Fatalf("want a 401 transport error, got %T: %v", err, err)
			}
			if msg := err.Error(); !strings.Contains(msg, "401 Unauthorized") || strings.Contains(msg, wrong) || strings.Contains(msg, testPassword) {
				t.Errorf("push error should say 401 and hold no password: %v", err)
			}
			// A GET carries the registry's explanation in its body.
			_, err = remote.Image(tag, tc.opts...)
			if !errors.As(err, &terr) || terr.StatusCode != http.StatusUnauthorized {
				t.Fatalf("pull: want a 401 transport error, got %T: %v", err, err)
			}
			msg := err.Error()
			if !strings.Contains(msg, "UNAUTHORIZED") || !strings.Contains(msg, "wrong or missing username or password") {
				t.Errorf("pull error does not say why: %v", err)
			}
			if strings.Contains(msg, wrong) || strings.Contains(msg, testPassword) {
				t.Errorf("pull error leaks a password: %v", err)
			}
		})
	}
}

func TestChallenge(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	s := startServer(t, t.TempDir())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized || !strings.HasPrefix(resp.Header.Get("WWW-Authenticate"), "Basic realm=") {
		t.Fatalf("GET /v2/ without credentials: %d, WWW-Authenticate %q", resp.StatusCode, resp.Header.Get("WWW-Authenticate"))
	}
}

func TestPersistsAcrossRestart(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	s := startServer(t, dir)
	first, err := random.Image(2048, 2)
	if err != nil {
		t.Fatal(err)
	}
	second, err := random.Image(2048, 1)
	if err != nil {
		t.Fatal(err)
	}
	push(t, ctx, s.Host()+"/team/app:stable", first)
	push(t, ctx, s.Host()+"/team/app:moving", first)
	push(t, ctx, s.Host()+"/team/app:moving", second)
	gone := push(t, ctx, s.Host()+"/team/other:gone", first)
	if err := remote.Delete(gone, opts(ctx, testUser, testPassword)...); err != nil {
		t.Fatalf("delete %s: %v", gone, err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}

	s = startServer(t, dir)
	if got := pullDigest(t, ctx, s.Host()+"/team/app:stable"); got != digestOf(t, first) {
		t.Errorf("stable after restart: %s, want %s", got, digestOf(t, first))
	}
	if got := pullDigest(t, ctx, s.Host()+"/team/app:moving"); got != digestOf(t, second) {
		t.Errorf("moved tag after restart: %s, want %s", got, digestOf(t, second))
	}
	if got := pullDigest(t, ctx, s.Host()+"/team/app@"+digestOf(t, first).String()); got != digestOf(t, first) {
		t.Errorf("by digest after restart: %s", got)
	}
	ref, _ := name.NewTag(s.Host()+"/team/other:gone", name.Insecure)
	if _, err := remote.Head(ref, opts(ctx, testUser, testPassword)...); err == nil {
		t.Error("deleted tag came back after restart")
	}
}

func TestTornJournalTail(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := t.TempDir()
	s := startServer(t, dir)
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	push(t, ctx, s.Host()+"/team/app:v1", img)
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	f, err := os.OpenFile(filepath.Join(dir, "manifests.jsonl"), os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.WriteString(`{"op":"put","repo":"te`); err != nil {
		t.Fatal(err)
	}
	f.Close()

	s = startServer(t, dir)
	if got := pullDigest(t, ctx, s.Host()+"/team/app:v1"); got != digestOf(t, img) {
		t.Fatalf("after torn journal: %s", got)
	}
}

func TestNewRefusesMissingCredentials(t *testing.T) {
	if _, err := New(Config{Dir: t.TempDir(), Username: "u"}); err == nil {
		t.Fatal("New accepted an empty password")
	}
}
