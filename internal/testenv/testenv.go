// Package testenv finds the real tools and data that tests run against. A
// missing prerequisite skips the test on a developer's machine and fails it
// on CI (CI=true), where `make test` has installed everything.
package testenv

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the tests run on CI.
func InCI() bool { return os.Getenv("CI") == "true" }

// Missing skips the test, or fails it on CI, because what is missing; how
// says what installs it.
func Missing(t testing.TB, what, how string) {
	t.Helper()
	if InCI() {
		t.Fatalf("prerequisite missing on CI: %s (%s)", what, how)
	}
	t.Skipf("prerequisite missing: %s (%s; `make test` installs it)", what, how)
}

// Command returns the path of a program on PATH.
func Command(t testing.TB, name string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		Missing(t, name, "apt-get install the Debian package that ships it")
	}
	return p
}

// Root requires running as root.
func Root(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		Missing(t, "root", "run the tests as root")
	}
}

// FUSE requires root and /dev/fuse.
func FUSE(t testing.TB) {
	t.Helper()
	Root(t)
	if _, err := os.Stat("/dev/fuse"); err != nil {
		Missing(t, "/dev/fuse", "load the fuse module")
	}
	Command(t, "fusermount3")
}

// Docker requires a running docker daemon.
func Docker(t testing.TB) {
	t.Helper()
	Command(t, "docker")
	if err := exec.Command("docker", "info").Run(); err != nil {
		Missing(t, "a running dockerd", "scripts/setup.sh starts it")
	}
}

// DebianRootfs returns a debootstrap minbase bookworm tree, cached outside
// the repository by scripts/debian-rootfs.sh.
func DebianRootfs(t testing.TB) string {
	t.Helper()
	dir := os.Getenv("MKBOOTFS_DEBIAN_ROOTFS")
	if dir == "" {
		dir = "/var/cache/mkbootfs/rootfs/bookworm-minbase"
	}
	if _, err := os.Stat(dir + "/etc/debian_version"); err != nil {
		Missing(t, "the Debian rootfs "+dir, "scripts/debian-rootfs.sh builds it")
	}
	return dir
}
