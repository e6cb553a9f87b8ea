package policy

import (
	"encoding/binary"
	"math"
	"slices"
	"sort"
	"sync"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/common/operators"
	"github.com/google/cel-go/common/types"
)

// An ops repository repeats itself: the same pod template in many namespaces,
// environments and clusters. The engine therefore remembers the findings of
// an object under a key made of exactly the fields its rules read, and reuses
// them for the next object with equal values in those fields.
//
// The key is derived from the rules, not guessed: every compiled rule is
// analysed for the fields of `object` and the builtin variables it reads
// (readSet), the variables are mapped to the object fields they are computed
// from, and the key is the object's kind plus a canonical encoding of the
// values at those fields. Rules are pure functions of what they read (CEL has
// no clock, randomness or I/O, and parameters are constants of the compiled
// policy), so equal keys give equal findings. Keys are compared byte for byte,
// not by hash, so a collision cannot return another object's findings.
// Waivers depend on the object's name and labels and on the time, so they are
// applied after the lookup, to every object.

// maxCacheBytes bounds the memory the cache holds, counted as the size of its
// keys (about the size of a pod template, a few KiB); when full, arbitrary
// entries are evicted.
const maxCacheBytes = 16 << 20

// maxKeySize bounds one key: an object whose read fields are larger is evaluated
// without the cache.
const maxKeySize = 64 << 10

// fieldPath is a chain of field names from the root of the object; the empty
// path is the whole object.
type fieldPath []string

// ruleRead is one field a rule reads: under `object`, or under a variable.
type ruleRead struct {
	variable string // "" for object
	path     fieldPath
}

// readSet lists what a checked expression reads. A use of `object` or of a
// variable is followed up through field selections, optional selections and
// indexes by a constant string; where the chain stops (a function call, a
// comprehension, an index by a computed value) the whole value at that point
// counts as read. Anything that cannot be followed reads the whole object.
func readSet(ast *cel.Ast) []ruleRead {
	var reads []ruleRead
	idents := celast.MatchDescendants(celast.NavigateAST(ast.NativeRep()), celast.KindMatcher(celast.IdentKind))
	for _, id := range idents {
		switch id.AsIdent() {
		case "object":
			reads = append(reads, ruleRead{path: followFields(id)})
		case "variables":
			path := followFields(id)
			if len(path) == 0 {
				reads = append(reads, ruleRead{}) // the variables as a whole: assume everything
				continue
			}
			reads = append(reads, ruleRead{variable: path[0], path: path[1:]})
		}
		// A comprehension variable named object or variables is read as if it were the
		// real one, which only makes the key larger.
	}
	return reads
}

// followFields returns the constant field chain applied to e.
func followFields(e celast.NavigableExpr) fieldPath {
	var path fieldPath
	cur := e
	for {
		parent, ok := cur.Parent()
		if !ok {
			return path
		}
		switch parent.Kind() {
		case celast.SelectKind:
			sel := parent.AsSelect()
			path = append(path, sel.FieldName())
			if sel.IsTestOnly() {
				return path
			}
		case celast.CallKind:
			call := parent.AsCall()
			args := call.Args()
			switch call.FunctionName() {
			case operators.OptSelect, operators.OptIndex, operators.Index:
			default:
				return path
			}
			if call.IsMemberFunction() || len(args) != 2 || args[0].ID() != cur.ID() || args[1].Kind() != celast.LiteralKind {
				return path
			}
			s, isString := args[1].AsLiteral().(types.String)
			if !isString {
				return path
			}
			path = append(path, string(s))
		default:
			return path
		}
		cur = parent
	}
}

