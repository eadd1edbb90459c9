package boottree_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/boottree"
	"github.com/mkbootfs/mkbootfs/extract"
	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store"
)

// fixture is a converted test tree, of which boot trees are made.
type fixture struct {
	x *index.Index
	s store.Store
}

func newFixture(t *testing.T) *fixture {
	if os.Geteuid() != 0 {
		t.Skip("boot trees need root (trusted xattrs)")
	}
	src := t.TempDir()
	testtree.Build(t, src)
	x, s := testtree.Convert(t, "dir:"+src)
	return &fixture{x: x, s: s}
}

// treeKind is a kind of boot tree: what it is made of, and how it is made,
// sealed and checked.
type treeKind struct {
	name      string
	paths     []string // the files it holds with their data
	make      func(ctx context.Context, x *index.Index, s store.Store, dir string, entries []uint32) error
	seal      func(ctx context.Context, x *index.Index, s store.Store, dir, name, seal string) error
	check     func(x *index.Index, dir, name, seal string) error
	tampering []tamper
}

var (
	// A whole tree holds every entry, two files with their data.
	whole = treeKind{"whole", []string{"/small", "/dir/linked"}, extract.Metadata, boottree.Seal, boottree.Check, tampering}
	// A subset tree holds the files asked for; /dir/linked, of three
	// names, is left out.
	subset = treeKind{"subset", []string{"/small", "/setuid", "/random", "/capable", "/dir/linked"}, extract.Files, boottree.SealSubset, boottree.CheckSubset, subsetTampering}
)

// make makes a boot tree of kind k, unsealed, and returns its directory
// and seal file.
func (f *fixture) make(t *testing.T, k treeKind) (dir, seal string) {
	t.Helper()
	var entries []uint32
	for _, p := range k.paths {
		e, err := f.x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	dir = filepath.Join(t.TempDir(), "tree")
	if err := k.make(context.Background(), f.x, f.s, dir, entries); err != nil {
		t.Fatal(err)
	}
	return dir, dir + ".lock"
}

func (f *fixture) seal(t *testing.T, k treeKind) (dir, seal string) {
	t.Helper()
	dir, seal = f.make(t, k)
	if err := k.seal(context.Background(), f.x, f.s, dir, "tree", seal); err != nil {
		t.Fatalf("sealing a %s tree just made: %v", k.name, err)
	}
	if err := k.check(f.x, dir, "tree", seal); err != nil {
		t.Fatalf("checking a %s tree just sealed: %v", k.name, err)
	}
	return dir, seal
}

type tamper struct {
	name string
	do   func(dir string) error
}

// rewrites are tamperings of both kinds of tree.
var rewrites = []tamper{
	{"rewrite a file", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "small"), []byte("evil"), 0o644)
	}},
	{"rewrite a file in place, same size", func(dir string) error {
		f, err := os.OpenFile(filepath.Join(dir, "small"), os.O_WRONLY, 0)
		if err != nil {
			return err
		}
		defer f.Close()
		_, err = f.WriteAt([]byte("X"), 0)
		return err
	}},
	{"chown a file", func(dir string) error { return os.Lchown(filepath.Join(dir, "small"), 1, 1) }},
	{"add an xattr", func(dir string) error {
		return unix.Setxattr(filepath.Join(dir, "small"), "user.evil", []byte("1"), 0)
	}},
}

// tampering are what a container that can write the cache volume does to
// another image's tree.
var tampering = append([]tamper{
	{"setuid a stub", func(dir string) error { return os.Chmod(filepath.Join(dir, "random"), 0o4755) }},
	{"plant a setuid binary", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "dir", "sh"), []byte("#!/bin/sh\n"), 0o4755)
	}},
	{"replace a file by rename", func(dir string) error {
		p := filepath.Join(dir, "dir", "new")
		if err := os.WriteFile(p, []byte("evil"), 0o755); err != nil {
			return err
		}
		return os.Rename(p, filepath.Join(dir, "small"))
	}},
	{"retarget a symlink", func(dir string) error {
		links, _ := filepath.Glob(filepath.Join(dir, "*link*"))
		for _, l := range links {
			if fi, err := os.Lstat(l); err == nil && fi.Mode()&os.ModeSymlink != 0 {
				os.Remove(l)
				return os.Symlink("/etc/shadow", l)
			}
		}
		return errors.New("no symlink in the test tree's root")
	}},
}, rewrites...)

