package manifest

import (
	"bytes"
	"errors"
	"fmt"
	"net/url"
	"path"
	"strings"

	"go.yaml.in/yaml/v3"
	"sigs.k8s.io/kustomize/api/types"
	sigsyaml "sigs.k8s.io/yaml"
)

// MaxExpandedBytes bounds how large the YAML files of one revision that use
// aliases may become once the aliases are expanded, counting each scalar's
// bytes and one per collection node. Parsing keeps an alias as a pointer,
// but the renderers copy and serialise what it points to, so a kilobyte of
// nested aliases ("a billion laughs") becomes gigabytes. Files without
// aliases are bounded by their size alone and are not counted; manifests
// with a few anchors stay far below this.
const MaxExpandedBytes = 32 << 20

// checkHostile runs, before any renderer sees the files, the checks that
// keep a revision's cost bounded by its size: the YAML files with aliases
// together expand to at most MaxExpandedBytes, and a kustomization
// refers only to files of the revision, never to a URL or a remote git
// base (kustomize would fetch those with no deadline or size limit, from
// any address the server can reach, and run git for the bases).
func checkHostile(files map[string][]byte, kustomize bool) error {
	budget := int64(MaxExpandedBytes)
	for name, content := range files {
		if !kustomize && !isManifestFile(name) {
			continue
		}
		n, err := ExpandedSize(content, budget)
		if err != nil {
			return &Error{File: name, Err: err}
		}
		budget -= n
	}
	if !kustomize {
		return nil
	}
	for name, content := range files {
		if !isKustomizationFile(name) {
			continue
		}
		if err := checkKustomizationRefs(files, name, content); err != nil {
			return err
		}
	}
	return nil
}

func isManifestFile(name string) bool {
	switch strings.ToLower(path.Ext(name)) {
	case ".yaml", ".yml", ".json":
		return true
	}
	return false
}

func isKustomizationFile(name string) bool {
	base := path.Base(name)
	for _, k := range kustomizationFiles {
		if base == k {
			return true
		}
	}
	return false
}

// ExpandedSize parses every YAML document of content, keeping aliases
// unexpanded, and returns the size the documents stand for with their
// aliases expanded (scalar bytes plus one per node). It fails when that is
// more than budget or an alias refers to a node containing itself. Content
// without an alias counts nothing: its size bounds it. Content that is not
// YAML counts what parsed before the error: the renderer reports the rest.
func ExpandedSize(content []byte, budget int64) (int64, error) {
	if !bytes.Contains(content, []byte("*")) {
		return 0, nil // no alias can occur without an asterisk
	}
	dec := yaml.NewDecoder(bytes.NewReader(content))
	e := &expansion{budget: budget}
	var total int64
	for doc := 1; ; doc++ {
		var root yaml.Node
		if err := dec.Decode(&root); err != nil {
			return total, nil // io.EOF, or a syntax error the renderer reports
		}
		e.sizes, e.open = map[*yaml.Node]int64{}, map[*yaml.Node]bool{}
		n, err := e.size(&root)
		if err != nil {
			return 0, fmt.Errorf("document %d: %w", doc, err)
		}
		total += n
		if e.budget -= n; e.budget < 0 {
			return 0, fmt.Errorf("document %d: %w", doc, errAliasBomb)
		}
	}
}

var errAliasBomb = fmt.Errorf("YAML aliases expand to more than %d MiB in the revision: refused as an alias bomb", MaxExpandedBytes>>20)

// expansion measures what a tree stands for with aliases expanded,
// remembering each node's size so shared subtrees are measured once.
type expansion struct {
	budget int64
	sizes  map[*yaml.Node]int64
	open   map[*yaml.Node]bool
}

func (e *expansion) size(n *yaml.Node) (int64, error) {
	if n == nil {
		return 0, nil
	}
	if s, ok := e.sizes[n]; ok {
		return s, nil
	}
	if e.open[n] {
		return 0, errors.New("a YAML alias refers to a node that contains it")
	}
	e.open[n] = true
	defer delete(e.open, n)
	total := 1 + int64(len(n.Value))
	if n.Kind == yaml.AliasNode {
		s, err := e.size(n.Alias)
		if err != nil {
			return 0, err
		}
		total = s
	}
	for _, c := range n.Content {
		s, err := e.size(c)
		if err != nil {
			return 0, err
		}
		// Stop once over the budget, so the sum cannot overflow.
		if total += s; total > e.budget {
			return 0, errAliasBomb
		}
	}
	e.sizes[n] = total
	return total, nil
}

