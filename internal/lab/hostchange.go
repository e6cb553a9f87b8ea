package lab

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A HostChange is one change the real-node lab makes to the machine outside
// its directory. Each is recorded in the lab's state before it is made, so
// that `lab down` undoes exactly what `lab up` did, last first, even when
// up failed or was interrupted half way; undoing something that is already
// gone is not an error.
type HostChange struct {
	Kind ChangeKind `json:"kind"`
	// Name is the interface, namespace, cgroup, path or sysctl key.
	Name string `json:"name"`
	// Dev is the interface of an address or route.
	Dev string `json:"dev,omitempty"`
	// Value is the address (CIDR), the route's destination, or the
	// sysctl's value before the lab changed it.
	Value string `json:"value,omitempty"`
	// Via is the route's gateway.
	Via string `json:"via,omitempty"`
}

// ChangeKind says what a HostChange changed and so how to undo it.
type ChangeKind string

// Kinds of host changes.
const (
	// ChangeLink is a network interface the lab created (deleted on down).
	ChangeLink ChangeKind = "link"
	// ChangeNetns is a named network namespace (ip netns; deleted on down).
	ChangeNetns ChangeKind = "netns"
	// ChangeAddr is an address added to an interface.
	ChangeAddr ChangeKind = "addr"
	// ChangeRoute is a route added to the host's main table.
	ChangeRoute ChangeKind = "route"
	// ChangeSysctl is a kernel setting the lab or a node agent changes;
	// Value holds what it was.
	ChangeSysctl ChangeKind = "sysctl"
	// ChangeCgroup is a cgroup (below every mounted hierarchy) the lab
	// created; on down every process in it is killed and it is removed.
	ChangeCgroup ChangeKind = "cgroup"
	// ChangePath is a file or directory that did not exist before the lab
	// (or a program it started) created it; on down whatever is mounted
	// below it is unmounted and it is removed.
	ChangePath ChangeKind = "path"
	// ChangeMounts means programs mount below Name (container root
	// filesystems, volumes, pod network namespaces): on down everything
	// mounted there is unmounted.
	ChangeMounts ChangeKind = "mounts"
)

func (c HostChange) String() string {
	switch c.Kind {
	case ChangeAddr:
		return fmt.Sprintf("address %s on %s", c.Value, c.Dev)
	case ChangeRoute:
		return fmt.Sprintf("route %s via %s", c.Value, c.Via)
	case ChangeSysctl:
		return fmt.Sprintf("sysctl %s (was %s)", c.Name, c.Value)
	default:
		return fmt.Sprintf("%s %s", c.Kind, c.Name)
	}
}

// same reports whether c and o record the same change; a sysctl is
// recorded once, with the value it had before the first change.
func (c HostChange) same(o HostChange) bool {
	if c.Kind == ChangeSysctl {
		return o.Kind == ChangeSysctl && c.Name == o.Name
	}
	return c == o
}

// record appends change to the state's journal and saves the state, unless
// the journal holds it already. Call it before making the change.
func (l *Lab) record(st *State, change HostChange) error {
	if st.recorded(change) {
		return nil
	}
	st.Host = append(st.Host, change)
	return st.save(l.Dir)
}

// recordPathIfAbsent records path as the lab's when it does not exist yet:
// a program about to start creates it (kubelet and containerd write a few
// fixed paths under /run and /var whatever they are told).
func (l *Lab) recordPathIfAbsent(st *State, path string) error {
	if _, err := os.Lstat(path); err == nil {
		return nil
	}
	return l.record(st, HostChange{Kind: ChangePath, Name: path})
}

// recordSysctl records the current value of a kernel setting, which the
// lab or a program it starts is about to change.
func (l *Lab) recordSysctl(st *State, key string) error {
	v, err := readSysctl(key)
	if err != nil {
		return err
	}
	return l.record(st, HostChange{Kind: ChangeSysctl, Name: key, Value: v})
}

// undoHost undoes the journal (only the changes of kind, unless it is
// empty), last change first. Each undone change leaves the journal at once,
// so an interrupted down resumes where it stopped.
func (l *Lab) undoHost(st *State, kind ChangeKind) error {
	var errs []error
	for i := len(st.Host) - 1; i >= 0; i-- {
		c := st.Host[i]
		if kind != "" && c.Kind != kind {
			continue
		}
		if err := undo(c); err != nil {
			errs = append(errs, fmt.Errorf("undoing %s: %w", c, err))
			continue
		}
		l.progress("undid %s", c)
		st.Host = append(st.Host[:i], st.Host[i+1:]...)
		if err := st.save(l.Dir); err != nil {
			return errors.Join(append(errs, err)...)
		}
	}
	return errors.Join(errs...)
}

