package lab

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"slipway.dev/slipway/internal/imagebuild"
	"slipway.dev/slipway/internal/install"
	"slipway.dev/slipway/internal/signing"
	"slipway.dev/slipway/internal/testenv"
)

// TestServerImage builds Slipway's server image from this repository as
// `slipway lab image` does, into a lab registry (a real one, on the port
// the lab's state names), then checks what a cluster would rely on: the
// lab's key verifies it, its config runs the binary as a non-root user,
// the binary in its layer is this version of slipway, and the Go
// toolchain in it builds a program. No container runtime is involved.
func TestServerImage(t *testing.T) {
	if testing.Short() {
		t.Skip("builds slipway and layers the Go toolchain")
	}
	if _, err := os.Stat(busyboxFile); err != nil {
		testenv.MissingDependency(t, "the runner image needs Debian's busybox-static: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 15*time.Minute)
	defer cancel()
	l := &Lab{Dir: t.TempDir(), Progress: t.Logf}
	st, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	if err := st.save(l.Dir); err != nil {
		t.Fatal(err)
	}
	serving := make(chan error, 1)
	regCtx, stopRegistry := context.WithCancel(ctx)
	go func() { serving <- l.ServeRegistry(regCtx, logr.Discard()) }()
	t.Cleanup(func() { stopRegistry(); <-serving })
	waitRegistry(t, ctx, st)

	images, err := l.BuildServerImage(ctx, "../..")
	if err != nil {
		t.Fatal(err)
	}
	ref := images.Server
	digest, err := name.NewDigest(ref)
	if err != nil {
		t.Fatalf("%s is not pinned by digest: %v", ref, err)
	}
	// What the lab hands install.Apply to run this image in its cluster.
	if err := os.WriteFile(l.WebhookSecretFile(), []byte("lab-hook-secret\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	opts, err := l.ServerInstallOptions(images)
	if err != nil {
		t.Fatal(err)
	}
	if rc := opts.RegistryCredentials; opts.Image != ref || opts.RunnerImage != images.Runner || string(opts.WebhookSecret) != "lab-hook-secret" ||
		rc == nil || rc.Server != digest.RegistryStr() || rc.Username != st.Registry.Username || rc.Password != st.Registry.Password {
		t.Fatalf("install options for the lab: image %s, registry credentials for %v", opts.Image, rc != nil && rc.Server == digest.RegistryStr())
	}
	opts.APIServerCIDRs = []string{"10.0.0.1"}
	if _, err := install.Manifests(opts.Options); err != nil {
		t.Fatalf("install refuses the image: %v", err)
	}
	auth := remote.WithAuth(&authn.Basic{Username: st.Registry.Username, Password: st.Registry.Password})

	// Signed by the lab's key, the one `cosign verify --key` is given.
	pubPEM, err := os.ReadFile(l.PublicKeyFile())
	if err != nil {
		t.Fatal(err)
	}
	pub, err := signing.DecodePublicKey(pubPEM)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := signing.Verify(ctx, digest, pub, []string{imagebuild.PredicateSPDX}, auth); err != nil {
		t.Fatalf("the lab's key does not verify the image: %v", err)
	}
	other, _ := signing.GenerateKey()
	if _, err := signing.Verify(ctx, digest, &other.PublicKey, nil, auth); !errors.Is(err, signing.ErrNotSigned) {
		t.Fatalf("another key verifies the image: %v", err)
	}

	img, err := remote.Image(digest, auth, remote.WithContext(ctx))
	if err != nil {
		t.Fatal(err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if ep := cf.Config.Entrypoint; len(ep) != 1 || ep[0] != "/app/slipway" || cf.Config.User != imagebuild.NonRootUser {
		t.Fatalf("entrypoint %v, user %q", ep, cf.Config.User)
	}
	if !contains(cf.Config.Env, "PATH="+imagebuild.GoToolchainDir+"/bin") {
		t.Fatalf("env %v does not put the Go toolchain on PATH", cf.Config.Env)
	}

	// Unpack the layers as a container runtime would, minus the runtime.
	root := t.TempDir()
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("%d layers (%v), want the Go toolchain and slipway", len(layers), err)
	}
	for _, layer := range layers {
		size, _ := layer.Size()
		t.Logf("layer of %.1f MB compressed", float64(size)/1e6)
		unpack(t, layer, root)
	}
	out, err := exec.CommandContext(ctx, filepath.Join(root, "app", "slipway"), "version", "-o", "json").Output()
	if err != nil {
		t.Fatalf("slipway version from the image: %v", err)
	}
	src, err := checkout(ctx, "../..")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), `"version": "`+src.version+`"`) {
		t.Fatalf("the image's slipway says %s, the checkout is %s", out, src.version)
	}

	// The toolchain in the image builds a Go service, as the server's
	// pipelines do: the pruned GOROOT holds all go build needs.
	goBin := filepath.Join(root, filepath.FromSlash(imagebuild.GoToolchainDir), "bin")
	t.Setenv("PATH", goBin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv("GOROOT", "") // the go command finds its GOROOT beside itself
	svc := t.TempDir()
	for file, content := range map[string]string{
		"go.mod":  "module example.com/hello\n\ngo 1.26\n",
		"main.go": "package main\n\nimport (\n\t\"fmt\"\n\t\"net/http\"\n)\n\nfunc main() { fmt.Println(\"hello\", http.StatusOK) }\n",
	} {
		if err := os.WriteFile(filepath.Join(svc, file), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	built, err := imagebuild.BuildGo(ctx, imagebuild.GoOptions{Dir: svc, Env: []string{"GOPROXY=off", "GOTOOLCHAIN=local"}})
	if err != nil {
		t.Fatalf("go build with the image's toolchain: %v", err)
	}
	if want, err := exec.CommandContext(ctx, "go", "env", "GOROOT").Output(); err != nil || !strings.HasPrefix(string(want), root) {
		t.Fatalf("the test did not use the image's toolchain: GOROOT %s (%v)", want, err)
	}
	if built.BuildInfo.Main.Path != "example.com/hello" {
		t.Fatalf("built %q", built.BuildInfo.Main.Path)
	}

	t.Run("the runner image", func(t *testing.T) {
		runnerRef, err := name.NewDigest(images.Runner)
		if err != nil || runnerRef.Context().RepositoryStr() != RunnerImageRepository {
			t.Fatalf("runner image %q (%v), want one of %s pinned by digest", images.Runner, err, RunnerImageRepository)
		}
		if _, err := signing.Verify(ctx, runnerRef, pub, nil, auth); err != nil {
			t.Fatalf("the lab's key does not verify the runner image: %v", err)
		}
		runner, err := remote.Image(runnerRef, auth, remote.WithContext(ctx))
		if err != nil {
			t.Fatal(err)
		}
		rcf, err := runner.ConfigFile()
		if err != nil {
			t.Fatal(err)
		}
		if !contains(rcf.Config.Env, "PATH="+imagebuild.GoToolchainDir+"/bin:/bin:/app") {
			t.Fatalf("the runner's env %v does not put the toolchain, busybox and slipway on PATH", rcf.Config.Env)
		}
		// The server's layers, then busybox: nodes pull the server's once.
		rl, err := runner.Layers()
		if err != nil || len(rl) != 3 {
			t.Fatalf("%d runner layers (%v), want the server's two and busybox", len(rl), err)
		}
		for i := range layers {
			a, _ := layers[i].Digest()
			b, _ := rl[i].Digest()
			if a != b {
				t.Fatalf("runner layer %d is %s, the server's %s", i, b, a)
			}
		}
		unpack(t, rl[2], root)
		sh := filepath.Join(root, "bin", "sh")
		out, err := exec.CommandContext(ctx, sh, "-c", `ulimit -n 256 && echo "$0 runs"`).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != sh+" runs" {
			t.Fatalf("the runner's sh: %q, %v", out, err)
		}

		// go test, which runs go vet, works with the pruned toolchain, as
		// test Pods run it.
		hello := "package main\n\nimport \"testing\"\n\nfunc TestHello(t *testing.T) {\n\tif 1+1 != 2 {\n\t\tt.Fatal(\"arithmetic\")\n\t}\n}\n"
		if err := os.WriteFile(filepath.Join(svc, "hello_test.go"), []byte(hello), 0o644); err != nil {
			t.Fatal(err)
		}
		goCmd := func(args ...string) ([]byte, error) {
			cmd := exec.CommandContext(ctx, filepath.Join(goBin, "go"), args...)
			cmd.Dir = svc
			cmd.Env = append(os.Environ(), "GOPROXY=off", "GOTOOLCHAIN=local", "GOFLAGS=-count=1")
			return cmd.CombinedOutput()
		}
		for _, args := range [][]string{{"test", "./..."}, {"vet", "./..."}} {
			if out, err := goCmd(args...); err != nil {
				t.Fatalf("go %s with the image's toolchain: %v\n%s", strings.Join(args, " "), err, out)
			}
		}
		// vet's findings fail go test there too: vet is in the toolchain.
		vet := "package main\n\nimport (\n\t\"fmt\"\n\t\"testing\"\n)\n\nfunc TestVet(t *testing.T) { fmt.Printf(\"%d\\n\", \"not a number\") }\n"
		if err := os.WriteFile(filepath.Join(svc, "vet_test.go"), []byte(vet), 0o644); err != nil {
			t.Fatal(err)
		}
		if out, err := goCmd("test", "./..."); err == nil || !strings.Contains(string(out), "format %d has arg") {
			t.Fatalf("go test ran no vet with the image's toolchain: %v\n%s", err, out)
		}
	})
}

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

func waitRegistry(t *testing.T, ctx context.Context, st *State) {
	t.Helper()
	url := "http://127.0.0.1:" + strconv.Itoa(st.Ports.Registry) + "/v2/"
	for {
		err := httpOK(ctx, http.DefaultClient, url, func(r *http.Request) { r.SetBasicAuth(st.Registry.Username, st.Registry.Password) })
		if err == nil {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the lab registry does not answer: %v", err)
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// unpack writes a layer's regular files and directories under root.
func unpack(t *testing.T, layer v1.Layer, root string) {
	t.Helper()
	rc, err := layer.Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		p := filepath.Join(root, filepath.FromSlash(path.Clean("/"+hdr.Name)))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
		case tar.TypeSymlink:
			if err := os.Symlink(hdr.Linkname, p); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			f, err := os.OpenFile(p, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&0o777)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
		default:
			t.Fatalf("unexpected entry %s of type %c", hdr.Name, hdr.Typeflag)
		}
	}
}
