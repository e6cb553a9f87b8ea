package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"time"

	"slipway.dev/slipway/internal/upstream"
)

// hostPackages are the Debian packages real nodes need, each with a file
// that shows it is installed: the container runtime and the OCI runtime,
// the CNI plugins, iptables for kube-proxy and kubelet, conntrack for
// kube-proxy's UDP clean-up, ip for the lab's network, and a static
// busybox, the shell of the runner image that Slipway installed in the
// cluster runs pipeline tests in.
var hostPackages = []struct{ pkg, file string }{
	{"containerd", "/usr/bin/containerd"},
	{"runc", "/usr/sbin/runc"},
	{"containernetworking-plugins", "/usr/lib/cni/bridge"},
	{"iptables", "/usr/sbin/iptables"},
	{"conntrack", "/usr/sbin/conntrack"},
	{"iproute2", "/usr/sbin/ip"},
	{"busybox-static", busyboxFile},
}

// ErrNotRoot means the real-node lab cannot run: it creates network
// namespaces, interfaces and cgroups.
var ErrNotRoot = errors.New("real nodes need root (network namespaces, interfaces, cgroups, containerd)")

// EnsureHostPackages installs, with apt-get, the Debian packages real
// nodes need and the machine lacks. Installing them changes nothing that
// runs: Debian's containerd is not started without an init system, and
// the lab runs its own containerd per node.
func EnsureHostPackages(ctx context.Context, progress func(string, ...any)) error {
	if os.Geteuid() != 0 {
		return ErrNotRoot
	}
	var missing []string
	for _, p := range hostPackages {
		if _, err := os.Stat(p.file); err != nil {
			missing = append(missing, p.pkg)
		}
	}
	if len(missing) == 0 {
		return nil
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return fmt.Errorf("real nodes need the packages %s, and apt-get is not here to install them", strings.Join(missing, ", "))
	}
	progress("installing %s with apt-get", strings.Join(missing, ", "))
	for _, args := range [][]string{{"update", "-qq"}, append([]string{"install", "-y", "-qq", "--no-install-recommends"}, missing...)} {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
		cmd := exec.CommandContext(cctx, "apt-get", args...)
		cmd.Env = append(os.Environ(), "DEBIAN_FRONTEND=noninteractive")
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			return fmt.Errorf("apt-get %s: %w\n%s", strings.Join(args, " "), err, tailLines(out, 20))
		}
	}
	for _, p := range hostPackages {
		if _, err := os.Stat(p.file); err != nil {
			return fmt.Errorf("package %s installed but %s is missing", p.pkg, p.file)
		}
	}
	return nil
}

func tailLines(b []byte, n int) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// prepareRealNodes makes what real nodes need present: root, the Debian
// packages, and the node binaries built from the Go module proxy.
func (l *Lab) prepareRealNodes(ctx context.Context) error {
	if err := EnsureHostPackages(ctx, l.progress); err != nil {
		return err
	}
	if err := upstream.EnsureNodes(ctx, upstream.NodeBinDir(), l.progress); err != nil {
		return fmt.Errorf("preparing the real nodes' binaries: %w", err)
	}
	return nil
}
