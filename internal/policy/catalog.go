package policy

import (
	"embed"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"slices"
	"sort"
	"strings"

	"sigs.k8s.io/yaml"
)

//go:embed packs/*.yaml
var embeddedPacks embed.FS

// DefaultProfile is the pack `slipway policy check` uses unless told otherwise.
const DefaultProfile = "fin-kr"

// Catalog holds the packs a profile may name: the embedded ones and any an
// organisation adds from files.
type Catalog struct {
	packs map[string]*Pack
}

// NewCatalog returns a catalogue holding the packs shipped in the binary.
func NewCatalog() (*Catalog, error) {
	c := &Catalog{packs: map[string]*Pack{}}
	files, err := fs.Glob(embeddedPacks, "packs/*.yaml")
	if err != nil {
		return nil, fmt.Errorf("listing embedded policy packs: %w", err)
	}
	for _, f := range files {
		data, err := embeddedPacks.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("reading embedded policy pack %s: %w", f, err)
		}
		p, err := ParsePack(data, "embedded:"+path.Base(f))
		if err != nil {
			return nil, err
		}
		if err := c.Add(p); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Add registers a pack. A name may be registered once: an organisation that wants
// a stricter fin-kr writes a pack that extends it under its own name, so the
// auditor always knows which rules a name stands for.
func (c *Catalog) Add(p *Pack) error {
	if old, ok := c.packs[p.Name]; ok {
		return fmt.Errorf("adding policy pack %q from %s: already defined by %s", p.Name, p.source, old.source)
	}
	c.packs[p.Name] = p
	return nil
}

// AddFile reads a pack file and registers it.
func (c *Catalog) AddFile(file string) error {
	data, err := os.ReadFile(file)
	if err != nil {
		return fmt.Errorf("reading policy pack: %w", err)
	}
	p, err := ParsePack(data, file)
	if err != nil {
		return err
	}
	return c.Add(p)
}

// Pack returns a registered pack by name.
func (c *Catalog) Pack(name string) (*Pack, bool) {
	p, ok := c.packs[name]
	return p, ok
}

// PackNames lists the registered packs in name order.
func (c *Catalog) PackNames() []string {
	names := make([]string, 0, len(c.packs))
	for n := range c.packs {
		names = append(names, n)
	}
	sort.Strings(names)
	return names
}

// RuleIDs returns the ids of the rules a profile of the named packs holds,
// resolving the packs without compiling them.
func (c *Catalog) RuleIDs(packs []string) (map[string]bool, error) {
	res, err := c.resolve(packs)
	if err != nil {
		return nil, err
	}
	return res.ruleIDs(), nil
}

// resolved is a set of packs flattened through extends and replaces.
type resolved struct {
	rules  []*Rule
	params []*Parameter
}

func (r *resolved) ruleIDs() map[string]bool {
	ids := make(map[string]bool, len(r.rules))
	for _, rule := range r.rules {
		ids[rule.ID] = true
	}
	return ids
}

// resolve flattens the named packs: parents' rules first, replaced rules removed.
func (c *Catalog) resolve(names []string) (*resolved, error) {
	if len(names) == 0 {
		return nil, errors.New("a profile names at least one policy pack")
	}
	var order []*Pack
	seen := map[string]bool{}
	var visit func(name string, stack []string) error
	visit = func(name string, stack []string) error {
		if slices.Contains(stack, name) {
			return fmt.Errorf("policy pack %q extends itself through %s", name, strings.Join(append(stack, name), " -> "))
		}
		if seen[name] {
			return nil
		}
		p, ok := c.packs[name]
		if !ok {
			return fmt.Errorf("unknown policy pack %q (known: %s)", name, strings.Join(c.PackNames(), ", "))
		}
		for _, parent := range p.Extends {
			if err := visit(parent, append(stack, name)); err != nil {
				return err
			}
		}
		seen[name] = true
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		if err := visit(n, nil); err != nil {
			return nil, err
		}
	}

	res := &resolved{}
	byID := map[string]*Rule{}
	paramByName := map[string]*Parameter{}
	for _, p := range order {
		for i := range p.Parameters {
			prm := &p.Parameters[i]
			if old, ok := paramByName[prm.Name]; ok {
				if old.Type != prm.Type {
					return nil, fmt.Errorf("policy pack %q redeclares parameter %q as %s; it is a %s", p.Name, prm.Name, prm.Type, old.Type)
				}
				// A pack extending another may change a default (a stricter
				// allowlist, say); the position in the list stays the parent's.
				*old = *prm
				continue
			}
			cp := *prm
			paramByName[prm.Name] = &cp
			res.params = append(res.params, &cp)
		}
		for i := range p.Rules {
			r := &p.Rules[i]
			if old, ok := byID[r.ID]; ok {
				return nil, fmt.Errorf("rule %s is defined by both policy pack %q and %q", r.ID, old.pack, r.pack)
			}
			byID[r.ID] = r
			res.rules = append(res.rules, r)
		}
	}
	replaced := map[string]string{}
	for _, r := range res.rules {
		for _, old := range r.Replaces {
			if _, ok := byID[old]; !ok {
				return nil, fmt.Errorf("rule %s (pack %q) replaces %s, which no pack in the profile defines", r.ID, r.pack, old)
			}
			replaced[old] = r.ID
		}
	}
	res.rules = slices.DeleteFunc(res.rules, func(r *Rule) bool { _, gone := replaced[r.ID]; return gone })
	return res, nil
}

// ParametersKind identifies a parameter override file (apiVersion is PackAPIVersion).
const ParametersKind = "PolicyParameters"

// parametersFile is what --params reads: values that override pack defaults.
type parametersFile struct {
	APIVersion string                     `json:"apiVersion"`
	Kind       string                     `json:"kind"`
	Parameters map[string]json.RawMessage `json:"parameters"`
}

// ParseParameters reads a PolicyParameters document. Values are checked against
// the packs' declarations when the profile is compiled.
func ParseParameters(data []byte, source string) (map[string]json.RawMessage, error) {
	var f parametersFile
	if err := yaml.UnmarshalStrict(data, &f); err != nil {
		return nil, fmt.Errorf("reading policy parameters %s: %w", source, err)
	}
	if f.APIVersion != PackAPIVersion || f.Kind != ParametersKind {
		return nil, fmt.Errorf("reading policy parameters %s: apiVersion/kind is %q/%q, want %s/%s", source, f.APIVersion, f.Kind, PackAPIVersion, ParametersKind)
	}
	return f.Parameters, nil
}
