package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// ociVersion is the runtime specification the configuration follows;
// Debian 12's runc 1.1 implements it.
const ociVersion = "1.0.2"

// cpuPeriod is the CFS period the CPU limit is a quota of, in µs.
const cpuPeriod = 100000

// hostDirs are the host's top-level directories of programs and
// libraries: read-only bind mounts, or the same symlinks where /usr is
// merged (/bin -> usr/bin).
var hostDirs = []string{"/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"}

// hostEtc are the host's files and directories under /etc a toolchain
// needs and that hold nothing secret: CA certificates, Debian's
// alternatives (awk, editors), the dynamic linker's cache.
var hostEtc = []string{"/etc/ssl/certs", "/etc/alternatives", "/etc/ld.so.cache"}

// path is the PATH of commands that set none.
const path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// spec is the container's runtime configuration.
func (rt *Runtime) spec(id string, c Command, netns string) (*specs.Spec, error) {
	env := c.Env
	if !hasVar(env, "PATH") {
		p := path
		if rt.goroot != "" {
			p = filepath.Join(rt.goroot, "bin") + ":" + p
		}
		env = append([]string{"PATH=" + p}, env...)
	}
	dir := c.Dir
	if dir == "" {
		dir = "/"
	}
	nofile := uint64(c.Limits.OpenFiles)
	var rlimits []specs.POSIXRlimit
	if nofile > 0 {
		// Raising a hard limit needs CAP_SYS_RESOURCE, which the server
		// may lack: never ask for more than it has.
		var cur syscall.Rlimit
		if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &cur); err == nil && cur.Max < nofile {
			nofile = cur.Max
		}
		rlimits = append(rlimits, specs.POSIXRlimit{Type: "RLIMIT_NOFILE", Hard: nofile, Soft: nofile})
	}
	if c.Limits.FileSize > 0 {
		fs := uint64(c.Limits.FileSize)
		rlimits = append(rlimits, specs.POSIXRlimit{Type: "RLIMIT_FSIZE", Hard: fs, Soft: fs})
	}
	if c.Limits.CPUTime > 0 {
		secs := uint64(c.Limits.CPUTime.Seconds() + 0.5)
		rlimits = append(rlimits, specs.POSIXRlimit{Type: "RLIMIT_CPU", Hard: secs, Soft: secs})
	}
	rlimits = append(rlimits, specs.POSIXRlimit{Type: "RLIMIT_CORE", Hard: 0, Soft: 0})

	mounts, err := rt.mounts(c.Mounts)
	if err != nil {
		return nil, err
	}
	namespaces := []specs.LinuxNamespace{
		{Type: specs.PIDNamespace}, {Type: specs.IPCNamespace}, {Type: specs.UTSNamespace},
		{Type: specs.MountNamespace}, {Type: specs.CgroupNamespace},
		{Type: specs.NetworkNamespace, Path: netns},
	}
	return &specs.Spec{
		Version: ociVersion,
		Root:    &specs.Root{Path: rt.rootfs, Readonly: true},
		Process: &specs.Process{
			Args: c.Args, Env: env, Cwd: dir,
			User:            specs.User{UID: UID, GID: GID},
			NoNewPrivileges: true,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: []string{}, Effective: []string{}, Inheritable: []string{}, Permitted: []string{}, Ambient: []string{},
			},
			Rlimits: rlimits,
		},
		Hostname: "sandbox",
		Mounts:   mounts,
		Linux: &specs.Linux{
			CgroupsPath: "/slipway/" + id,
			Namespaces:  namespaces,
			Resources:   resources(c.Limits),
			Seccomp:     seccompProfile(),
			MaskedPaths: []string{
				"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats", "/proc/timer_list",
				"/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware", "/sys/devices/virtual/powercap",
			},
			ReadonlyPaths: []string{"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"},
		},
	}, nil
}

func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

// mounts are the kernel file systems, the host's programs and libraries
// read-only, and the caller's directories.
func (rt *Runtime) mounts(extra []Mount) ([]specs.Mount, error) {
	m := []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		// Its own cgroups, read-only: runtimes size themselves by their
		// limits (Go's GOMAXPROCS, the JVM's heap).
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
	ro := func(p string) specs.Mount {
		return specs.Mount{Destination: p, Type: "bind", Source: p, Options: []string{"bind", "ro", "nosuid", "nodev"}}
	}
	m = append(m, ro("/usr"))
	for _, d := range hostDirs {
		if info, err := os.Lstat(d); err == nil && info.IsDir() {
			m = append(m, ro(d))
		}
	}
	for _, p := range hostEtc {
		if _, err := os.Stat(p); err == nil {
			m = append(m, ro(p))
		}
	}
	if rt.goroot != "" && !under(rt.goroot, "/usr") {
		m = append(m, ro(rt.goroot))
	}
	for _, p := range rt.readOnly {
		if _, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("sandbox: read-only path: %w", err)
		}
		m = append(m, ro(p))
	}
	for _, e := range extra {
		opts := []string{"bind", "nosuid", "nodev"}
		if e.Writable {
			opts = append(opts, "rw")
		} else {
			opts = append(opts, "ro")
		}
		m = append(m, specs.Mount{Destination: e.Destination, Type: "bind", Source: e.Source, Options: opts})
	}
	return m, nil
}

func under(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, dir+"/")
}

// resources are the cgroup limits. Every device is refused but those runc
// creates in /dev (null, zero, full, random, urandom, tty, ptmx).
func resources(l Limits) *specs.LinuxResources {
	r := &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}
	if l.Memory > 0 {
		mem := l.Memory
		r.Memory = &specs.LinuxMemory{Limit: &mem}
		if swapAccounted() {
			swap := l.Memory
			r.Memory.Swap = &swap
		}
	}
	if l.CPU > 0 {
		quota, period := l.CPU*cpuPeriod/1000, uint64(cpuPeriod)
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if l.Processes > 0 {
		r.Pids = &specs.LinuxPids{Limit: l.Processes}
	}
	return r
}

// swapAccounted reports whether the memory cgroup can bound memory and
// swap together (cgroup v1 with swap accounting, or v2).
func swapAccounted() bool {
	for _, p := range []string{"/sys/fs/cgroup/memory/memory.memsw.limit_in_bytes", "/sys/fs/cgroup/cgroup.controllers"} {
		if _, err := os.Stat(p); err == nil {
			return true
		}
	}
	return false
}
