package testcri_test

import (
	"bytes"
	"os"
	osexec "os/exec"
	"strings"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testcri"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// The harness runs, execs and cleans up: after Stop, no mount is left
// under its directory, nor a process of its containerd's.
func TestContainerd(t *testing.T) {
	testenv.Registry(t)
	image := testenv.RegistryAddr + "/mkbootfs-test/busybox:latest" // scripts/setup.sh pushes it
	c := testcri.Start(t, testcri.Options{})
	c.Pull(t, image)
	pod := c.RunPod(t, "harness")
	id := pod.Run(t, testcri.Container{Name: "once", Image: image, Command: []string{"sh", "-c", "echo out; echo err >&2; exit 3"}})
	if code := c.Wait(t, id, time.Minute); code != 3 {
		t.Errorf("exit code %d, want 3", code)
	}
	if logs := c.Logs(t, id); !strings.Contains(logs, "out") || !strings.Contains(logs, "err") {
		t.Errorf("logs %q, want out and err", logs)
	}
	id = pod.Run(t, testcri.Container{Name: "long", Image: image, Command: []string{"sleep", "600"}})
	var tar bytes.Buffer
	if stderr, err := c.Exec(&tar, id, "tar", "-C", "/", "-cf", "-", "bin/busybox"); err != nil {
		t.Fatalf("exec tar: %v\n%s", err, stderr)
	}
	want, err := os.ReadFile("/bin/busybox")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(tar.Bytes(), want) {
		t.Errorf("exec's tar stream (%d bytes) does not hold busybox (%d bytes) whole", tar.Len(), len(want))
	}
	if _, err := pod.Create(testcri.Container{Name: "missing", Image: testenv.RegistryAddr + "/mkbootfs-test/no-such-image:1"}); err == nil {
		t.Error("creating a container of an image never pulled succeeded")
	}
	dir := c.Dir
	c.Stop()
	if m := testcri.MountsUnder(dir); len(m) > 0 {
		t.Errorf("mounts left after Stop: %q", m)
	}
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s left after Stop: %v", dir, err)
	}
	out, _ := exec("pgrep", "-f", dir)
	if strings.TrimSpace(out) != "" {
		t.Errorf("processes left after Stop: %s", out)
	}
}

func exec(name string, args ...string) (string, error) {
	out, err := osexec.Command(name, args...).CombinedOutput()
	return string(out), err
}
