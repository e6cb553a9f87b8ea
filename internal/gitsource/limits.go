package gitsource

import (
	"errors"
	"fmt"
	"io"

	"github.com/go-git/go-git/v5/plumbing"
	"github.com/go-git/go-git/v5/plumbing/format/packfile"
	"github.com/go-git/go-git/v5/storage/filesystem"
)

// Limits bound what a repository can cost the server, whatever it holds. A
// pack is small on the wire but its objects are inflated in memory to be
// indexed: a few hundred kilobytes of repeated blobs stand for gigabytes.
// So the sizes every object declares are checked as the pack arrives,
// before go-git indexes it, and file sizes before a file is read.
type Limits struct {
	// MaxObjectBytes bounds one object of a fetched pack, inflated.
	MaxObjectBytes int64
	// MaxFetchBytes bounds all objects of one fetch, inflated.
	MaxFetchBytes int64
	// MaxFileBytes bounds one file read from a revision.
	MaxFileBytes int64
	// MaxTreeBytes bounds all the files read below a revision's path.
	MaxTreeBytes int64
}

// DefaultLimits suit ops repositories of manifests: large CRDs are a few
// megabytes, and an Application's whole path is rarely more than a few.
var DefaultLimits = Limits{
	MaxObjectBytes: 16 << 20,
	MaxFetchBytes:  256 << 20,
	MaxFileBytes:   8 << 20,
	MaxTreeBytes:   32 << 20,
}

// ErrTooLarge marks a repository over one of the Limits.
var ErrTooLarge = errors.New("over the size limit")

// guardedStorage is go-git's filesystem storage whose pack writer checks
// every pack against the limits on its way in.
type guardedStorage struct {
	*filesystem.Storage
	limits Limits
}

// PackfileWriter implements storer.PackfileWriter: go-git writes fetched
// packs through it.
func (s *guardedStorage) PackfileWriter() (io.WriteCloser, error) {
	w, err := s.Storage.PackfileWriter()
	if err != nil {
		return nil, err
	}
	return newPackGuard(w, s.limits), nil
}

// packGuard passes a pack to w only after a scanner of its own has read
// it: a pack whose objects declare more than the limits fails the write
// before go-git's indexer, which inflates each object whole, gets to it.
type packGuard struct {
	w    io.WriteCloser
	pipe *io.PipeWriter
	done chan error
}

func newPackGuard(w io.WriteCloser, limits Limits) *packGuard {
	r, pipe := io.Pipe()
	g := &packGuard{w: w, pipe: pipe, done: make(chan error, 1)}
	go func() {
		err := checkPack(r, limits)
		if err == nil {
			// The trailer and anything after the objects pass unchecked.
			_, err = io.Copy(io.Discard, r)
		}
		r.CloseWithError(err)
		g.done <- err
	}()
	return g
}

func (g *packGuard) Write(p []byte) (int, error) {
	// The pipe hands p over only when the scanner has taken it, so a pack
	// over the limits never reaches w past the chunk that shows it.
	if _, err := g.pipe.Write(p); err != nil {
		return 0, err
	}
	return g.w.Write(p)
}

func (g *packGuard) Close() error {
	g.pipe.Close()
	scanErr := <-g.done
	closeErr := g.w.Close()
	if scanErr != nil && !errors.Is(scanErr, io.ErrUnexpectedEOF) {
		return scanErr
	}
	return closeErr
}

// checkPack reads a pack stream and fails as soon as an object, or all of
// them together, would inflate to more than the limits. It inflates to
// nowhere: its memory does not grow with the objects.
func checkPack(r io.Reader, limits Limits) error {
	s := packfile.NewScanner(r)
	_, count, err := s.Header()
	if err != nil {
		return err
	}
	var total int64
	for i := uint32(0); i < count; i++ {
		h, err := s.NextObjectHeader()
		if err != nil {
			return err
		}
		size := h.Length
		if h.Type == plumbing.OFSDeltaObject || h.Type == plumbing.REFDeltaObject {
			// A delta is small; what it builds is what gets inflated. Its
			// size is the second number of the delta's header.
			d := &deltaHeader{}
			if _, _, err := s.NextObject(d); err != nil {
				return err
			}
			size = d.targetSize()
		} else {
			if size > limits.MaxObjectBytes {
				return tooLarge(h.Type, size, limits.MaxObjectBytes, "object")
			}
			n, _, err := s.NextObject(&cappedDiscard{left: limits.MaxObjectBytes})
			if err != nil {
				if errors.Is(err, ErrTooLarge) {
					return tooLarge(h.Type, n, limits.MaxObjectBytes, "object")
				}
				return err
			}
			size = max(size, n)
		}
		if size > limits.MaxObjectBytes {
			return tooLarge(h.Type, size, limits.MaxObjectBytes, "object")
		}
		if total += size; total > limits.MaxFetchBytes {
			return fmt.Errorf("%w: the fetched objects inflate to more than %s", ErrTooLarge, mib(limits.MaxFetchBytes))
		}
	}
	return nil
}

func tooLarge(t plumbing.ObjectType, size, limit int64, what string) error {
	return fmt.Errorf("%w: a %s %s inflates to %s or more, over the %s limit", ErrTooLarge, t, what, mib(size), mib(limit))
}

func mib(n int64) string { return fmt.Sprintf("%d MiB", (n+(1<<20)-1)>>20) }

// deltaHeader keeps the start of an inflated delta, where the sizes of its
// base and of its result are encoded, and counts the rest.
type deltaHeader struct {
	head [32]byte
	n    int
}

func (d *deltaHeader) Write(p []byte) (int, error) {
	if d.n < len(d.head) {
		copy(d.head[d.n:], p)
	}
	d.n += len(p)
	return len(p), nil
}

// targetSize decodes the second little-endian base-128 number of the
// delta; an unreadable header counts as unlimited.
func (d *deltaHeader) targetSize() int64 {
	b := d.head[:min(d.n, len(d.head))]
	var sizes [2]int64
	for k := range sizes {
		var v int64
		var shift uint
		for {
			if len(b) == 0 || shift > 56 {
				return 1 << 62
			}
			c := b[0]
			b = b[1:]
			v |= int64(c&0x7f) << shift
			shift += 7
			if c&0x80 == 0 {
				break
			}
		}
		sizes[k] = v
	}
	return sizes[1]
}

// cappedDiscard counts what it is given and fails past its limit.
type cappedDiscard struct{ left int64 }

func (c *cappedDiscard) Write(p []byte) (int, error) {
	if c.left -= int64(len(p)); c.left < 0 {
		return 0, ErrTooLarge
	}
	return len(p), nil
}
