package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/lazyfs"
)

// envRunMain makes the test binary run mkbootfs's main with its arguments,
// so that a test can signal a real mkbootfs process.
const envRunMain = "MKBOOTFS_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(envRunMain) == "1" {
		main()
		os.Exit(0)
	}
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// convertSmallTree converts a tree of one file, /etc/motd, into a local
// store, and returns its index file and its boot image (an OCI layout).
func convertSmallTree(t *testing.T) (idx, image string) {
	src, storeDir := t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("lazy hello\n"), 0o644)
	idx = filepath.Join(t.TempDir(), "tree.idx")
	image = "oci:" + filepath.Join(t.TempDir(), "layout") + ":boot"
	// Reading a boot image reads only its index and boot config: any
	// bootinit will do.
	convertCLI(t, "--store", storeDir, "--bootinit", "/bin/true", "--index", idx, "dir:"+src, image)
	return idx, image
}

// inspect and extract read an index file or a boot image alike.
func TestInspectAndExtract(t *testing.T) {
	idx, image := convertSmallTree(t)
	for _, tree := range []string{idx, image} {
		out := runCLI(t, "inspect", "--json", tree)
		var s summary
		if err := json.Unmarshal([]byte(out), &s); err != nil || s.Entries["files"] != 1 || len(s.Stores) != 1 || s.StoreBytes == 0 {
			t.Errorf("inspect %s: %+v, %v\n%s", tree, s, err, out)
		}
		dir := t.TempDir()
		runCLI(t, "extract", tree, dir)
		if got, err := os.ReadFile(filepath.Join(dir, "etc", "motd")); string(got) != "lazy hello\n" {
			t.Errorf("extract %s: motd %q, %v", tree, got, err)
		}
	}
}

// mountProc is a running `mkbootfs mount`.
type mountProc struct {
	mnt            string
	cmd            *exec.Cmd
	done           chan error
	stdout, stderr bytes.Buffer
}

