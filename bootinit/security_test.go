package bootinit_test

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// capsAndDevices prints what the app may do: its capabilities in every
// set, a setuid-root program's, the devices it is given, and whether the
// image's own device node opens.
const capsAndDevices = `grep -e ^Cap -e ^NoNewPrivs /proc/self/status
echo setuid:; suidcat /proc/self/status | grep -e ^CapPrm -e ^CapEff
ls /dev
echo x > /opt/null && echo "the image's device node opens"`

// dropAllFlags are what a boot image needs besides SYS_ADMIN with
// --cap-drop ALL.
var dropAllFlags = []string{"--cap-add", "DAC_OVERRIDE", "--cap-add", "SYS_CHROOT", "--cap-add", "SETPCAP"}

// TestPrivilegesLikeTheOriginal runs the converted image with what it
// needs added to the original's flags: the app gets exactly the
// original's capabilities and devices, CAP_SYS_ADMIN and /dev/fuse only
// when asked for.
func TestPrivilegesLikeTheOriginal(t *testing.T) {
	orig, boot, storeDir := converted(t)
	needs := []string{"--device", "/dev/fuse", "--cap-add", "SYS_ADMIN", "-v", storeDir + ":/.bootfs/store:ro"}
	for _, tc := range []struct {
		name         string
		flags, extra []string // docker run's flags for both; for the boot image alone
	}{
		{"root", nil, nil},
		{"nobody", []string{"-u", "nobody"}, nil},
		{"uid:gid", []string{"-u", "1234:5678"}, nil},
		{"NET_ADMIN", []string{"--cap-add", "NET_ADMIN"}, nil},
		{"NET_ADMIN, nobody", []string{"--cap-add", "NET_ADMIN", "-u", "nobody"}, nil},
		{"--cap-drop ALL", []string{"--cap-drop", "ALL"}, dropAllFlags},
		{"--cap-drop ALL, nobody", []string{"--cap-drop", "ALL", "-u", "nobody"}, dropAllFlags},
		{"--cap-drop NET_RAW", []string{"--cap-drop", "NET_RAW"}, nil},
		// Every capability and the host's devices, /dev/fuse among them:
		// bootinit takes none away.
		{"--privileged", []string{"--privileged"}, nil},
		{"--privileged, nobody", []string{"--privileged", "-u", "nobody"}, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			base := append([]string{"run", "--rm"}, tc.flags...)
			want := docker(t, append(append(base, orig), "sh", "-c", capsAndDevices)...)
			got := docker(t, append(append(append(append(base, needs...), tc.extra...), boot), "sh", "-c", capsAndDevices)...)
			if got.stdout != want.stdout || got.code != want.code {
				t.Fatalf("converted: exit %d, stdout:\n%s\nstderr: %s\noriginal: exit %d, stdout:\n%s", got.code, got.stdout, got.stderr, want.code, want.stdout)
			}
		})
	}
	// Asked for, the app keeps what the original would have had with
	// --cap-add SYS_ADMIN --device /dev/fuse.
	t.Run("MKBOOTFS_KEEP_SYS_ADMIN=1", func(t *testing.T) {
		want := docker(t, append(append([]string{"run", "--rm"}, needs...), orig, "sh", "-c", capsAndDevices)...)
		got := docker(t, append(append([]string{"run", "--rm", "-e", "MKBOOTFS_KEEP_SYS_ADMIN=1"}, needs...), boot, "sh", "-c", capsAndDevices)...)
		if got.stdout != want.stdout || got.code != want.code {
			t.Fatalf("converted: exit %d, stdout:\n%s\nstderr: %s\noriginal: exit %d, stdout:\n%s", got.code, got.stdout, got.stderr, want.code, want.stdout)
		}
	})
	// Without CAP_SETPCAP bootinit cannot empty the bounding set: the app
	// then runs with no_new_privs, and gains nothing by a setuid program.
	t.Run("no CAP_SETPCAP", func(t *testing.T) {
		r := docker(t, append(append([]string{"run", "--rm", "--cap-drop", "ALL", "-u", "nobody"}, needs...), "--cap-add", "DAC_OVERRIDE", "--cap-add", "SYS_CHROOT", boot, "sh", "-c", capsAndDevices)...)
		if r.code != 0 || !strings.Contains(r.stdout, "NoNewPrivs:\t1") || strings.Count(r.stdout, "0000000000000000") != 6 {
			t.Fatalf("exit %d, stdout:\n%s\nstderr: %s", r.code, r.stdout, r.stderr)
		}
	})
}

