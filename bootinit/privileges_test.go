package bootinit

import (
	"fmt"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestCapsToDrop(t *testing.T) {
	const (
		dockerDefault = 0xa80425fb
		sysAdmin      = 1 << unix.CAP_SYS_ADMIN
		all           = 0x1fffeffffff // --privileged on a host whose root lacks CAP_SYS_RESOURCE
	)
	status := func(seccomp int, bounding uint64) []byte {
		return fmt.Appendf(nil, "Name:\tbootinit\nCapInh:\t0000000000000000\nCapBnd:\t%016x\nNoNewPrivs:\t0\nSeccomp:\t%d\n", bounding, seccomp)
	}
	for _, tc := range []struct {
		name     string
		seccomp  int
		bounding uint64
		keep     bool
		want     uint64
	}{
		{"--cap-add SYS_ADMIN", 2, dockerDefault | sysAdmin, false, sysAdmin},
		{"and NET_ADMIN", 2, dockerDefault | sysAdmin | 1<<unix.CAP_NET_ADMIN, false, sysAdmin},
		{"MKBOOTFS_KEEP_SYS_ADMIN=1", 2, dockerDefault | sysAdmin, true, 0},
		{"--privileged", 0, all, false, 0},
		{"seccomp=unconfined is not privileged", 0, dockerDefault | sysAdmin, false, sysAdmin},
		{"--cap-drop ALL", 2, bootCaps, false, bootCaps},
		{"--cap-drop ALL, some", 2, sysAdmin | 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_SYS_CHROOT, false, sysAdmin | 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_SYS_CHROOT},
		{"--cap-drop ALL, SYS_ADMIN alone", 2, sysAdmin, false, sysAdmin},
		{"--cap-drop ALL and another", 2, sysAdmin | 1<<unix.CAP_DAC_OVERRIDE | 1<<unix.CAP_NET_BIND_SERVICE, false, sysAdmin},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := capsToDrop(status(tc.seccomp, tc.bounding), tc.keep); got != tc.want {
				t.Errorf("capsToDrop = %#x, want %#x", got, tc.want)
			}
		})
	}
}

func TestAppArmorProfile(t *testing.T) {
	for _, tc := range []struct {
		name           string
		enabled, label string
		env, want      string
	}{
		{"no AppArmor", "", "", "", ""},
		{"AppArmor off", "N\n", "unconfined\n", "", ""},
		{"confined by docker", "Y\n", "docker-default (enforce)\n", "", ""},
		{"confined, a profile named", "Y\n", "docker-default (enforce)\n", "my-profile", ""},
		{"apparmor=unconfined", "Y\n", "unconfined\n", "", defaultAppArmor},
		{"apparmor=unconfined, a profile named", "Y\n", "unconfined\n", "my-profile", "my-profile"},
		{"apparmor=unconfined, the app too", "Y\n", "unconfined\n", "unconfined", ""},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := appArmorProfile([]byte(tc.enabled), []byte(tc.label), tc.env); got != tc.want {
				t.Errorf("appArmorProfile = %q, want %q", got, tc.want)
			}
		})
	}
}

// TestAppArmorOnExecRefused: on a host without AppArmor, where no boot
// asks for a profile, asking fails with an error naming the profile and
// what picks another, rather than run the app unconfined.
func TestAppArmorOnExecRefused(t *testing.T) {
	if b, _ := os.ReadFile("/sys/module/apparmor/parameters/enabled"); len(b) > 0 && b[0] == 'Y' {
		t.Skip("AppArmor is on: the write would set this thread's profile on exec")
	}
	errs := make(chan error)
	go func() {
		runtime.LockOSThread() // never unlocked: the thread ends with the goroutine
		errs <- appArmorOnExec("docker-default")
	}()
	err := <-errs
	if err == nil || !strings.Contains(err.Error(), "AppArmor profile docker-default") || !strings.Contains(err.Error(), "MKBOOTFS_APPARMOR_PROFILE") {
		t.Errorf("appArmorOnExec without AppArmor: %v", err)
	}
}
