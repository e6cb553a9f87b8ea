package promote

import (
	"errors"
	"strings"
	"testing"
)

var teaRef = Reference{
	Repository: "127.0.0.1:5000/shop/tea",
	Digest:     "sha256:" + strings.Repeat("ab", 32),
}

func TestEditKustomizeImages(t *testing.T) {
	in := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
# the service and its config
resources:
  - deployment.yaml
images:
  - name: coffee
    newTag: v3
  - name: tea # promoted by Slipway
    newName: old.example.com/tea
    newTag: v1
`
	out, err := Edit("apps/tea/kustomization.yaml", []byte(in), "tea", teaRef)
	if err != nil {
		t.Fatal(err)
	}
	want := `apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
# the service and its config
resources:
  - deployment.yaml
images:
  - name: coffee
    newTag: v3
  - name: tea # promoted by Slipway
    newName: 127.0.0.1:5000/shop/tea
    digest: sha256:` + strings.Repeat("ab", 32) + `
`
	if string(out) != want {
		t.Fatalf("edited kustomization:\n%s\nwant:\n%s", out, want)
	}
	again, err := Edit("apps/tea/kustomization.yaml", out, "tea", teaRef)
	if err != nil {
		t.Fatal(err)
	}
	if string(again) != string(out) {
		t.Fatalf("a second edit with the same image changed the file:\n%s", again)
	}
}

func TestEditKustomizationWithoutEntryFails(t *testing.T) {
	in := "kind: Kustomization\nimages:\n- name: coffee\n  newTag: v3\n"
	_, err := Edit("kustomization.yaml", []byte(in), "tea", teaRef)
	if !errors.Is(err, ErrNoTarget) || !strings.Contains(err.Error(), `images entry named "tea"`) {
		t.Fatalf("error %v, want ErrNoTarget saying what to add", err)
	}
}

func TestEditSetterMarkers(t *testing.T) {
	in := `apiVersion: apps/v1
kind: Deployment
metadata:
  name: tea
spec:
  template:
    spec:
      initContainers:
      - name: migrate
        image: old.example.com/tea:v1 # {"slipway.dev/image": "tea"}
      containers:
      - name: tea
        image: old.example.com/tea:v1 # {"slipway.dev/image": "tea"}
      - name: sidecar
        image: envoy:v1 # {"slipway.dev/image": "envoy"}
      - name: other
        image: old.example.com/tea:v1 # tea, but not a marker
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: tea-image
data:
  image: "x" # {"slipway.dev/image": "tea"}
`
	out, err := Edit("deploy.yaml", []byte(in), "tea", teaRef)
	if err != nil {
		t.Fatal(err)
	}
	s := string(out)
	if n := strings.Count(s, teaRef.String()+` # {"slipway.dev/image": "tea"}`); n != 3 {
		t.Fatalf("%d marked fields set with their marker kept, want 3:\n%s", n, s)
	}
	for _, keep := range []string{`image: envoy:v1 # {"slipway.dev/image": "envoy"}`, "image: old.example.com/tea:v1 # tea, but not a marker", "\n---\n"} {
		if !strings.Contains(s, keep) {
			t.Fatalf("edit lost %q:\n%s", keep, s)
		}
	}
}

func TestEditErrors(t *testing.T) {
	cases := map[string]struct {
		file, content, want string
	}{
		"no marker":         {"d.yaml", "image: x # just a comment\n", "no place for the image"},
		"broken marker":     {"d.yaml", "image: x # {\"slipway.dev/image\": 3}\n", "must name an image"},
		"marked non-scalar": {"d.yaml", "image: # {\"slipway.dev/image\": \"tea\"}\n  a: b\n", "not a scalar"},
		"not YAML":          {"d.yaml", "a: [\n", "parse d.yaml as YAML"},
		"images not a list": {"kustomization.yaml", "images: {name: tea}\n", "images is not a list"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := Edit(tc.file, []byte(tc.content), "tea", teaRef)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want one containing %q", err, tc.want)
			}
		})
	}
}

func TestParseReference(t *testing.T) {
	if _, err := ParseReference("127.0.0.1:5000/shop/tea:v1"); err == nil {
		t.Fatal("a tag was accepted as a pinned reference")
	}
	r, err := ParseReference(teaRef.String())
	if err != nil || r != teaRef {
		t.Fatalf("ParseReference(%q) = %v, %v", teaRef, r, err)
	}
}

func FuzzEdit(f *testing.F) {
	f.Add("kustomization.yaml", "images:\n- name: tea\n  newTag: v1\n")
	f.Add("d.yaml", "image: x # {\"slipway.dev/image\": \"tea\"}\n")
	f.Fuzz(func(t *testing.T, file, content string) {
		out, err := Edit(file, []byte(content), "tea", teaRef)
		if err != nil {
			return
		}
		// What Edit writes, it must read back as already promoted.
		again, err := Edit(file, out, "tea", teaRef)
		if err != nil || string(again) != string(out) {
			t.Fatalf("edit not idempotent: %v\n%s\n---\n%s", err, out, again)
		}
	})
}
