package manifest

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"sigs.k8s.io/kustomize/api/types"
	sigsyaml "sigs.k8s.io/yaml"
)

// aliasBomb is a billion-laughs document: ten levels of ten aliases each,
// about a kilobyte that stands for 10^10 strings.
func aliasBomb(kind string) string {
	var b strings.Builder
	fmt.Fprintf(&b, "apiVersion: v1\nkind: %s\nmetadata:\n  name: bomb\ndata:\n  l0: &l0 \"lol\"\n", kind)
	for i := 1; i <= 10; i++ {
		fmt.Fprintf(&b, "  l%d: &l%d [", i, i)
		for j := 0; j < 10; j++ {
			if j > 0 {
				b.WriteString(", ")
			}
			fmt.Fprintf(&b, "*l%d", i-1)
		}
		b.WriteString("]\n")
	}
	return b.String()
}

// TestAliasBombIsRefusedCheaply renders a billion-laughs file through both
// renderers and checks that it is refused, naming the file, before it costs
// memory: the whole attempt allocates a few megabytes, where kustomize
// alone drove the server to 24 GB.
func TestAliasBombIsRefusedCheaply(t *testing.T) {
	cases := map[string]map[string][]byte{
		"plain": {"bomb.yaml": []byte(aliasBomb("ConfigMap"))},
		"kustomize": {
			"kustomization.yaml": []byte("resources:\n- bomb.yaml\n"),
			"bomb.yaml":          []byte(aliasBomb("ConfigMap")),
		},
		"kustomization itself": {
			"kustomization.yaml": []byte("resources: [a.yaml]\ncommonAnnotations:\n" + aliasBomb("X")[strings.Index(aliasBomb("X"), "  l0"):]),
			"a.yaml":             []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n"),
		},
	}
	for name, files := range cases {
		t.Run(name, func(t *testing.T) {
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			_, err := Render(files)
			runtime.ReadMemStats(&after)
			if err == nil || !strings.Contains(err.Error(), "alias bomb") {
				t.Fatalf("Render = %v, want an alias bomb refused", err)
			}
			if !strings.Contains(err.Error(), ".yaml") {
				t.Errorf("the error does not name the file: %v", err)
			}
			if alloc := after.TotalAlloc - before.TotalAlloc; alloc > 64<<20 {
				t.Errorf("refusing the bomb allocated %d MiB", alloc>>20)
			}
		})
	}
}

// TestAnchorsStillWork: a manifest that shares values through a few
// anchors renders as before.
func TestAnchorsStillWork(t *testing.T) {
	got := names(t, map[string]string{
		"a.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  labels: &l {app: web}\n  annotations: *l\ndata: {k: v}\n",
	})
	if len(got) != 1 || got[0] != "ConfigMap/a@a.yaml" {
		t.Fatalf("got %v", got)
	}
}

