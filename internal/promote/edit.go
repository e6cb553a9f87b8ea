package promote

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"path"
	"strings"

	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/kustomize/kyaml/yaml"
)

// SetterKey is the key of the setter marker: a line comment holding a JSON
// object that names the image a field carries, for example
//
//	image: registry.example.com/shop/tea:v1 # {"slipway.dev/image": "tea"}
//
// Promote replaces the value of every field so marked for the image with
// the new reference pinned by digest. The marker is JSON, not free text,
// so it is parsed rather than pattern-matched, and a comment that merely
// mentions the image is never taken for one.
const SetterKey = "slipway.dev/image"

// ErrNoTarget means the file holds neither a kustomize images entry nor a
// setter marker for the image: nothing would change in the cluster, which
// is a configuration mistake and not a success.
var ErrNoTarget = errors.New("no place for the image in the file")

// Edit returns content with the image called imageName set to ref, a
// reference pinned by digest ("registry/repo@sha256:…"). A kustomization
// file (named kustomization.yaml, kustomization.yml or Kustomization, or of
// kind Kustomization) has the images entry named imageName set to newName
// and digest, with any newTag removed, since a tag next to a digest only
// misleads the reader. Any other file has the fields marked with a setter
// comment for imageName set to ref. Comments, key order and sequence
// indentation are kept. The edit is structural (kyaml): the YAML is parsed,
// the node changed and the document written back. When the file already
// names ref, content is returned as it is, so that formatting kyaml would
// normalise never makes a commit of its own.
func Edit(filePath string, content []byte, imageName string, ref Reference) ([]byte, error) {
	rw := &kio.ByteReadWriter{
		Reader: bytes.NewReader(content),
		// The writer reads the indentation style back from a reader
		// annotation, and removes the annotations before writing.
		PreserveSeqIndent: true,
	}
	nodes, err := rw.Read()
	if err != nil {
		return nil, fmt.Errorf("parse %s as YAML: %w", filePath, err)
	}
	var found, changed int
	for _, n := range nodes {
		var f, c int
		if isKustomization(filePath, n) {
			f, c, err = setKustomizeImage(n, imageName, ref)
		} else {
			f, c, err = setMarkedFields(n.YNode(), imageName, ref.String())
		}
		if err != nil {
			return nil, fmt.Errorf("edit %s: %w", filePath, err)
		}
		found += f
		changed += c
	}
	if found == 0 {
		return nil, fmt.Errorf("edit %s: %w: add an images entry named %q to the kustomization, or mark the field with # {%q: %q}",
			filePath, ErrNoTarget, imageName, SetterKey, imageName)
	}
	if changed == 0 {
		return content, nil
	}
	var out bytes.Buffer
	rw.Writer = &out
	if err := rw.Write(nodes); err != nil {
		return nil, fmt.Errorf("write %s back as YAML: %w", filePath, err)
	}
	return out.Bytes(), nil
}

func isKustomization(filePath string, n *yaml.RNode) bool {
	switch path.Base(filePath) {
	case "kustomization.yaml", "kustomization.yml", "Kustomization":
		return true
	}
	return n.GetKind() == "Kustomization"
}

// setKustomizeImage sets the images entry named name and returns how many
// entries it found and how many it changed (0 or 1 each).
func setKustomizeImage(kust *yaml.RNode, name string, ref Reference) (found, changed int, err error) {
	images, err := kust.Pipe(yaml.Lookup("images"))
	if err != nil {
		return 0, 0, fmt.Errorf("look up images: %w", err)
	}
	if images == nil {
		return 0, 0, nil
	}
	if images.YNode().Kind != yaml.SequenceNode {
		return 0, 0, errors.New("images is not a list")
	}
	entry, err := images.Pipe(yaml.MatchElement("name", name))
	if err != nil {
		return 0, 0, fmt.Errorf("look up images entry %q: %w", name, err)
	}
	if entry == nil {
		return 0, 0, nil
	}
	if scalar(entry, "newName") == ref.Repository && scalar(entry, "digest") == ref.Digest && entry.Field("newTag") == nil {
		return 1, 0, nil
	}
	for _, f := range []yaml.Filter{
		yaml.SetField("newName", yaml.NewStringRNode(ref.Repository)),
		yaml.SetField("digest", yaml.NewStringRNode(ref.Digest)),
		yaml.Clear("newTag"),
	} {
		if _, err := entry.Pipe(f); err != nil {
			return 0, 0, fmt.Errorf("set images entry %q: %w", name, err)
		}
	}
	return 1, 1, nil
}

