package lab

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestUndoHostRestoresTheMachine makes one change of every kind the way
// `lab up` does (recorded first, then made), plus changes recorded but
// never made (an interrupted up), and checks that undoing the journal
// restores the machine and empties the journal.
func TestUndoHostRestoresTheMachine(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("skipped: changing interfaces, namespaces, cgroups and mounts needs root")
	}
	l := &Lab{Dir: t.TempDir(), Progress: t.Logf}
	st, err := newState()
	if err != nil {
		t.Fatal(err)
	}
	// Whatever happens, leave nothing behind.
	t.Cleanup(func() {
		if st, err := loadState(l.Dir); err == nil && len(st.Host) > 0 {
			_ = l.undoHost(st, "")
		}
	})
	do := func(c HostChange, make func() error) {
		t.Helper()
		if err := l.record(st, c); err != nil {
			t.Fatal(err)
		}
		if make != nil {
			if err := make(); err != nil {
				t.Fatal(err)
			}
		}
	}
	const link, ns, cgroup = "slwtest0", "slipway-undo-test", "/slipway-undo-test"
	path := filepath.Join("/run", "slipway-undo-test")
	sysctl := "kernel.keys.root_maxkeys"
	oldValue, err := readSysctl(sysctl)
	if err != nil {
		t.Fatal(err)
	}

	do(HostChange{Kind: ChangeLink, Name: link}, func() error { return ipCmd("link", "add", link, "type", "bridge") })
	do(HostChange{Kind: ChangeAddr, Name: link, Dev: link, Value: "10.211.0.1/24"}, func() error {
		return ipCmd("addr", "add", "10.211.0.1/24", "dev", link)
	})
	do(HostChange{Kind: ChangeRoute, Name: "10.212.0.0/24", Value: "10.212.0.0/24", Via: "10.211.0.2"}, func() error {
		if err := ipCmd("link", "set", link, "up"); err != nil {
			return err
		}
		return ipCmd("route", "add", "10.212.0.0/24", "via", "10.211.0.2")
	})
	if err := l.recordPathIfAbsent(st, "/run/netns"); err != nil {
		t.Fatal(err)
	}
	do(HostChange{Kind: ChangeNetns, Name: ns}, func() error { return ipCmd("netns", "add", ns) })
	do(HostChange{Kind: ChangePath, Name: path}, func() error {
		if err := os.MkdirAll(filepath.Join(path, "mnt"), 0o700); err != nil {
			return err
		}
		return unix.Mount("tmpfs", filepath.Join(path, "mnt"), "tmpfs", 0, "size=1m")
	})
	do(HostChange{Kind: ChangeSysctl, Name: sysctl, Value: oldValue}, func() error { return writeSysctl(sysctl, "123456") })
	// A second record of the same setting keeps the first, original value.
	do(HostChange{Kind: ChangeSysctl, Name: sysctl, Value: "123456"}, nil)
	do(HostChange{Kind: ChangeCgroup, Name: cgroup}, func() error { return createCgroup(cgroup + "/runtime") })
	sleeper := exec.Command("sleep", "600")
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = sleeper.Wait() }()
	if err := joinCgroup(cgroup+"/runtime", sleeper.Process.Pid); err != nil {
		t.Fatal(err)
	}
	// Recorded, never made: up stopped right after writing the journal.
	do(HostChange{Kind: ChangeLink, Name: "slwtest1"}, nil)
	do(HostChange{Kind: ChangeNetns, Name: "slipway-never-made"}, nil)

	saved, err := loadState(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(saved.Host) != len(st.Host) || len(st.Host) < 9 {
		t.Fatalf("the saved journal holds %d changes, the lab recorded %d, want at least 9: %+v", len(saved.Host), len(st.Host), saved.Host)
	}
	if err := l.undoHost(saved, ""); err != nil {
		t.Fatal(err)
	}

	if linkExists(link) {
		t.Errorf("link %s still exists", link)
	}
	if _, err := os.Stat(netnsPath(ns)); err == nil {
		t.Errorf("network namespace %s still exists", ns)
	}
	if _, err := os.Stat(path); err == nil {
		t.Errorf("%s still exists", path)
	}
	if points, _ := mountPoints(); strings.Contains(strings.Join(points, "\n"), path) {
		t.Errorf("still mounted below %s", path)
	}
	if v, _ := readSysctl(sysctl); v != oldValue {
		t.Errorf("%s = %s, want the original %s", sysctl, v, oldValue)
	}
	roots, err := cgroupHierarchies()
	if err != nil {
		t.Fatal(err)
	}
	for _, root := range roots {
		if _, err := os.Stat(filepath.Join(root, cgroup)); err == nil {
			t.Errorf("cgroup %s still exists in %s", cgroup, root)
		}
	}
	deadline := time.Now().Add(5 * time.Second)
	for unix.Kill(sleeper.Process.Pid, 0) == nil && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	if unix.Kill(sleeper.Process.Pid, 0) == nil {
		t.Errorf("the process in cgroup %s survived", cgroup)
	}
	after, err := loadState(l.Dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(after.Host) != 0 {
		t.Errorf("journal after undo: %+v", after.Host)
	}
}
