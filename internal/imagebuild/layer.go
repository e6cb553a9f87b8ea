// Package imagebuild builds OCI images without a container daemon and
// without privileges, in-process with go-containerregistry: Go services
// compiled and layered onto a base image (as ko does), and Dockerfiles
// whose instructions need no RUN. Builds are reproducible: the same
// source, base and SOURCE_DATE_EPOCH give the same image digest. The
// package also writes the SPDX SBOM and the SLSA provenance statement that
// the pipeline attaches to the image it pushes.
package imagebuild

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"path"
	"sort"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// layerEntry is one file or directory of a layer being assembled.
type layerEntry struct {
	dir  bool
	link string // a symbolic link's target; the entry is a link when set
	mode int64
	uid  int
	gid  int
	data []byte
}

// layerBuilder collects files by absolute slash path and writes them as a
// tar whose bytes depend on nothing but the entries: sorted names, one
// timestamp, fixed owners and modes, and the parent directories of every
// file, so that unpackers create them with known modes.
type layerBuilder struct {
	entries map[string]layerEntry
}

func newLayerBuilder() *layerBuilder {
	return &layerBuilder{entries: map[string]layerEntry{}}
}

// cleanImagePath turns an absolute or relative slash path into the
// relative form tar entries use, refusing the image root itself.
func cleanImagePath(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("path %q names the image root, not a file", p)
	}
	return c, nil
}

func (b *layerBuilder) addFile(p string, data []byte, mode int64, uid, gid int) error {
	c, err := cleanImagePath(p)
	if err != nil {
		return err
	}
	if e, ok := b.entries[c]; ok && e.dir {
		return fmt.Errorf("cannot write file /%s: a directory of that name is already in the layer", c)
	}
	b.addParents(c)
	b.entries[c] = layerEntry{mode: mode, uid: uid, gid: gid, data: data}
	return nil
}

func (b *layerBuilder) addDir(p string, mode int64, uid, gid int) error {
	c, err := cleanImagePath(p)
	if err != nil {
		return err
	}
	if e, ok := b.entries[c]; ok && !e.dir {
		return fmt.Errorf("cannot create directory /%s: a file of that name is already in the layer", c)
	}
	b.addParents(c)
	b.entries[c] = layerEntry{dir: true, mode: mode, uid: uid, gid: gid}
	return nil
}

// addSymlink adds a symbolic link at p to target.
func (b *layerBuilder) addSymlink(p, target string) error {
	c, err := cleanImagePath(p)
	if err != nil {
		return err
	}
	if e, ok := b.entries[c]; ok && e.dir {
		return fmt.Errorf("cannot create link /%s: a directory of that name is already in the layer", c)
	}
	if target == "" {
		return fmt.Errorf("link /%s has no target", c)
	}
	b.addParents(c)
	b.entries[c] = layerEntry{link: target, mode: 0o777}
	return nil
}

func (b *layerBuilder) addParents(c string) {
	for d := path.Dir(c); d != "."; d = path.Dir(d) {
		if _, ok := b.entries[d]; !ok {
			b.entries[d] = layerEntry{dir: true, mode: 0o755}
		}
	}
}

// tar writes the layer's uncompressed bytes with every time set to mtime,
// truncated to whole seconds so that the plain ustar format suffices.
func (b *layerBuilder) tar(mtime time.Time) ([]byte, error) {
	mtime = mtime.Truncate(time.Second)
	names := make([]string, 0, len(b.entries))
	for n := range b.entries {
		names = append(names, n)
	}
	sort.Strings(names)
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, n := range names {
		e := b.entries[n]
		hdr := &tar.Header{
			Name:    n,
			Mode:    e.mode,
			Uid:     e.uid,
			Gid:     e.gid,
			ModTime: mtime,
		}
		switch {
		case e.dir:
			hdr.Typeflag = tar.TypeDir
			hdr.Name += "/"
		case e.link != "":
			hdr.Typeflag = tar.TypeSymlink
			hdr.Linkname = e.link
		default:
			hdr.Typeflag = tar.TypeReg
			hdr.Size = int64(len(e.data))
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("write tar header for /%s: %w", n, err)
		}
		if !e.dir && e.link == "" {
			if _, err := tw.Write(e.data); err != nil {
				return nil, fmt.Errorf("write /%s into the layer: %w", n, err)
			}
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("finish layer tar: %w", err)
	}
	return buf.Bytes(), nil
}

// layer compresses the tar once (gzip, fastest level, as ko does) and
// keeps the result, so that computing the digest and pushing do not
// compress twice.
func (b *layerBuilder) layer(mtime time.Time) (v1.Layer, error) {
	data, err := b.tar(mtime)
	if err != nil {
		return nil, err
	}
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(data)), nil
	}, tarball.WithCompressedCaching, tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, fmt.Errorf("compress layer: %w", err)
	}
	return l, nil
}
