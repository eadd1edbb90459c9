package extract_test

import (
	"bytes"
	"context"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/extract"
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

// TestFiles: the chosen files and every directory above them, the root
// included, come out as in the source, attributes and all; nothing else.
func TestFiles(t *testing.T) {
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	bottom := strings.Repeat("deep/", 40) + "bottom"
	chosen := []string{"small", "capable", "setuid", "owned-dir", "sparse", "random", "abs-link", "dir/climbing-link", bottom}
	var entries []uint32
	for _, p := range chosen {
		e, err := x.Resolve("/" + p)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	out := filepath.Join(t.TempDir(), "out")
	if err := extract.Files(context.Background(), x, s, out, entries); err != nil {
		t.Fatal(err)
	}

	want := map[string]bool{".": true}
	for _, p := range chosen {
		for ; p != "."; p = filepath.Dir(p) {
			want[p] = true
		}
	}
	err := filepath.WalkDir(out, func(path string, _ fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(out, path)
		if !want[rel] {
			t.Errorf("%s was extracted, but is not chosen nor above a chosen file", rel)
		}
		delete(want, rel)
		if err := sameFile(filepath.Join(src, rel), path); err != nil {
			t.Errorf("%s: %v", rel, err)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	for p := range want {
		t.Errorf("%s is missing", p)
	}
}

// sameFile compares what the overlay shows of a lower file: type, mode,
// owner, mtime, size, content and xattrs.
func sameFile(want, got string) error {
	var a, b unix.Stat_t
	if err := unix.Lstat(want, &a); err != nil {
		return err
	}
	if err := unix.Lstat(got, &b); err != nil {
		return err
	}
	switch {
	case a.Mode != b.Mode:
		return fmt.Errorf("mode %o, want %o", b.Mode, a.Mode)
	case a.Uid != b.Uid || a.Gid != b.Gid:
		return fmt.Errorf("owner %d:%d, want %d:%d", b.Uid, b.Gid, a.Uid, a.Gid)
	case a.Mtim != b.Mtim:
		return fmt.Errorf("mtime %v, want %v", b.Mtim, a.Mtim)
	}
	if a.Mode&unix.S_IFMT == unix.S_IFREG {
		da, err := os.ReadFile(want)
		if err != nil {
			return err
		}
		db, err := os.ReadFile(got)
		if err != nil {
			return err
		}
		if !bytes.Equal(da, db) {
			return fmt.Errorf("content differs")
		}
	}
	xa, xb := xattrs(want), xattrs(got)
	if xa != xb {
		return fmt.Errorf("xattrs %q, want %q", xb, xa)
	}
	return nil
}

func xattrs(p string) string {
	buf := make([]byte, 4096)
	n, _ := unix.Llistxattr(p, buf)
	var out []string
	for _, name := range strings.Split(string(buf[:n]), "\x00") {
		if name == "" {
			continue
		}
		v := make([]byte, 4096)
		k, _ := unix.Lgetxattr(p, name, v)
		out = append(out, name+"="+string(v[:max(k, 0)]))
	}
	slices.Sort(out)
	return strings.Join(out, ",")
}
