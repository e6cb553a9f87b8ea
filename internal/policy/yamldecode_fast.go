package policy

import (
	"strings"
	"unicode/utf8"
)

// decodeYAMLFast reads the part of YAML that manifests are written in and
// returns ok=false for everything else, valid or not, so that decodeYAML can
// hand it to the general path. Accepted, it must produce exactly what yaml.v2
// in strict mode and the JSON round trip produce; the differential tests and
// FuzzDecodeYAMLEquivalent hold it to that.
//
// Accepted: a block mapping at column 0; block mappings and sequences nested
// by spaces, including sequences at their key's indentation; single-line flow
// mappings and sequences; single-line plain, single-quoted and double-quoted
// scalars; comments and blank lines. Refused: tabs, CR, BOM and other
// characters YAML treats specially; anchors, aliases, tags, merge keys;
// complex keys; block scalars (| and >); multi-line scalars and flows; keys
// that are not strings; duplicate keys; NaN and infinities; document markers
// and directives; nesting deeper than fastMaxDepth.
func decodeYAMLFast(data []byte) (map[string]any, bool) {
	if !fastYAMLChars(data) {
		return nil, false
	}
	// One conversion for the whole document; scalars are substrings of it.
	p := fastYAML{s: string(data)}
	if !p.seekContent(0) || p.eof || p.ind != 0 {
		return nil, false
	}
	m, ok := p.blockMapping(0)
	if !ok || !p.eof {
		return nil, false
	}
	return m, true
}

// plainKey resolves a plain scalar used as a key; ok is false unless it is a
// string. Most keys are plain words, which resolve to themselves: those are
// returned without boxing them as resolvePlain's result would.
func plainKey(s string) (string, bool) {
	if s != "" && plainHint[s[0]] == 0 {
		return s, true
	}
	v, ok := resolvePlain(s)
	str, isString := v.(string)
	return str, ok && isString
}

// fastMaxDepth bounds nesting, far below the limits of yaml.v2 and JSON.
const fastMaxDepth = 200

// maxSimpleKey is below the 1024 characters libyaml allows between the start
// of an implicit key and its colon.
const maxSimpleKey = 1000