// startMount runs `mkbootfs mount ARGS... TREE MNT` at a new MNT that every
// user can reach, and waits until FILE (a path in the tree) reads. The
// mount is killed and cleared when the test ends, if it still runs.
func startMount(t *testing.T, tree, file string, args ...string) *mountProc {
	t.Helper()
	// MkdirTemp, unlike t.TempDir, makes no 0700 directory above MNT.
	mnt, err := os.MkdirTemp("", "mkbootfs-mount-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.Remove(mnt) })
	os.Chmod(mnt, 0o755)
	m := &mountProc{mnt: mnt, done: make(chan error, 1)}
	m.cmd = exec.Command(os.Args[0], append(append([]string{"mount"}, args...), tree, mnt)...)
	m.cmd.Env = append(os.Environ(), envRunMain+"=1")
	m.cmd.Stdout, m.cmd.Stderr = &m.stdout, &m.stderr
	if err := m.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { m.done <- m.cmd.Wait() }()
	t.Cleanup(func() {
		if m.cmd.ProcessState == nil {
			m.cmd.Process.Kill()
			<-m.done
			lazyfs.RecoverStale(mnt)
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		_, err := os.Stat(filepath.Join(mnt, file))
		if err == nil {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not appear in the mount: %v\n%s", file, err, &m.stderr)
		}
		select {
		case err := <-m.done:
			t.Fatalf("mount ended early: %v\n%s", err, &m.stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// stop ends the mount with sig and waits for it to exit.
func (m *mountProc) stop(t *testing.T, sig syscall.Signal) {
	t.Helper()
	m.cmd.Process.Signal(sig)
	select {
	case err := <-m.done:
		if err != nil {
			t.Fatalf("mount after %v: %v\n%s", sig, err, &m.stderr)
		}
	case <-time.After(30 * time.Second):
		t.Fatalf("mount still running 30 s after %v\n%s", sig, &m.stderr)
	}
}

// TestMount converts a small tree, mounts it with `mkbootfs mount` through
// a cache, from the index file and from the boot image, reads it, stops the
// command with a signal and checks the mount is gone and the stats were
// written.
func TestMount(t *testing.T) {
	testenv.FUSE(t)
	idx, image := convertSmallTree(t)
	for _, tc := range []struct {
		name, tree string
		signal     syscall.Signal
	}{
		{"index file, SIGINT", idx, syscall.SIGINT},
		{"boot image, SIGTERM", image, syscall.SIGTERM},
	} {
		t.Run(tc.name, func(t *testing.T) {
			statsFile := filepath.Join(t.TempDir(), "stats.json")
			// The stores come from the index or the boot image.
			m := startMount(t, tc.tree, "etc/motd", "--cache", t.TempDir(), "--stats", "--stats-file", statsFile)
			if got, err := os.ReadFile(filepath.Join(m.mnt, "etc", "motd")); string(got) != "lazy hello\n" {
				t.Fatalf("reading through the mount: %q, %v\n%s", got, err, &m.stderr)
			}

			m.stop(t, tc.signal)
			var st unix.Statfs_t
			if err := unix.Statfs(m.mnt, &st); err != nil || st.Type == unix.FUSE_SUPER_MAGIC {
				t.Errorf("%s is still a FUSE mount after the command ended (%v)", m.mnt, err)
			}
			var stats lazyfs.Stats
			if b, err := os.ReadFile(statsFile); err != nil || json.Unmarshal(b, &stats) != nil || stats.Cache == nil || stats.Cache.Misses == 0 {
				t.Errorf("stats file: %s, %v", b, err)
			}
			if !strings.Contains(m.stdout.String(), "cache hits") {
				t.Errorf("--stats printed %q", &m.stdout)
			}
		})
	}
}

// TestMountNosuidNodev: a local user gains nothing from an image mounted on
// the host: its setuid-root program runs as the user, and its device nodes
// do not open; --suid --dev honour both, for a root filesystem.
func TestMountNosuidNodev(t *testing.T) {
	testenv.FUSE(t)
	testenv.Command(t, "setpriv")
	src, storeDir := t.TempDir(), t.TempDir()
	os.Chmod(src, 0o755)
	for _, d := range []string{"bin", "dev", "root"} {
		os.Mkdir(filepath.Join(src, d), 0o755)
	}
	id, err := os.ReadFile("/usr/bin/id")
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string][]byte{"bin/id": id, "root/secret": []byte("root only\n")} {
		if err := os.WriteFile(filepath.Join(src, name), data, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(filepath.Join(src, "bin/id"), 0o755|os.ModeSetuid)
	if err := unix.Mknod(filepath.Join(src, "dev/mem"), unix.S_IFCHR|0o666, int(unix.Mkdev(1, 3))); err != nil {
		t.Fatal(err) // a null device named like a dangerous one: writable by all
	}
	idx := filepath.Join(t.TempDir(), "tree.idx")
	convertCLI(t, "--store", storeDir, "--index", idx, "dir:"+src)

	for _, tc := range []struct {
		name  string
		flags []string
		euid  string
	}{
		{"default", nil, "65534"},
		{"--suid --dev", []string{"--suid", "--dev"}, "0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := startMount(t, idx, "bin/id", append([]string{"--store", storeDir}, tc.flags...)...)
			out, err := exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", m.mnt+"/bin/id", "-u").CombinedOutput()
			if got := strings.TrimSpace(string(out)); err != nil || got != tc.euid {
				t.Errorf("setuid-root id run by nobody: %q, %v; want euid %s", got, err, tc.euid)
			}
			out, err = exec.Command("setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--", "cat", m.mnt+"/root/secret").CombinedOutput()
			if err == nil {
				t.Errorf("nobody read a 0600 root file: %q", out)
			}
			err = os.WriteFile(filepath.Join(m.mnt, "dev/mem"), []byte("x"), 0)
			if tc.euid == "0" && err != nil {
				t.Errorf("writing the image's device node with --dev: %v", err)
			} else if tc.euid != "0" && !errors.Is(err, syscall.EACCES) {
				t.Errorf("writing the image's device node: %v; want EACCES (nodev)", err)
			}
			m.stop(t, syscall.SIGTERM)
		})
	}
}
