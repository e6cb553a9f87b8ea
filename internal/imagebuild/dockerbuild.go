package imagebuild

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// DockerfileOptions describes a Dockerfile build. The context and the
// Dockerfile come from a source repository, which is untrusted: every
// path is resolved inside its directory with os.Root, so that no symbolic
// link, in the last element or in any directory on the way, reaches a
// file outside it.
type DockerfileOptions struct {
	// ContextDir is the build context; COPY and ADD read only from it.
	ContextDir string
	// SourceDir, when set, is the checkout ContextDir and Dockerfile lie
	// in: both are resolved inside it, so that neither is a link out of
	// it. ContextDir when empty.
	SourceDir string
	// Dockerfile is the path of the Dockerfile; ContextDir/Dockerfile
	// when empty.
	Dockerfile string
	// BuildArgs override ARG defaults.
	BuildArgs map[string]string
	// Platform to build for; DefaultPlatform when OS is empty.
	Platform v1.Platform
	// SourceDateEpoch is the time of every file and of the config.
	SourceDateEpoch time.Time
	// Keychain gives the credentials of the registries it knows; the FROM
	// image of any other registry is pulled anonymously. Anonymous for
	// every registry when nil.
	Keychain authn.Keychain
}

// dockerState is the image config and variables as the instructions
// change them.
type dockerState struct {
	o       DockerfileOptions
	context *os.Root
	epoch   time.Time
	img     v1.Image
	cfg     v1.Config
	args    map[string]string
}

// RegistryKeychain gives auth to registry (host[:port], as
// name.Registry.RegistryStr spells it) and to no other: a Pipeline's
// registry credentials never reach the registry of a base image.
func RegistryKeychain(registry string, auth authn.Authenticator) authn.Keychain {
	return registryKeychain{registry: registry, auth: auth}
}

type registryKeychain struct {
	registry string
	auth     authn.Authenticator
}

func (k registryKeychain) Resolve(r authn.Resource) (authn.Authenticator, error) {
	if r.RegistryStr() == k.registry {
		return k.auth, nil
	}
	return authn.Anonymous, nil
}

// openSources opens the build context, and reads the Dockerfile, inside
// the source directory.
func openSources(o DockerfileOptions) (*os.Root, []byte, string, error) {
	src := o.SourceDir
	if src == "" {
		src = o.ContextDir
	}
	srcRoot, err := os.OpenRoot(src)
	if err != nil {
		return nil, nil, "", fmt.Errorf("open the source directory %s: %w", src, err)
	}
	defer srcRoot.Close()
	inside := func(what, p string) (string, error) {
		rel, err := filepath.Rel(src, p)
		if err != nil || rel == ".." || strings.HasPrefix(rel, ".."+string(filepath.Separator)) {
			return "", fmt.Errorf("the %s %s is not inside the source directory %s", what, p, src)
		}
		return rel, nil
	}
	ctxRel, err := inside("build context", o.ContextDir)
	if err != nil {
		return nil, nil, "", err
	}
	ctxRoot, err := srcRoot.OpenRoot(ctxRel)
	if err != nil {
		return nil, nil, "", fmt.Errorf("open the build context %s: %w", ctxRel, err)
	}
	dfPath := o.Dockerfile
	if dfPath == "" {
		dfPath = filepath.Join(o.ContextDir, "Dockerfile")
	}
	dfRel, err := inside("Dockerfile", dfPath)
	if err != nil {
		ctxRoot.Close()
		return nil, nil, "", err
	}
	f, err := srcRoot.Open(dfRel)
	if err != nil {
		ctxRoot.Close()
		return nil, nil, "", fmt.Errorf("read %s: %w", dfPath, err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, maxDockerfileBytes+1))
	if err != nil {
		ctxRoot.Close()
		return nil, nil, "", fmt.Errorf("read %s: %w", dfPath, err)
	}
	return ctxRoot, data, dfPath, nil
}