// fastYAMLChars accepts printable ASCII and newlines, and valid UTF-8 other
// than the characters YAML reads as line breaks (U+0085, U+2028, U+2029), the
// byte order mark and those it refuses as control characters.
func fastYAMLChars(data []byte) bool {
	for i := 0; i < len(data); {
		c := data[i]
		if c < utf8.RuneSelf {
			if (c < 0x20 && c != '\n') || c == 0x7f {
				return false
			}
			i++
			continue
		}
		r, size := utf8.DecodeRune(data[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return false
		case r < 0xa0, r == 0x2028, r == 0x2029, r == 0xfeff, r >= 0xd800 && r < 0xe000, r == 0xfffe, r == 0xffff:
			return false
		}
		i += size
	}
	return true
}

// fastYAML is the state of decodeYAMLFast: the current content line (the next
// line that is neither blank nor only a comment) is described by ind, its
// indentation, and cur, the offset of its first non-space byte.
type fastYAML struct {
	s     string
	ind   int
	cur   int
	eof   bool
	depth int
}

// at returns the byte at i, or 0 past the end (the input holds no NUL).
func (p *fastYAML) at(i int) byte {
	if i < len(p.s) {
		return p.s[i]
	}
	return 0
}

func (p *fastYAML) skipSpaces(i int) int {
	for i < len(p.s) && p.s[i] == ' ' {
		i++
	}
	return i
}

// seekContent moves to the first content line starting at or after offset i,
// which is the start of a line. It fails on lines starting with a document
// marker, which the stream splitter leaves in only in odd cases.
func (p *fastYAML) seekContent(i int) bool {
	s := p.s
	for i < len(s) {
		j := p.skipSpaces(i)
		if j == len(s) {
			break
		}
		switch s[j] {
		case '\n':
			i = j + 1
			continue
		case '#':
			k := strings.IndexByte(s[j:], '\n')
			if k < 0 {
				i = len(s)
				continue
			}
			i = j + k + 1
			continue
		}
		if j == i && (strings.HasPrefix(s[i:], "---") || strings.HasPrefix(s[i:], "...")) {
			return false
		}
		p.ind, p.cur = j-i, j
		return true
	}
	p.eof, p.ind, p.cur = true, -1, len(s)
	return true
}

// endLine checks that only spaces and a comment follow offset i on its line
// and moves to the next content line.
func (p *fastYAML) endLine(i int) bool {
	s := p.s
	j := p.skipSpaces(i)
	switch {
	case j == len(s):
		return p.seekContent(j)
	case s[j] == '\n':
		return p.seekContent(j + 1)
	case s[j] == '#' && j > 0 && s[j-1] == ' ':
		k := strings.IndexByte(s[j:], '\n')
		if k < 0 {
			return p.seekContent(len(s))
		}
		return p.seekContent(j + k + 1)
	}
	return false
}

func (p *fastYAML) isSeqEntry(i int) bool {
	if p.at(i) != '-' {
		return false
	}
	c := p.at(i + 1)
	return c == ' ' || c == '\n' || c == 0
}

// plainStart reports whether a plain scalar may start at i. It is stricter
// than YAML: '?' and ':' never start one here.
func (p *fastYAML) plainStart(i int) bool {
	switch p.at(i) {
	case 0, ' ', '\n', '?', ':', ',', '[', ']', '{', '}', '#', '&', '*', '!', '|', '>', '\'', '"', '%', '@', '`':
		return false
	case '-':
		c := p.at(i + 1)
		return c != ' ' && c != '\n' && c != 0
	}
	return true
}

// scanPlain scans a plain scalar on one line as libyaml does: it ends at a
// line break, before " #", before ": " or a colon ending the line, and in flow
// context before any of ",?[]{}". It returns the end of its text (trailing
// spaces excluded), where scanning stopped, and whether that is a colon.
func (p *fastYAML) scanPlain(i int, flow bool) (end, stop int, colon bool) {
	s := p.s
	end = i
	for i < len(s) {
		switch c := s[i]; c {
		case '\n':
			return end, i, false
		case ' ':
			j := p.skipSpaces(i)
			if j == len(s) || s[j] == '\n' || s[j] == '#' {
				return end, j, false
			}
			i = j
			continue
		case ':':
			if n := p.at(i + 1); n == ' ' || n == '\n' || n == 0 {
				return end, i, true
			}
		case ',', '?', '[', ']', '{', '}':
			if flow {
				return end, i, false
			}
		}
		i++
		end = i
	}
	return end, i, false
}

// quoted reads a single- or double-quoted scalar that ends on its line and
// returns its value and the offset after the closing quote.
func (p *fastYAML) quoted(i int) (string, int, bool) {
	s := p.s
	q := s[i]
	start := i + 1
	var buf []byte // only when an escape makes the value differ from the text
	for j := start; j < len(s); {
		c := s[j]
		switch {
		case c == '\n':
			return "", 0, false
		case c == q && q == '\'' && p.at(j+1) == '\'':
			if buf == nil {
				buf = append(make([]byte, 0, j-start+16), s[start:j]...)
			}
			buf = append(buf, '\'')
			j += 2
			continue
		case c == q:
			if buf == nil {
				return s[start:j], j + 1, true
			}
			return string(buf), j + 1, true
		case c == '\\' && q == '"':
			if buf == nil {
				buf = append(make([]byte, 0, j-start+16), s[start:j]...)
			}
			var ok bool
			if buf, j, ok = p.escape(buf, j); !ok {
				return "", 0, false
			}
			continue
		}
		if buf != nil {
			buf = append(buf, c)
		}
		j++
	}
	return "", 0, false
}

// escape appends the character of the escape sequence at i (a backslash) the
// way libyaml decodes it; a backslash ending the line (a continuation) fails.
func (p *fastYAML) escape(buf []byte, i int) ([]byte, int, bool) {
	var r rune
	digits := 0
	switch p.at(i + 1) {
	case '0':
		r = 0
	case 'a':
		r = '\a'
	case 'b':
		r = '\b'
	case 't':
		r = '\t'
	case 'n':
		r = '\n'
	case 'v':
		r = '\v'
	case 'f':
		r = '\f'
	case 'r':
		r = '\r'
	case 'e':
		r = 0x1b
	case ' ', '"', '\'', '\\':
		r = rune(p.s[i+1])
	case 'N':
		r = 0x85
	case '_':
		r = 0xa0
	case 'L':
		r = 0x2028
	case 'P':
		r = 0x2029
	case 'x':
		digits = 2
	case 'u':
		digits = 4
	case 'U':
		digits = 8
	default:
		return nil, 0, false
	}
	i += 2
	if digits > 0 {
		v := 0
		for k := 0; k < digits; k++ {
			c := p.at(i + k)
			switch {
			case c >= '0' && c <= '9':
				v = v<<4 | int(c-'0')
			case c >= 'a' && c <= 'f':
				v = v<<4 | int(c-'a'+10)
			case c >= 'A' && c <= 'F':
				v = v<<4 | int(c-'A'+10)
			default:
				return nil, 0, false
			}
		}
		if (v >= 0xd800 && v <= 0xdfff) || v > 0x10ffff {
			return nil, 0, false
		}
		r = rune(v)
		i += digits
	}
	return utf8.AppendRune(buf, r), i, true
}

// key reads a mapping key at i: a plain or quoted scalar followed by a colon
// and a space or the end of the line. It returns the offset after the colon;
// isKey is false when i holds no key (a scalar for the caller to read), ok is
// false when the key is outside the subset.
func (p *fastYAML) key(i int) (key string, next int, isKey, ok bool) {
	var stop int
	switch c := p.at(i); {
	case c == '\'' || c == '"':
		v, j, ok := p.quoted(i)
		if !ok {
			return "", 0, false, false
		}
		j = p.skipSpaces(j)
		if n := p.at(j + 1); p.at(j) != ':' || (n != ' ' && n != '\n' && n != 0) {
			return "", 0, false, true
		}
		key, stop = v, j
	case p.plainStart(i) && c != '-':
		end, j, colon := p.scanPlain(i, false)
		if !colon {
			return "", 0, false, true
		}
		s, ok := plainKey(p.s[i:end])
		if !ok {
			return "", 0, false, false
		}
		key, stop = s, j
	default:
		return "", 0, false, true
	}
	if stop-i > maxSimpleKey || key == "<<" {
		return "", 0, false, false
	}
	return key, stop + 1, true, true
}

// blockMapping reads a block mapping whose first key is at p.cur and whose
// keys are at column indent. It returns at the first content line indented
// less, or at the end.
func (p *fastYAML) blockMapping(indent int) (map[string]any, bool) {
	if p.depth++; p.depth > fastMaxDepth {
		return nil, false
	}
	defer func() { p.depth-- }()
	m := make(map[string]any)
	for {
		k, next, isKey, ok := p.key(p.cur)
		if !ok || !isKey {
			return nil, false
		}
		if _, dup := m[k]; dup {
			return nil, false
		}
		var v any
		j := p.skipSpaces(next)
		if c := p.at(j); c == 0 || c == '\n' || c == '#' {
			// The value is on the following lines, or null.
			if !p.endLine(j) {
				return nil, false
			}
			switch {
			case !p.eof && p.ind > indent:
				if p.isSeqEntry(p.cur) {
					v, ok = p.blockSequence(p.ind, false)
				} else {
					v, ok = p.blockMapping(p.ind)
				}
			case !p.eof && p.ind == indent && p.isSeqEntry(p.cur):
				v, ok = p.blockSequence(indent, true)
			}
		} else {
			v, ok = p.inline(j)
		}
		if !ok {
			return nil, false
		}
		m[k] = v
		switch {
		case p.eof || p.ind < indent:
			return m, true
		case p.ind > indent:
			return nil, false
		}
	}
}

// blockSequence reads a block sequence whose entries are at column indent.
// compact is set for a sequence at the indentation of the key it belongs to,
// which ends at the first line of that indentation that is not an entry.
func (p *fastYAML) blockSequence(indent int, compact bool) ([]any, bool) {
	if p.depth++; p.depth > fastMaxDepth {
		return nil, false
	}
	defer func() { p.depth-- }()
	var seq []any
	for {
		j := p.skipSpaces(p.cur + 1)
		if c := p.at(j); c == 0 || c == '\n' || c == '#' || p.isSeqEntry(j) {
			// An empty entry, one on the following lines, or a nested
			// sequence on the same line.
			return nil, false
		}
		_, _, isKey, ok := p.key(j)
		if !ok {
			return nil, false
		}
		var v any
		if isKey {
			// A mapping starting on the entry's line; its keys line up with the first.
			col := p.ind + (j - p.cur)
			p.ind, p.cur = col, j
			v, ok = p.blockMapping(col)
		} else {
			v, ok = p.inline(j)
		}
		if !ok {
			return nil, false
		}
		seq = append(seq, v)
		switch {
		case p.eof || p.ind < indent:
			return seq, true
		case p.ind > indent:
			return nil, false
		case !p.isSeqEntry(p.cur):
			if compact {
				return seq, true
			}
			return nil, false
		}
	}
}

// inline reads a value that fits on the rest of the line at i (a scalar or a
// flow collection) and moves to the next content line.
func (p *fastYAML) inline(i int) (any, bool) {
	var (
		v    any
		stop int
		ok   bool
	)
	switch c := p.at(i); {
	case c == '{' || c == '[' || c == '\'' || c == '"':
		v, stop, ok = p.flowNode(i)
	case p.plainStart(i):
		var end int
		var colon bool
		end, stop, colon = p.scanPlain(i, false)
		if colon {
			return nil, false
		}
		v, ok = resolvePlain(p.s[i:end])
	}
	if !ok || !p.endLine(stop) {
		return nil, false
	}
	return v, true
}

// flowNode reads a node inside or starting a flow collection on one line and
// returns where it ends.
func (p *fastYAML) flowNode(i int) (any, int, bool) {
	switch p.at(i) {
	case '{':
		return p.flowMapping(i)
	case '[':
		return p.flowSequence(i)
	case '\'', '"':
		return p.quoted(i)
	}
	if !p.plainStart(i) {
		return nil, 0, false
	}
	end, stop, _ := p.scanPlain(i, true)
	v, ok := resolvePlain(p.s[i:end])
	return v, stop, ok
}

func (p *fastYAML) flowMapping(i int) (any, int, bool) {
	if p.depth++; p.depth > fastMaxDepth {
		return nil, 0, false
	}
	defer func() { p.depth-- }()
	m := make(map[string]any)
	j := p.skipSpaces(i + 1)
	if p.at(j) == '}' {
		return m, j + 1, true
	}
	for {
		var k string
		start := j
		switch c := p.at(j); {
		case c == '\'' || c == '"':
			v, e, ok := p.quoted(j)
			if !ok {
				return nil, 0, false
			}
			// After a quoted key in flow context a colon is the value
			// indicator even without a space.
			if j = p.skipSpaces(e); p.at(j) != ':' {
				return nil, 0, false
			}
			k = v
		case p.plainStart(j):
			end, stop, colon := p.scanPlain(j, true)
			if !colon {
				return nil, 0, false
			}
			s, ok := plainKey(p.s[j:end])
			if !ok {
				return nil, 0, false
			}
			k, j = s, stop
		default:
			return nil, 0, false
		}
		if j-start > maxSimpleKey || k == "<<" {
			return nil, 0, false
		}
		if _, dup := m[k]; dup {
			return nil, 0, false
		}
		j = p.skipSpaces(j + 1)
		if c := p.at(j); c == ',' || c == '}' {
			return nil, 0, false
		}
		v, e, ok := p.flowNode(j)
		if !ok {
			return nil, 0, false
		}
		m[k] = v
		j = p.skipSpaces(e)
		switch p.at(j) {
		case ',':
			j = p.skipSpaces(j + 1)
			if p.at(j) == '}' {
				return nil, 0, false
			}
		case '}':
			return m, j + 1, true
		default:
			return nil, 0, false
		}
	}
}

func (p *fastYAML) flowSequence(i int) (any, int, bool) {
	if p.depth++; p.depth > fastMaxDepth {
		return nil, 0, false
	}
	defer func() { p.depth-- }()
	seq := []any{}
	j := p.skipSpaces(i + 1)
	if p.at(j) == ']' {
		return seq, j + 1, true
	}
	for {
		if c := p.at(j); c == ',' || c == ']' {
			return nil, 0, false
		}
		v, e, ok := p.flowNode(j)
		if !ok {
			return nil, 0, false
		}
		seq = append(seq, v)
		j = p.skipSpaces(e)
		switch p.at(j) {
		case ',':
			j = p.skipSpaces(j + 1)
			if p.at(j) == ']' {
				return nil, 0, false
			}
		case ']':
			return seq, j + 1, true
		default:
			return nil, 0, false
		}
	}
}
