package extract_test

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
)

func TestExtract(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	out := filepath.Join(t.TempDir(), "out")
	if err := extract.Extract(context.Background(), x, s, out); err != nil {
		t.Fatal(err)
	}
	if d := testtree.Diff(t, src, out); d != "" {
		t.Fatalf("the extracted tree differs from the source:\n%s", d)
	}
}

// TestMetadata: overlayfs over the metadata tree, with the source itself
// as the data-only layer below, shows the source: every entry, attribute,
// hard link and byte, the stubs' data read from below.
func TestMetadata(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	var data []uint32
	for _, p := range []string{"/small", "/dir/linked", "/sparse"} {
		e, err := x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		data = append(data, e)
	}
	tree := filepath.Join(t.TempDir(), "tree")
	if err := extract.Metadata(context.Background(), x, s, tree, data); err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat(filepath.Join(tree, "random"), &st); err != nil || st.Blocks != 0 {
		t.Errorf("random, not chosen, holds %d blocks in the tree (%v), want a stub", st.Blocks, err)
	}

	// Read-only: a writable layer would lend the root its own times.
	mnt := t.TempDir()
	opts := "lowerdir=" + tree + "::" + src + ",metacopy=on"
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