// objectFields maps a rule's reads to fields of an object of the given kind.
// The builtin variables are computed from the pod template, whose place depends
// on the kind (see BuiltinVariables and podView).
func objectFields(reads []ruleRead, kind string, params map[string]bool) []fieldPath {
	steps := podTemplateSteps(kind)
	under := func(base []string, rest fieldPath) fieldPath {
		return append(append(fieldPath{}, base...), rest...)
	}
	var out []fieldPath
	for _, r := range reads {
		switch {
		case r.variable == "":
			out = append(out, r.path)
		case params[r.variable], r.variable == "podSpecPath", r.variable == "podMetadataPath":
			// Constants of the policy, or functions of the kind, which is in every key.
		case r.variable == "podSpec":
			out = append(out, under(append(slices.Clone(steps), "spec"), r.path))
		case r.variable == "podMetadata":
			out = append(out, under(append(slices.Clone(steps), "metadata"), r.path))
		case r.variable == "podLabels":
			out = append(out, under(append(slices.Clone(steps), "metadata", "labels"), r.path))
		case r.variable == "containers", r.variable == "securityContexts", r.variable == "volumes":
			out = append(out, under(append(slices.Clone(steps), "spec"), nil))
		case r.variable == "namespace":
			out = append(out, fieldPath{"metadata", "namespace"})
		default:
			out = append(out, fieldPath{})
		}
	}
	return minimalPaths(out)
}

// minimalPaths sorts paths and drops those under another one: reading a field
// reads everything below it.
func minimalPaths(paths []fieldPath) []fieldPath {
	sort.Slice(paths, func(i, j int) bool { return slices.Compare(paths[i], paths[j]) < 0 })
	var out []fieldPath
	for _, p := range paths {
		if len(out) > 0 && hasPrefix(p, out[len(out)-1]) {
			continue
		}
		out = append(out, p)
	}
	return out
}

func hasPrefix(p, prefix fieldPath) bool {
	return len(p) >= len(prefix) && slices.Equal(p[:len(prefix)], prefix)
}

// kindPlan is how objects of one Kind.group key are evaluated.
//
// Cross-object rules are kept apart from the others: their findings depend on
// the object's neighbours, which no key made of the object's own fields
// captures, so they never go through the cache and are evaluated only where
// the neighbours are known (Evaluate, EvaluateSet, SetEvaluator).
type kindPlan struct {
	rules   []*compiledRule // the rules that read the object alone
	checked []string        // their ids, the ObjectResult.Checked of EvaluateObject
	// keyFields by kind class ("Pod", "CronJob", "PodTemplate", anything else); nil when the
	// rules read the whole object, which leaves nothing worth caching.
	keyFields map[string][]fieldPath
	cacheable map[string]bool

	crossRules []*compiledRule
	allChecked []string // every rule's id in pack order, the Checked of a set evaluation
	// projection by kind class is the fields the cross-object rules read plus
	// the object's identity: all a SetEvaluator keeps of an object until the
	// set is complete. A class that is missing means the whole object.
	projection map[string][]fieldPath
}

// kindClasses are the kinds whose pod template lives in a different place.
var kindClasses = []string{"Pod", "CronJob", "PodTemplate", ""}

func kindClass(kind string) string {
	switch kind {
	case "Pod", "CronJob", "PodTemplate":
		return kind
	}
	return ""
}

func newKindPlan(rules []*compiledRule, params map[string]bool) *kindPlan {
	kp := &kindPlan{keyFields: map[string][]fieldPath{}, cacheable: map[string]bool{}}
	crossFields := map[string][]fieldPath{}
	var reads, crossReads []ruleRead
	for _, r := range rules {
		kp.allChecked = append(kp.allChecked, r.ID)
		if r.CrossObject() {
			kp.crossRules = append(kp.crossRules, r)
			crossReads = append(crossReads, r.reads...)
			continue
		}
		kp.rules = append(kp.rules, r)
		kp.checked = append(kp.checked, r.ID)
		reads = append(reads, r.reads...)
	}
	for _, class := range kindClasses {
		if fields := objectFields(reads, class, params); len(kp.rules) > 0 && !wholeObject(fields) {
			kp.keyFields[class], kp.cacheable[class] = fields, true
		}
		if fields := objectFields(crossReads, class, params); !wholeObject(fields) {
			crossFields[class] = fields
		}
	}
	kp.projection = projectionFields(crossFields)
	return kp
}

