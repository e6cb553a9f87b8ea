package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
)

// writeRootfs lays out the root file system every container shares,
// read-only: mount points, the symlinks of a merged /usr, and an /etc of
// its own that names the sandbox's user and nothing of the host's.
func writeRootfs(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := os.Chmod(dir, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"proc", "dev", "sys", "usr", "etc", "etc/ssl/certs", "etc/alternatives", "tmp", "home", "root"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	for _, d := range hostDirs {
		target, err := os.Readlink(d)
		if err != nil {
			continue // a directory of its own, bind mounted, or absent
		}
		link := filepath.Join(dir, d)
		if cur, err := os.Readlink(link); err == nil && cur == target {
			continue
		}
		_ = os.RemoveAll(link)
		if err := os.Symlink(target, link); err != nil {
			return err
		}
	}
	uid, gid := strconv.Itoa(UID), strconv.Itoa(GID)
	files := map[string]string{
		"etc/passwd": "root:x:0:0:root:/root:/usr/sbin/nologin\n" +
			"sandbox:x:" + uid + ":" + gid + ":sandbox:/workspace:/bin/sh\n" +
			"nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
		"etc/group":         "root:x:0:\ntty:x:5:\nsandbox:x:" + gid + ":\nnogroup:x:65534:\n",
		"etc/hosts":         "127.0.0.1\tlocalhost sandbox\n::1\tlocalhost ip6-localhost ip6-loopback\n",
		"etc/hostname":      "sandbox\n",
		"etc/nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n",
		// No resolver inside: with network, HTTP and HTTPS go through the
		// proxy, which resolves names itself.
		"etc/resolv.conf": "# the sandbox has no DNS; HTTP_PROXY and HTTPS_PROXY reach the network when the step has it\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return fmt.Errorf("write %s: %w", name, err)
		}
	}
	// ld.so.cache is a file: its mount point must be one.
	if err := os.WriteFile(filepath.Join(dir, "etc/ld.so.cache"), nil, 0o644); err != nil {
		return err
	}
	return os.Chmod(filepath.Join(dir, "tmp"), 0o1777)
}
