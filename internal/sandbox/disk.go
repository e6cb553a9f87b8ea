package sandbox

import (
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"syscall"
	"time"
)

// diskInterval is how often Run measures the writable mounts. A command
// can write past Limits.Disk for at most this long before it is stopped;
// the free space kept on the file system is the backstop.
const diskInterval = time.Second

// maxEntries bounds the files and directories the writable mounts may
// hold, so that measuring them stays cheap and inodes are not exhausted.
const maxEntries = 1 << 20

// diskWatch measures the directories a command writes to.
type diskWatch struct {
	dirs    []string
	limit   int64
	minFree int64
}

func newDiskWatch(dirs []string, limit, minFree int64) (*diskWatch, error) {
	w := &diskWatch{dirs: dirs, limit: limit, minFree: minFree}
	if len(dirs) == 0 {
		return w, nil
	}
	if free, err := freeSpace(dirs[0]); err == nil && free < minFree {
		return nil, fmt.Errorf("sandbox: not started: the file system of %s has %s free, less than the %s kept free", dirs[0], bytesText(free), bytesText(minFree))
	}
	return w, nil
}

// check returns why the command must stop, or "".
func (w *diskWatch) check() string {
	if len(w.dirs) == 0 {
		return ""
	}
	if free, err := freeSpace(w.dirs[0]); err == nil && free < w.minFree {
		return fmt.Sprintf("the file system of its workspace has %s free, less than the %s kept free", bytesText(free), bytesText(w.minFree))
	}
	if w.limit <= 0 {
		return ""
	}
	used, entries := Usage(w.dirs, w.limit, maxEntries)
	switch {
	case entries > maxEntries:
		return fmt.Sprintf("its workspace, /tmp and caches hold more than %d files", maxEntries)
	case used > w.limit:
		return fmt.Sprintf("its workspace, /tmp and caches take more than the %s of disk it may use", bytesText(w.limit))
	}
	return ""
}

// Usage adds up the disk blocks the files under dirs take, and counts
// them, stopping early once either passes its bound.
func Usage(dirs []string, maxBytes, maxCount int64) (used, count int64) {
	stop := errors.New("over")
	for _, d := range dirs {
		_ = filepath.WalkDir(d, func(_ string, e fs.DirEntry, err error) error {
			if err != nil {
				return nil // removed while walked, or unreadable: not ours to judge
			}
			count++
			if info, err := e.Info(); err == nil {
				if st, ok := info.Sys().(*syscall.Stat_t); ok {
					used += st.Blocks * 512
				}
			}
			if (maxBytes > 0 && used > maxBytes) || (maxCount > 0 && count > maxCount) {
				return stop
			}
			return nil
		})
	}
	return used, count
}

func freeSpace(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * st.Bsize, nil
}

func bytesText(n int64) string {
	switch {
	case n >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(n)/(1<<30))
	case n >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(n)/(1<<20))
	}
	return fmt.Sprintf("%d bytes", n)
}