// wholeObject reports whether minimal paths include the empty path.
func wholeObject(fields []fieldPath) bool { return len(fields) > 0 && len(fields[0]) == 0 }

// resultCache maps keys to the findings of the rules before waivers.
type resultCache struct {
	mu      sync.Mutex
	entries map[string][]Finding
	bytes   int // sum of the key sizes
	usage   map[string]*cacheUsage
}

// cacheUsage decides, for the objects of one kind, whether keys are worth
// building. A key costs about a quarter of an evaluation, so for objects that
// do not repeat the cache is pure cost. The hit rate is measured per window
// of lookups; below minHitsPerWindow only one object in sparseEvery uses the
// cache during the next window, which keeps measuring and restores full use
// as soon as objects repeat again. Kinds differ (Services repeat where
// Deployments do not), so each has its own.
type cacheUsage struct {
	lookups, hits int
	sparse        bool
	offered       uint64 // objects offered while sparse
}

const (
	cacheWindow      = 1024
	minHitsPerWindow = cacheWindow / 16
	sparseEvery      = 16
)

// use reports whether the next object of kind should be looked up (and stored).
func (c *resultCache) use(kind string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	u := c.usage[kind]
	if u == nil || !u.sparse {
		return true
	}
	u.offered++
	return u.offered%sparseEvery == 0
}

func (c *resultCache) get(kind string, key []byte) ([]Finding, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.entries[string(key)]
	if c.usage == nil {
		c.usage = map[string]*cacheUsage{}
	}
	u := c.usage[kind]
	if u == nil {
		u = &cacheUsage{}
		c.usage[kind] = u
	}
	u.lookups++
	if ok {
		u.hits++
	}
	// Sparse windows hold sparseEvery times fewer lookups; the threshold scales.
	window, minHits := cacheWindow, minHitsPerWindow
	if u.sparse {
		window, minHits = cacheWindow/sparseEvery, minHitsPerWindow/sparseEvery
	}
	if u.lookups >= window {
		u.sparse = u.hits < minHits
		u.lookups, u.hits = 0, 0
	}
	return f, ok
}

func (c *resultCache) put(key []byte, findings []Finding) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.entries == nil {
		c.entries = make(map[string][]Finding)
	}
	if _, present := c.entries[string(key)]; present {
		return
	}
	for k := range c.entries {
		if c.bytes+len(key) <= maxCacheBytes {
			break
		}
		delete(c.entries, k)
		c.bytes -= len(k)
	}
	c.entries[string(key)] = findings
	c.bytes += len(key)
}

// appendKey appends the cache key of obj to buf: the Kind.group key, the kind,
// and the canonical encoding of the value at each field (or of where the path
// stops). ok is false when a value has a type the encoding does not know.
func appendKey(buf []byte, kk, kind string, fields []fieldPath, obj map[string]any) ([]byte, bool) {
	buf = appendString(buf, kk)
	buf = appendString(buf, kind)
	for _, f := range fields {
		var ok bool
		buf, ok = appendField(buf, f, obj)
		if !ok || len(buf) > maxKeySize {
			return buf, false
		}
	}
	return buf, true
}

// Tags of the canonical encoding. Each value is a tag followed by a body whose
// length is known from the tag or written out, so distinct values (including
// values of distinct types) never encode the same.
const (
	tagAbsent byte = iota + 1 // the field is missing at this depth (then the depth)
	tagStop                   // a non-map value where the path continues (the depth, then the value)
	tagNull
	tagFalse
	tagTrue
	tagString
	tagInt64
	tagFloat64
	tagList
	tagMap
	tagInt
)