// checkKustomizationRefs refuses entries of the kustomization at name that
// kustomize would load from outside the revision.
func checkKustomizationRefs(files map[string][]byte, name string, content []byte) error {
	var k types.Kustomization
	if err := sigsyaml.Unmarshal(content, &k); err != nil {
		return nil // kustomize reports the syntax error with its own words
	}
	var refs []string
	refs = append(refs, k.Resources...)
	//lint:ignore SA1019 deprecated, but kustomize still loads it
	refs = append(refs, k.Bases...)
	refs = append(refs, k.Components...)
	refs = append(refs, k.Crds...)
	refs = append(refs, k.Configurations...)
	refs = append(refs, k.Generators...)
	refs = append(refs, k.Transformers...)
	refs = append(refs, k.Validators...)
	if p := k.OpenAPI["path"]; p != "" {
		refs = append(refs, p)
	}
	for _, p := range k.Patches {
		refs = append(refs, p.Path)
	}
	//lint:ignore SA1019 deprecated, but kustomize still loads it
	for _, p := range k.PatchesJson6902 {
		refs = append(refs, p.Path)
	}
	//lint:ignore SA1019 deprecated, but kustomize still loads it
	for _, p := range k.PatchesStrategicMerge {
		refs = append(refs, string(p))
	}
	for _, r := range k.Replacements {
		refs = append(refs, r.Path)
	}
	for _, g := range append(k.ConfigMapGenerator, secretArgs(k.SecretGenerator)...) {
		refs = append(append(refs, g.EnvSources...), g.EnvSource)
		for _, f := range g.FileSources {
			// "key=path" names the file under another key.
			if _, file, ok := strings.Cut(f, "="); ok {
				f = file
			}
			refs = append(refs, f)
		}
	}
	if len(k.HelmCharts) > 0 || len(k.HelmChartInflationGenerator) > 0 {
		return &Error{File: name, Err: errors.New("helmCharts are not supported: render the chart into the repository (helm template) and commit the result")}
	}
	dir := path.Dir(name)
	for _, ref := range refs {
		if ref = strings.TrimSpace(ref); ref == "" || strings.Contains(ref, "\n") {
			continue // inline patches and generator configs are YAML, not references
		}
		if isRemoteRef(ref) && !inRevision(files, path.Join(dir, ref)) {
			return &Error{File: name, Err: fmt.Errorf("%q is a remote resource: kustomizations may refer only to files of the revision (vendor it into the repository, or deploy it with an Application of its own)", RedactRef(ref))}
		}
	}
	return nil
}

// isRemoteRef reports whether kustomize would fetch ref rather than read
// it: a URL, a go-getter style git address, or a path whose first element
// is a host name (github.com/org/repo//dir?ref=v1).
func isRemoteRef(ref string) bool {
	if strings.Contains(ref, "://") || strings.HasPrefix(ref, "git::") || strings.HasPrefix(ref, "git@") || strings.HasPrefix(ref, "gh:") {
		return true
	}
	if strings.Contains(ref, "?ref=") || strings.Contains(ref, "?version=") || strings.Contains(ref, "//") {
		return true
	}
	first, _, _ := strings.Cut(ref, "/")
	return first != "." && first != ".." && strings.Contains(first, ".") && strings.Contains(ref, "/") && !strings.HasPrefix(first, ".")
}

// inRevision reports whether p names a file or a directory of the revision.
func inRevision(files map[string][]byte, p string) bool {
	p = path.Clean(p)
	if _, ok := files[p]; ok {
		return true
	}
	prefix := p + "/"
	if p == "." {
		prefix = ""
	}
	for name := range files {
		if strings.HasPrefix(name, prefix) {
			return true
		}
	}
	return false
}

// RedactRef removes credentials from a reference before it is shown.
func RedactRef(ref string) string {
	if u, err := url.Parse(ref); err == nil && u.User != nil {
		u.User = nil
		return u.String()
	}
	return ref
}

func secretArgs(secrets []types.SecretArgs) []types.ConfigMapArgs {
	out := make([]types.ConfigMapArgs, len(secrets))
	for i, s := range secrets {
		out[i] = types.ConfigMapArgs{GeneratorArgs: s.GeneratorArgs}
	}
	return out
}
