package policy

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	utiljson "k8s.io/apimachinery/pkg/util/json"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/kyaml/filesys"
)

// DefaultMaxDocumentSize bounds one document. The API server refuses requests
// over 3 MiB, so a bigger manifest cannot be applied anyway; the margin leaves
// room for comments and indentation.
const DefaultMaxDocumentSize = 4 << 20

// StdinPath is the path that means standard input.
const StdinPath = "-"

// ReadOptions configures ReadManifests.
type ReadOptions struct {
	// MaxDocumentSize bounds one document in bytes; 0 means DefaultMaxDocumentSize.
	MaxDocumentSize int
	// Stdin is read for the path "-".
	Stdin io.Reader
}

// Manifest is one object read from input, with where it came from.
type Manifest struct {
	Object map[string]any
	Ref    ObjectRef
}

// ReadManifests streams the objects in paths to fn, one at a time, so input of any
// length is read in memory bounded by the document size limit. A path is a file,
// "-" for stdin, or a directory: a directory holding a kustomization is rendered
// with kustomize, any other is walked for *.yaml, *.yml and *.json files
// (kustomize directories inside it are rendered, hidden entries skipped).
// The first bad document stops reading with an error naming file and document.
func ReadManifests(ctx context.Context, paths []string, opts ReadOptions, fn func(Manifest) error) error {
	if opts.MaxDocumentSize <= 0 {
		opts.MaxDocumentSize = DefaultMaxDocumentSize
	}
	for _, p := range paths {
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == StdinPath {
			if opts.Stdin == nil {
				return errors.New("reading manifests from stdin: no standard input")
			}
			if err := readStream(ctx, opts.Stdin, "<stdin>", opts.MaxDocumentSize, fn); err != nil {
				return err
			}
			continue
		}
		info, err := os.Stat(p)
		if err != nil {
			return fmt.Errorf("reading manifests: %w", err)
		}
		if !info.IsDir() {
			if err := readFile(ctx, p, opts.MaxDocumentSize, fn); err != nil {
				return err
			}
			continue
		}
		if err := readDir(ctx, p, opts.MaxDocumentSize, fn); err != nil {
			return err
		}
	}
	return nil
}

var kustomizationFiles = []string{"kustomization.yaml", "kustomization.yml", "Kustomization"}

func isKustomization(dir string) bool {
	for _, name := range kustomizationFiles {
		if _, err := os.Stat(filepath.Join(dir, name)); err == nil {
			return true
		}
	}
	return false
}

func readDir(ctx context.Context, root string, limit int, fn func(Manifest) error) error {
	return filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("reading manifests from %s: %w", path, err)
		}
		if path != root && strings.HasPrefix(d.Name(), ".") {
			if d.IsDir() {
				return filepath.SkipDir
			}
			return nil
		}
		if d.IsDir() {
			if isKustomization(path) {
				if err := renderKustomization(ctx, path, fn); err != nil {
					return err
				}
				return filepath.SkipDir
			}
			return nil
		}
		switch strings.ToLower(filepath.Ext(path)) {
		case ".yaml", ".yml", ".json":
			return readFile(ctx, path, limit, fn)
		}
		return nil
	})
}

// renderKustomization builds dir as `kustomize build` would, without plugins or
// loading files outside dir, and hands over the rendered objects.
func renderKustomization(ctx context.Context, dir string, fn func(Manifest) error) error {
	k := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := k.Run(filesys.MakeFsOnDisk(), dir)
	if err != nil {
		return fmt.Errorf("rendering kustomization %s: %w", dir, err)
	}
	source := dir + " (kustomize)"
	for i, r := range resources.Resources() {
		if err := ctx.Err(); err != nil {
			return err
		}
		obj, err := r.Map()
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", source, i+1, err)
		}
		if err := emitObject(obj, ObjectRef{File: source, Document: i + 1}, fn); err != nil {
			return err
		}
	}
	return nil
}

func readFile(ctx context.Context, path string, limit int, fn func(Manifest) error) error {
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading manifests: %w", err)
	}
	defer f.Close()
	return readStream(ctx, f, path, limit, fn)
}

// sniffSize is how much of a stream is inspected to refuse binary input, the way
// git and grep decide a file is binary.
const sniffSize = 8000

func readStream(ctx context.Context, r io.Reader, source string, limit int, fn func(Manifest) error) error {
	br := bufio.NewReaderSize(r, 64<<10)
	head, err := br.Peek(sniffSize)
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, bufio.ErrBufferFull) {
		return fmt.Errorf("reading manifests from %s: %w", source, err)
	}
	if bytes.IndexByte(head, 0) >= 0 {
		return fmt.Errorf("reading manifests from %s: this is a binary file, not YAML or JSON", source)
	}
	if first := bytes.TrimLeft(head, " \t\r\n\ufeff"); len(first) > 0 && first[0] == '{' {
		return readJSONStream(ctx, br, source, limit, fn)
	}
	return splitDocuments(br, source, limit, func(doc rawDocument) error {
		if err := ctx.Err(); err != nil {
			return err
		}
		obj, err := decodeYAML(doc.data)
		if err != nil {
			return fmt.Errorf("%s: document %d (line %d): %w", source, doc.index, doc.line, err)
		}
		return emitObject(obj, ObjectRef{File: source, Document: doc.index, Line: doc.line}, fn)
	})
}

func decodeJSON(js []byte) (map[string]any, error) {
	trimmed := bytes.TrimSpace(js)
	if len(trimmed) == 0 || trimmed[0] != '{' {
		return nil, errors.New("not a Kubernetes object: the document is not a mapping")
	}
	var obj map[string]any
	// utiljson keeps integers as int64, as the API machinery does, so CEL sees ints.
	if err := utiljson.Unmarshal(js, &obj); err != nil {
		return nil, fmt.Errorf("invalid object: %w", err)
	}
	return obj, nil
}