func appendField(buf []byte, f fieldPath, obj map[string]any) ([]byte, bool) {
	var cur any = obj
	for depth, name := range f {
		m, isMap := cur.(map[string]any)
		if !isMap {
			buf = append(buf, tagStop)
			buf = binary.AppendUvarint(buf, uint64(depth))
			return appendValue(buf, cur)
		}
		v, present := m[name]
		if !present {
			buf = append(buf, tagAbsent)
			return binary.AppendUvarint(buf, uint64(depth)), true
		}
		cur = v
	}
	return appendValue(buf, cur)
}

func appendString(buf []byte, s string) []byte {
	buf = binary.AppendUvarint(buf, uint64(len(s)))
	return append(buf, s...)
}

func appendValue(buf []byte, v any) ([]byte, bool) {
	switch x := v.(type) {
	case nil:
		return append(buf, tagNull), true
	case bool:
		if x {
			return append(buf, tagTrue), true
		}
		return append(buf, tagFalse), true
	case string:
		return appendString(append(buf, tagString), x), true
	case int64:
		return binary.BigEndian.AppendUint64(append(buf, tagInt64), uint64(x)), true
	case int:
		return binary.BigEndian.AppendUint64(append(buf, tagInt), uint64(x)), true
	case float64:
		return binary.BigEndian.AppendUint64(append(buf, tagFloat64), math.Float64bits(x)), true
	case []any:
		buf = binary.AppendUvarint(append(buf, tagList), uint64(len(x)))
		for _, e := range x {
			var ok bool
			if buf, ok = appendValue(buf, e); !ok {
				return buf, false
			}
		}
		return buf, true
	case map[string]any:
		buf = binary.AppendUvarint(append(buf, tagMap), uint64(len(x)))
		// Pod template maps are small: sort their keys without a heap allocation.
		var small [16]string
		keys := small[:0]
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			buf = appendString(buf, k)
			var ok bool
			if buf, ok = appendValue(buf, x[k]); !ok {
				return buf, false
			}
		}
		return buf, true
	}
	return buf, false
}

// decodeValue reads back a value written by appendValue; ok is false on a
// malformed encoding. Strings are copied out of buf.
func decodeValue(buf []byte) (v any, rest []byte, ok bool) {
	if len(buf) == 0 {
		return nil, buf, false
	}
	tag, buf := buf[0], buf[1:]
	switch tag {
	case tagNull:
		return nil, buf, true
	case tagFalse:
		return false, buf, true
	case tagTrue:
		return true, buf, true
	case tagString:
		s, rest, ok := decodeString(buf)
		return s, rest, ok
	case tagInt64, tagInt, tagFloat64:
		if len(buf) < 8 {
			return nil, buf, false
		}
		bits := binary.BigEndian.Uint64(buf)
		switch tag {
		case tagInt64:
			return int64(bits), buf[8:], true
		case tagInt:
			return int(bits), buf[8:], true
		}
		return math.Float64frombits(bits), buf[8:], true
	case tagList, tagMap:
		n, size := binary.Uvarint(buf)
		if size <= 0 || n > uint64(len(buf)) {
			return nil, buf, false
		}
		buf = buf[size:]
		if tag == tagList {
			l := make([]any, n)
			for i := range l {
				if l[i], buf, ok = decodeValue(buf); !ok {
					return nil, buf, false
				}
			}
			return l, buf, true
		}
		m := make(map[string]any, n)
		for range n {
			var k string
			if k, buf, ok = decodeString(buf); !ok {
				return nil, buf, false
			}
			if m[k], buf, ok = decodeValue(buf); !ok {
				return nil, buf, false
			}
		}
		return m, buf, true
	}
	return nil, buf, false
}

func decodeString(buf []byte) (string, []byte, bool) {
	n, size := binary.Uvarint(buf)
	if size <= 0 || n > uint64(len(buf)-size) {
		return "", buf, false
	}
	buf = buf[size:]
	return string(buf[:n]), buf[n:], true
}
