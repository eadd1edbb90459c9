// Package testenv finds the real tools and data that tests run against. A
// missing prerequisite skips the test on a developer's machine and fails it
// on CI (CI=true), where `make test` has installed everything.
package testenv

import (
	"net/http"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
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

// RegistryAddr is where scripts/setup.sh runs Debian's docker-registry.
const RegistryAddr = "127.0.0.1:5000"

// Registry requires the local test registry and returns its address.
func Registry(t testing.TB) string {
	t.Helper()
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Get("http://" + RegistryAddr + "/v2/")
	if err != nil {
		Missing(t, "a registry at "+RegistryAddr, "scripts/setup.sh starts Debian's docker-registry")
	}
	resp.Body.Close()
	return RegistryAddr
}

// DebianImage returns a docker image of the Debian rootfs, importing it
// into the daemon when it is missing.
func DebianImage(t testing.TB) string {
	t.Helper()
	const name = "mkbootfs-test/debian:minbase"
	rootfs := DebianRootfs(t)
	Docker(t)
	if exec.Command("docker", "image", "inspect", name).Run() == nil {
		return name
	}
	cmd := exec.Command("sh", "-c", `tar -C "$1" --xattrs --xattrs-include='*' -cf - . | docker import - "$2"`, "sh", rootfs, name)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("docker import of %s: %v\n%s", rootfs, err, out)
	}
	return name
}

// ToolsBin is where scripts/crictl.sh builds the tools that are not
// Debian packages, outside the repository.
const ToolsBin = "/var/cache/mkbootfs/bin"

// Crictl returns crictl, the CRI client (MKBOOTFS_CRICTL, else the one
// scripts/crictl.sh builds in ToolsBin).
func Crictl(t testing.TB) string {
	t.Helper()
	p := os.Getenv("MKBOOTFS_CRICTL")
	if p == "" {
		p = ToolsBin + "/crictl"
	}
	if _, err := exec.LookPath(p); err != nil {
		Missing(t, "crictl at "+p, "scripts/crictl.sh builds it")
	}
	return p
}

// PauseImage is the pod sandbox image scripts/pause-image.sh pushes to
// the local registry.
const PauseImage = RegistryAddr + "/mkbootfs-test/pause:1"

// Pause requires the pod sandbox image in the local registry and returns
// its reference.
func Pause(t testing.TB) string {
	t.Helper()
	Registry(t)
	req, err := http.NewRequest(http.MethodHead, "http://"+RegistryAddr+"/v2/mkbootfs-test/pause/manifests/1", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Accept", "application/vnd.docker.distribution.manifest.v2+json")
	c := http.Client{Timeout: 5 * time.Second}
	resp, err := c.Do(req)
	if err == nil {
		resp.Body.Close()
	}
	if err != nil || resp.StatusCode != http.StatusOK {
		Missing(t, "the pause image "+PauseImage, "scripts/pause-image.sh pushes it")
	}
	return PauseImage
}

// Run runs a command and fails the test with its output when it fails.
func Run(t testing.TB, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}
