package imagebuild

import (
	"archive/tar"
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
)

func TestParseDockerfile(t *testing.T) {
	src := `# syntax=docker/dockerfile:1
ARG BASE=scratch
FROM ${BASE} AS final

# comment between instructions
ENV APP_HOME=/srv/app MODE="prod mode" \
    EMPTY=
label org.opencontainers.image.title='tea service' team=drinks
COPY --chown=65532:65532 --chmod=0755 ["bin/tea", "/srv/app/tea"]
EXPOSE 8080 9090/udp
ENTRYPOINT ["/srv/app/tea"]
CMD --listen :8080
`
	got, err := ParseDockerfile([]byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := []Instruction{
		{Line: 2, Command: "ARG", Args: []string{"BASE=scratch"}},
		{Line: 3, Command: "FROM", Args: []string{"${BASE}", "AS", "final"}},
		{Line: 6, Command: "ENV", Args: []string{"APP_HOME=/srv/app", "MODE=prod mode", "EMPTY="}},
		{Line: 8, Command: "LABEL", Args: []string{"org.opencontainers.image.title=tea service", "team=drinks"}},
		{Line: 9, Command: "COPY", Flags: map[string]string{"chown": "65532:65532", "chmod": "0755"}, Args: []string{"bin/tea", "/srv/app/tea"}, Exec: true},
		{Line: 10, Command: "EXPOSE", Args: []string{"8080", "9090/udp"}},
		{Line: 11, Command: "ENTRYPOINT", Args: []string{"/srv/app/tea"}, Exec: true},
		{Line: 12, Command: "CMD", Args: []string{"--listen :8080"}},
	}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("got  %+v\nwant %+v", got, want)
	}
}

func TestParseDockerfileRefusals(t *testing.T) {
	for name, tc := range map[string]struct {
		src, want string
		line      int
	}{
		"RUN": {"FROM scratch\nCOPY a /a\nRUN go build ./...\n",
			"Dockerfile line 3 (RUN): RUN needs a container runtime", 3},
		"RUN continued": {"FROM scratch\nRUN apt-get update && \\\n  apt-get install -y curl\n", "build the binary or assets in the pipeline's test step", 2},
		"unknown":       {"FROM scratch\nFROBNICATE x\n", `unknown instruction "FROBNICATE"`, 2},
		"COPY --from":   {"FROM scratch\nCOPY --from=builder /out /out\n", "the flag --from is not supported", 2},
		"bad JSON":      {"FROM scratch\nENTRYPOINT [\"/app\",]\n", "not a JSON array", 2},
		"FROM arity":    {"FROM a b\n", "FROM takes an image reference", 1},
		"ENV no value":  {"FROM scratch\nENV A=1 B\n", `"B" is not a key=value pair`, 2},
		"open quote":    {"FROM scratch\nLABEL a=\"x\n", "unterminated", 2},
		"escape":        {"# escape=`\nFROM scratch\n", "escape parser directive", 1},
		"trailing cont": {"FROM scratch\nCOPY a \\\n", "line continuation", 2},
		"empty":         {"# nothing\n\n", "no instructions", 1},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := ParseDockerfile([]byte(tc.src))
			var de *DockerfileError
			if !errors.As(err, &de) || !strings.Contains(err.Error(), tc.want) || de.Line != tc.line {
				t.Fatalf("want a DockerfileError on line %d containing %q, got %v", tc.line, tc.want, err)
			}
		})
	}
}

func FuzzParseDockerfile(f *testing.F) {
	for _, seed := range []string{
		"FROM scratch\nCOPY a /a\n",
		"ARG X=1\nFROM ${X}\nENV A=\"b c\" D='e'\nLABEL k=v\n",
		"FROM scratch\nENTRYPOINT [\"/a\", \"b\"]\nCMD x y\n",
		"FROM scratch\nCOPY --chown=1:2 --chmod=644 a b \\\n c/\n",
		"FROM scratch\nRUN x\n",
		"# escape=`\n",
		"LABEL a=\"\\\"q\\\"\"\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ins, err := ParseDockerfile(data)
		if err != nil {
			var de *DockerfileError
			if !errors.As(err, &de) {
				t.Fatalf("error of type %T: %v", err, err)
			}
			return
		}
		for _, in := range ins {
			if !supported[in.Command] || in.Line < 1 || len(in.Args) == 0 {
				t.Fatalf("accepted instruction %+v", in)
			}
		}
	})
}

