package lab_test

import (
	"bufio"
	"context"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"
)

// hostSnapshot is what the real-node lab may change on the host, read the
// way an administrator would: interfaces, addresses, routes, network
// namespaces, iptables, mounts, kernel settings, cgroups, and the paths
// under /run, /var, /opt and /etc that node agents are known to write.
type hostSnapshot map[string][]string

// volatile removes what changes on its own between two reads: interface
// counters and timers, iptables' packet counters and timestamps.
var volatile = []*regexp.Regexp{
	regexp.MustCompile(`\[\d+:\d+\]`),              // iptables-save counters
	regexp.MustCompile(`^# (Generated|Completed)`), // iptables-save header lines
	regexp.MustCompile(`valid_lft \S+ preferred_lft \S+`),
}

func takeHostSnapshot(t *testing.T, labDir string) hostSnapshot {
	t.Helper()
	s := hostSnapshot{}
	for name, args := range map[string][]string{
		"ip link":       {"ip", "-o", "link", "show"},
		"ip addr":       {"ip", "-o", "addr", "show"},
		"ip route":      {"ip", "route", "show", "table", "all"},
		"ip -6 route":   {"ip", "-6", "route", "show", "table", "all"},
		"ip netns":      {"ip", "netns", "list"},
		"iptables-save": {"iptables-save"},
		"ip6tables":     {"ip6tables-save"},
	} {
		s[name] = commandLines(t, args...)
	}
	s["mounts"] = mounts(t, labDir)
	s["sysctl"] = sysctls(t, []string{
		"vm.overcommit_memory", "vm.panic_on_oom", "kernel.panic", "kernel.panic_on_oops", "kernel.keys.root_maxkeys",
		"kernel.keys.root_maxbytes", "net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding", "net.ipv4.conf.all.route_localnet",
		"net.bridge.bridge-nf-call-iptables", "net.bridge.bridge-nf-call-ip6tables", "net.netfilter.nf_conntrack_max",
	})
	s["cgroups"] = cgroupTops(t)
	// Everything in /run, and everything below the paths that kubelet,
	// containerd and CNI write whatever they are told. (Other directories
	// of /var, /opt and /etc change when packages are installed, which
	// other work on the machine may do meanwhile.)
	s["ls /run"] = listDir(t, "/run", false)
	for _, dir := range []string{"/run/netns", "/run/containerd", "/run/mount", "/var/lib/cni", "/var/lib/kubelet", "/var/lib/containerd",
		"/var/log/containers", "/var/log/pods", "/opt/cni", "/opt/containerd", "/etc/cni", "/usr/libexec/kubernetes"} {
		s["tree "+dir] = listDir(t, dir, true)
	}
	return s
}

func commandLines(t *testing.T, args ...string) []string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, args[0], args[1:]...).Output()
	if err != nil {
		t.Fatalf("%s: %v", strings.Join(args, " "), err)
	}
	var lines []string
	for _, line := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(line, "# ") {
			continue
		}
		for _, re := range volatile {
			line = re.ReplaceAllString(line, "")
		}
		if line = strings.TrimSpace(line); line != "" {
			lines = append(lines, line)
		}
	}
	sort.Strings(lines)
	return lines
}

// mounts lists mount points with their file systems. Mounts below the
// temporary directory belong to other tests, except the lab's own.
func mounts(t *testing.T, labDir string) []string {
	t.Helper()
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := 0
		for i, f := range fields {
			if f == "-" {
				sep = i
			}
		}
		if len(fields) < 5 || sep == 0 || sep+1 >= len(fields) {
			continue
		}
		point := fields[4]
		if strings.HasPrefix(point, os.TempDir()+"/") && !strings.HasPrefix(point, labDir) {
			continue
		}
		out = append(out, point+" "+fields[sep+1])
	}
	sort.Strings(out)
	return out
}

func sysctls(t *testing.T, keys []string) []string {
	t.Helper()
	var out []string
	for _, k := range keys {
		b, err := os.ReadFile(filepath.Join("/proc/sys", strings.ReplaceAll(k, ".", "/")))
		v := strings.TrimSpace(string(b))
		if err != nil {
			v = "absent"
		}
		out = append(out, k+"="+v)
	}
	return out
}

// cgroupTops lists the cgroups directly below each hierarchy.
func cgroupTops(t *testing.T) []string {
	t.Helper()
	var out []string
	roots, _ := filepath.Glob("/sys/fs/cgroup/*")
	roots = append(roots, "/sys/fs/cgroup")
	for _, root := range roots {
		entries, err := os.ReadDir(root)
		if err != nil {
			continue
		}
		for _, e := range entries {
			if e.IsDir() {
				out = append(out, filepath.Join(root, e.Name()))
			}
		}
	}
	sort.Strings(out)
	return out
}

func listDir(t *testing.T, dir string, recursive bool) []string {
	t.Helper()
	var out []string
	if !recursive {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return []string{"absent"}
		}
		for _, e := range entries {
			out = append(out, e.Name())
		}
		return out
	}
	if _, err := os.Lstat(dir); err != nil {
		return []string{"absent"}
	}
	_ = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil {
			out = append(out, p)
		}
		return nil
	})
	return out
}

// diff lists what differs between two snapshots.
func (before hostSnapshot) diff(after hostSnapshot) []string {
	var out []string
	names := make([]string, 0, len(before))
	for name := range before {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		b, a := set(before[name]), set(after[name])
		for line := range a {
			if !b[line] {
				out = append(out, fmt.Sprintf("%s: added %q", name, line))
			}
		}
		for line := range b {
			if !a[line] {
				out = append(out, fmt.Sprintf("%s: removed %q", name, line))
			}
		}
	}
	sort.Strings(out)
	return out
}

func set(lines []string) map[string]bool {
	m := map[string]bool{}
	for _, l := range lines {
		m[l] = true
	}
	return m
}
