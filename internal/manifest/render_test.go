package manifest

import (
	"errors"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

func names(t *testing.T, files map[string]string) []string {
	t.Helper()
	in := map[string][]byte{}
	for k, v := range files {
		in[k] = []byte(v)
	}
	objs, err := Render(in)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, o := range objs {
		out = append(out, o.GetKind()+"/"+o.GetName()+"@"+Source(o))
	}
	return out
}

func TestRenderPlainDirectory(t *testing.T) {
	got := names(t, map[string]string{
		"b.yaml":         "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: b\n---\n# only a comment\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n",
		"a/nested.yml":   "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: nested\n",
		"c.json":         `{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"json"}}`,
		"list.yaml":      "apiVersion: v1\nkind: List\nitems:\n- apiVersion: v1\n  kind: ConfigMap\n  metadata:\n    name: item\n",
		"README.md":      "# not a manifest",
		"scripts/run.sh": "echo hi",
	})
	want := []string{"ConfigMap/nested@a/nested.yml", "ConfigMap/b@b.yaml", "Secret/s@b.yaml", "ConfigMap/json@c.json", "ConfigMap/item@list.yaml"}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Fatalf("got %v\nwant %v", got, want)
	}
}

func TestRenderKustomization(t *testing.T) {
	got := names(t, map[string]string{
		"kustomization.yaml": "namePrefix: prod-\ncommonLabels:\n  team: cafe\nresources:\n- cm.yaml\n",
		"cm.yaml":            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n",
		"ignored.yaml":       "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: not-listed\n",
	})
	if len(got) != 1 || got[0] != "ConfigMap/prod-settings@kustomization.yaml" {
		t.Fatalf("got %v", got)
	}
}

// TestKustomizeNumbersAreInt64 guards the unstructured contract: numbers are
// int64 or float64, never int, or DeepCopy (which server-side apply calls)
// panics. Plain YAML gives int64; kustomize's own maps give int.
func TestKustomizeNumbersAreInt64(t *testing.T) {
	objs, err := Render(map[string][]byte{
		"kustomization.yaml": []byte("resources:\n- deploy.yaml\nimages:\n- name: tea\n  newName: registry.example.com/tea\n"),
		"deploy.yaml": []byte("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: tea\nspec:\n  replicas: 2\n  template:\n    spec:\n" +
			"      containers:\n      - name: tea\n        image: tea\n        ports:\n        - containerPort: 8080\n"),
	})
	if err != nil {
		t.Fatal(err)
	}
	copied := objs[0].DeepCopy() // panics on an int
	replicas, found, err := unstructured.NestedFieldNoCopy(copied.Object, "spec", "replicas")
	if _, isInt64 := replicas.(int64); !found || err != nil || !isInt64 || replicas != int64(2) {
		t.Fatalf("spec.replicas = %#v (found %v, %v), want int64 2", replicas, found, err)
	}
}

func TestRenderErrorsNameTheFile(t *testing.T) {
	cases := map[string]struct {
		files map[string]string
		want  string
	}{
		"broken yaml":     {map[string]string{"x.yaml": "a: [\n"}, "x.yaml: document 1: invalid YAML"},
		"second document": {map[string]string{"x.yaml": "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n---\nkind: ConfigMap\nmetadata:\n  name: b\n"}, "x.yaml: document 2: object has no apiVersion"},
		"no kind":         {map[string]string{"y.yaml": "apiVersion: v1\nmetadata:\n  name: a\n"}, "y.yaml: document 1: object has no kind"},
		"no name":         {map[string]string{"y.yaml": "apiVersion: v1\nkind: ConfigMap\n"}, "ConfigMap has no metadata.name"},
		"scalar":          {map[string]string{"z.yaml": "just text\n"}, "z.yaml: document 1"},
		"kustomize":       {map[string]string{"kustomization.yaml": "resources:\n- missing.yaml\n"}, "kustomization.yaml: kustomize build failed"},
		"remote base":     {map[string]string{"kustomization.yaml": "resources:\n- https://example.com/base\n"}, "kustomization.yaml: \"https://example.com/base\" is a remote resource"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			in := map[string][]byte{}
			for k, v := range tc.files {
				in[k] = []byte(v)
			}
			_, err := Render(in)
			var rerr *Error
			if !errors.As(err, &rerr) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v, want a manifest.Error containing %q", err, tc.want)
			}
		})
	}
}

func TestDecodeRefusesOversizedDocument(t *testing.T) {
	big := "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: big\ndata:\n  x: " + strings.Repeat("a", MaxDocumentBytes) + "\n"
	_, err := Decode(strings.NewReader(big), "big.yaml")
	if err == nil || !strings.Contains(err.Error(), "big.yaml") {
		t.Fatalf("oversized document: %v", err)
	}
}

func TestStripSource(t *testing.T) {
	objs, err := Decode(strings.NewReader("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"), "a.yaml")
	if err != nil {
		t.Fatal(err)
	}
	StripSource(objs[0])
	if objs[0].GetAnnotations() != nil {
		t.Fatalf("annotations left after strip: %v", objs[0].GetAnnotations())
	}
}

func FuzzDecode(f *testing.F) {
	f.Add([]byte("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n"))
	f.Add([]byte("apiVersion: v1\nkind: List\nitems:\n- {}\n"))
	f.Add([]byte("---\n---\n# c\n"))
	f.Add([]byte(`{"apiVersion":"v1","kind":"Pod","metadata":{"name":"p"}}`))
	f.Add([]byte("a: &x [*x]\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		objs, err := Decode(strings.NewReader(string(data)), "fuzz.yaml")
		if err != nil {
			var rerr *Error
			if !errors.As(err, &rerr) || rerr.File != "fuzz.yaml" {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, o := range objs {
			if o.GetKind() == "" || o.GetAPIVersion() == "" || o.GetName() == "" {
				t.Fatalf("accepted an object without kind, apiVersion or name: %v", o.Object)
			}
		}
	})
}
