package lazyfs_test

import (
	"bytes"
	"context"
	"io/fs"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestDebianFidelity converts the Debian rootfs, mounts it through a cache
// and compares the mount with the original: rsync finds no difference, and
// lstat, xattrs and link targets of every entry match, field by field.
func TestDebianFidelity(t *testing.T) {
	testenv.FUSE(t)
	orig := testenv.DebianRootfs(t)
	rsync := testenv.Command(t, "rsync")
	storeDir := t.TempDir()
	s, err := local.Open(storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + orig, Store: s})
	if err != nil {
		t.Fatal(err)
	}
	l, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	c, err := store.NewCache(l, s)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() }) // before its directory goes
	srv, mnt := mountFS(t, res.Index, c, lazyfs.Options{})

	// -i itemizes every difference; without it a dry run prints nothing.
	out, err := exec.Command(rsync, "-naHAXci", "--delete", orig+"/", mnt+"/").CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("rsync -naHAXci --delete %s/ %s/: %v\n%s", orig, mnt, err, firstLines(out, 20))
	}

	// Other tests hard-link the shared rootfs (cp -al), which raises its
	// files' link counts; the image holds only the links inside the tree.
	links := map[uint64]uint64{}
	filepath.WalkDir(orig, func(p string, d fs.DirEntry, err error) error {
		var st unix.Stat_t
		if err == nil && !d.IsDir() && unix.Lstat(p, &st) == nil {
			links[st.Ino]++
		}
		return err
	})
	inodes := map[uint64]uint64{} // original inode number -> mount's
	var entries, diffs int
	err = filepath.WalkDir(orig, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel := strings.TrimPrefix(p, orig)
		var a, b unix.Stat_t
		if err := unix.Lstat(p, &a); err != nil {
			return err
		}
		entries++
		if err := unix.Lstat(mnt+rel, &b); err != nil {
			t.Errorf("%s: %v", rel, err)
			diffs++
			return nil
		}
		got, want := statFields(&b), statFields(&a)
		if a.Mode&syscall.S_IFMT == syscall.S_IFDIR {
			// The index keeps no directory sizes: ext4's grow with the
			// number of entries ever made.
			got.Size, got.Blocks, want.Size, want.Blocks = 0, 0, 0, 0
		} else {
			want.Nlink = links[a.Ino]
		}
		if got != want {
			t.Errorf("%s: lstat\n got %+v\nwant %+v", rel, got, want)
			diffs++
		}
		if ino, seen := inodes[a.Ino]; seen && ino != b.Ino {
			t.Errorf("%s: hard link to inode %d in the original, to %d and %d in the mount", rel, a.Ino, ino, b.Ino)
		}
		inodes[a.Ino] = b.Ino
		if a.Mode&syscall.S_IFMT == syscall.S_IFLNK {
			lw, _ := readlink(p)
			lg, err := readlink(mnt + rel)
			if err != nil || lg != lw {
				t.Errorf("%s: readlink %q, %v; want %q", rel, lg, err, lw)
			}
		}
		if w, g := xattrs(p), xattrs(mnt+rel); !slices.EqualFunc(w, g, func(a, b [2]string) bool { return a == b }) {
			t.Errorf("%s: xattrs %q, want %q", rel, g, w)
		}
		if diffs > 20 {
			return filepath.SkipAll
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(inodes) != len(res.Index.Inodes) {
		t.Errorf("%d distinct inodes in the original, %d in the index", len(inodes), len(res.Index.Inodes))
	}
	t.Logf("%d entries, %d inodes compared; %+v", entries, len(inodes), srv.Stats())
}

// fields is what must match between an original entry and the mount's.
type fields struct {
	Mode, UID, GID uint32
	Nlink          uint64
	Size, Blocks   int64
	Rdev           uint64
	Mtime          unix.Timespec
}

func statFields(st *unix.Stat_t) fields {
	f := fields{Mode: st.Mode, UID: st.Uid, GID: st.Gid, Nlink: st.Nlink, Size: st.Size, Blocks: st.Blocks, Mtime: st.Mtim}
	if t := st.Mode & syscall.S_IFMT; t == syscall.S_IFCHR || t == syscall.S_IFBLK {
		f.Rdev = st.Rdev
	}
	return f
}

func readlink(p string) (string, error) {
	buf := make([]byte, 4096)
	n, err := unix.Readlink(p, buf)
	if err != nil {
		return "", err
	}
	return string(buf[:n]), nil
}

// xattrs lists p's extended attributes, names and values.
func xattrs(p string) [][2]string {
	buf := make([]byte, 64<<10)
	n, err := unix.Llistxattr(p, buf)
	if err != nil || n == 0 {
		return nil
	}
	var out [][2]string
	for _, name := range strings.Split(strings.TrimRight(string(buf[:n]), "\x00"), "\x00") {
		v := make([]byte, 64<<10)
		m, err := unix.Lgetxattr(p, name, v)
		if err != nil {
			m = 0
		}
		out = append(out, [2]string{name, string(v[:m])})
	}
	slices.SortFunc(out, func(a, b [2]string) int { return strings.Compare(a[0], b[0]) })
	return out
}

func firstLines(b []byte, n int) []byte {
	lines := bytes.SplitN(b, []byte("\n"), n+1)
	return bytes.Join(lines[:min(n, len(lines))], []byte("\n"))
}
