package main

import (
	"bytes"
	"encoding/json"
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
	os.Exit(m.Run())
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
			mnt, statsFile := t.TempDir(), filepath.Join(t.TempDir(), "stats.json")
			// The stores come from the index or the boot image.
			cmd := exec.Command(os.Args[0], "mount", "--cache", t.TempDir(), "--stats", "--stats-file", statsFile, tc.tree, mnt)
			cmd.Env = append(os.Environ(), envRunMain+"=1")
			var stdout, stderr bytes.Buffer
			cmd.Stdout, cmd.Stderr = &stdout, &stderr
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			done := make(chan error, 1)
			go func() { done <- cmd.Wait() }()
			t.Cleanup(func() {
				if cmd.ProcessState == nil {
					cmd.Process.Kill()
					<-done
					lazyfs.RecoverStale(mnt)
				}
			})

			var got []byte
			var err error
			for deadline := time.Now().Add(10 * time.Second); ; {
				if got, err = os.ReadFile(filepath.Join(mnt, "etc", "motd")); err == nil || time.Now().After(deadline) {
					break
				}
				select {
				case err := <-done:
					t.Fatalf("mount ended early: %v\n%s", err, &stderr)
				case <-time.After(20 * time.Millisecond):
				}
			}
			if string(got) != "lazy hello\n" {
				t.Fatalf("reading through the mount: %q, %v\n%s", got, err, &stderr)
			}

			cmd.Process.Signal(tc.signal)
			if err := <-done; err != nil {
				t.Fatalf("mount after %v: %v\n%s", tc.signal, err, &stderr)
			}
			var st unix.Statfs_t
			if err := unix.Statfs(mnt, &st); err != nil || st.Type == unix.FUSE_SUPER_MAGIC {
				t.Errorf("%s is still a FUSE mount after the command ended (%v)", mnt, err)
			}
			var stats lazyfs.Stats
			if b, err := os.ReadFile(statsFile); err != nil || json.Unmarshal(b, &stats) != nil || stats.Cache == nil || stats.Cache.Misses == 0 {
				t.Errorf("stats file: %s, %v", b, err)
			}
			if !strings.Contains(stdout.String(), "cache hits") {
				t.Errorf("--stats printed %q", &stdout)
			}
		})
	}
}