func undo(c HostChange) error {
	if (c.Kind == ChangePath || c.Kind == ChangeMounts || c.Kind == ChangeCgroup) &&
		(!filepath.IsAbs(c.Name) || filepath.Clean(c.Name) == "/") {
		// A damaged journal must never turn into "remove everything".
		return fmt.Errorf("refusing to undo %s: not an absolute path below /", c)
	}
	switch c.Kind {
	case ChangeLink:
		if !linkExists(c.Name) {
			return nil
		}
		return ipCmd("link", "del", c.Name)
	case ChangeNetns:
		if _, err := os.Stat(netnsPath(c.Name)); err != nil {
			return nil
		}
		return ipCmd("netns", "del", c.Name)
	case ChangeAddr:
		if !linkExists(c.Dev) || !hasAddr(c.Dev, c.Value) {
			return nil
		}
		return ipCmd("addr", "del", c.Value, "dev", c.Dev)
	case ChangeRoute:
		out, err := ipOutput("route", "show", c.Value)
		if err != nil || !strings.Contains(out, "via "+c.Via+" ") {
			return nil
		}
		return ipCmd("route", "del", c.Value, "via", c.Via)
	case ChangeSysctl:
		return writeSysctl(c.Name, c.Value)
	case ChangeCgroup:
		return removeCgroup(c.Name)
	case ChangeMounts:
		return unmountBelow(c.Name)
	case ChangePath:
		if err := unmountBelow(c.Name); err != nil {
			return err
		}
		return os.RemoveAll(c.Name)
	}
	return fmt.Errorf("unknown kind of host change %q", c.Kind)
}

// ipCmd runs iproute2's ip with a deadline; its error names the command.
func ipCmd(args ...string) error {
	_, err := ipOutput(args...)
	return err
}

func ipOutput(args ...string) (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, "ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, bytes.TrimSpace(out))
	}
	return string(out), nil
}

func linkExists(name string) bool {
	_, err := os.Stat(filepath.Join("/sys/class/net", name))
	return err == nil
}

func hasAddr(dev, cidr string) bool {
	out, err := ipOutput("-o", "addr", "show", "dev", dev)
	return err == nil && strings.Contains(out, " "+cidr+" ")
}

func netnsPath(name string) string { return filepath.Join("/run/netns", name) }

func sysctlPath(key string) string {
	return filepath.Join("/proc/sys", strings.ReplaceAll(key, ".", "/"))
}

func readSysctl(key string) (string, error) {
	b, err := os.ReadFile(sysctlPath(key))
	if err != nil {
		return "", fmt.Errorf("reading sysctl %s: %w", key, err)
	}
	return strings.TrimSpace(string(b)), nil
}

func writeSysctl(key, value string) error {
	if err := os.WriteFile(sysctlPath(key), []byte(value), 0o644); err != nil {
		return fmt.Errorf("setting sysctl %s=%s: %w", key, value, err)
	}
	return nil
}

// mountPoints lists the mount points of this mount namespace, in the
// order they were mounted.
func mountPoints() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var points []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		fields := strings.Fields(s.Text())
		if len(fields) > 4 {
			points = append(points, unescapeMountPath(fields[4]))
		}
	}
	return points, s.Err()
}

// cgroupHierarchies lists the mount points of cgroup file systems (every
// v1 controller hierarchy and, on a hybrid host, the v2 one).
func cgroupHierarchies() ([]string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var roots []string
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 64*1024), 1024*1024)
	for s.Scan() {
		line := s.Text()
		sep := strings.Index(line, " - ")
		if sep < 0 {
			continue
		}
		fields, after := strings.Fields(line[:sep]), strings.Fields(line[sep+3:])
		if len(fields) > 4 && len(after) > 0 && (after[0] == "cgroup" || after[0] == "cgroup2") {
			roots = append(roots, unescapeMountPath(fields[4]))
		}
	}
	return roots, s.Err()
}