type countingReader struct {
	r       io.Reader
	n, max  int
	tripped bool
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.n >= c.max {
		c.tripped = true
		return 0, errDocumentTooLarge
	}
	if len(p) > c.max-c.n {
		p = p[:c.max-c.n]
	}
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}

var errDocumentTooLarge = errors.New("document too large")

func readJSONStream(ctx context.Context, r io.Reader, source string, limit int, fn func(Manifest) error) error {
	// The decoder reads ahead of the value it decodes, so the budget per value is
	// the limit plus one read buffer; the exact size is checked after decoding.
	cr := &countingReader{r: r, max: limit + 64<<10}
	dec := json.NewDecoder(cr)
	for index := 1; ; index++ {
		if err := ctx.Err(); err != nil {
			return err
		}
		cr.n = 0
		start := dec.InputOffset()
		var raw json.RawMessage
		err := dec.Decode(&raw)
		if errors.Is(err, io.EOF) {
			return nil
		}
		if cr.tripped || (err == nil && int(dec.InputOffset()-start) > limit) {
			return fmt.Errorf("%s: document %d: larger than the limit of %d bytes", source, index, limit)
		}
		if err != nil {
			return fmt.Errorf("%s: document %d: invalid JSON: %w", source, index, err)
		}
		obj, err := decodeJSON(raw)
		if err != nil {
			return fmt.Errorf("%s: document %d: %w", source, index, err)
		}
		if err := emitObject(obj, ObjectRef{File: source, Document: index}, fn); err != nil {
			return err
		}
	}
}

// emitObject checks that obj is a Kubernetes object and hands it over; a List
// is unpacked into its items, as kubectl does.
func emitObject(obj map[string]any, ref ObjectRef, fn func(Manifest) error) error {
	if err := checkObject(obj); err != nil {
		return fmt.Errorf("%s: document %d: %w", ref.File, ref.Document, err)
	}
	kind, _ := obj["kind"].(string)
	if items, ok := obj["items"].([]any); ok && strings.HasSuffix(kind, "List") {
		for i, it := range items {
			item, ok := it.(map[string]any)
			if !ok {
				return fmt.Errorf("%s: document %d: item %d of the %s is not an object", ref.File, ref.Document, i+1, kind)
			}
			if err := checkObject(item); err != nil {
				return fmt.Errorf("%s: document %d: item %d of the %s: %w", ref.File, ref.Document, i+1, kind, err)
			}
			if err := fn(Manifest{Object: item, Ref: ref}); err != nil {
				return err
			}
		}
		return nil
	}
	return fn(Manifest{Object: obj, Ref: ref})
}

func checkObject(obj map[string]any) error {
	for _, field := range []string{"apiVersion", "kind"} {
		v, ok := obj[field]
		if !ok {
			return fmt.Errorf("not a Kubernetes object: %s is missing", field)
		}
		if s, ok := v.(string); !ok || s == "" {
			return fmt.Errorf("not a Kubernetes object: %s must be a non-empty string", field)
		}
	}
	if md, ok := obj["metadata"]; ok {
		if _, ok := md.(map[string]any); !ok {
			return errors.New("not a Kubernetes object: metadata must be a mapping")
		}
	}
	return nil
}

// rawDocument is one YAML document of a stream.
type rawDocument struct {
	data  []byte
	index int // 1-based, counting documents with content only
	line  int // 1-based line of the document's first line
}

// splitDocuments cuts a YAML stream at `---` lines, holding at most one document
// (bounded by limit) in memory. Documents holding only comments or blank lines
// are skipped and not counted. Lines are read straight into one document
// buffer, reused from document to document, which fn must not keep.
func splitDocuments(r io.Reader, source string, limit int, fn func(rawDocument) error) error {
	br, ok := r.(*bufio.Reader)
	if !ok {
		br = bufio.NewReader(r)
	}
	var (
		doc        []byte
		line       = 0
		start      = 1
		index      = 0
		hasContent bool
	)
	flush := func() error {
		defer func() { doc = doc[:0]; hasContent = false; start = line + 1 }()
		if !hasContent {
			return nil
		}
		index++
		return fn(rawDocument{data: doc, index: index, line: start})
	}
	for {
		lineStart := len(doc)
		var err error
		for {
			var chunk []byte
			chunk, err = br.ReadSlice('\n')
			if len(doc)+len(chunk) > limit {
				return fmt.Errorf("%s: document %d (line %d): larger than the limit of %d bytes", source, index+1, start, limit)
			}
			doc = append(doc, chunk...)
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("reading manifests from %s: %w", source, err)
		}
		if l := doc[lineStart:]; len(l) > 0 {
			line++
			if isSeparator(l) {
				doc = doc[:lineStart]
				if ferr := flush(); ferr != nil {
					return ferr
				}
			} else if !hasContent && lineHasContent(l) {
				hasContent = true
			}
		}
		if errors.Is(err, io.EOF) {
			return flush()
		}
	}
}

func isSeparator(l []byte) bool {
	if !bytes.HasPrefix(l, []byte("---")) {
		return false
	}
	rest := bytes.TrimSpace(l[3:])
	return len(rest) == 0 || rest[0] == '#'
}

func lineHasContent(l []byte) bool {
	t := bytes.TrimSpace(l)
	return len(t) > 0 && t[0] != '#' && !bytes.Equal(t, []byte("..."))
}