// TestNothingOfBootinitIsReachable looks for bootinit from the app and
// from docker exec, as root and not: its process, its mounts, its files.
func TestNothingOfBootinitIsReachable(t *testing.T) {
	_, boot, storeDir := converted(t)
	look := `for p in root cwd; do ls /proc/1/$p/ >/dev/null 2>&1 && echo "/proc/1/$p is open"; done
for p in environ maps; do head -c1 /proc/1/$p >/dev/null 2>&1 && echo "/proc/1/$p is readable"; done
ls -l /proc/1/fd/ 2>/dev/null | grep -q -- '->' && echo "/proc/1/fd is open"
awk '$5 ~ "^/.bootfs" {print "mounted:", $5}' /proc/self/mountinfo
ls -d /.bootfs 2>/dev/null
for p in /proc/[0-9]*; do ls $p/root/.bootfs/store 2>/dev/null | head -1; done
echo looked`
	for _, user := range []string{"root", "nobody"} {
		t.Run(user, func(t *testing.T) {
			name := "mkbootfs-e2e-reach-" + user
			start(t, name, append(bootFlags(storeDir), "-u", user, boot, "sh", "-c", look+"; exec sleep 600")...)
			waitForLog(t, name, "looked\n")
			if r := docker(t, "logs", name); r.stdout != "looked\n" {
				t.Errorf("the app reaches bootinit:\n%s", r.stdout)
			}
			// docker exec gives a process the container's capabilities,
			// CAP_SYS_ADMIN included, which bootinit cannot take back:
			// with it, the kernel lets a root process read bootinit's
			// memory and environment.
			want := map[string]string{"root": "/proc/1/environ is readable\n/proc/1/maps is readable\nlooked\n", "nobody": "looked\n"}
			for execUser, want := range want {
				if r := docker(t, "exec", "-u", execUser, name, "sh", "-c", look); r.stdout != want {
					t.Errorf("docker exec -u %s reaches bootinit:\n%s%s", execUser, r.stdout, r.stderr)
				}
			}
		})
	}
}

// escape is the cgroup v1 release_agent escape: a root app with
// CAP_SYS_ADMIN mounts a cgroup hierarchy and points its release agent at
// a script it writes in a volume, whose host path mountinfo gives; the
// kernel runs the script as root on the host.
const escape = `vol=/escape
host=$(awk -v m=$vol '$5 == m {print $4}' /proc/self/mountinfo)
d=$(mktemp -d)
mount -t cgroup -o net_cls cgroup $d 2>/dev/null || { echo "mount refused"; exit 0; }
mkdir $d/x && echo 1 > $d/x/notify_on_release
printf '#!/bin/sh\necho escaped > %s/escaped\n' "$host" > $vol/cmd && chmod +x $vol/cmd
echo "$host/cmd" > $d/release_agent || { echo "release_agent refused"; umount $d; exit 0; }
sh -c "echo \$\$ > $d/x/cgroup.procs"
for i in $(seq 50); do [ -e $vol/escaped ] && break; sleep 0.1; done
rmdir $d/x; echo > $d/release_agent; umount $d
cat $vol/escaped 2>/dev/null || echo "not escaped"`

// TestCgroupEscape runs the escape in the original and the converted
// image: it fails in both. Given CAP_SYS_ADMIN on purpose, the converted
// app escapes: the attack is real.
func TestCgroupEscape(t *testing.T) {
	orig, boot, storeDir := converted(t)
	vol := fmt.Sprintf("mkbootfs-e2e-escape-%d", os.Getpid())
	defer docker(t, "volume", "rm", "-f", vol)
	run := func(img string, flags ...string) string {
		docker(t, "volume", "rm", "-f", vol)
		r := docker(t, append(append(append([]string{"run", "--rm"}, flags...), "-v", vol+":/escape", img), "sh", "-c", escape)...)
		if r.code != 0 {
			t.Fatalf("exit %d: %s", r.code, r.stderr)
		}
		return strings.TrimSpace(r.stdout)
	}
	needs := bootFlags(storeDir)
	if got := run(orig); got != "mount refused" {
		t.Errorf("original: %q", got)
	}
	if got := run(boot, needs...); got != "mount refused" {
		t.Errorf("converted: %q", got)
	}
	if got := run(boot, append(needs, "-e", "MKBOOTFS_KEEP_SYS_ADMIN=1")...); got != "escaped" {
		t.Errorf("converted, the app given CAP_SYS_ADMIN: %q; the attack does not work, so its failure above proves nothing", got)
	}
}