// TestCheck: a sealed tree checks; every tampering after the seal fails
// the check.
func TestCheck(t *testing.T) {
	f := newFixture(t)
	for _, k := range []treeKind{whole, subset} {
		for _, tc := range k.tampering {
			t.Run(k.name+"/"+tc.name, func(t *testing.T) {
				dir, seal := f.seal(t, k)
				if err := tc.do(dir); err != nil {
					t.Fatal(err)
				}
				if err := k.check(f.x, dir, "tree", seal); err == nil {
					t.Fatal("the check passed a tree changed after its seal")
				}
			})
		}
	}
}

// TestSealRefuses: a tree tampered with before it is sealed is not sealed.
func TestSealRefuses(t *testing.T) {
	f := newFixture(t)
	for _, k := range []treeKind{whole, subset} {
		for _, tc := range k.tampering {
			t.Run(k.name+"/"+tc.name, func(t *testing.T) {
				dir, seal := f.make(t, k)
				if err := tc.do(dir); err != nil {
					t.Fatal(err)
				}
				if err := k.seal(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
					t.Fatalf("sealing a tampered tree: %v, want ErrChanged", err)
				}
				if err := k.check(f.x, dir, "tree", seal); !errors.Is(err, boottree.ErrUnsealed) {
					t.Fatalf("check of a tree whose seal was refused: %v, want ErrUnsealed", err)
				}
			})
		}
	}
}

// TestSealIsTheTreesOwn: a seal moved to another name, or removed, seals
// nothing.
func TestSealIsTheTreesOwn(t *testing.T) {
	f := newFixture(t)
	dir, seal := f.seal(t, whole)
	if err := boottree.Check(f.x, dir, "other", seal); !errors.Is(err, boottree.ErrUnsealed) {
		t.Errorf("tree sealed as tree checked as other: %v, want ErrUnsealed", err)
	}
	if err := boottree.Unseal(seal); err != nil {
		t.Fatal(err)
	}
	if err := boottree.Check(f.x, dir, "tree", seal); !errors.Is(err, boottree.ErrUnsealed) {
		t.Errorf("check after Unseal: %v, want ErrUnsealed", err)
	}
	err := boottree.Check(f.x, dir, "tree", filepath.Join(t.TempDir(), "none"))
	if !errors.Is(err, boottree.ErrUnsealed) {
		t.Errorf("check with no seal file: %v, want ErrUnsealed", err)
	}
}

// TestCheckNamesWhatChanged: the error says which entry changed, and when.
func TestCheckNamesWhatChanged(t *testing.T) {
	f := newFixture(t)
	dir, seal := f.seal(t, whole)
	os.Chmod(filepath.Join(dir, "dir"), 0o777)
	err := boottree.Check(f.x, dir, "tree", seal)
	if err == nil || !strings.Contains(err.Error(), "/dir") || !strings.Contains(err.Error(), "changed at") {
		t.Fatalf("check of a tree whose /dir was chmodded: %v, want it named", err)
	}
}

// TestSealResumes: a check cut short is gone on with by the next Seal, with
// the T0 it began with: the tree is sealed in the end, and an entry checked
// before the cut and changed after it fails the check all the same.
func TestSealResumes(t *testing.T) {
	f := newFixture(t)
	cut := func(dir, seal string) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		if err := boottree.Seal(ctx, f.x, &cancelling{Store: f.s, cancel: cancel}, dir, "tree", seal); !errors.Is(err, context.Canceled) {
			t.Fatalf("a check cut short: %v", err)
		}
	}
	dir, seal := f.make(t, whole)
	cut(dir, seal)
	if err := boottree.Check(f.x, dir, "tree", seal); !errors.Is(err, boottree.ErrUnsealed) {
		t.Fatalf("a tree whose check was cut short: %v, want ErrUnsealed", err)
	}
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); err != nil {
		t.Fatalf("going on with the check: %v", err)
	}
	if err := boottree.Check(f.x, dir, "tree", seal); err != nil {
		t.Fatalf("a tree sealed by a check gone on with: %v", err)
	}

	dir, seal = f.make(t, whole)
	cut(dir, seal)
	os.Chmod(filepath.Join(dir, "small"), 0o4755) // after T0, before or after the cut
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
		t.Fatalf("a check gone on with after a change: %v, want ErrChanged", err)
	}
}

// cancelling is a store that cancels its reader's context on its first
// read: the check stops at its first file with data.
type cancelling struct {
	store.Store
	cancel func()
}

func (c *cancelling) Get(ctx context.Context, id store.ID) ([]byte, error) {
	c.cancel()
	return nil, context.Canceled
}
