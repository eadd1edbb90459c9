package snapshotter_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootimage"
	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testcri"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testserver"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store/local"
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
	hosts, metrics           string // its --hosts-dir and --metrics-address
	// dockerConfig is its DOCKER_CONFIG: the node's docker config
	// directory, with no credentials until a test writes some.
	dockerConfig string
	flags        []string // more flags of the daemon's
	proc         *os.Process
	done         chan struct{}
}

// startDaemon starts the snapshotter with a new root and more flags; when
// the test ends it is stopped and every mount it made is gone.
func startDaemon(t *testing.T, flags ...string) *daemon {
	t.Helper()
	testenv.FUSE(t)
	dir, err := os.MkdirTemp("", "mkbootfs-sn-")
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{bin: mkbootfs(t), root: filepath.Join(dir, "root"), sock: filepath.Join(dir, "sn.sock"), logFile: filepath.Join(dir, "snapshotter.log"),
		hosts: filepath.Join(dir, "certs.d"), metrics: deadAddr(t), dockerConfig: filepath.Join(dir, "docker"), flags: flags}
	if err := os.Mkdir(d.dockerConfig, 0o700); err != nil {
		t.Fatal(err)
	}
	testcri.WriteHosts(t, d.hosts)
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
	cmd := exec.Command(d.bin, append([]string{"snapshotter", "--root", d.root, "--address", d.sock, "--hosts-dir", d.hosts, "--metrics-address", d.metrics}, d.flags...)...)
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+d.dockerConfig)
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