func scalar(n *yaml.RNode, field string) string {
	f := n.Field(field)
	if f == nil || f.Value == nil {
		return ""
	}
	return f.Value.YNode().Value
}

// setMarkedFields walks the document and sets every scalar field whose
// line comment is a setter marker for name, returning how many it found
// and how many it changed.
func setMarkedFields(n *yaml.Node, name, value string) (found, changed int, err error) {
	add := func(f, c int, err error) error {
		found += f
		changed += c
		return err
	}
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			if err := add(setMarkedFields(c, name, value)); err != nil {
				return 0, 0, err
			}
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			// The comment sits on the value for "key: value # marker" and
			// on the key when the value starts on the next line.
			marked := false
			for _, comment := range []string{val.LineComment, key.LineComment} {
				m, err := markerFor(comment, name)
				if err != nil {
					return 0, 0, fmt.Errorf("field %s (line %d): %w", key.Value, key.Line, err)
				}
				marked = marked || m
			}
			if !marked {
				if err := add(setMarkedFields(val, name, value)); err != nil {
					return 0, 0, err
				}
				continue
			}
			if val.Kind != yaml.ScalarNode {
				return 0, 0, fmt.Errorf("field %s (line %d) is marked for image %q but is not a scalar", key.Value, key.Line, name)
			}
			found++
			if val.Value != value {
				val.Value, val.Tag, val.Style = value, yaml.NodeTagString, 0
				changed++
			}
		}
	}
	return found, changed, nil
}

// markerFor reports whether comment is a setter marker for name. Comments
// that are not JSON objects are ordinary comments; a JSON object with the
// setter key whose value is not a string is a broken marker and an error,
// so that a typo does not silently stop promotion.
func markerFor(comment, name string) (bool, error) {
	text := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(comment), "#"))
	if !strings.HasPrefix(text, "{") {
		return false, nil
	}
	var fields map[string]json.RawMessage
	if err := json.Unmarshal([]byte(text), &fields); err != nil {
		return false, nil
	}
	raw, ok := fields[SetterKey]
	if !ok {
		return false, nil
	}
	var marked string
	if err := json.Unmarshal(raw, &marked); err != nil || marked == "" {
		return false, fmt.Errorf("setter marker %s must name an image as a non-empty string", comment)
	}
	return marked == name, nil
}

// Current returns the digests the file names now for the image called
// imageName, the way Edit would find its place: the kustomization's images
// entry, or the fields marked for it. A reference without a digest (a tag)
// gives none.
func Current(filePath string, content []byte, imageName string) ([]string, error) {
	nodes, err := (&kio.ByteReader{Reader: bytes.NewReader(content)}).Read()
	if err != nil {
		return nil, fmt.Errorf("parse %s as YAML: %w", filePath, err)
	}
	var digests []string
	add := func(d string) {
		if d != "" {
			digests = append(digests, d)
		}
	}
	for _, n := range nodes {
		if isKustomization(filePath, n) {
			images, err := n.Pipe(yaml.Lookup("images"))
			if err != nil || images == nil || images.YNode().Kind != yaml.SequenceNode {
				continue
			}
			if entry, err := images.Pipe(yaml.MatchElement("name", imageName)); err == nil && entry != nil {
				add(scalar(entry, "digest"))
			}
			continue
		}
		values, err := markedValues(n.YNode(), imageName)
		if err != nil {
			return nil, fmt.Errorf("read %s: %w", filePath, err)
		}
		for _, v := range values {
			if _, d, ok := strings.Cut(v, "@"); ok {
				add(d)
			}
		}
	}
	return digests, nil
}

// markedValues returns the values of the fields marked for name.
func markedValues(n *yaml.Node, name string) ([]string, error) {
	var out []string
	switch n.Kind {
	case yaml.DocumentNode, yaml.SequenceNode:
		for _, c := range n.Content {
			v, err := markedValues(c, name)
			if err != nil {
				return nil, err
			}
			out = append(out, v...)
		}
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			key, val := n.Content[i], n.Content[i+1]
			marked := false
			for _, comment := range []string{val.LineComment, key.LineComment} {
				m, err := markerFor(comment, name)
				if err != nil {
					return nil, err
				}
				marked = marked || m
			}
			if marked && val.Kind == yaml.ScalarNode {
				out = append(out, val.Value)
				continue
			}
			v, err := markedValues(val, name)
			if err != nil {
				return nil, err
			}
			out = append(out, v...)
		}
	}
	return out, nil
}
