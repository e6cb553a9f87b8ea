package imagebuild

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"strings"
)

// maxDockerfileBytes bounds the Dockerfile read from a source repository.
const maxDockerfileBytes = 1 << 20

// Instruction is one Dockerfile instruction after line continuations are
// joined.
type Instruction struct {
	// Line is the line the instruction starts on, counting from 1.
	Line int
	// Command is the instruction keyword in upper case ("COPY").
	Command string
	// Flags are the --name=value options before the arguments.
	Flags map[string]string
	// Args are the arguments: the elements of a JSON array in exec form,
	// otherwise the rest of the line split on whitespace, except for the
	// shell-form ENTRYPOINT and CMD where Args[0] is the whole command.
	Args []string
	// Exec reports that the arguments were a JSON array.
	Exec bool
}

// DockerfileError says which line of a Dockerfile is refused, why, and
// what to do instead.
type DockerfileError struct {
	Line    int
	Command string
	Reason  string
	Hint    string
}

func (e *DockerfileError) Error() string {
	msg := fmt.Sprintf("Dockerfile line %d", e.Line)
	if e.Command != "" {
		msg += " (" + e.Command + ")"
	}
	msg += ": " + e.Reason
	if e.Hint != "" {
		msg += "; " + e.Hint
	}
	return msg
}

// refused names the instructions that need a container runtime or that
// Slipway leaves out, with what to do instead. Everything not here and not
// in supported is unknown and refused too.
var refused = map[string][2]string{
	"RUN": {"RUN needs a container runtime to execute commands, and Slipway builds images without one (no Docker daemon, no privileges)",
		"build the binary or assets in the pipeline's test step (or use the Go builder, which compiles Go services itself) and COPY the result"},
	"ONBUILD":     {"ONBUILD triggers run in a later build with unknown instructions", "write the instructions into this Dockerfile"},
	"SHELL":       {"SHELL only matters for RUN, which is not supported", "remove it"},
	"HEALTHCHECK": {"HEALTHCHECK is ignored by Kubernetes", "declare a readiness or liveness probe in the Deployment instead"},
	"VOLUME":      {"VOLUME is ignored by Kubernetes and hides data from the image", "declare a volume in the Deployment instead"},
	"STOPSIGNAL":  {"STOPSIGNAL is not supported", "handle SIGTERM in the service, which is what Kubernetes sends"},
	"MAINTAINER":  {"MAINTAINER is deprecated", `use LABEL org.opencontainers.image.authors="..." instead`},
}

var supported = map[string]bool{
	"FROM": true, "COPY": true, "ADD": true, "ENV": true, "WORKDIR": true, "USER": true,
	"EXPOSE": true, "ENTRYPOINT": true, "CMD": true, "LABEL": true, "ARG": true,
}

// allowedFlags lists the options each instruction accepts.
var allowedFlags = map[string]map[string]bool{
	"COPY": {"chown": true, "chmod": true},
	"ADD":  {"chown": true, "chmod": true},
}

