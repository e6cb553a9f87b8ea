package policy

import (
	"regexp/syntax"
	"slices"
	"strings"
	"unicode/utf8"
)

// A rule's pattern usually names words (registries, image names, credential
// names) that any match must contain, and most strings contain none of them;
// Go's regexp takes microseconds to say so, a substring search nanoseconds.
// literalPrefilter derives those words from the parsed pattern so the native
// `matches` skips the regexp when none occurs. It only ever answers "cannot
// match" when that follows from the pattern's structure; FuzzLiteralPrefilter
// checks it against regexp.

// requiredLiterals is a set of strings of which every match contains one.
type requiredLiterals struct {
	words []string // lower-cased when fold
	fold  bool     // matched ignoring ASCII case
}

// literalPrefilter returns a function that reports whether s may match pattern,
// or nil when the pattern requires no literal.
func literalPrefilter(pattern string) func(s string) bool {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return nil
	}
	req, ok := required(re.Simplify())
	if !ok || slices.Contains(req.words, "") {
		return nil
	}
	if !req.fold {
		return func(s string) bool {
			for _, w := range req.words {
				if strings.Contains(s, w) {
					return true
				}
			}
			return false
		}
	}
	return func(s string) bool {
		// Case folding reaches beyond ASCII (K and the Kelvin sign, s and ſ):
		// only an ASCII string is decided here.
		for i := 0; i < len(s); i++ {
			if s[i] >= utf8.RuneSelf {
				return true
			}
		}
		lower := strings.ToLower(s)
		for _, w := range req.words {
			if strings.Contains(lower, w) {
				return true
			}
		}
		return false
	}
}

// required computes the literals every match of re contains; ok is false when
// the structure guarantees none (an empty match, a class, an optional part).
func required(re *syntax.Regexp) (requiredLiterals, bool) {
	switch re.Op {
	case syntax.OpLiteral:
		fold := re.Flags&syntax.FoldCase != 0
		word := string(re.Rune)
		if fold {
			for _, r := range re.Rune {
				if r >= utf8.RuneSelf {
					return requiredLiterals{}, false
				}
			}
			word = strings.ToLower(word)
		}
		return requiredLiterals{words: []string{word}, fold: fold}, true
	case syntax.OpCapture, syntax.OpPlus:
		return required(re.Sub[0])
	case syntax.OpRepeat:
		if re.Min >= 1 {
			return required(re.Sub[0])
		}
	case syntax.OpConcat:
		// Any part's literals will do; the one with the longest shortest word
		// rejects the most strings.
		var best requiredLiterals
		found := false
		for _, sub := range re.Sub {
			if req, ok := required(sub); ok && (!found || shortest(req.words) > shortest(best.words)) {
				best, found = req, true
			}
		}
		return best, found
	case syntax.OpAlternate:
		var union requiredLiterals
		for i, sub := range re.Sub {
			req, ok := required(sub)
			if !ok || (i > 0 && req.fold != union.fold) {
				return requiredLiterals{}, false
			}
			union.words = append(union.words, req.words...)
			union.fold = req.fold
		}
		return union, len(union.words) > 0
	}
	return requiredLiterals{}, false
}

func shortest(words []string) int {
	n := -1
	for _, w := range words {
		if n < 0 || len(w) < n {
			n = len(w)
		}
	}
	return n
}
