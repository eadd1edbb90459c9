package bootinit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"log"
	"os"
	"strconv"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
)

// A converted container is never weaker than the original: bootinit needs
// CAP_SYS_ADMIN and /dev/fuse (docker run --cap-add SYS_ADMIN --device
// /dev/fuse), its setuid bit (docker run -u), and on AppArmor hosts no
// profile; the app gets none of them, unless the user asks for them.

// privileges is what the app keeps of what bootinit needed.
type privileges struct {
	// Drop are the capabilities docker gave the container for bootinit
	// alone, which the app does not get (a mask of 1<<CAP_*):
	// CAP_SYS_ADMIN, unless the user asked for the app to keep it
	// (MKBOOTFS_KEEP_SYS_ADMIN=1) or the container is privileged. Where
	// docker gave nothing else (--cap-drop ALL), CAP_DAC_OVERRIDE,
	// CAP_SYS_CHROOT and CAP_SETPCAP too, which bootinit then needs as
	// well: overlayfs makes its work directory mode 000, entering the
	// image is a chroot, and dropping from the bounding set takes
	// CAP_SETPCAP.
	Drop uint64 `json:"drop,omitempty"`
	// AppArmor is the profile the app is to run under, where bootinit runs
	// unconfined on a host with AppArmor; "": none to change to.
	AppArmor string `json:"apparmor,omitempty"`
}

// dropsSysAdmin reports whether the app loses CAP_SYS_ADMIN, and with it
// /dev/fuse.
func (p privileges) dropsSysAdmin() bool { return p.Drop&(1<<unix.CAP_SYS_ADMIN) != 0 }

// defaultAppArmor is the profile docker gives a container unless told
// otherwise.
const defaultAppArmor = "docker-default"

// bootCaps are the capabilities bootinit may need: all a container
// started with --cap-drop ALL is then given.
const bootCaps = 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_SYS_CHROOT | 1<<unix.CAP_SETPCAP

// dropAllFlags are the flags that give bootinit what it needs in a
// container started with --cap-drop ALL.
const dropAllFlags = "--cap-add SYS_ADMIN --cap-add DAC_OVERRIDE --cap-add SYS_CHROOT --cap-add SETPCAP"

// appPrivileges reads from the environment and from bootinit's own
// process what the app keeps.
func appPrivileges() (privileges, error) {
	keep := false
	switch v := os.Getenv(bootconfig.EnvKeepSysAdmin); v {
	case "", "0":
	case "1":
		keep = true
	default:
		return privileges{}, &exitError{exitBoot, fmt.Errorf("%s=%q: want 1 (the app keeps CAP_SYS_ADMIN and /dev/fuse) or 0 (the default)", bootconfig.EnvKeepSysAdmin, v)}
	}
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return privileges{}, err
	}
	enabled, _ := os.ReadFile("/sys/module/apparmor/parameters/enabled")
	label, _ := os.ReadFile("/proc/self/attr/current")
	return privileges{Drop: capsToDrop(status, keep), AppArmor: appArmorProfile(enabled, label, os.Getenv(bootconfig.EnvAppArmor))}, nil
}

// appArmorProfile returns privileges.AppArmor: where AppArmor is on
// (enabled is /sys/module/apparmor/parameters/enabled) and bootinit runs
// unconfined (label is /proc/self/attr/current), as docker runs a boot
// image on such a host told --security-opt apparmor=unconfined so that
// bootinit may mount, the profile named by env (MKBOOTFS_APPARMOR_PROFILE),
// docker-default unless it names one, none if it says unconfined.
// Elsewhere none: bootinit already runs under the profile docker gave the
// container, which the app inherits.
func appArmorProfile(enabled, label []byte, env string) string {
	if !bytes.HasPrefix(enabled, []byte("Y")) || strings.TrimSpace(string(label)) != "unconfined" {
		return ""
	}
	switch env {
	case "":
		return defaultAppArmor
	case "unconfined":
		return ""
	}
	return env
}

// capsToDrop returns privileges.Drop for a process whose
// /proc/self/status is status; keep is MKBOOTFS_KEEP_SYS_ADMIN=1.
func capsToDrop(status []byte, keep bool) uint64 {
	seccomp, bounding := statusCaps(status)
	switch {
	case keep || isPrivileged(seccomp, bounding):
		return 0
	case bounding&^bootCaps == 0:
		return bounding
	}
	return 1 << unix.CAP_SYS_ADMIN
}

