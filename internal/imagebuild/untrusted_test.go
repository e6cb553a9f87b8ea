package imagebuild

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/registry"
)

// TestDockerfileCopyStaysInContext copies through a symlinked directory
// that points out of the build context, as a developer who controls the
// repository can commit.
func TestDockerfileCopyStaysInContext(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "id_rsa"), []byte("PRIVATE KEY OF THE BUILDER"), 0o600); err != nil {
		t.Fatal(err)
	}
	for name, df := range map[string]string{
		"file through a linked directory": "FROM scratch\nCOPY keys/id_rsa /stolen\n",
		"glob through a linked directory": "FROM scratch\nCOPY keys/* /stolen/\n",
		"the linked directory itself":     "FROM scratch\nCOPY keys /stolen/\n",
		"a link to the file":              "FROM scratch\nCOPY key /stolen\n",
	} {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte(df), 0o644); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(outside, filepath.Join(dir, "keys")); err != nil {
				t.Fatal(err)
			}
			if err := os.Symlink(filepath.Join(outside, "id_rsa"), filepath.Join(dir, "key")); err != nil {
				t.Fatal(err)
			}
			img, err := BuildDockerfile(t.Context(), DockerfileOptions{ContextDir: dir})
			if err == nil {
				for _, l := range layerEntries(t, img) {
					for name, e := range l {
						if strings.Contains(e.content, "PRIVATE KEY") {
							t.Fatalf("the image holds %s, copied from outside the context", name)
						}
					}
				}
				t.Fatal("a COPY through a link out of the context was built")
			}
			t.Log(err)
			if !strings.Contains(err.Error(), "is a symbolic link") {
				t.Errorf("the error does not say a link was refused: %v", err)
			}
			if strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatal("the error reveals the file's content")
			}
		})
	}
}

// recorder is a reverse proxy in front of a real registry that remembers
// every Authorization header it was sent.
type recorder struct {
	mu   sync.Mutex
	auth []string
}

func (r *recorder) seen() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]string(nil), r.auth...)
}

// TestDockerfileForeignBaseGetsNoCredentials builds FROM an image on a
// registry other than the Pipeline's: that registry must never see the
// Pipeline's registry credentials.
func TestDockerfileForeignBaseGetsNoCredentials(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	own := startRegistry(t)
	foreign, err := registry.New(registry.Config{Dir: t.TempDir(), Username: "mallory", Password: "mallory-pass"})
	if err != nil {
		t.Fatal(err)
	}
	if err := foreign.Start(t.Context()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = foreign.Close() })
	target, _ := url.Parse("http://" + foreign.Host())
	rec := &recorder{}
	proxy := httputil.NewSingleHostReverseProxy(target)
	front := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if a := r.Header.Get("Authorization"); a != "" {
			rec.mu.Lock()
			rec.auth = append(rec.auth, a)
			rec.mu.Unlock()
		}
		proxy.ServeHTTP(w, r)
	}))
	defer front.Close()
	foreignHost := strings.TrimPrefix(front.URL, "http://")

	base, err := random.Image(64, 1)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, base, foreignHost+"/lib/base:1", remote.WithAuth(&authn.Basic{Username: "mallory", Password: "mallory-pass"})); err != nil {
		t.Fatal(err)
	}
	rec.mu.Lock()
	rec.auth = nil
	rec.mu.Unlock()

	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "Dockerfile"), []byte("FROM "+foreignHost+"/lib/base:1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	// The build holds the credentials of its own registry only.
	_, err = BuildDockerfile(ctx, DockerfileOptions{ContextDir: dir, Keychain: own.keychain()})
	t.Logf("build: %v", err)
	for _, a := range rec.seen() {
		t.Errorf("the foreign registry received credentials: %s", a)
	}
	if err == nil || !strings.Contains(err.Error(), "UNAUTHORIZED") {
		t.Fatalf("pulling from a registry that wants credentials, anonymously: %v", err)
	}
}

// TestDockerfileAndContextStayInSource points the Dockerfile and the
// context themselves out of the checkout through links.
func TestDockerfileAndContextStayInSource(t *testing.T) {
	outside := t.TempDir()
	if err := os.WriteFile(filepath.Join(outside, "Dockerfile"), []byte("FROM scratch\nCOPY id_rsa /stolen\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(outside, "id_rsa"), []byte("PRIVATE KEY OF THE BUILDER"), 0o600); err != nil {
		t.Fatal(err)
	}
	src := t.TempDir()
	if err := os.Symlink(outside, filepath.Join(src, "ctx")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink(filepath.Join(outside, "Dockerfile"), filepath.Join(src, "Dockerfile")); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(src, "Dockerfile.real"), []byte("FROM scratch\nCOPY id_rsa /stolen\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for name, o := range map[string]DockerfileOptions{
		"linked Dockerfile": {SourceDir: src, ContextDir: src, Dockerfile: filepath.Join(src, "Dockerfile")},
		"linked context":    {SourceDir: src, ContextDir: filepath.Join(src, "ctx"), Dockerfile: filepath.Join(src, "Dockerfile.real")},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := BuildDockerfile(t.Context(), o)
			t.Log(err)
			if err == nil || strings.Contains(err.Error(), "PRIVATE KEY") {
				t.Fatalf("built through a link out of the source directory: %v", err)
			}
		})
	}
}

// TestGoBuildRunsNoGitOfTheSource builds a package whose directory is a
// git repository configured to run a command when git looks at it: the
// build must not run git there.
func TestGoBuildRunsNoGitOfTheSource(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	marker := filepath.Join(t.TempDir(), "ran")
	for name, content := range map[string]string{
		"go.mod":  "module example.com/hooked\n\ngo 1.26\n",
		"main.go": "package main\n\nfunc main() {}\n",
	} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	for _, args := range [][]string{{"init", "-q"}, {"config", "core.fsmonitor", "touch " + marker}, {"add", "."},
		{"-c", "user.name=x", "-c", "user.email=x@example.com", "commit", "-qm", "x"}} {
		cmd := exec.CommandContext(ctx, "git", args...)
		cmd.Dir = dir
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("git %v: %v\n%s", args, err, out)
		}
	}
	_ = os.Remove(marker)
	// Stamping is on unless a setting turns it off: this one does not.
	if _, err := BuildGo(ctx, GoOptions{Dir: dir, Env: []string{"GOFLAGS=-mod=mod"}}); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(marker); err == nil {
		t.Fatal("building the package ran a command the source's git configuration named")
	}
}