// writeContext lays out a build context with a binary-like file, a config
// directory and files .dockerignore must keep out of the image.
func writeContext(t *testing.T, dockerfile string) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]struct {
		content string
		mode    os.FileMode
	}{
		"Dockerfile":             {dockerfile, 0o644},
		".dockerignore":          {".env\n**/*.secret\nconfig/local*\n!config/local-keep.yaml\n", 0o644},
		".env":                   {"REGISTRY_PASSWORD=hunter2\n", 0o600},
		"bin/tea":                {"#!/bin/true\n", 0o755},
		"config/app.yaml":        {"port: 8080\n", 0o644},
		"config/db.secret":       {"pw\n", 0o600},
		"config/local.yaml":      {"debug: true\n", 0o644},
		"config/local-keep.yaml": {"keep: true\n", 0o644},
	}
	for name, f := range files {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(f.content), f.mode); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

type tarEntry struct {
	mode     int64
	uid, gid int
	content  string
}

func layerEntries(t *testing.T, img v1.Image) []map[string]tarEntry {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	var out []map[string]tarEntry
	for _, l := range layers {
		rc, err := l.Uncompressed()
		if err != nil {
			t.Fatal(err)
		}
		entries := map[string]tarEntry{}
		tr := tar.NewReader(rc)
		for {
			hdr, err := tr.Next()
			if err == io.EOF {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			data, _ := io.ReadAll(tr)
			entries[hdr.Name] = tarEntry{hdr.Mode, hdr.Uid, hdr.Gid, string(data)}
		}
		rc.Close()
		out = append(out, entries)
	}
	return out
}

const teaDockerfile = `ARG VERSION=dev
FROM scratch
ARG VERSION
ENV APP=/srv/app TEA_VERSION=${VERSION}
WORKDIR $APP
COPY --chown=65532:65532 bin/tea ./
COPY config/ config/
ADD config/app.yaml /etc/tea/
USER 65532
EXPOSE 8080
LABEL org.opencontainers.image.version=$VERSION
ENTRYPOINT ["/srv/app/tea"]
CMD ["--port", "8080"]
`

func TestBuildDockerfile(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	dir := writeContext(t, teaDockerfile)
	opts := DockerfileOptions{ContextDir: dir, BuildArgs: map[string]string{"VERSION": "1.2.3"}, SourceDateEpoch: time.Unix(1700000000, 0)}
	img, err := BuildDockerfile(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	again, err := BuildDockerfile(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	if digest(t, img) != digest(t, again) {
		t.Fatal("the same context gave two digests")
	}
	// A file in the context changing its timestamp does not change the image.
	if err := os.Chtimes(filepath.Join(dir, "bin/tea"), time.Now(), time.Now()); err != nil {
		t.Fatal(err)
	}
	if touched, err := BuildDockerfile(ctx, opts); err != nil || digest(t, touched) != digest(t, img) {
		t.Fatalf("touching a file changed the build: %v", err)
	}

	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cf.Config
	sort.Strings(c.Env)
	if !reflect.DeepEqual(c.Env, []string{"APP=/srv/app", "TEA_VERSION=1.2.3"}) || c.WorkingDir != "/srv/app" || c.User != "65532" ||
		!reflect.DeepEqual(c.Entrypoint, []string{"/srv/app/tea"}) || !reflect.DeepEqual(c.Cmd, []string{"--port", "8080"}) ||
		c.Labels["org.opencontainers.image.version"] != "1.2.3" || len(c.ExposedPorts) != 1 || cf.Created.Unix() != 1700000000 {
		t.Fatalf("config %+v created %s", c, cf.Created)
	}

	layers := layerEntries(t, img)
	if len(layers) != 4 {
		t.Fatalf("%d layers, want WORKDIR, two COPY and ADD", len(layers))
	}
	if e, ok := layers[1]["srv/app/tea"]; !ok || e.mode != 0o755 || e.uid != 65532 || e.gid != 65532 {
		t.Errorf("COPY --chown of the binary: %+v (present %v)", e, ok)
	}
	cfgLayer := layers[2]
	var names []string
	for n := range cfgLayer {
		names = append(names, n)
	}
	sort.Strings(names)
	if strings.Join(names, " ") != "srv/ srv/app/ srv/app/config/ srv/app/config/app.yaml srv/app/config/local-keep.yaml" {
		t.Errorf("COPY of config/ holds %v: .dockerignore not honoured", names)
	}
	if e := cfgLayer["srv/app/config/app.yaml"]; e.mode != 0o644 || e.uid != 0 || e.content != "port: 8080\n" {
		t.Errorf("config file entry %+v", e)
	}
	if _, ok := layers[3]["etc/tea/app.yaml"]; !ok {
		t.Errorf("ADD to a directory: %v", layers[3])
	}
	for _, l := range layers {
		for n, e := range l {
			if strings.Contains(e.content, "hunter2") || strings.HasSuffix(n, ".secret") {
				t.Errorf("ignored file %s reached the image", n)
			}
		}
	}
}

func TestBuildDockerfileFromRegistry(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	reg := startRegistry(t)
	base, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	base, err = configure(base, func(c *v1.Config) { c.Cmd = []string{"base-cmd"}; c.Env = []string{"PATH=/bin"} }, time.Unix(0, 0))
	if err != nil {
		t.Fatal(err)
	}
	cf, _ := base.ConfigFile()
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = DefaultPlatform().OS, DefaultPlatform().Architecture
	if base, err = mutateConfigFile(base, cf); err != nil {
		t.Fatal(err)
	}
	if _, err := Push(ctx, base, reg.Host()+"/base/static:v1", reg.auth()); err != nil {
		t.Fatal(err)
	}
	df := "ARG TAG=v0\nFROM " + reg.Host() + "/base/static:${TAG}\nENTRYPOINT [\"/bin/tea\"]\nCOPY bin/tea /bin/\n"
	img, err := BuildDockerfile(ctx, DockerfileOptions{
		ContextDir: writeContext(t, df),
		BuildArgs:  map[string]string{"TAG": "v1"},
		Keychain:   reg.keychain(),
	})
	if err != nil {
		t.Fatal(err)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 2 {
		t.Fatalf("want the base layer and one COPY layer, got %d, %v", len(layers), err)
	}
	got, _ := img.ConfigFile()
	if got.Config.Cmd != nil || got.Config.Env[0] != "PATH=/bin" {
		t.Errorf("ENTRYPOINT should drop the base CMD and keep its env: %+v", got.Config)
	}

	_, err = BuildDockerfile(ctx, DockerfileOptions{ContextDir: writeContext(t, df), BuildArgs: map[string]string{"TAG": "v9"}, Keychain: reg.keychain()})
	if err == nil || !strings.Contains(err.Error(), "line 2 (FROM)") || !strings.Contains(err.Error(), "base/static:v9") {
		t.Fatalf("a missing base image: %v", err)
	}
}

func TestBuildDockerfileRefusals(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	for name, tc := range map[string]struct{ df, want string }{
		"RUN":          {"FROM scratch\nCOPY bin/tea /\nRUN chmod +x /tea\n", "line 3 (RUN): RUN needs a container runtime"},
		"ADD URL":      {"FROM scratch\nADD https://example.com/x.tgz /\n", "line 2 (ADD): ADD from a URL"},
		"missing file": {"FROM scratch\nCOPY nothere /\n", `line 2 (COPY): source "nothere" matches nothing`},
		"ignored file": {"FROM scratch\nCOPY .env /\n", `source ".env" matches nothing`},
		"escape":       {"FROM scratch\nCOPY ../../etc/passwd /\n", `source "../../etc/passwd" matches nothing`},
		"two stages":   {"FROM scratch\nFROM scratch\n", "multi-stage builds are not supported"},
		"chown names":  {"FROM scratch\nCOPY --chown=app bin/tea /\n", "--chown=app is not numeric"},
		"no FROM":      {"ARG X=1\n", "no FROM"},
		"before FROM":  {"ENV A=1\nFROM scratch\n", "must come after FROM"},
		"bad port":     {"FROM scratch\nEXPOSE http\n", `"http" is not a port`},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := BuildDockerfile(ctx, DockerfileOptions{ContextDir: writeContext(t, tc.df)})
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("want %q, got %v", tc.want, err)
			}
			if err != nil && strings.Contains(err.Error(), "hunter2") {
				t.Fatalf("error leaks a secret: %v", err)
			}
		})
	}

	t.Run("ADD archive", func(t *testing.T) {
		dir := writeContext(t, "FROM scratch\nADD app.tar.gz /\n")
		if err := os.WriteFile(filepath.Join(dir, "app.tar.gz"), []byte{0x1f, 0x8b, 8, 0}, 0o644); err != nil {
			t.Fatal(err)
		}
		_, err := BuildDockerfile(ctx, DockerfileOptions{ContextDir: dir})
		if err == nil || !strings.Contains(err.Error(), "is an archive, which ADD would unpack") {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("symlink", func(t *testing.T) {
		dir := writeContext(t, "FROM scratch\nCOPY link /\n")
		if err := os.Symlink("/etc/passwd", filepath.Join(dir, "link")); err != nil {
			t.Fatal(err)
		}
		_, err := BuildDockerfile(ctx, DockerfileOptions{ContextDir: dir})
		if err == nil || !strings.Contains(err.Error(), "link is a symbolic link, not a regular file") {
			t.Fatalf("got %v", err)
		}
	})
}

func mutateConfigFile(img v1.Image, cf *v1.ConfigFile) (v1.Image, error) {
	return mutate.ConfigFile(img, cf)
}
