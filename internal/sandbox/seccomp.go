package sandbox

import (
	"runtime"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// refused are system calls a test has no use for and that are the
// kernel's most attacked interfaces from an unprivileged process, or
// need privileges the command does not have. They fail with EPERM.
var refused = []string{
	// Namespaces: a new user namespace hands out capabilities inside it.
	"unshare", "setns",
	// Kernel keyrings, BPF, performance counters, userfaultfd, io_uring.
	"add_key", "request_key", "keyctl", "bpf", "perf_event_open", "userfaultfd",
	"io_uring_setup", "io_uring_enter", "io_uring_register",
	// Mounting and the new mount API.
	"mount", "umount2", "pivot_root", "fsopen", "fsconfig", "fsmount", "fspick", "move_mount", "open_tree", "mount_setattr",
	// Kernel modules, kexec, swap, reboot, accounting, quotas, clocks.
	"init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load", "swapon", "swapoff", "reboot",
	"acct", "quotactl", "settimeofday", "clock_settime", "clock_adjtime", "adjtimex", "syslog",
	// File handles bypass path permission checks.
	"open_by_handle_at", "name_to_handle_at",
	"lookup_dcookie", "vhangup", "nfsservctl",
}

// cloneNewUser is CLONE_NEWUSER: clone may not create a user namespace.
const cloneNewUser = 0x10000000

const (
	errnoEPERM  = 1
	errnoENOSYS = 38
)

// seccompProfile allows every system call but those refused. clone3
// takes its flags in memory a filter cannot read, so it answers ENOSYS,
// on which glibc and Go fall back to clone, whose flags it can.
func seccompProfile() *specs.LinuxSeccomp {
	eperm, enosys := uint(errnoEPERM), uint(errnoENOSYS)
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: architectures(),
		Syscalls: []specs.LinuxSyscall{
			{Names: refused, Action: specs.ActErrno, ErrnoRet: &eperm},
			{Names: []string{"clone"}, Action: specs.ActErrno, ErrnoRet: &eperm,
				Args: []specs.LinuxSeccompArg{{Index: 0, Value: cloneNewUser, ValueTwo: cloneNewUser, Op: specs.OpMaskedEqual}}},
			{Names: []string{"clone3"}, Action: specs.ActErrno, ErrnoRet: &enosys},
		},
	}
}

// architectures are those whose system calls a process of this machine
// can make: the filter applies to each.
func architectures() []specs.Arch {
	switch runtime.GOARCH {
	case "amd64":
		return []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32}
	case "arm64":
		return []specs.Arch{specs.ArchAARCH64, specs.ArchARM}
	}
	return nil
}
