package snapshotter_test

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/internal/testcri"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
)

// The mkbootfs binary the tests run the daemon from, built once.
var (
	binOnce sync.Once
	binDir  string
	binErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// mkbootfs builds the mkbootfs binary once per test binary.
func mkbootfs(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		if binDir, binErr = os.MkdirTemp("", "mkbootfs-sn-bin-"); binErr != nil {
			return
		}
		cmd := exec.Command("go", "build", "-trimpath", "-o", binDir, "../cmd/mkbootfs", "../cmd/bootinit")
		cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
		if out, err := cmd.CombinedOutput(); err != nil {
			binErr = fmt.Errorf("building mkbootfs: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return filepath.Join(binDir, "mkbootfs")
}

// daemon is `mkbootfs snapshotter`, run as a process of its own as a
// node runs it.
type daemon struct {
	bin, root, sock, logFile string
	proc                     *os.Process
	done                     chan struct{}
}

// startDaemon starts the snapshotter with a new root; when the test ends
// it is stopped and every mount it made is gone.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	testenv.FUSE(t)
	dir, err := os.MkdirTemp("", "mkbootfs-sn-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{bin: mkbootfs(t), root: filepath.Join(dir, "root"), sock: filepath.Join(dir, "sn.sock"), logFile: filepath.Join(dir, "snapshotter.log")}
	t.Cleanup(func() {
		d.stop(t)
		for _, p := range testcri.MountsUnder(dir) {
			syscall.Unmount(p, syscall.MNT_DETACH)
		}
		os.RemoveAll(dir)
	})
	d.start(t)
	return d
}

// start starts the daemon and waits for its socket.
func (d *daemon) start(t *testing.T) {
	t.Helper()
	logf, err := os.OpenFile(d.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	cmd := exec.Command(d.bin, "snapshotter", "--root", d.root, "--address", d.sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	d.proc, d.done = cmd.Process, make(chan struct{})
	done := d.done
	go func() { cmd.Wait(); close(done) }()
	if err := testcri.WaitSocket(d.sock, 30*time.Second); err != nil {
		t.Fatalf("%v; the snapshotter's log:\n%s", err, d.log())
	}
}

// stop stops the daemon with SIGTERM, or SIGKILL after 15 s.
func (d *daemon) stop(t *testing.T) {
	if d.proc == nil {
		return
	}
	d.proc.Signal(syscall.SIGTERM)
	select {
	case <-d.done:
	case <-time.After(15 * time.Second):
		t.Errorf("the snapshotter did not stop within 15 s of SIGTERM; killed")
		d.proc.Kill()
		<-d.done
	}
	d.proc = nil
}

func (d *daemon) log() string {
	b, _ := os.ReadFile(d.logFile)
	return string(b)
}

// node is a containerd whose CRI uses the snapshotter.
type node struct {
	*testcri.Containerd
	sn *daemon
}

func startNode(t *testing.T) *node {
	t.Helper()
	sn := startDaemon(t)
	return &node{Containerd: testcri.Start(t, testcri.Options{Snapshotter: sn.sock}), sn: sn}
}

// pushed pushes a docker daemon image to the local registry under a name
// of this test process's own; its manifest is deleted when the test ends.
func pushed(t *testing.T, image, name string) string {
	t.Helper()
	testenv.Registry(t)
	ref := fmt.Sprintf("%s/mkbootfs-test/snapshotter-%d/%s", testenv.RegistryAddr, os.Getpid(), name)
	testenv.Run(t, "docker", "tag", image, ref)
	t.Cleanup(func() { exec.Command("docker", "rmi", ref).Run() })
	out := testenv.Run(t, "docker", "push", ref)
	t.Cleanup(func() { deleteManifest(ref, out) })
	return ref
}

// deleteManifest deletes the manifest docker push reported ("digest:
// sha256:... size: N") from the registry.
func deleteManifest(ref, pushOutput string) {
	_, d, ok := strings.Cut(pushOutput, "digest: ")
	if !ok {
		return
	}
	d, _, _ = strings.Cut(d, " ")
	repo, _, _ := strings.Cut(strings.TrimPrefix(ref, testenv.RegistryAddr+"/"), ":")
	req, err := http.NewRequestWithContext(context.Background(), http.MethodDelete, "http://"+testenv.RegistryAddr+"/v2/"+repo+"/manifests/"+d, nil)
	if err != nil {
		return
	}
	if resp, err := http.DefaultClient.Do(req); err == nil {
		resp.Body.Close()
	}
}

// TestCRI runs images through containerd's CRI, as kubelet does, on a
// node whose snapshotter is mkbootfs: one containerd for every subtest.
func TestCRI(t *testing.T) {
	orig := pushed(t, testenv.DebianImage(t), "debian:orig")
	n := startNode(t)

	// An ordinary image is containerd's overlayfs snapshotter's business.
	t.Run("ordinary image", func(t *testing.T) {
		n.Pull(t, orig)
		pod := n.RunPod(t, "ordinary")
		id := pod.Run(t, testcri.Container{Name: "debian", Image: orig, Command: []string{"sh", "-c", "cat /etc/debian_version; echo written > /etc/f && cat /etc/f"}})
		if code := n.Wait(t, id, 2*time.Minute); code != 0 {
			t.Fatalf("exit %d; logs:\n%s", code, n.Logs(t, id))
		}
		if logs := n.Logs(t, id); !strings.HasPrefix(logs, "12.") || !strings.Contains(logs, "written") {
			t.Errorf("logs %q: want Debian 12's version and the written file", logs)
		}
		layers, _ := filepath.Glob(filepath.Join(n.sn.root, "snapshots", "*", "fs", "etc", "debian_version"))
		if len(layers) == 0 {
			t.Errorf("no layer under the snapshotter's root %s holds /etc/debian_version", n.sn.root)
		}
	})
}