// privilegedCaps are capabilities that docker gives only to a privileged
// container (or one given them by name, with seccomp off too).
const privilegedCaps = 1<<unix.CAP_SYS_ADMIN | 1<<unix.CAP_SYS_MODULE | 1<<unix.CAP_SYS_RAWIO | 1<<unix.CAP_SYS_PTRACE | 1<<unix.CAP_NET_ADMIN

// statusCaps reads the seccomp mode and the bounding set from
// /proc/self/status; seccomp is -1 when it is not there.
func statusCaps(status []byte) (seccomp int, bounding uint64) {
	seccomp = -1
	sc := bufio.NewScanner(bytes.NewReader(status))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		v = strings.TrimSpace(v)
		switch k {
		case "Seccomp":
			seccomp, _ = strconv.Atoi(v)
		case "CapBnd":
			bounding, _ = strconv.ParseUint(v, 16, 64)
		}
	}
	return seccomp, bounding
}

// isPrivileged reports whether a process with this seccomp mode and
// bounding set is one of a privileged container (docker run
// --privileged): no seccomp filter, and capabilities only such a container
// has.
func isPrivileged(seccomp int, bounding uint64) bool {
	return seccomp == 0 && bounding&privilegedCaps == privilegedCaps
}

// dropPrivileges gives this thread the app's identity and privileges: the
// real user and group docker started bootinit as (the setuid bit changed
// only the effective ones), and the capabilities docker gave the container
// less p.Drop, in every set. Capabilities are a thread's: the caller is
// locked to its thread, and execs the app on it.
func dropPrivileges(id identity, p privileges, logger *log.Logger) error {
	noNewPrivs := false
	// CAP_SETPCAP last: dropping from the bounding set takes it.
	for _, c := range append(capsOf(p.Drop&^(1<<unix.CAP_SETPCAP)), capsOf(p.Drop&(1<<unix.CAP_SETPCAP))...) {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); errors.Is(err, unix.EPERM) {
			// No CAP_SETPCAP: the bounding set keeps c, and no_new_privs
			// keeps the app and what it runs from ever gaining it.
			noNewPrivs = true
		} else if err != nil {
			return fmt.Errorf("dropping capability %d from the bounding set: %w", c, err)
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, c, 0, 0); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("dropping capability %d from the ambient set: %w", c, err)
		}
	}
	if err := dropCapabilities(p.Drop); err != nil {
		return err
	}
	// Leaving uid 0 clears the permitted and effective sets.
	if err := syscall.Setresgid(int(id.GID), int(id.GID), int(id.GID)); err != nil {
		return fmt.Errorf("setresgid %d: %w", id.GID, err)
	}
	if err := syscall.Setresuid(int(id.UID), int(id.UID), int(id.UID)); err != nil {
		return fmt.Errorf("setresuid %d: %w", id.UID, err)
	}
	if noNewPrivs {
		logger.Printf("no CAP_SETPCAP to drop bootinit's capabilities from the bounding set: the app runs with no_new_privs")
		if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
			return fmt.Errorf("no_new_privs: %w", err)
		}
	}
	if p.AppArmor != "" {
		if err := appArmorOnExec(p.AppArmor); err != nil {
			return err
		}
	}
	return nil
}

// capsOf lists the capabilities of a mask.
func capsOf(mask uint64) []uintptr {
	var caps []uintptr
	for c := uintptr(0); c < 64; c++ {
		if mask&(1<<c) != 0 {
			caps = append(caps, c)
		}
	}
	return caps
}

// dropCapabilities removes the capabilities of mask from this thread's
// effective, permitted and inheritable sets.
func dropCapabilities(mask uint64) error {
	if mask == 0 {
		return nil
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	for i := range data {
		bits := uint32(mask >> (32 * i))
		data[i].Effective &^= bits
		data[i].Permitted &^= bits
		data[i].Inheritable &^= bits
	}
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		return fmt.Errorf("capset: %w", err)
	}
	return nil
}

// appArmorOnExec makes the exec that follows, on this thread, enter
// AppArmor profile name. The attribute is the thread's: the kernel refuses
// (EACCES) a write to another task's, which /proc/self/attr is for any
// thread but the main one; runc writes /proc/thread-self's too.
func appArmorOnExec(name string) error {
	attr := "/proc/thread-self/attr/apparmor/exec"
	if _, err := os.Stat(attr); err != nil {
		attr = "/proc/thread-self/attr/exec" // before Linux 5.8
	}
	if err := os.WriteFile(attr, []byte("exec "+name), 0); err != nil {
		return fmt.Errorf("running the app under the AppArmor profile %s (%s=PROFILE picks another): %w", name, bootconfig.EnvAppArmor, err)
	}
	return nil
}
