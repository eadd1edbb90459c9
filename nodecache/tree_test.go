package nodecache

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// makeTree puts a small tree named name in the cache at dir.
func makeTree(t *testing.T, dir, name string) string {
	t.Helper()
	p := TreeDir(dir, name)
	if err := os.MkdirAll(filepath.Join(p, "usr/bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(p, "usr/bin/app"), []byte("app"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestUseTree(t *testing.T) {
	dir := t.TempDir()
	tree := makeTree(t, dir, "a")
	lock := tree + lockSuffix
	old := time.Now().Add(-48 * time.Hour)
	release1, ok := UseTree(dir, "a")
	if !ok {
		t.Fatal("UseTree of a free tree: not ok")
	}
	os.Chtimes(lock, old, old)
	release2, ok := UseTree(dir, "a") // a second container of the image
	if !ok {
		t.Fatal("a second UseTree: not ok")
	}
	if fi, err := os.Stat(lock); err != nil || time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("UseTree did not touch %s: %v", lock, err)
	}
	if ok, err := removeTree(dir, "a"); ok || err != nil {
		t.Fatalf("removeTree of a tree in use = %v, %v; want false", ok, err)
	}
	release1()
	release1() // twice is harmless
	if ok, _ := removeTree(dir, "a"); ok {
		t.Fatal("removeTree while one user is left: removed")
	}
	os.Chtimes(lock, old, old)
	release2()
	if fi, err := os.Stat(lock); err != nil || time.Since(fi.ModTime()) > time.Minute {
		t.Fatalf("release did not touch %s: %v", lock, err)
	}
	if _, err := os.Stat(filepath.Join(tree, "usr/bin/app")); err != nil {
		t.Fatalf("the tree lost a file while in use: %v", err)
	}
	if ok, err := removeTree(dir, "a"); !ok || err != nil {
		t.Fatalf("removeTree of an unused tree = %v, %v", ok, err)
	}
	left, _ := filepath.Glob(filepath.Join(dir, treesDir, "*"))
	if len(left) != 0 {
		t.Fatalf("after removeTree the trees directory holds %v", left)
	}
	// The next start makes it again.
	makeTree(t, dir, "a")
	if release, ok := UseTree(dir, "a"); !ok {
		t.Fatal("UseTree after a removal: not ok")
	} else {
		release()
	}
}

// A start that comes while a prune holds the lock boots without the tree.
func TestUseTreeDuringPrune(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, "a")
	fd, err := lockTree(dir, "a", unix.LOCK_EX)
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := UseTree(dir, "a"); ok {
		t.Fatal("UseTree while a prune holds the lock: ok")
	}
	unix.Close(fd)
	if release, ok := UseTree(dir, "a"); !ok {
		t.Fatal("UseTree after the prune: not ok")
	} else {
		release()
	}
}

// A lock taken on a lock file that a prune removed meanwhile is no lock:
// lockTree sees the name now holds another file, or none.
func TestLockTreeRemovedMeanwhile(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, "a")
	fd, err := lockTree(dir, "a", unix.LOCK_SH)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	p := TreeDir(dir, "a") + lockSuffix
	os.Remove(p)
	if sameFile(fd, p) {
		t.Fatal("sameFile of a removed file: true")
	}
	os.WriteFile(p, nil, 0o644)
	if sameFile(fd, p) {
		t.Fatal("sameFile of a file in its place: true")
	}
	// So a prune now gets the new file's lock, which no start holds.
	if ok, err := removeTree(dir, "a"); !ok || err != nil {
		t.Fatalf("removeTree = %v, %v", ok, err)
	}
}

func TestUseTreeBadName(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{"", ".tmp-x", "../x", "a/b", "x.lock", "x.failed", "x.info", strings.Repeat("x", 300)} {
		if _, ok := UseTree(dir, name); ok {
			t.Errorf("UseTree(%q): ok", name)
		}
	}
	ro := t.TempDir()
	os.Chmod(ro, 0o555)
	if os.Getuid() != 0 {
		if _, ok := UseTree(ro, "a"); ok {
			t.Error("UseTree in a read-only cache: ok")
		}
	}
}

// helperEnv makes TestHelperProcess hold a tree: "cache-dir name".
const helperEnv = "NODECACHE_HOLD_TREE"

// TestHelperProcess holds UseTree until killed, when run by a test in a
// child process; otherwise it does nothing.
func TestHelperProcess(t *testing.T) {
	dir, name, ok := strings.Cut(os.Getenv(helperEnv), " ")
	if !ok {
		return
	}
	if _, ok := UseTree(dir, name); !ok {
		os.Exit(3)
	}
	os.Stdout.WriteString("holding\n")
	os.Stdin.Read(make([]byte, 1))
	os.Exit(0)
}

// Another process's use holds the tree; its death, even by SIGKILL,
// releases it.
func TestUseTreeOtherProcess(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, "a")
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
	cmd.Env = append(os.Environ(), helperEnv+"="+dir+" a")
	stdin, _ := cmd.StdinPipe()
	defer stdin.Close()
	out, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	line := make([]byte, 8)
	if n, _ := out.Read(line); string(line[:n]) != "holding\n" {
		cmd.Wait()
		t.Fatalf("the helper says %q, exit %v", line[:n], cmd.ProcessState)
	}
	if ok, _ := removeTree(dir, "a"); ok {
		t.Fatal("removeTree of a tree another process uses: removed")
	}
	cmd.Process.Signal(unix.SIGKILL)
	cmd.Wait()
	if ok, err := removeTree(dir, "a"); !ok || err != nil {
		t.Fatalf("removeTree after the user was killed = %v, %v", ok, err)
	}
}
