package policy

import (
	"bufio"
	"encoding/json"
	"io"
	"strconv"
	"unicode/utf8"
)

// WriteJSON writes the report as indented JSON: exactly what encoding/json's
// Encoder with SetIndent("", "  ") writes (TestWriteJSONMatchesEncoder), but
// one result at a time. The Encoder builds the whole document and then indents
// it, which for a large check costs as much as reading the manifests and holds
// the report twice in memory.
func (r *Report) WriteJSON(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	buf := make([]byte, 0, 4096)
	buf = append(buf, "{\n  \"profile\": "...)
	buf = appendJSONString(buf, r.Profile)
	summary, err := json.MarshalIndent(r.Summary, "  ", "  ")
	if err != nil {
		return err
	}
	buf = append(buf, ",\n  \"summary\": "...)
	buf = append(buf, summary...)
	if len(r.Unchecked) > 0 {
		unchecked, err := json.MarshalIndent(r.Unchecked, "  ", "  ")
		if err != nil {
			return err
		}
		buf = append(buf, ",\n  \"unchecked\": "...)
		buf = append(buf, unchecked...)
	}
	buf = append(buf, ",\n  \"results\": "...)
	switch {
	case r.Results == nil:
		buf = append(buf, "null"...)
	case len(r.Results) == 0:
		buf = append(buf, "[]"...)
	default:
		buf = append(buf, "[\n"...)
		for i := range r.Results {
			if i > 0 {
				buf = append(buf, ",\n"...)
			}
			buf = append(buf, "    "...)
			if buf, err = appendResultJSON(buf, &r.Results[i]); err != nil {
				return err
			}
			if len(buf) > 32<<10 {
				if _, err := bw.Write(buf); err != nil {
					return err
				}
				buf = buf[:0]
			}
		}
		buf = append(buf, "\n  ]"...)
	}
	buf = append(buf, "\n}\n"...)
	if _, err := bw.Write(buf); err != nil {
		return err
	}
	return bw.Flush()
}

// appendResultJSON appends one element of "results", indented at depth 2.
func appendResultJSON(buf []byte, res *ObjectResult) ([]byte, error) {
	for _, f := range res.Findings {
		if f.Waiver != nil {
			// Waived findings are rare; the encoder writes their waiver.
			out, err := json.MarshalIndent(res, "    ", "  ")
			return append(buf, out...), err
		}
	}
	const in = "\n      " // a field of the result's members
	o := &res.Object
	buf = append(buf, "{\n      \"object\": {"...)
	buf = appendJSONField(buf, in+"  ", "apiVersion", o.APIVersion, false)
	buf = appendJSONField(buf, in+"  ", "kind", o.Kind, true)
	if o.Namespace != "" {
		buf = appendJSONField(buf, in+"  ", "namespace", o.Namespace, true)
	}
	buf = appendJSONField(buf, in+"  ", "name", o.Name, true)
	if o.File != "" {
		buf = appendJSONField(buf, in+"  ", "file", o.File, true)
	}
	for _, f := range []struct {
		name  string
		value int
	}{{"document", o.Document}, {"line", o.Line}} {
		if f.value != 0 {
			buf = append(buf, ","+in+"  \""...)
			buf = append(buf, f.name...)
			buf = append(buf, "\": "...)
			buf = strconv.AppendInt(buf, int64(f.value), 10)
		}
	}
	buf = append(buf, in+"},"+in+"\"checked\": "...)
	switch {
	case res.Checked == nil:
		buf = append(buf, "null"...)
	case len(res.Checked) == 0:
		buf = append(buf, "[]"...)
	default:
		buf = append(buf, '[')
		for i, id := range res.Checked {
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, in+"  "...)
			buf = appendJSONString(buf, id)
		}
		buf = append(buf, in+"]"...)
	}
	if len(res.Findings) > 0 {
		buf = append(buf, ","+in+"\"findings\": ["...)
		for i := range res.Findings {
			f := &res.Findings[i]
			if i > 0 {
				buf = append(buf, ',')
			}
			buf = append(buf, in+"  {"...)
			buf = appendJSONField(buf, in+"    ", "rule", f.Rule, false)
			buf = appendJSONField(buf, in+"    ", "severity", string(f.Severity), true)
			buf = appendJSONField(buf, in+"    ", "outcome", string(f.Outcome), true)
			if f.Path != "" {
				buf = appendJSONField(buf, in+"    ", "path", f.Path, true)
			}
			buf = appendJSONField(buf, in+"    ", "message", f.Message, true)
			buf = append(buf, in+"  }"...)
		}
		buf = append(buf, in+"]"...)
	}
	return append(buf, "\n    }"...), nil
}

// appendJSONField appends `"name": "value"` on a new line at indent, after a comma
// unless it is the first field.
func appendJSONField(buf []byte, indent, name, value string, comma bool) []byte {
	if comma {
		buf = append(buf, ',')
	}
	buf = append(buf, indent...)
	buf = append(buf, '"')
	buf = append(buf, name...)
	buf = append(buf, "\": "...)
	return appendJSONString(buf, value)
}

const hexDigits = "0123456789abcdef"

// appendJSONString quotes s as encoding/json does with HTML escaping on:
// <, > and & as \u003c..., U+2028 and U+2029 escaped, invalid UTF-8 as \ufffd.
func appendJSONString(buf []byte, s string) []byte {
	buf = append(buf, '"')
	start := 0
	for i := 0; i < len(s); {
		if b := s[i]; b < utf8.RuneSelf {
			if b >= 0x20 && b != '"' && b != '\\' && b != '<' && b != '>' && b != '&' {
				i++
				continue
			}
			buf = append(buf, s[start:i]...)
			switch b {
			case '\\', '"':
				buf = append(buf, '\\', b)
			case '\b':
				buf = append(buf, '\\', 'b')
			case '\f':
				buf = append(buf, '\\', 'f')
			case '\n':
				buf = append(buf, '\\', 'n')
			case '\r':
				buf = append(buf, '\\', 'r')
			case '\t':
				buf = append(buf, '\\', 't')
			default:
				buf = append(buf, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xF])
			}
			i++
			start = i
			continue
		}
		c, size := utf8.DecodeRuneInString(s[i:])
		if c == utf8.RuneError && size == 1 {
			buf = append(buf, s[start:i]...)
			buf = append(buf, `\ufffd`...)
			i += size
			start = i
			continue
		}
		if c == '\u2028' || c == '\u2029' {
			buf = append(buf, s[start:i]...)
			buf = append(buf, '\\', 'u', '2', '0', '2', hexDigits[c&0xF])
			i += size
			start = i
			continue
		}
		i += size
	}
	buf = append(buf, s[start:]...)
	return append(buf, '"')
}
