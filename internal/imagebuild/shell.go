package imagebuild

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
)

// BusyboxPath is where WithBusybox puts busybox, beside the links to it.
const BusyboxPath = "/bin/busybox"

// busyboxApplets are the commands WithBusybox links to busybox: a POSIX
// sh, which runs test commands, and the utilities test scripts commonly
// call.
var busyboxApplets = []string{
	"sh", "ash", "[", "[[", "awk", "basename", "cat", "chmod", "cmp", "cp", "cut", "date", "diff",
	"dirname", "echo", "env", "expr", "false", "find", "grep", "gzip", "head", "id", "ln", "ls",
	"mkdir", "mktemp", "mv", "printf", "pwd", "rm", "rmdir", "sed", "sleep", "sort", "tail", "tar",
	"tee", "test", "touch", "tr", "true", "uname", "uniq", "wc", "which", "xargs",
}

// WithBusybox adds a statically linked busybox (Debian's busybox-static)
// to img at BusyboxPath, its applets linked beside it, and /bin to the
// end of PATH: a shell and the common utilities for an image that runs
// scripts, built without a base image from a distribution. A busybox
// that needs a dynamic loader is refused: the image has no C library.
func WithBusybox(img v1.Image, busybox []byte, epoch time.Time) (v1.Image, error) {
	if err := static(busybox); err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	epoch = epoch.UTC().Truncate(time.Second)
	lb := newLayerBuilder()
	if err := lb.addFile(BusyboxPath, busybox, 0o755, 0, 0); err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	for _, applet := range busyboxApplets {
		if err := lb.addSymlink("/bin/"+applet, "busybox"); err != nil {
			return nil, fmt.Errorf("busybox layer: %w", err)
		}
	}
	layer, err := lb.layer(epoch)
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:   layer,
		History: v1.History{Created: v1.Time{Time: epoch}, CreatedBy: "slipway busybox " + BusyboxPath},
	})
	if err != nil {
		return nil, fmt.Errorf("busybox layer: %w", err)
	}
	return AppendPath(img, "/bin")
}

// AppendPath adds dir to the end of the image's PATH, keeping its
// creation time.
func AppendPath(img v1.Image, dir string) (v1.Image, error) {
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, fmt.Errorf("read image config: %w", err)
	}
	return configure(img, func(c *v1.Config) {
		for i, kv := range c.Env {
			if p, ok := strings.CutPrefix(kv, "PATH="); ok {
				c.Env[i] = "PATH=" + p + ":" + dir
				return
			}
		}
		c.Env = append(c.Env, "PATH="+dir)
	}, cf.Created.Time)
}

// static fails when the executable asks for a dynamic loader.
func static(binary []byte) error {
	f, err := elf.NewFile(bytes.NewReader(binary))
	if err != nil {
		return fmt.Errorf("not an ELF executable: %w", err)
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return errors.New("the executable is dynamically linked (it names a program interpreter); install a static build, such as Debian's busybox-static")
		}
	}
	return nil
}