// BuildDockerfile assembles the image a Dockerfile without RUN describes,
// in-process: one layer per COPY, ADD and WORKDIR, file times set to
// SourceDateEpoch and owners to root unless --chown says otherwise, so the
// same context gives the same digest. The context's .dockerignore is
// honoured.
func BuildDockerfile(ctx context.Context, o DockerfileOptions) (v1.Image, error) {
	if o.ContextDir == "" {
		return nil, errors.New("build image from Dockerfile: a context directory is required")
	}
	contextRoot, data, dfPath, err := openSources(o)
	if err != nil {
		return nil, fmt.Errorf("build image from Dockerfile: %w", err)
	}
	defer contextRoot.Close()
	instructions, err := ParseDockerfile(data)
	if err != nil {
		return nil, fmt.Errorf("build image from Dockerfile %s: %w", dfPath, err)
	}
	if o.Platform.OS == "" {
		o.Platform = DefaultPlatform()
	}
	ignore, err := readDockerignore(contextRoot)
	if err != nil {
		return nil, fmt.Errorf("build image from Dockerfile %s: %w", dfPath, err)
	}
	epoch := o.SourceDateEpoch
	if epoch.IsZero() {
		epoch = time.Unix(0, 0)
	}
	st := &dockerState{o: o, context: contextRoot, epoch: epoch.UTC().Truncate(time.Second), args: map[string]string{}}
	for _, ins := range instructions {
		if err := st.apply(ctx, ins, ignore); err != nil {
			var de *DockerfileError
			if !errors.As(err, &de) {
				err = &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: err.Error()}
			}
			return nil, fmt.Errorf("build image from Dockerfile %s: %w", dfPath, err)
		}
	}
	if st.img == nil {
		return nil, fmt.Errorf("build image from Dockerfile %s: %w", dfPath, &DockerfileError{Line: 1, Reason: "there is no FROM instruction"})
	}
	img, err := configure(st.img, func(c *v1.Config) { *c = st.cfg }, st.epoch)
	if err != nil {
		return nil, fmt.Errorf("build image from Dockerfile %s: %w", dfPath, err)
	}
	return img, nil
}

func (st *dockerState) apply(ctx context.Context, ins Instruction, ignore *dockerignore) error {
	if st.img == nil && ins.Command != "FROM" && ins.Command != "ARG" {
		return &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: "instructions other than ARG must come after FROM"}
	}
	args := make([]string, len(ins.Args))
	for i, a := range ins.Args {
		if ins.Command == "ENTRYPOINT" || ins.Command == "CMD" {
			// The runtime, not the build, expands variables in commands.
			args[i] = a
			continue
		}
		v, err := st.expand(a)
		if err != nil {
			return err
		}
		args[i] = v
	}
	created := v1.History{Created: v1.Time{Time: st.epoch}, CreatedBy: ins.Command + " " + strings.Join(args, " ")}
	switch ins.Command {
	case "ARG":
		name, def, _ := strings.Cut(args[0], "=")
		if v, ok := st.o.BuildArgs[name]; ok {
			def = v
		}
		st.args[name] = def
		return nil
	case "FROM":
		if st.img != nil {
			return &DockerfileError{Line: ins.Line, Command: "FROM", Reason: "multi-stage builds are not supported",
				Hint: "earlier stages would need RUN; build the artifact in the test step and COPY it from the build context"}
		}
		var err error
		if args[0] == "scratch" {
			st.img, err = EmptyBase(st.o.Platform)
		} else {
			kc := st.o.Keychain
			if kc == nil {
				kc = authn.NewMultiKeychain()
			}
			st.img, err = PullBase(ctx, args[0], st.o.Platform, remote.WithAuthFromKeychain(kc))
		}
		if err != nil {
			return err
		}
		cf, err := st.img.ConfigFile()
		if err != nil {
			return fmt.Errorf("read config of %s: %w", args[0], err)
		}
		st.cfg = *cf.Config.DeepCopy()
		// ARGs declared before FROM are only for FROM itself.
		st.args = map[string]string{}
		return nil
	case "ENV":
		pairs := args
		if !strings.Contains(args[0], "=") {
			pairs = []string{args[0] + "=" + strings.Join(args[1:], " ")}
		}
		for _, kv := range pairs {
			k, _, _ := strings.Cut(kv, "=")
			st.cfg.Env = slices.DeleteFunc(st.cfg.Env, func(e string) bool { return strings.HasPrefix(e, k+"=") })
			st.cfg.Env = append(st.cfg.Env, kv)
		}
	case "LABEL":
		if st.cfg.Labels == nil {
			st.cfg.Labels = map[string]string{}
		}
		for _, kv := range args {
			k, v, _ := strings.Cut(kv, "=")
			st.cfg.Labels[k] = v
		}
	case "USER":
		st.cfg.User = args[0]
	case "EXPOSE":
		for _, p := range args {
			port, proto, _ := strings.Cut(p, "/")
			if proto == "" {
				proto = "tcp"
			}
			if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 || proto != "tcp" && proto != "udp" && proto != "sctp" {
				return &DockerfileError{Line: ins.Line, Command: "EXPOSE", Reason: fmt.Sprintf("%q is not a port (1-65535) with an optional /tcp, /udp or /sctp", p)}
			}
			if st.cfg.ExposedPorts == nil {
				st.cfg.ExposedPorts = map[string]struct{}{}
			}
			st.cfg.ExposedPorts[port+"/"+proto] = struct{}{}
		}
	case "ENTRYPOINT", "CMD":
		cmd := args
		if !ins.Exec {
			cmd = []string{"/bin/sh", "-c", args[0]}
		}
		if ins.Command == "ENTRYPOINT" {
			st.cfg.Entrypoint = cmd
			// As docker does: an entrypoint set here drops the base's CMD.
			st.cfg.Cmd = nil
		} else {
			st.cfg.Cmd = cmd
		}
	case "WORKDIR":
		dir := args[0]
		if !path.IsAbs(dir) {
			dir = path.Join(st.workdir(), dir)
		}
		st.cfg.WorkingDir = path.Clean(dir)
		if st.cfg.WorkingDir == "/" {
			break
		}
		lb := newLayerBuilder()
		if err := lb.addDir(st.cfg.WorkingDir, 0o755, 0, 0); err != nil {
			return err
		}
		return st.appendLayer(lb, created)
	case "COPY", "ADD":
		lb, err := st.copyLayer(ins, args, ignore)
		if err != nil {
			return err
		}
		return st.appendLayer(lb, created)
	}
	return nil
}

