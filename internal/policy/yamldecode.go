package policy

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"reflect"
	"regexp"
	"strconv"
	"strings"
	"unicode/utf8"

	yamlv2 "go.yaml.in/yaml/v2"
)

// decodeYAML converts one YAML document to unstructured content, exactly as
// kubectl's conversion (sigs.k8s.io/yaml.YAMLToJSONStrict, then the API
// machinery's JSON decoding with integers kept as int64) would hand it to the
// API server: YAML 1.1 scalars (yes/on are booleans), duplicate keys refused.
// The checker must see the object the API server sees: two values for
// `privileged` must not let them disagree.
//
// Most manifests are written in a small part of YAML, which decodeYAMLFast
// reads directly, several times faster than the general path. Anything it is
// not sure about, valid or not, goes to decodeYAMLFull, which decodes with the
// same yaml.v2 library sigs.k8s.io/yaml uses and so produces the same values
// and the same errors. One difference, on purpose: keys that are distinct in
// YAML but the same once converted to strings (1 and "1") are refused, where
// the conversion kept one of the two values at random.
func decodeYAML(data []byte) (map[string]any, error) {
	if obj, ok := decodeYAMLFastSafe(data); ok {
		return obj, nil
	}
	return decodeYAMLFull(data)
}

// decodeYAMLFastSafe runs the fast path; a panic in it is a bug, and the
// general path still gives the right answer, so it only means falling back.
func decodeYAMLFastSafe(data []byte) (obj map[string]any, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			obj, ok = nil, false
		}
	}()
	return decodeYAMLFast(data)
}

// decodeYAMLFull decodes with yaml.v2 in strict mode and converts the result
// the way YAMLToJSONStrict and the JSON round trip would, without serializing.
func decodeYAMLFull(data []byte) (obj map[string]any, err error) {
	// The YAML parser is third-party code fed untrusted input; a panic in it must
	// become a bad-input error, not a crash of the controller that called us.
	defer func() {
		if r := recover(); r != nil {
			obj, err = nil, fmt.Errorf("the YAML parser failed on this document: %v", r)
		}
	}()
	var tree any
	if err := yamlv2.UnmarshalStrict(data, &tree); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	var c treeConverter
	v, err := c.convert(tree, 0)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	if m, ok := v.(map[string]any); ok && !c.needJSON {
		return m, nil
	}
	// Values JSON treats specially (NaN and infinities are refused, invalid
	// UTF-8 replaced), extreme nesting, or a document that is not a mapping:
	// go through JSON as before, so the result and error are the same.
	c = treeConverter{keepScalars: true}
	if v, err = c.convert(tree, 0); err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	js, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("invalid YAML: %w", err)
	}
	return decodeJSON(js)
}

// treeConvertMaxDepth is far below the JSON decoder's limit of 10,000 levels;
// deeper documents take the JSON round trip, which reports that limit.
const treeConvertMaxDepth = 1000

// treeConverter turns a yaml.v2 value into JSON-compatible values. Map keys
// become strings as in sigs.k8s.io/yaml's convertToJSONableObject. Unless
// keepScalars is set, scalars also become what encoding/json and
// k8s.io/apimachinery/pkg/util/json would make of them; needJSON reports a
// value for which only the real round trip is certain.
type treeConverter struct {
	keepScalars bool
	needJSON    bool
}

var errKeyCollision = errors.New("two keys of one mapping are the same once converted to strings")

func (c *treeConverter) convert(v any, depth int) (any, error) {
	if depth > treeConvertMaxDepth {
		c.needJSON = true
	}
	switch v := v.(type) {
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, val := range v {
			key, err := yamlKeyString(k, val)
			if err != nil {
				return nil, err
			}
			// yaml.v2 only refuses keys that are equal as YAML values; 1 and "1"
			// both become "1" here, and which value won used to depend on map
			// iteration order. The API server would get either, so refuse.
			if _, dup := m[key]; dup {
				return nil, fmt.Errorf("%w: %q", errKeyCollision, key)
			}
			if !c.keepScalars && !utf8.ValidString(key) {
				c.needJSON = true
			}
			cv, err := c.convert(val, depth+1)
			if err != nil {
				return nil, err
			}
			m[key] = cv
		}
		return m, nil
	case []any:
		s := make([]any, len(v))
		for i, e := range v {
			ce, err := c.convert(e, depth+1)
			if err != nil {
				return nil, err
			}
			s[i] = ce
		}
		return s, nil
	}
	if c.keepScalars {
		return v, nil
	}
	switch v := v.(type) {
	case nil, bool:
		return v, nil
	case string:
		if !utf8.ValidString(v) {
			c.needJSON = true
		}
		return v, nil
	case int:
		return int64(v), nil
	case int64:
		return v, nil
	case uint64:
		return jsonUint(v), nil
	case float64:
		if f, ok := jsonFloat(v); ok {
			return f, nil
		}
	}
	c.needJSON = true
	return v, nil
}