// unescapeMountPath undoes mountinfo's octal escapes (\040 for a space).
func unescapeMountPath(p string) string {
	if !strings.Contains(p, `\`) {
		return p
	}
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] == '\\' && i+3 < len(p) {
			if n, err := strconv.ParseUint(p[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(n))
				i += 3
				continue
			}
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// unmountBelow unmounts everything mounted at or below dir, the most
// recent first; a mount still busy is detached.
func unmountBelow(dir string) error {
	dir = filepath.Clean(dir)
	points, err := mountPoints()
	if err != nil {
		return err
	}
	var errs []error
	for i := len(points) - 1; i >= 0; i-- {
		p := points[i]
		if p != dir && !strings.HasPrefix(p, dir+"/") {
			continue
		}
		if err := unix.Unmount(p, 0); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
				errs = append(errs, fmt.Errorf("unmounting %s: %w", p, err))
			}
		}
	}
	return errors.Join(errs...)
}

// createCgroup creates name (e.g. /slipway-worker-01/runtime) in every
// cgroup hierarchy. A new cpuset cgroup starts with no CPUs and no memory
// nodes, so each level gets its parent's: nothing could run in it otherwise.
func createCgroup(name string) error {
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	levels := strings.Split(strings.Trim(name, "/"), "/")
	for _, root := range roots {
		dir := root
		for _, level := range levels {
			parent := dir
			dir = filepath.Join(dir, level)
			if err := os.Mkdir(dir, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
				return fmt.Errorf("creating cgroup %s: %w", dir, err)
			}
			if err := inheritCpuset(parent, dir); err != nil {
				return err
			}
		}
	}
	return nil
}

func inheritCpuset(parent, dir string) error {
	for _, f := range []string{"cpuset.cpus", "cpuset.mems"} {
		cur, err := os.ReadFile(filepath.Join(dir, f))
		if err != nil || len(bytes.TrimSpace(cur)) > 0 {
			continue // not a cpuset hierarchy, or already set
		}
		value, err := os.ReadFile(filepath.Join(parent, f))
		if err != nil {
			return fmt.Errorf("reading %s of cgroup %s: %w", f, parent, err)
		}
		if err := os.WriteFile(filepath.Join(dir, f), value, 0o644); err != nil {
			return fmt.Errorf("setting %s of cgroup %s: %w", f, dir, err)
		}
	}
	return nil
}

// joinCgroup moves pid into cgroup name in every hierarchy.
func joinCgroup(name string, pid int) error {
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	for _, root := range roots {
		procs := filepath.Join(root, name, "cgroup.procs")
		if err := os.WriteFile(procs, []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("moving pid %d into %s: %w", pid, procs, err)
		}
	}
	return nil
}

// cgroupPIDs lists the processes in cgroup name or below it, in any hierarchy.
func cgroupPIDs(name string) (map[int]bool, error) {
	roots, err := cgroupHierarchies()
	if err != nil {
		return nil, err
	}
	pids := map[int]bool{}
	for _, root := range roots {
		top := filepath.Join(root, name)
		err := filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				if errors.Is(err, fs.ErrNotExist) {
					return nil
				}
				return err
			}
			if d.IsDir() || d.Name() != "cgroup.procs" {
				return nil
			}
			b, err := os.ReadFile(p)
			if err != nil {
				return nil // the cgroup went away while walking
			}
			for _, f := range strings.Fields(string(b)) {
				if pid, err := strconv.Atoi(f); err == nil && pid > 1 && pid != os.Getpid() {
					pids[pid] = true
				}
			}
			return nil
		})
		if err != nil {
			return nil, err
		}
	}
	return pids, nil
}

// removeCgroup kills every process in cgroup name (containerd, its shims
// and every container of the node: all started by the lab, and nothing
// else runs there), then removes the cgroup tree from every hierarchy.
func removeCgroup(name string) error {
	deadline := time.Now().Add(30 * time.Second)
	for {
		pids, err := cgroupPIDs(name)
		if err != nil {
			return err
		}
		if len(pids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("processes %v of cgroup %s survived SIGKILL for 30s", keys(pids), name)
		}
		for pid := range pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		time.Sleep(100 * time.Millisecond)
	}
	roots, err := cgroupHierarchies()
	if err != nil {
		return err
	}
	var errs []error
	for _, root := range roots {
		top := filepath.Join(root, name)
		var dirs []string
		_ = filepath.WalkDir(top, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		// Deepest first: a cgroup with children cannot be removed.
		sort.Slice(dirs, func(i, j int) bool { return strings.Count(dirs[i], "/") > strings.Count(dirs[j], "/") })
		for _, d := range dirs {
			if err := removeCgroupDir(d, deadline); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

// removeCgroupDir retries while the kernel still counts exiting tasks.
func removeCgroupDir(dir string, deadline time.Time) error {
	for {
		err := syscall.Rmdir(dir)
		if err == nil || errors.Is(err, syscall.ENOENT) {
			return nil
		}
		if !errors.Is(err, syscall.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("removing cgroup %s: %w", dir, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func keys(m map[int]bool) []int {
	out := make([]int, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Ints(out)
	return out
}