// kill kills the daemon with SIGKILL, as a crash or an OOM kill would.
func (d *daemon) kill() {
	d.proc.Kill()
	<-d.done
	d.proc = nil
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

// startNode starts a containerd whose CRI uses a snapshotter started with
// flags.
func startNode(t *testing.T, flags ...string) *node {
	t.Helper()
	sn := startDaemon(t, flags...)
	return &node{Containerd: testcri.Start(t, testcri.Options{Snapshotter: sn.sock}), sn: sn}
}

// images are the images the tests run, in the local registry.
type images struct {
	rootfs string // the Debian tree they are all of
	orig   string // the original: the tree imported, as docker does
	boot   string // its boot image, its chunks served over HTTP
	// corrupt is boot with a byte of its index flipped; deadStore is of
	// a small tree of its own, and its boot config records a store that is
	// down.
	deadStore, corrupt string
	// suidOrig is the original with a setuid-root cat and device nodes
	// outside /dev (suidImage), suidBoot its boot image.
	suidOrig, suidBoot string
	ownLayer           func(ref string) string // the digest of a boot image's own layer
}

// suidImage adds to the Debian image a setuid-root cat, which shows the
// identity a setuid program gets (suidcat /proc/self/status), and device
// nodes where the container's /dev does not hide them: a null device,
// which the container's device cgroup allows, and a memory one, which it
// denies.
const suidImage = `FROM %s
RUN cp /bin/cat /usr/local/bin/suidcat && chmod 4755 /usr/local/bin/suidcat && mknod -m 666 /opt/null c 1 3 && mknod -m 666 /opt/mem c 1 1
`

// testImages converts the Debian tree into a store served over HTTP while
// the test runs, and pushes the original and the boot images.
func testImages(t *testing.T) *images {
	t.Helper()
	im := &images{rootfs: testenv.DebianRootfs(t)}
	im.orig = pushed(t, testenv.DebianImage(t), "debian:orig")
	ctx := context.Background()
	l, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(ctx, converter.Options{Source: "dir:" + im.rootfs, Store: l, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	bin, err := os.ReadFile(filepath.Join(filepath.Dir(mkbootfs(t)), "bootinit"))
	if err != nil {
		t.Fatal(err)
	}
	own := map[string]string{}
	im.ownLayer = func(ref string) string { return own[ref] }
	write := func(name string, res *converter.Result, l *local.Store, stores []string, edit func(v1.Image) v1.Image) string {
		img, err := converter.BootImage(ctx, res, bin, l, stores)
		if err != nil {
			t.Fatal(err)
		}
		if edit != nil {
			img = edit(img)
		}
		ref := registryRef(t, name)
		if err := converter.WriteImage(ctx, img, ref); err != nil {
			t.Fatal(err)
		}
		layers, err := img.Layers()
		if err != nil {
			t.Fatal(err)
		}
		d, err := layers[bootimage.OwnLayer].Digest()
		if err != nil {
			t.Fatal(err)
		}
		own[ref] = d.String()
		return ref
	}
	im.boot = write("debian:boot", res, l, []string{testserver.HTTP(t, l, false)}, nil)
	im.corrupt = write("debian:corrupt", res, l, []string{testserver.HTTP(t, l, false)}, func(img v1.Image) v1.Image { return corruptIndex(t, img) })
	// Chunks of their own, which the node cache cannot have.
	tree := t.TempDir()
	random := make([]byte, 1<<20)
	rand.Read(random)
	if err := os.WriteFile(filepath.Join(tree, "random"), random, 0o644); err != nil {
		t.Fatal(err)
	}
	l2, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	res2, err := converter.Convert(ctx, converter.Options{Source: "dir:" + tree, Store: l2, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	im.deadStore = write("random:dead-store", res2, l2, []string{"http://" + deadAddr(t) + "/store/"}, nil)

	suid := fmt.Sprintf("mkbootfs-test/debian:suid-%d", os.Getpid())
	build := exec.Command("docker", "build", "-q", "-t", suid, "-")
	build.Stdin = strings.NewReader(fmt.Sprintf(suidImage, testenv.DebianImage(t)))
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("docker build: %v\n%s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "rmi", suid).Run() })
	im.suidOrig = pushed(t, suid, "debian:suid")
	res3, err := converter.Convert(ctx, converter.Options{Source: "docker-daemon:" + suid, Store: l, TmpDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	im.suidBoot = write("debian:suid-boot", res3, l, []string{testserver.HTTP(t, l, false)}, nil)
	return im
}

// registryRef names an image of this test process's own in the local
// registry; its manifest is deleted when the test ends.
func registryRef(t *testing.T, name string) string {
	t.Helper()
	testenv.Registry(t)
	ref := fmt.Sprintf("%s/mkbootfs-test/snapshotter-%d/%s", testenv.RegistryAddr, os.Getpid(), name)
	t.Cleanup(func() { deleteManifest(ref) })
	return ref
}

// pushed pushes a docker daemon image to the local registry under a name
// of this test process's own.
func pushed(t *testing.T, image, name string) string {
	t.Helper()
	ref := registryRef(t, name)
	testenv.Run(t, "docker", "tag", image, ref)
	t.Cleanup(func() { exec.Command("docker", "rmi", ref).Run() })
	testenv.Run(t, "docker", "push", "-q", ref)
	return ref
}

// deleteManifest deletes the manifest ref's tag names from the registry.
func deleteManifest(ref string) {
	repo, tag, _ := strings.Cut(strings.TrimPrefix(ref, testenv.RegistryAddr+"/"), ":")
	base := "http://" + testenv.RegistryAddr + "/v2/" + repo + "/manifests/"
	req, err := http.NewRequest(http.MethodHead, base+tag, nil)
	if err != nil {
		return
	}
	req.Header.Set("Accept", "application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.v2+json")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return
	}
	resp.Body.Close()
	if d := resp.Header.Get("Docker-Content-Digest"); d != "" {
		if req, err := http.NewRequest(http.MethodDelete, base+d, nil); err == nil {
			if resp, err := http.DefaultClient.Do(req); err == nil {
				resp.Body.Close()
			}
		}
	}
}

// deadAddr returns a loopback address nothing listens on.
func deadAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// corruptIndex returns img with a byte of its index flipped.
func corruptIndex(t *testing.T, img v1.Image) v1.Image {
	t.Helper()
	layers, err := img.Layers()
	if err != nil {
		t.Fatal(err)
	}
	rc, err := layers[bootimage.OwnLayer].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	own, err := io.ReadAll(rc)
	if err != nil {
		t.Fatal(err)
	}
	edited := testtree.EditTar(t, own, func(name string, data []byte) []byte {
		if "/"+strings.TrimPrefix(name, "/") == bootconfig.Index {
			data[len(data)/2] ^= 0xff
		}
		return data
	})
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(edited)), nil })
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	bad, err := mutate.AppendLayers(empty.Image, layers[0], layer)
	if err != nil {
		t.Fatal(err)
	}
	badCfg, err := bad.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	c := cfg.DeepCopy()
	c.RootFS.DiffIDs = badCfg.RootFS.DiffIDs
	if bad, err = mutate.ConfigFile(bad, c); err != nil {
		t.Fatal(err)
	}
	return bad
}

// TestCRI runs images through containerd's CRI, as kubelet does, on a
// node whose snapshotter is mkbootfs: one containerd for every subtest.
func TestCRI(t *testing.T) {
	im := testImages(t)
	n := startNode(t)
	ctr := func(name, image string, cmd ...string) testcri.Container {
		return testcri.Container{Name: name, Image: image, Args: cmd}
	}
	pod := n.RunPod(t, "snapshotter")

	// An ordinary image is containerd's overlayfs snapshotter's business.
	t.Run("ordinary image", func(t *testing.T) {
		n.Pull(t, im.orig)
		id := pod.Run(t, ctr("ordinary", im.orig, "sh", "-c", "cat /etc/debian_version; echo written > /etc/f && cat /etc/f"))
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

	// A boot image runs with its tree mounted on the node: bootinit only
	// runs the app, and exec sees the image.
	t.Run("boot image", func(t *testing.T) {
		n.Pull(t, im.boot)
		id := pod.Run(t, ctr("boot", im.boot, "sh", "-c", "cat /etc/debian_version; echo written > /etc/f && cat /etc/f; exec sleep 600"))
		if m := lazyMounts(n.sn.root); len(m) != 1 {
			t.Fatalf("lazy mounts %q with a container running; want one; the snapshotter's log:\n%s", m, n.sn.log())
		}
		if out := execOut(t, n, id, "cat", "/etc/os-release"); !strings.Contains(out, "bookworm") {
			t.Errorf("exec: /etc/os-release is %q", out)
		}
		if logs := n.Logs(t, id); !strings.HasPrefix(logs, "12.") || !strings.Contains(logs, "written") {
			t.Errorf("logs %q: want Debian 12's version and the written file", logs)
		}
		// The app is the container's only process, as in the original.
		if out := execOut(t, n, id, "cat", "/proc/1/cmdline"); !strings.Contains(out, "sleep") && !strings.Contains(out, "pause") {
			t.Errorf("pid 1 is %q", out)
		}
	})

	t.Run("exact tree", func(t *testing.T) {
		n.Pull(t, im.boot)
		id := pod.Run(t, ctr("tree", im.boot, "sleep", "600"))
		got := t.TempDir()
		var tarball bytes.Buffer
		if stderr, err := n.Exec(&tarball, id, "tar", "-C", "/", "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls",
			"--exclude=./proc", "--exclude=./sys", "--exclude=./dev", "--exclude=./.bootfs", "-cf", "-", "."); err != nil {
			t.Fatalf("exec tar: %v\n%s", err, stderr)
		}
		x := exec.Command("tar", "-C", got, "--numeric-owner", "--xattrs", "--xattrs-include=*", "--acls", "-xpf", "-")
		x.Stdin = &tarball
		if out, err := x.CombinedOutput(); err != nil {
			t.Fatalf("tar -x: %v\n%s", err, out)
		}
		// The times of the root and of /etc are the container's, as in the
		// original's: runc makes the mount point /etc/hosts where the image
		// has none.
		testenv.Run(t, "touch", "-r", im.rootfs, got)
		testenv.Run(t, "touch", "-r", im.rootfs+"/etc", got+"/etc")
		out := testenv.Run(t, "rsync", "-naHAXci", "--delete", "--exclude=/proc", "--exclude=/sys", "--exclude=/dev",
			"--exclude=/etc/hosts", "--exclude=/etc/hostname", "--exclude=/etc/resolv.conf", im.rootfs+"/", got+"/")
		if out != "" {
			t.Errorf("the tree in the container differs from the original (rsync -naHAXci):\n%s", out)
		}
	})

	// The app's identity, capabilities, devices and setuid programs are the
	// original's: bootinit's setuid bit leaves nothing behind, also where
	// it takes effect (runc's first exec downgrades it here; a shell's
	// does not).
	t.Run("capabilities and devices", func(t *testing.T) {
		script := `grep -E '^(Uid|Gid|Groups|Cap|NoNewPrivs|Seccomp)' /proc/self/status; stat -c '%A %t:%T %U:%G %n' /dev/*; cat /proc/1/cmdline | tr '\0' ' '; echo
mkfifo /tmp/p; exec 3<>/tmp/p; chfn <&3 >/dev/null 2>&1 & pid=$!; sleep 1; echo setuid chfn:; grep -E '^(Uid|Gid)' /proc/$pid/status; kill $pid
echo started again:; status='grep -E ^(Uid|Gid|Cap(Prm|Eff)) /proc/self/status'
if [ -e /.bootfs/bootinit ]; then /.bootfs/bootinit -- $status; else $status; fi`
		n.Pull(t, im.orig)
		n.Pull(t, im.boot)
		nobody := int64(65534)
		for _, tc := range []struct {
			name string
			user *int64
			nnp  bool
		}{{"root", nil, false}, {"user", &nobody, false}, {"user no-new-privileges", &nobody, true}} {
			t.Run(tc.name, func(t *testing.T) {
				var outs []string
				for _, image := range []string{im.orig, im.boot} {
					c := ctr("caps", image, "sh", "-c", script)
					c.User, c.NoNewPrivs = tc.user, tc.nnp
					c.Name = fmt.Sprintf("caps-%d", len(outs))
					id := pod.Run(t, c)
					if code := n.Wait(t, id, 2*time.Minute); code != 0 {
						t.Fatalf("%s: exit %d; logs:\n%s", image, code, n.Logs(t, id))
					}
					outs = append(outs, n.Logs(t, id))
					n.TryCrictl("rm", id)
				}
				if outs[0] != outs[1] {
					t.Errorf("original:\n%s\nboot image:\n%s", outs[0], outs[1])
				}
			})
		}
	})

	// The image's setuid programs and device nodes work in the container
	// as in the original's, though the lazy mount under it is nosuid,nodev
	// on the host: the container's overlay is the mount they are used
	// through. Through crictl exec, as a user: a setuid-root cat gives
	// euid 0 and reads /etc/shadow (not with no-new-privileges); the null
	// device opens, the memory one is the device cgroup's to refuse
	// (EPERM), not the mount's (EACCES).
	t.Run("setuid program and device nodes", func(t *testing.T) {
		script := `suidcat /proc/self/status | grep -E '^(Uid|Gid)'
suidcat /etc/shadow 2>&1 | head -n 1 | sed 's/:[0-9]*:/:DAYS:/'
echo x > /opt/null && echo wrote /opt/null
cat /opt/mem 2>&1 >/dev/null | sed 's/^[^:]*: //'`
		n.Pull(t, im.suidOrig)
		n.Pull(t, im.suidBoot)
		nobody := int64(65534)
		for _, tc := range []struct {
			name string
			user *int64
			nnp  bool
			want []string // lines both outputs hold
		}{
			{"root", nil, false, []string{"Uid:\t0\t0\t0\t0", "root:*:DAYS:", "wrote /opt/null", "/opt/mem: Operation not permitted"}},
			{"user", &nobody, false, []string{"Uid:\t65534\t0\t0\t0", "root:*:DAYS:", "wrote /opt/null", "/opt/mem: Operation not permitted"}},
			{"user no-new-privileges", &nobody, true, []string{"Uid:\t65534\t65534\t65534\t65534", "/etc/shadow: Permission denied", "wrote /opt/null"}},
		} {
			t.Run(tc.name, func(t *testing.T) {
				var outs []string
				for i, image := range []string{im.suidOrig, im.suidBoot} {
					c := ctr(fmt.Sprintf("suid-%d", i), image, "sleep", "600")
					c.User, c.NoNewPrivs = tc.user, tc.nnp
					id := pod.Run(t, c)
					outs = append(outs, execOut(t, n, id, "sh", "-c", script))
					n.TryCrictl("rm", "-f", id)
				}
				if outs[0] != outs[1] {
					t.Errorf("original:\n%s\nboot image:\n%s", outs[0], outs[1])
				}
				t.Logf("boot image:\n%s", outs[1])
				for _, w := range tc.want {
					if !strings.Contains(outs[1], w) {
						t.Errorf("boot image: no %q in\n%s", w, outs[1])
					}
				}
			})
		}
		// On the host the lazy mounts are nosuid,nodev: a user who reached
		// one gains nothing by its setuid programs or devices.
		for _, m := range lazyMounts(n.sn.root) {
			var st unix.Statfs_t
			if err := unix.Statfs(m, &st); err != nil {
				t.Fatal(err)
			}
			if st.Flags&unix.ST_NOSUID == 0 || st.Flags&unix.ST_NODEV == 0 {
				t.Errorf("%s: mount flags %#x, want nosuid,nodev", m, st.Flags)
			}
		}
	})

	testFailures(t, n, im, pod)
	testCredentials(t, n, pod)
}

// testCredentials runs boot images from a registry that wants a login,
// their chunks next to them: the snapshotter reads the own layer and the
// mount process the chunks with the credentials of the node's docker
// config, or of containerd's hosts configuration. Without them the own
// layer is an ordinary one, which containerd pulls with the credentials
// kubelet gives it.
func testCredentials(t *testing.T, n *node, pod *testcri.Pod) {
	t.Run("credentials", func(t *testing.T) {
		r := testserver.StartDockerRegistry(t, testserver.RegistryOptions{Auth: true})
		testcri.WriteHosts(t, filepath.Join(n.Dir, "certs.d"), r.Addr)
		testcri.WriteHosts(t, n.sn.hosts, r.Addr)
		login, err := json.Marshal(map[string]any{"auths": map[string]any{r.Addr: map[string]string{
			"auth": base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password)),
		}}})
		if err != nil {
			t.Fatal(err)
		}
		converting := t.TempDir()
		if err := os.WriteFile(filepath.Join(converting, "config.json"), login, 0o600); err != nil {
			t.Fatal(err)
		}
		// A static busybox and a file naming the image: each image's
		// own layer and chunks are its own.
		convert := func(name string) string {
			tree := t.TempDir()
			if err := os.MkdirAll(filepath.Join(tree, "bin"), 0o755); err != nil {
				t.Fatal(err)
			}
			testenv.Run(t, "cp", testenv.Command(t, "busybox"), filepath.Join(tree, "bin", "busybox"))
			if err := os.WriteFile(filepath.Join(tree, "hello"), []byte("hello from "+name+"\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			ref := fmt.Sprintf("%s/mkbootfs-test/creds-%d-%s:1", r.Addr, os.Getpid(), name)
			cmd := exec.Command(mkbootfs(t), "convert", "dir:"+tree, ref)
			cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+converting)
			if out, err := cmd.CombinedOutput(); err != nil || !strings.Contains(string(out), "chunks from oci://"+r.Addr) {
				t.Fatalf("mkbootfs convert dir:%s %s: %v\n%s\nwant its chunks next to it", tree, ref, err, out)
			}
			n.Crictl(t, "pull", "--creds", r.User+":"+r.Password, ref)
			return ref
		}
		hello := testcri.Container{Args: []string{"/bin/busybox", "cat", "/hello"}}

		without := convert("without")
		if log := n.sn.log(); !strings.Contains(log, without+": is it a boot image?") || !strings.Contains(log, "no basic auth credentials") {
			t.Errorf("the snapshotter without credentials does not say it was refused; its log:\n%s", log)
		}
		// bootinit, in a container given no /dev/fuse, cannot mount the
		// tree itself.
		c := hello
		c.Name, c.Image = "creds-without", without
		id := pod.Run(t, c)
		if code := n.Wait(t, id, 2*time.Minute); code == 0 {
			t.Errorf("the boot image ran without a lazy mount of the node's: %s", n.Logs(t, id))
		}

		// A login in containerd's hosts configuration (a header) serves
		// the own layer, and the chunk store in the registry too: the
		// node's docker config has no credentials here.
		basic := base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password))
		hosts := filepath.Join(n.sn.hosts, r.Addr, "hosts.toml")
		plain, err := os.ReadFile(hosts)
		if err != nil {
			t.Fatal(err)
		}
		header := fmt.Sprintf("%s  [host.\"http://%s\".header]\n    Authorization = \"Basic %s\"\n", plain, r.Addr, basic)
		if err := os.WriteFile(hosts, []byte(header), 0o644); err != nil {
			t.Fatal(err)
		}
		inHosts := convert("hosts")
		if !regexp.MustCompile(regexp.QuoteMeta(strings.TrimSuffix(inHosts, ":1")) + "@sha256:[0-9a-f]+: boot image").MatchString(n.sn.log()) {
			t.Errorf("the snapshotter did not take %s for a boot image with the login of hosts.toml; its log:\n%s", inHosts, n.sn.log())
		}
		c.Name, c.Image = "creds-hosts", inHosts
		id = pod.Run(t, c)
		if code := n.Wait(t, id, 2*time.Minute); code != 0 || n.Logs(t, id) != "hello from hosts" {
			t.Errorf("exit %d, logs %q; want the file of the image, its chunks read with the login of hosts.toml; the snapshotter's log:\n%s", code, n.Logs(t, id), n.sn.log())
		}
		if err := os.WriteFile(hosts, plain, 0o644); err != nil {
			t.Fatal(err)
		}

		if err := os.WriteFile(filepath.Join(n.sn.dockerConfig, "config.json"), login, 0o600); err != nil {
			t.Fatal(err)
		}
		with := convert("with")
		c.Name, c.Image = "creds-with", with
		id = pod.Run(t, c)
		if code := n.Wait(t, id, 2*time.Minute); code != 0 || n.Logs(t, id) != "hello from with" {
			t.Errorf("exit %d, logs %q; want the file of the image; the snapshotter's log:\n%s", code, n.Logs(t, id), n.sn.log())
		}
		if !regexp.MustCompile(regexp.QuoteMeta(strings.TrimSuffix(with, ":1")) + "@sha256:[0-9a-f]+: boot image").MatchString(n.sn.log()) {
			t.Errorf("the snapshotter did not mount %s; its log:\n%s", with, n.sn.log())
		}
	})
}

// The bad inputs and the restarts, after TestCRI's subtests above, on
// the same node.
func testFailures(t *testing.T, n *node, im *images, pod *testcri.Pod) {
	// A boot image is pulled all the same; creating a container of it
	// fails with one line saying why, in the CRI error and containerd's
	// log. Here the node has bootinit's layer: containerd downloads none
	// of the image's own layer.
	for _, tc := range []struct{ name, image, want string }{
		{"corrupt index", im.corrupt, "checksum"},
		{"store down", im.deadStore, "connection refused"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			n.Pull(t, im.boot) // bootinit's layer
			n.Pull(t, tc.image)
			if out := testenv.Run(t, "ctr", "-a", n.Socket, "-n", "k8s.io", "content", "ls", "-q"); strings.Contains(out, im.ownLayer(tc.image)) {
				t.Errorf("containerd downloaded the boot image's own layer %s", im.ownLayer(tc.image))
			}
			start := time.Now()
			_, err := pod.Create(testcri.Container{Name: strings.ReplaceAll(tc.name, " ", "-"), Image: tc.image, Args: []string{"true"}})
			if err == nil {
				t.Fatal("the container was created")
			}
			line := ""
			for _, l := range strings.Split(err.Error(), "\n") {
				if strings.Contains(l, "mkbootfs: ") {
					line = l
				}
			}
			repo := tc.image[:strings.LastIndex(tc.image, ":")]
			if !strings.Contains(line, tc.want) || !strings.Contains(line, repo) {
				t.Errorf("CRI error %q: want one line naming the image and saying %q", err, tc.want)
			}
			msg := line[strings.Index(line, "mkbootfs: "):]
			if !strings.Contains(n.Log(), strings.TrimRight(msg, `"`)[:min(len(msg), 80)]) {
				t.Errorf("containerd's log does not hold %q", msg)
			}
			t.Logf("creation failed after %v: %s", time.Since(start).Round(time.Millisecond), msg)
			// containerd still answers.
			n.Crictl(t, "ps", "-a")
		})
	}

	t.Run("metrics", func(t *testing.T) {
		resp, err := http.Get("http://" + n.sn.metrics + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(resp.Body)
		text := string(body)
		for _, want := range []string{
			fmt.Sprintf("mkbootfs_snapshotter_mounts %d\n", len(lazyMounts(n.sn.root))),
			"mkbootfs_snapshotter_cache_misses_total ",
			`mkbootfs_snapshotter_store_chunks_total{store="http://`,
			`mkbootfs_snapshotter_store_fetch_seconds_bucket{store="http://`,
		} {
			if !strings.Contains(text, want) {
				t.Errorf("no %q in the metrics:\n%s", want, text)
			}
		}
		var chunks int64
		for _, l := range strings.Split(text, "\n") {
			if strings.HasPrefix(l, "mkbootfs_snapshotter_store_chunks_total{") {
				fmt.Sscan(l[strings.LastIndex(l, " ")+1:], &chunks)
			}
		}
		if chunks == 0 {
			t.Errorf("no chunk counted as fetched after the tree was read whole:\n%s", text)
		}
	})

	// kill -9 of the daemon, or its stop, breaks no running container: its
	// mounts are served by processes of their own; a restarted daemon
	// takes them back and serves new pods.
	t.Run("kill -9", func(t *testing.T) {
		n.Pull(t, im.boot)
		n.Pull(t, im.orig)
		id := pod.Run(t, testcri.Container{Name: "reader", Image: im.boot, Args: []string{"sh", "-c",
			"i=0; while :; do cat /usr/lib/x86_64-linux-gnu/* /usr/bin/* > /dev/null 2>&1; i=$((i+1)); echo $i > /tmp/passes; done"}})
		waitPasses(t, n, id, 1)
		n.sn.kill()
		for _, m := range lazyMounts(n.sn.root) {
			var st syscall.Statfs_t
			if err := syscall.Statfs(m, &st); err != nil {
				t.Errorf("%s after kill -9 of the daemon: %v", m, err)
			}
		}
		waitPasses(t, n, id, readPasses(t, n, id)+2)
		sums := " && find . -type f | sort | xargs md5sum"
		want := testenv.Run(t, "sh", "-c", "cd "+im.rootfs+"/usr/bin"+sums)
		if got := execOut(t, n, id, "sh", "-c", "cd /usr/bin"+sums); got != want {
			t.Errorf("after kill -9, /usr/bin in the pod differs from the original's:\n%s", lineDiff(want, got))
		}
		n.sn.start(t)
		restarted := time.Now()
		if !strings.Contains(n.sn.log(), "took back the mount of") {
			t.Errorf("the restarted daemon did not take its mount back; its log:\n%s", n.sn.log())
		}
		other := n.RunPod(t, "after-restart")
		t.Logf("containerd reached the restarted snapshotter %v after its start", time.Since(restarted).Round(time.Millisecond))
		for _, image := range []string{im.boot, im.orig} {
			id := other.Run(t, testcri.Container{Name: "new-" + strings.ReplaceAll(image[strings.LastIndex(image, ":")+1:], ".", "-"), Image: image, Args: []string{"cat", "/etc/debian_version"}})
			if code := n.Wait(t, id, 2*time.Minute); code != 0 {
				t.Errorf("%s after the restart: exit %d; logs:\n%s", image, code, n.Logs(t, id))
			}
		}

		// A stop (SIGTERM: systemd's stop, an upgrade's) leaves the
		// mounts to their processes as well, and the pod reading.
		tookBack := strings.Count(n.sn.log(), "took back the mount of")
		n.sn.stop(t)
		waitPasses(t, n, id, readPasses(t, n, id)+2)
		n.sn.start(t)
		if strings.Count(n.sn.log(), "took back the mount of") <= tookBack {
			t.Errorf("the daemon started after a stop did not take its mounts back; its log:\n%s", n.sn.log())
		}
		if got := execOut(t, n, id, "sh", "-c", "cd /usr/bin"+sums); got != want {
			t.Errorf("after a stop and a start, /usr/bin in the pod differs from the original's:\n%s", lineDiff(want, got))
		}
		id = other.Run(t, testcri.Container{Name: "after-stop", Image: im.boot, Args: []string{"cat", "/etc/debian_version"}})
		if code := n.Wait(t, id, 2*time.Minute); code != 0 {
			t.Errorf("%s after a stop and a start: exit %d; logs:\n%s", im.boot, code, n.Logs(t, id))
		}
	})
}

// lineDiff lists the lines only one of a and b has.
func lineDiff(a, b string) string {
	in := func(s string) map[string]bool {
		m := map[string]bool{}
		for _, l := range strings.Split(s, "\n") {
			m[l] = true
		}
		return m
	}
	ina, inb := in(a), in(b)
	var out []string
	for l := range ina {
		if !inb[l] {
			out = append(out, "- "+l)
		}
	}
	for l := range inb {
		if !ina[l] {
			out = append(out, "+ "+l)
		}
	}
	return strings.Join(out, "\n")
}

// readPasses reads how many passes the reader container made.
func readPasses(t *testing.T, n *node, id string) int {
	t.Helper()
	var passes int
	fmt.Sscan(execOut(t, n, id, "sh", "-c", "cat /tmp/passes 2>/dev/null || echo 0"), &passes)
	return passes
}

// waitPasses waits, at most a minute, until the reader container made
// this many passes.
func waitPasses(t *testing.T, n *node, id string, passes int) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for readPasses(t, n, id) < passes {
		if time.Now().After(deadline) {
			t.Fatalf("the pod's reads made %d passes in a minute, want %d; its logs:\n%s", readPasses(t, n, id), passes, n.Logs(t, id))
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// lazyMounts lists the FUSE mounts under the snapshotter's root.
func lazyMounts(root string) []string {
	var out []string
	for _, p := range testcri.MountsUnder(root) {
		if filepath.Base(p) == "lazy" {
			out = append(out, p)
		}
	}
	return out
}

// execOut runs a command in a container and returns its stdout.
func execOut(t *testing.T, n *node, id string, cmd ...string) string {
	t.Helper()
	var out bytes.Buffer
	if stderr, err := n.Exec(&out, id, cmd...); err != nil {
		t.Fatalf("exec %q: %v\n%s", cmd, err, stderr)
	}
	return out.String()
}
