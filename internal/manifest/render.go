// Package manifest turns the files of a revision into Kubernetes objects:
// plain YAML/JSON read recursively, or a kustomization built in memory.
package manifest

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	utiljson "k8s.io/apimachinery/pkg/util/json"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/types"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// MaxDocumentBytes bounds one YAML document; larger ones are refused rather
// than parsed, so a runaway file cannot exhaust the controller's memory.
const MaxDocumentBytes = 4 << 20

// SourceAnnotation is set (in memory only) on rendered objects to the file
// they came from, so later errors can name it. Strip before applying.
const SourceAnnotation = "slipway.dev/source-file"

// kustomizationFiles are the names kustomize recognises at a directory's root.
var kustomizationFiles = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

// Error names the file (and document) that could not be rendered.
type Error struct {
	File     string
	Document int // 1-based; 0 when the error is about the whole file
	Err      error
}

func (e *Error) Error() string {
	if e.Document > 0 {
		return fmt.Sprintf("%s: document %d: %v", e.File, e.Document, e.Err)
	}
	return fmt.Sprintf("%s: %v", e.File, e.Err)
}

func (e *Error) Unwrap() error { return e.Err }

// Render builds the objects described by files (paths relative to the
// application's directory). A kustomization at the root wins; otherwise every
// .yaml, .yml and .json file is read, in path order.
func Render(files map[string][]byte) ([]*unstructured.Unstructured, error) {
	for _, name := range kustomizationFiles {
		if _, ok := files[name]; ok {
			if err := checkHostile(files, true); err != nil {
				return nil, err
			}
			return renderKustomization(files, name)
		}
	}
	if err := checkHostile(files, false); err != nil {
		return nil, err
	}
	return renderPlain(files)
}

func renderPlain(files map[string][]byte) ([]*unstructured.Unstructured, error) {
	names := make([]string, 0, len(files))
	for name := range files {
		switch strings.ToLower(path.Ext(name)) {
		case ".yaml", ".yml", ".json":
			names = append(names, name)
		}
	}
	sort.Strings(names)
	var objs []*unstructured.Unstructured
	for _, name := range names {
		docs, err := Decode(bytes.NewReader(files[name]), name)
		if err != nil {
			return nil, err
		}
		objs = append(objs, docs...)
	}
	return objs, nil
}

// Decode reads a multi-document YAML or JSON stream. Empty documents are
// skipped; a List is expanded into its items.
func Decode(r io.Reader, file string) ([]*unstructured.Unstructured, error) {
	reader := utilyaml.NewYAMLReader(bufio.NewReader(newLimitedReader(r)))
	var objs []*unstructured.Unstructured
	for doc := 1; ; doc++ {
		raw, err := reader.Read()
		if errors.Is(err, io.EOF) {
			return objs, nil
		}
		if err != nil {
			return nil, &Error{File: file, Document: doc, Err: err}
		}
		if len(raw) > MaxDocumentBytes {
			return nil, &Error{File: file, Document: doc, Err: fmt.Errorf("document is %d bytes, over the %d byte limit", len(raw), MaxDocumentBytes)}
		}
		if len(bytes.TrimSpace(stripComments(raw))) == 0 {
			continue
		}
		decoded, err := decodeDocument(raw)
		if err != nil {
			return nil, &Error{File: file, Document: doc, Err: err}
		}
		for _, obj := range decoded {
			setSource(obj, file)
		}
		objs = append(objs, decoded...)
	}
}

func decodeDocument(raw []byte) ([]*unstructured.Unstructured, error) {
	var content map[string]any
	if err := utilyaml.Unmarshal(raw, &content); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	if content == nil {
		return nil, errors.New("document is not a YAML mapping")
	}
	obj := &unstructured.Unstructured{Object: content}
	if obj.IsList() {
		list, err := obj.ToList()
		if err != nil {
			return nil, fmt.Errorf("invalid List: %w", err)
		}
		out := make([]*unstructured.Unstructured, 0, len(list.Items))
		for i := range list.Items {
			if err := validate(&list.Items[i]); err != nil {
				return nil, fmt.Errorf("item %d: %w", i, err)
			}
			out = append(out, &list.Items[i])
		}
		return out, nil
	}
	if err := validate(obj); err != nil {
		return nil, err
	}
	return []*unstructured.Unstructured{obj}, nil
}