// ParseDockerfile parses a Dockerfile strictly: any instruction, flag or
// syntax it does not fully support is an error naming the line, rather
// than something silently built differently from what docker build would
// do.
func ParseDockerfile(data []byte) ([]Instruction, error) {
	if len(data) > maxDockerfileBytes {
		return nil, &DockerfileError{Reason: fmt.Sprintf("the Dockerfile is %d bytes, over the %d byte limit", len(data), maxDockerfileBytes)}
	}
	var out []Instruction
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64*1024), maxDockerfileBytes)
	lineNo, start := 0, 0
	var cur strings.Builder
	for sc.Scan() {
		lineNo++
		line := strings.TrimRight(sc.Text(), " \t\r")
		trimmed := strings.TrimLeft(line, " \t")
		if strings.HasPrefix(trimmed, "#") {
			// Parser directives come before the first instruction; only
			// escape would change how the rest is read.
			if len(out) == 0 && cur.Len() == 0 && strings.HasPrefix(strings.ToLower(strings.ReplaceAll(trimmed, " ", "")), "#escape=") {
				return nil, &DockerfileError{Line: lineNo, Reason: "the escape parser directive is not supported", Hint: `remove it and use \ as the escape character`}
			}
			continue
		}
		if cur.Len() == 0 {
			if trimmed == "" {
				continue
			}
			start = lineNo
		}
		if cont, ok := strings.CutSuffix(line, `\`); ok {
			cur.WriteString(cont)
			cur.WriteByte(' ')
			continue
		}
		cur.WriteString(line)
		ins, err := parseInstruction(start, strings.TrimSpace(cur.String()))
		if err != nil {
			return nil, err
		}
		out = append(out, ins)
		cur.Reset()
	}
	if err := sc.Err(); err != nil {
		return nil, &DockerfileError{Line: lineNo + 1, Reason: "reading the Dockerfile: " + err.Error()}
	}
	if cur.Len() > 0 {
		return nil, &DockerfileError{Line: start, Reason: "the last instruction ends with a line continuation", Hint: `remove the trailing \`}
	}
	if len(out) == 0 {
		return nil, &DockerfileError{Line: 1, Reason: "the Dockerfile has no instructions"}
	}
	return out, nil
}

func parseInstruction(line int, text string) (Instruction, error) {
	keyword, rest, _ := strings.Cut(text, " ")
	if k, r, ok := strings.Cut(keyword, "\t"); ok {
		keyword, rest = k, r+" "+rest
	}
	cmd := strings.ToUpper(keyword)
	rest = strings.TrimSpace(rest)
	ins := Instruction{Line: line, Command: cmd}
	if why, ok := refused[cmd]; ok {
		return ins, &DockerfileError{Line: line, Command: cmd, Reason: why[0], Hint: why[1]}
	}
	if !supported[cmd] {
		return ins, &DockerfileError{Line: line, Command: cmd, Reason: fmt.Sprintf("unknown instruction %q", keyword),
			Hint: "the supported instructions are FROM, COPY, ADD, ENV, WORKDIR, USER, EXPOSE, ENTRYPOINT, CMD, LABEL and ARG"}
	}
	// Only these take flags; for ENTRYPOINT or CMD a leading -- is the
	// command's own argument.
	takesFlags := cmd == "COPY" || cmd == "ADD" || cmd == "FROM"
	for takesFlags && strings.HasPrefix(rest, "--") {
		flag, after, _ := strings.Cut(rest, " ")
		rest = strings.TrimSpace(after)
		name, value, hasValue := strings.Cut(strings.TrimPrefix(flag, "--"), "=")
		if !allowedFlags[cmd][name] {
			hint := ""
			if name == "from" {
				hint = "multi-stage builds need RUN in an earlier stage; build the artifact in the test step and COPY it from the build context"
			}
			return ins, &DockerfileError{Line: line, Command: cmd, Reason: fmt.Sprintf("the flag --%s is not supported", name), Hint: hint}
		}
		if !hasValue || value == "" {
			return ins, &DockerfileError{Line: line, Command: cmd, Reason: fmt.Sprintf("the flag --%s needs a value (--%s=...)", name, name)}
		}
		if ins.Flags == nil {
			ins.Flags = map[string]string{}
		}
		if _, dup := ins.Flags[name]; dup {
			return ins, &DockerfileError{Line: line, Command: cmd, Reason: fmt.Sprintf("the flag --%s is given twice", name)}
		}
		ins.Flags[name] = value
	}
	if rest == "" {
		return ins, &DockerfileError{Line: line, Command: cmd, Reason: cmd + " needs arguments"}
	}
	switch cmd {
	case "ENTRYPOINT", "CMD", "COPY", "ADD":
		if strings.HasPrefix(rest, "[") {
			var args []string
			if err := json.Unmarshal([]byte(rest), &args); err != nil {
				return ins, &DockerfileError{Line: line, Command: cmd, Reason: "the argument list is not a JSON array of strings: " + err.Error(),
					Hint: `write it as ["a", "b"] with double quotes`}
			}
			ins.Args, ins.Exec = args, true
		} else if cmd == "ENTRYPOINT" || cmd == "CMD" {
			ins.Args = []string{rest}
		} else {
			ins.Args = strings.Fields(rest)
		}
	case "ENV", "LABEL":
		args, err := splitQuoted(rest)
		if err != nil {
			return ins, &DockerfileError{Line: line, Command: cmd, Reason: err.Error()}
		}
		ins.Args = args
	default:
		ins.Args = strings.Fields(rest)
	}
	return ins, checkArity(ins)
}

func checkArity(ins Instruction) error {
	n := len(ins.Args)
	bad := func(reason string) error {
		return &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: reason}
	}
	switch ins.Command {
	case "FROM":
		if !(n == 1 || n == 3 && strings.EqualFold(ins.Args[1], "AS")) {
			return bad("FROM takes an image reference, optionally followed by AS name")
		}
	case "COPY", "ADD":
		if n < 2 {
			return bad(ins.Command + " needs at least one source and a destination")
		}
	case "WORKDIR", "USER", "ARG":
		if n != 1 {
			return bad(ins.Command + " takes exactly one argument")
		}
	case "ENV", "LABEL":
		for _, kv := range ins.Args {
			if k, _, ok := strings.Cut(kv, "="); !ok || k == "" {
				if ins.Command == "ENV" && n >= 2 && !strings.Contains(ins.Args[0], "=") {
					return nil
				}
				return bad(fmt.Sprintf("%q is not a key=value pair", kv))
			}
		}
	case "ENTRYPOINT", "CMD":
		if n == 0 {
			return bad(ins.Command + " needs a command")
		}
	}
	return nil
}

// splitQuoted splits ENV and LABEL arguments on unquoted whitespace,
// removing double and single quotes and backslash escapes as docker does.
func splitQuoted(s string) ([]string, error) {
	var out []string
	var cur strings.Builder
	inWord := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == ' ' || c == '\t':
			if inWord {
				out = append(out, cur.String())
				cur.Reset()
				inWord = false
			}
		case c == '\\':
			if i+1 >= len(s) {
				return nil, fmt.Errorf("a backslash ends the line")
			}
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == '\'':
			end := strings.IndexByte(s[i+1:], c)
			if end < 0 {
				return nil, fmt.Errorf("unterminated ' quote")
			}
			cur.WriteString(s[i+1 : i+1+end])
			i += end + 1
			inWord = true
		case c == '"':
			i++
			for ; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				cur.WriteByte(s[i])
			}
			if i >= len(s) {
				return nil, fmt.Errorf("unterminated \" quote")
			}
			inWord = true
		default:
			cur.WriteByte(c)
			inWord = true
		}
	}
	if inWord {
		out = append(out, cur.String())
	}
	return out, nil
}