// TestAliasCycleIsRefused: an alias inside the node it names would expand
// forever; it is refused, by the parser or by the check.
func TestAliasCycleIsRefused(t *testing.T) {
	_, err := Render(map[string][]byte{"c.yaml": []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}\ndata: &a {k: [*a]}\n")})
	if err == nil {
		t.Fatal("a self-referencing alias rendered")
	}
}

// TestRemoteKustomizeResourcesAreRefused: a remote resource pointing at a
// server that accepts connections and never answers is refused at once,
// without a connection being made, as are remote git bases (which would
// run git and leave a kustomize-* directory behind).
func TestRemoteKustomizeResourcesAreRefused(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	var connections atomic.Int32
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			connections.Add(1)
			defer c.Close() // a tarpit: never answers
		}
	}()
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)

	stalled := "http://" + ln.Addr().String() + "/manifests/all.yaml"
	for name, ref := range map[string]string{
		"http resource":  stalled,
		"https resource": "https://user:hunter2@git.example.com/raw/all.yaml",
		"git base":       "github.com/kubernetes-sigs/kustomize//examples/helloWorld?ref=v3.3.1",
		"git https base": "https://github.com/org/repo.git//deploy?ref=main",
		"go-getter":      "git::https://example.com/org/repo//base",
		"scp-like":       "git@github.com:org/repo.git",
	} {
		t.Run(name, func(t *testing.T) {
			done := make(chan error, 1)
			go func() {
				_, err := Render(map[string][]byte{
					"kustomization.yaml": []byte("resources:\n- local.yaml\n- " + ref + "\n"),
					"local.yaml":         []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: local}\n"),
				})
				done <- err
			}()
			select {
			case err := <-done:
				if err == nil || !strings.Contains(err.Error(), "is a remote resource") || !strings.Contains(err.Error(), "kustomization.yaml") {
					t.Fatalf("Render = %v, want the remote resource refused", err)
				}
				if strings.Contains(err.Error(), "hunter2") {
					t.Fatalf("the error shows the URL's password: %v", err)
				}
			case <-time.After(time.Minute):
				t.Fatal("Render is still waiting on a remote resource after a minute")
			}
		})
	}
	if n := connections.Load(); n != 0 {
		t.Fatalf("rendering made %d connections to the remote server", n)
	}
	if left, _ := filepath.Glob(filepath.Join(tmp, "kustomize-*")); len(left) > 0 {
		t.Fatalf("rendering left %v behind", left)
	}
	if entries, _ := os.ReadDir(tmp); len(entries) > 0 {
		t.Fatalf("rendering wrote to TMPDIR: %v", entries)
	}
}

// TestLocalReferencesStillWork: kustomizations that refer to files,
// directories and generator sources of the revision render as before,
// including names that contain dots.
func TestLocalReferencesStillWork(t *testing.T) {
	got := names(t, map[string]string{
		"kustomization.yaml":      "resources:\n- base\n- v1.2/extra.yaml\nconfigMapGenerator:\n- name: conf\n  files:\n  - app.properties=config/app.properties\npatches:\n- path: patch.yaml\n",
		"base/kustomization.yaml": "resources:\n- cm.yaml\n",
		"base/cm.yaml":            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\ndata: {k: v}\n",
		"v1.2/extra.yaml":         "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: extra}\n",
		"config/app.properties":   "a=b\n",
		"patch.yaml":              "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: base}\ndata: {k: patched}\n",
	})
	if len(got) != 3 {
		t.Fatalf("got %v", got)
	}
}

func TestHelmChartsAreRefused(t *testing.T) {
	_, err := Render(map[string][]byte{"kustomization.yaml": []byte("helmCharts:\n- name: x\n  repo: https://charts.example.com\n")})
	if err == nil || !strings.Contains(err.Error(), "helmCharts are not supported") {
		t.Fatalf("Render = %v", err)
	}
}

// FuzzKustomizationPrecheck: the pre-check never panics, and what it lets
// through names no URL among the references kustomize loads, unless the
// revision holds a file of that name.
func FuzzKustomizationPrecheck(f *testing.F) {
	f.Add("resources:\n- a.yaml\n- https://x/y\n", "a.yaml")
	f.Add("resources: &r [a]\nbases: *r\n", "a/b.yaml")
	f.Add("configMapGenerator:\n- name: x\n  files: [k=github.com/a/b]\n", "b")
	f.Add("components:\n- ' http://10.0.0.1/c'\n", "c")
	f.Add(aliasBomb("X"), "x.yaml")
	f.Fuzz(func(t *testing.T, kustomization, file string) {
		files := map[string][]byte{"kustomization.yaml": []byte(kustomization)}
		if file != "" {
			files[file] = []byte("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
		}
		if err := checkHostile(files, true); err != nil {
			return
		}
		var k types.Kustomization
		if sigsyaml.Unmarshal([]byte(kustomization), &k) != nil {
			return
		}
		//lint:ignore SA1019 deprecated, but kustomize still loads it
		for _, ref := range append(append(append(k.Resources, k.Bases...), k.Components...), k.Crds...) {
			if strings.Contains(ref, "://") && !inRevision(files, strings.TrimSpace(ref)) {
				t.Fatalf("remote reference %q accepted in:\n%s", ref, kustomization)
			}
		}
	})
}
