package pipeline

import (
	"bytes"
	"io"
	"sort"
)

// Mask replaces secret values in step output.
const Mask = "***"

// maskingWriter replaces every occurrence of a secret in what is written
// through it. A process writes in arbitrary chunks, so a secret can arrive
// split across two writes: bytes that could still be the start of a
// secret are held back until the next write or Close decides.
type maskingWriter struct {
	w       io.Writer
	secrets [][]byte
	pending []byte
}

// newMaskingWriter masks secrets (empty ones and duplicates are ignored)
// in what it passes on to w. Close flushes what is held back.
func newMaskingWriter(w io.Writer, secrets []string) *maskingWriter {
	m := &maskingWriter{w: w}
	seen := map[string]bool{}
	for _, s := range secrets {
		if s != "" && !seen[s] {
			seen[s] = true
			m.secrets = append(m.secrets, []byte(s))
		}
	}
	// Longest first, so that a secret containing another is masked whole.
	sort.Slice(m.secrets, func(i, j int) bool { return len(m.secrets[i]) > len(m.secrets[j]) })
	return m
}

func (m *maskingWriter) Write(p []byte) (int, error) {
	m.pending = append(m.pending, p...)
	if err := m.flush(false); err != nil {
		return 0, err
	}
	return len(p), nil
}

// Close writes out what was held back.
func (m *maskingWriter) Close() error { return m.flush(true) }

func (m *maskingWriter) flush(final bool) error {
	var out bytes.Buffer
	buf := m.pending
	i := 0
scan:
	for i < len(buf) {
		rest := buf[i:]
		// Held first: "hunter2" may yet turn out to be "hunter2-long".
		if !final {
			for _, s := range m.secrets {
				if len(rest) < len(s) && bytes.HasPrefix(s, rest) {
					break scan
				}
			}
		}
		for _, s := range m.secrets {
			if bytes.HasPrefix(rest, s) {
				out.WriteString(Mask)
				i += len(s)
				continue scan
			}
		}
		out.WriteByte(buf[i])
		i++
	}
	m.pending = append(m.pending[:0], buf[i:]...)
	if out.Len() == 0 {
		return nil
	}
	_, err := m.w.Write(out.Bytes())
	return err
}