// yamlKeyString converts a yaml.v2 map key to a string exactly as
// sigs.k8s.io/yaml does, including its error for keys it cannot convert.
func yamlKeyString(k, v any) (string, error) {
	switch k := k.(type) {
	case string:
		return k, nil
	case int:
		return strconv.Itoa(k), nil
	case int64:
		return strconv.FormatInt(k, 10), nil
	case float64:
		s := strconv.FormatFloat(k, 'g', -1, 32)
		switch s {
		case "+Inf":
			s = ".inf"
		case "-Inf":
			s = "-.inf"
		case "NaN":
			s = ".nan"
		}
		return s, nil
	case bool:
		if k {
			return "true", nil
		}
		return "false", nil
	}
	return "", fmt.Errorf("unsupported map key of type: %s, key: %+#v, value: %+#v", reflect.TypeOf(k), k, v)
}

// jsonFloat is what decoding encoding/json's rendering of f with integers
// kept yields: an int64 when the text has no fraction and fits, else f.
// NaN and infinities have no rendering (json.Marshal refuses them).
func jsonFloat(f float64) (any, bool) {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return nil, false
	}
	// encoding/json writes floats with 'e' outside [1e-6, 1e21); such text
	// never reads back as an integer.
	if abs := math.Abs(f); abs == 0 || (abs >= 1e-6 && abs < 1e21) {
		var buf [32]byte
		b := strconv.AppendFloat(buf[:0], f, 'f', -1, 64)
		if !containsByte(b, '.') {
			if i, err := strconv.ParseInt(string(b), 10, 64); err == nil {
				return i, true
			}
		}
	}
	// The shortest rendering reads back as f itself.
	return f, true
}

// jsonUint: JSON text of an integer beyond int64 decodes as a float64.
func jsonUint(u uint64) any {
	if u <= math.MaxInt64 {
		return int64(u)
	}
	f, _ := strconv.ParseFloat(strconv.FormatUint(u, 10), 64)
	return f
}

func containsByte(b []byte, c byte) bool {
	for _, x := range b {
		if x == c {
			return true
		}
	}
	return false
}

// plainHint is yaml.v2's resolveTable: the first byte of a plain scalar says
// whether it can be anything but a string.
var plainHint = func() (t [256]byte) {
	t['+'], t['-'] = 'S', 'S'
	for c := '0'; c <= '9'; c++ {
		t[c] = 'D'
	}
	for _, c := range "yYnNtTfFoO~" {
		t[c] = 'M'
	}
	t['.'] = '.'
	return t
}()

// yamlStyleFloat is yaml.v2's pattern for floats.
var yamlStyleFloat = regexp.MustCompile(`^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$`)

// resolvePlain gives the value of an untagged plain scalar as yaml.v2 resolves
// it (resolve with an empty tag) and the JSON round trip then changes it.
// ok is false for values JSON cannot carry (NaN, infinities), which the
// general path turns into its error.
func resolvePlain(s string) (any, bool) {
	if s == "" {
		return nil, true
	}
	hint := plainHint[s[0]]
	if hint == 0 {
		return s, true
	}
	switch s {
	case "y", "Y", "yes", "Yes", "YES", "true", "True", "TRUE", "on", "On", "ON":
		return true, true
	case "n", "N", "no", "No", "NO", "false", "False", "FALSE", "off", "Off", "OFF":
		return false, true
	case "~", "null", "Null", "NULL":
		return nil, true
	case ".nan", ".NaN", ".NAN", ".inf", ".Inf", ".INF", "+.inf", "+.Inf", "+.INF", "-.inf", "-.Inf", "-.INF":
		return nil, false
	}
	if !numberChars(s) {
		// Quantities like 100m and 128Mi: no number syntax below accepts them,
		// and failed parses are costly.
		return s, true
	}
	switch hint {
	case '.':
		if f, err := strconv.ParseFloat(s, 64); err == nil {
			return jsonFloat(f)
		}
	case 'D', 'S':
		// yaml.v2 tries a timestamp first, which it hands over as the original
		// text; timestamps start with four digits and a dash, which no number does.
		if len(s) > 4 && s[4] == '-' && isDigits(s[:4]) {
			return s, true
		}
		plain := s
		if strings.IndexByte(s, '_') >= 0 {
			plain = strings.ReplaceAll(s, "_", "")
		}
		if i, err := strconv.ParseInt(plain, 0, 64); err == nil {
			return i, true
		}
		if u, err := strconv.ParseUint(plain, 0, 64); err == nil {
			return jsonUint(u), true
		}
		if yamlStyleFloat.MatchString(plain) {
			if f, err := strconv.ParseFloat(plain, 64); err == nil {
				return jsonFloat(f)
			}
		}
		if strings.HasPrefix(plain, "0b") {
			if i, err := strconv.ParseInt(plain[2:], 2, 64); err == nil {
				return i, true
			}
			if u, err := strconv.ParseUint(plain[2:], 2, 64); err == nil {
				return jsonUint(u), true
			}
		} else if strings.HasPrefix(plain, "-0b") {
			if i, err := strconv.ParseInt("-"+plain[3:], 2, 64); err == nil {
				return i, true
			}
		}
	}
	return s, true
}

// numberChars reports whether s uses only characters that strconv's integer
// syntax with base prefixes (0x, 0o, 0b, hex digits, signs, underscores) or
// yaml.v2's float pattern can accept.
func numberChars(s string) bool {
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c >= '0' && c <= '9', c >= 'a' && c <= 'f', c >= 'A' && c <= 'F':
		case c == 'x', c == 'X', c == 'o', c == 'O', c == '_', c == '+', c == '-', c == '.':
		default:
			return false
		}
	}
	return true
}

func isDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}
