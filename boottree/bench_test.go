package boottree_test

import (
	"context"
	"io/fs"
	"os"
	"path/filepath"
	"testing"

	"github.com/mkbootfs/mkbootfs/boottree"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
)

// BenchmarkCheck times the check every start runs before it stacks a
// boot tree, on a tree of the Debian rootfs's /usr/bin, against a plain
// walk that lstats every entry (the least a check of every entry costs).
func BenchmarkCheck(b *testing.B) {
	testenv.Root(b)
	x, s := testtree.Convert(b, "dir:"+testenv.DebianRootfs(b))
	var data []uint32
	bin, err := x.Resolve("/usr/bin")
	if err != nil {
		b.Fatal(err)
	}
	first, count := x.Children(bin)
	for e := first; e < first+count; e++ {
		if n := x.Inodes[x.Entries[e].Inode]; n.IsRegular() && n.Nlink == 1 {
			data = append(data, e)
		}
	}
	dir := filepath.Join(b.TempDir(), "tree")
	if err := extract.Files(context.Background(), x, s, dir, data); err != nil {
		b.Fatal(err)
	}
	seal := dir + ".lock"
	if err := boottree.Seal(context.Background(), x, s, dir, "tree", seal); err != nil {
		b.Fatal(err)
	}
	b.Logf("%d entries, %d files with data", len(x.Entries), len(data))
	b.Run("check", func(b *testing.B) {
		for b.Loop() {
			if err := boottree.Check(x, dir, "tree", seal); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("lstat-walk", func(b *testing.B) {
		for b.Loop() {
			filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
				if err != nil {
					return err
				}
				_, err = os.Lstat(p)
				return err
			})
		}
	})
}