func validate(obj *unstructured.Unstructured) error {
	switch {
	case obj.GetAPIVersion() == "":
		return errors.New("object has no apiVersion")
	case obj.GetKind() == "":
		return errors.New("object has no kind")
	case obj.GetName() == "":
		return fmt.Errorf("%s has no metadata.name", obj.GetKind())
	}
	return nil
}

func renderKustomization(files map[string][]byte, kustomization string) ([]*unstructured.Unstructured, error) {
	fs := filesys.MakeFsInMemory()
	for name, content := range files {
		if err := fs.WriteFile("/app/"+name, content); err != nil {
			return nil, &Error{File: name, Err: fmt.Errorf("loading into kustomize: %w", err)}
		}
	}
	opts := krusty.MakeDefaultOptions()
	// Remote bases and plugins would fetch or execute outside any deadline.
	opts.PluginConfig = types.DisabledPluginConfig()
	resMap, err := krusty.MakeKustomizer(opts).Run(fs, "/app")
	if err != nil {
		return nil, &Error{File: kustomization, Err: fmt.Errorf("kustomize build failed: %s", strings.ReplaceAll(err.Error(), "/app/", ""))}
	}
	var objs []*unstructured.Unstructured
	for _, res := range resMap.Resources() {
		// Through JSON rather than res.Map(): kustomize's maps hold Go ints,
		// which unstructured content must not (DeepCopy panics on them); the
		// API machinery's decoder gives int64, as for plain YAML files.
		js, err := res.MarshalJSON()
		if err != nil {
			return nil, &Error{File: kustomization, Err: err}
		}
		var m map[string]any
		if err := utiljson.Unmarshal(js, &m); err != nil {
			return nil, &Error{File: kustomization, Err: err}
		}
		obj := &unstructured.Unstructured{Object: m}
		if err := validate(obj); err != nil {
			return nil, &Error{File: kustomization, Err: err}
		}
		setSource(obj, kustomization)
		objs = append(objs, obj)
	}
	return objs, nil
}

func setSource(obj *unstructured.Unstructured, file string) {
	ann := obj.GetAnnotations()
	if ann == nil {
		ann = map[string]string{}
	}
	ann[SourceAnnotation] = file
	obj.SetAnnotations(ann)
}

// Source returns the file an object was rendered from.
func Source(obj *unstructured.Unstructured) string {
	return obj.GetAnnotations()[SourceAnnotation]
}

// StripSource removes the in-memory source annotation before an object is applied.
func StripSource(obj *unstructured.Unstructured) {
	ann := obj.GetAnnotations()
	if _, ok := ann[SourceAnnotation]; !ok {
		return
	}
	delete(ann, SourceAnnotation)
	if len(ann) == 0 {
		ann = nil
	}
	obj.SetAnnotations(ann)
}

// stripComments drops whole-line comments so a document of only comments counts as empty.
func stripComments(raw []byte) []byte {
	var out bytes.Buffer
	for _, line := range bytes.Split(raw, []byte("\n")) {
		if t := bytes.TrimSpace(line); len(t) > 0 && t[0] != '#' {
			out.Write(line)
			out.WriteByte('\n')
		}
	}
	return out.Bytes()
}

// limitedReader fails instead of buffering an unbounded single line (the YAML
// reader splits on lines, so one huge line would otherwise be read whole).
type limitedReader struct {
	r       io.Reader
	sinceNL int
}

func newLimitedReader(r io.Reader) io.Reader { return &limitedReader{r: r} }

func (l *limitedReader) Read(p []byte) (int, error) {
	n, err := l.r.Read(p)
	for _, b := range p[:n] {
		if b == '\n' {
			l.sinceNL = 0
			continue
		}
		l.sinceNL++
		if l.sinceNL > MaxDocumentBytes {
			return 0, fmt.Errorf("a line is longer than the %d byte document limit", MaxDocumentBytes)
		}
	}
	return n, err
}
