package extract_test

import (
	"context"
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store"
)

func TestExtract(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	out := filepath.Join(t.TempDir(), "out")
	res, err := extract.Extract(context.Background(), x, s, out, extract.Options{Devices: true, SamePermissions: true})
	if err != nil {
		t.Fatal(err)
	}
	if d := testtree.Diff(t, src, out); d != "" {
		t.Fatalf("the extracted tree differs from the source:\n%s", d)
	}
	if res != (extract.Result{}) {
		t.Errorf("with every option, Extract left out %+v", res)
	}
}

// By default, as root, Extract skips the devices and clears setuid, setgid
// and file capabilities, and keeps everything else: owners, the sticky bit,
// FIFOs and sockets, other xattrs.
func TestExtractDefaults(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	out := filepath.Join(t.TempDir(), "out")
	res, err := extract.Extract(context.Background(), x, s, out, extract.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if want := (extract.Result{Devices: 2, Privileged: 3}); res != want {
		t.Errorf("Extract left out %+v, want %+v (null and loop9; setuid, setgid and capable)", res, want)
	}
	for _, name := range []string{"null", "loop9"} {
		if _, err := os.Lstat(filepath.Join(out, name)); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("device %s: %v; want it skipped", name, err)
		}
	}
	for name, want := range map[string]fs.FileMode{
		"setuid":  0o755,
		"setgid":  0o755,
		"capable": 0o755,
		"sticky":  fs.ModeDir | fs.ModeSticky | 0o777,
		"fifo":    fs.ModeNamedPipe | 0o600,
		"socket":  fs.ModeSocket | 0o755,
	} {
		if fi, err := os.Lstat(filepath.Join(out, name)); err != nil || fi.Mode() != want {
			t.Errorf("%s: %v, %v; want mode %v", name, fi.Mode(), err, want)
		}
	}
	if _, err := unix.Getxattr(filepath.Join(out, "capable"), "security.capability", nil); !errors.Is(err, unix.ENODATA) {
		t.Errorf("capable's security.capability: %v; want it cleared", err)
	}
	if v, err := unix.Getxattr(filepath.Join(out, "small"), "user.note", make([]byte, 64)); err != nil || v != len("a note") {
		t.Errorf("small's user.note: %d, %v; want it kept", v, err)
	}
	var st unix.Stat_t
	if err := unix.Lstat(filepath.Join(out, "owned"), &st); err != nil || st.Uid != 1234 || st.Gid != 5678 {
		t.Errorf("owned: %d:%d, %v; want 1234:5678, kept as tar keeps owners as root", st.Uid, st.Gid, err)
	}
}

// TestFiles: a boot tree holds the files asked for, of one name, with
// their data, and the directories above them; overlayfs with the tree over
// the source shows the source.
func TestFiles(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	tree := filepath.Join(t.TempDir(), "tree")
	if err := extract.Files(context.Background(), x, s, tree, resolve(t, x, bootFiles...)); err != nil {
		t.Fatal(err)
	}
	var got []string
	filepath.Walk(tree, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != tree {
			got = append(got, strings.TrimPrefix(p, tree))
		}
		return err
	})
	if want := "/random /small /sparse"; strings.Join(got, " ") != want {
		t.Errorf("the tree holds %q, want %q (/dir/linked has three names, /fifo is no regular file)", got, want)
	}
	checkOverlay(t, tree, src)
}

// bootFiles are files a boot tree is asked to hold.
var bootFiles = []string{"/small", "/dir/linked", "/sparse", "/random", "/fifo"}

// TestFilesResumes: Files cut short after any number of chunks, then run
// again into the same directory, makes the same tree: what the first left
// is kept, nothing torn.
func TestFilesResumes(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	files := resolve(t, x, bootFiles...)
	resumed := 0
	for cut := range 12 {
		tree := filepath.Join(t.TempDir(), "tree")
		failing := &failAfter{Store: s, n: cut}
		if err := extract.Files(context.Background(), x, failing, tree, files); err == nil {
			continue // the tree needs fewer chunks
		}
		if err := extract.Files(context.Background(), x, s, tree, files); err != nil {
			t.Fatalf("resumed after %d chunks: %v", cut, err)
		}
		checkOverlay(t, tree, src)
		resumed++
	}
	if resumed < 3 {
		t.Errorf("only %d cuts fell inside the tree's chunks", resumed)
	}
}

// failAfter is a store that fails every read after its first n.
type failAfter struct {
	store.Store
	mu sync.Mutex
	n  int
}

func (f *failAfter) Get(ctx context.Context, id store.ID) ([]byte, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.n == 0 {
		return nil, errors.New("cut short")
	}
	f.n--
	return f.Store.Get(ctx, id)
}

func resolve(t *testing.T, x *index.Index, paths ...string) []uint32 {
	t.Helper()
	var es []uint32
	for _, p := range paths {
		e, err := x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		es = append(es, e)
	}
	return es
}

// checkOverlay checks that overlayfs with the boot tree over src shows
// src.
func checkOverlay(t *testing.T, tree, src string) {
	t.Helper()
	// Read-only: a writable layer would lend the root its own times.
	mnt := t.TempDir()
	opts := "lowerdir=" + tree + ":" + src
	if err := unix.Mount("overlay", mnt, "overlay", unix.MS_RDONLY, opts); err != nil {
		t.Fatalf("mount -t overlay -o %s: %v", opts, err)
	}
	defer unix.Unmount(mnt, unix.MNT_DETACH)
	// overlayfs keeps trusted.overlay.* to itself: the source's own is
	// not shown above it.
	out, err := exec.Command(testenv.Command(t, "rsync"), "-naHAXci", "--delete", "--filter=-x trusted.overlay.*", src+"/", mnt+"/").CombinedOutput()
	if err != nil || len(out) != 0 {
		t.Errorf("the overlay differs from the source (%v):\n%s", err, out)
	}
}