func (st *dockerState) workdir() string {
	if st.cfg.WorkingDir == "" {
		return "/"
	}
	return st.cfg.WorkingDir
}

func (st *dockerState) appendLayer(lb *layerBuilder, h v1.History) error {
	layer, err := lb.layer(st.epoch)
	if err != nil {
		return err
	}
	st.img, err = mutate.Append(st.img, mutate.Addendum{Layer: layer, History: h})
	if err != nil {
		return fmt.Errorf("append layer: %w", err)
	}
	return nil
}

var varRef = regexp.MustCompile(`\\\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::([-+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// expand substitutes $NAME, ${NAME}, ${NAME:-default} and ${NAME:+alt}
// from ARG and ENV values, as docker does in non-command instructions.
func (st *dockerState) expand(s string) (string, error) {
	if strings.Contains(varRef.ReplaceAllString(s, ""), "${") {
		return "", fmt.Errorf("unsupported variable syntax in %q; use $NAME, ${NAME}, ${NAME:-default} or ${NAME:+alternative}", s)
	}
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		if m == `\$` {
			return "$"
		}
		sub := varRef.FindStringSubmatch(m)
		name := sub[1] + sub[4]
		val, set := st.lookup(name)
		switch sub[2] {
		case "-":
			if !set || val == "" {
				return sub[3]
			}
		case "+":
			if set && val != "" {
				return sub[3]
			}
			return ""
		}
		return val
	}), nil
}

func (st *dockerState) lookup(name string) (string, bool) {
	for i := len(st.cfg.Env) - 1; i >= 0; i-- {
		if v, ok := strings.CutPrefix(st.cfg.Env[i], name+"="); ok {
			return v, true
		}
	}
	v, ok := st.args[name]
	return v, ok
}

func (st *dockerState) copyLayer(ins Instruction, args []string, ignore *dockerignore) (*layerBuilder, error) {
	uid, gid := 0, 0
	if chown, ok := ins.Flags["chown"]; ok {
		u, g, hasGroup := strings.Cut(chown, ":")
		var err1, err2 error
		uid, err1 = strconv.Atoi(u)
		gid, err2 = uid, nil
		if hasGroup {
			gid, err2 = strconv.Atoi(g)
		}
		if err1 != nil || err2 != nil || uid < 0 || gid < 0 {
			return nil, &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: fmt.Sprintf("--chown=%s is not numeric", chown),
				Hint: "give numeric ids (--chown=65532:65532): names would need the image's /etc/passwd"}
		}
	}
	var chmod int64 = -1
	if m, ok := ins.Flags["chmod"]; ok {
		v, err := strconv.ParseInt(m, 8, 32)
		if err != nil || v < 0 || v > 0o7777 {
			return nil, &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: fmt.Sprintf("--chmod=%s is not an octal mode", m)}
		}
		chmod = v
	}
	srcs, dest := args[:len(args)-1], args[len(args)-1]
	if !path.IsAbs(dest) {
		trailing := strings.HasSuffix(dest, "/")
		dest = path.Join(st.workdir(), dest)
		if trailing {
			dest += "/"
		}
	}
	var matches []string
	for _, src := range srcs {
		if ins.Command == "ADD" && (strings.Contains(src, "://") || strings.HasPrefix(src, "git@")) {
			return nil, &DockerfileError{Line: ins.Line, Command: "ADD", Reason: fmt.Sprintf("ADD from a URL (%s) is not supported: builds read only the build context", src),
				Hint: "fetch the file in the pipeline's test step, or vendor it into the repository, and COPY it"}
		}
		rel := strings.TrimPrefix(path.Clean("/"+filepath.ToSlash(src)), "/")
		if rel == "" {
			rel = "."
		}
		found, err := fs.Glob(st.context.FS(), rel)
		if err != nil {
			return nil, fmt.Errorf("source %q: %w", src, err)
		}
		found = slices.DeleteFunc(found, func(p string) bool { return p != "." && ignore.excluded(p) })
		if link := st.linkOnTheWay(rel); len(found) == 0 && link != "" {
			return nil, &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: fmt.Sprintf("%s is a symbolic link, not a regular file or directory: the build does not follow links", link),
				Hint: "copy the files it points to into the build context"}
		}
		if len(found) == 0 {
			return nil, &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: fmt.Sprintf("source %q matches nothing in the build context (or only files .dockerignore excludes)", src)}
		}
		matches = append(matches, found...)
	}
	sort.Strings(matches)
	destIsDir := strings.HasSuffix(dest, "/") || len(matches) > 1
	lb := newLayerBuilder()
	for _, m := range matches {
		info, err := st.context.Lstat(filepath.FromSlash(m))
		if err != nil {
			return nil, fmt.Errorf("source %s: %w", m, err)
		}
		if info.IsDir() {
			if err := st.copyDir(ins, lb, m, dest, uid, gid, chmod, ignore); err != nil {
				return nil, err
			}
			continue
		}
		target := dest
		if destIsDir {
			target = path.Join(dest, path.Base(m))
		}
		if err := st.copyFile(ins, lb, m, info, target, uid, gid, chmod); err != nil {
			return nil, err
		}
	}
	return lb, nil
}

// linkOnTheWay returns the first element of pattern, up to its first
// wildcard, that is a symbolic link: a source that matched nothing for
// that reason deserves to be told so.
func (st *dockerState) linkOnTheWay(pattern string) string {
	parts := strings.Split(pattern, "/")
	for i := range parts {
		if strings.ContainsAny(parts[i], "*?[\\") {
			return ""
		}
		p := strings.Join(parts[:i+1], "/")
		if info, err := st.context.Lstat(filepath.FromSlash(p)); err == nil && info.Mode()&fs.ModeSymlink != 0 {
			return p
		}
	}
	return ""
}

func (st *dockerState) copyDir(ins Instruction, lb *layerBuilder, rel, dest string, uid, gid int, chmod int64, ignore *dockerignore) error {
	// The walk does not follow links: a linked directory inside is met as
	// a link, and copyFile refuses it.
	return fs.WalkDir(st.context.FS(), rel, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("walk %s: %w", rel, err)
		}
		ctxRel := p
		sub := strings.TrimPrefix(strings.TrimPrefix(p, rel), "/")
		if rel == "." {
			sub = p
		}
		if ctxRel != "." && ignore.excluded(ctxRel) {
			if d.IsDir() && !ignore.hasExceptions() {
				return filepath.SkipDir
			}
			return nil
		}
		target := path.Join(dest, sub)
		if d.IsDir() {
			if target == "/" {
				return nil
			}
			mode := int64(0o755)
			if chmod >= 0 {
				mode = chmod
			}
			return lb.addDir(target, mode, uid, gid)
		}
		info, err := d.Info()
		if err != nil {
			return fmt.Errorf("stat %s: %w", ctxRel, err)
		}
		return st.copyFile(ins, lb, ctxRel, info, target, uid, gid, chmod)
	})
}

// copyFile adds one regular file. Symlinks and special files are refused:
// a link could point outside the context, and its meaning in the image
// depends on the base, which a reproducible build should not.
func (st *dockerState) copyFile(ins Instruction, lb *layerBuilder, rel string, info fs.FileInfo, target string, uid, gid int, chmod int64) error {
	if !info.Mode().IsRegular() {
		return &DockerfileError{Line: ins.Line, Command: ins.Command, Reason: fmt.Sprintf("%s is a %s, not a regular file", rel, info.Mode().Type()),
			Hint: "copy the file it points to, or exclude it in .dockerignore"}
	}
	data, err := st.context.ReadFile(filepath.FromSlash(rel))
	if err != nil {
		return fmt.Errorf("read %s: %w", rel, err)
	}
	if ins.Command == "ADD" && isArchive(data) {
		return &DockerfileError{Line: ins.Line, Command: "ADD", Reason: fmt.Sprintf("%s is an archive, which ADD would unpack", rel),
			Hint: "unpack it into the build context in the test step and COPY the directory, or COPY the archive to keep it packed"}
	}
	mode := int64(0o644)
	if info.Mode()&0o111 != 0 {
		mode = 0o755
	}
	if chmod >= 0 {
		mode = chmod
	}
	return lb.addFile(target, data, mode, uid, gid)
}

func isArchive(b []byte) bool {
	return bytes.HasPrefix(b, []byte{0x1f, 0x8b}) || // gzip
		bytes.HasPrefix(b, []byte("BZh")) ||
		bytes.HasPrefix(b, []byte{0xfd, '7', 'z', 'X', 'Z', 0}) ||
		bytes.HasPrefix(b, []byte{0x28, 0xb5, 0x2f, 0xfd}) || // zstd
		len(b) > 262 && string(b[257:262]) == "ustar"
}

// dockerignore holds .dockerignore patterns; the last matching pattern
// decides, and a leading ! re-includes.
type dockerignore struct {
	patterns []ignorePattern
}

type ignorePattern struct {
	re     *regexp.Regexp
	negate bool
}

func readDockerignore(root *os.Root) (*dockerignore, error) {
	data, err := root.ReadFile(".dockerignore")
	if errors.Is(err, fs.ErrNotExist) {
		return &dockerignore{}, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read .dockerignore: %w", err)
	}
	di := &dockerignore{}
	for i, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		p := ignorePattern{}
		if rest, ok := strings.CutPrefix(line, "!"); ok {
			p.negate, line = true, strings.TrimSpace(rest)
		}
		line = strings.TrimPrefix(path.Clean("/"+line), "/")
		re, err := globRegexp(line)
		if err != nil {
			return nil, fmt.Errorf(".dockerignore line %d: %w", i+1, err)
		}
		p.re = re
		di.patterns = append(di.patterns, p)
	}
	return di, nil
}

// globRegexp translates a .dockerignore pattern: * and ? stay within a
// path segment, ** spans segments, and a match also covers everything
// below a matched directory.
func globRegexp(glob string) (*regexp.Regexp, error) {
	var b strings.Builder
	b.WriteString("^")
	for i := 0; i < len(glob); i++ {
		switch c := glob[i]; c {
		case '*':
			if i+1 < len(glob) && glob[i+1] == '*' {
				b.WriteString(".*")
				i++
				if i+1 < len(glob) && glob[i+1] == '/' {
					b.WriteString("/?")
					i++
				}
			} else {
				b.WriteString("[^/]*")
			}
		case '?':
			b.WriteString("[^/]")
		default:
			b.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	b.WriteString("(/.*)?$")
	return regexp.Compile(b.String())
}

func (d *dockerignore) excluded(rel string) bool {
	out := false
	for _, p := range d.patterns {
		if p.re.MatchString(rel) {
			out = !p.negate
		}
	}
	return out
}

func (d *dockerignore) hasExceptions() bool {
	for _, p := range d.patterns {
		if p.negate {
			return true
		}
	}
	return false
}
