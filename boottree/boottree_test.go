package boottree_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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

// treeFiles are the files the test's boot tree is asked to hold;
// /dir/linked, of three names, is left out.
var treeFiles = []string{"/small", "/setuid", "/random", "/capable", "/dir/linked"}

// make makes a boot tree, unsealed, and returns its directory and seal
// file.
func (f *fixture) make(t *testing.T) (dir, seal string) {
	t.Helper()
	var entries []uint32
	for _, p := range treeFiles {
		e, err := f.x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	dir = filepath.Join(t.TempDir(), "tree")
	if err := extract.Files(context.Background(), f.x, f.s, dir, entries); err != nil {
		t.Fatal(err)
	}
	return dir, dir + ".lock"
}

func (f *fixture) seal(t *testing.T) (dir, seal string) {
	t.Helper()
	dir, seal = f.make(t)
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); err != nil {
		t.Fatalf("sealing a tree just made: %v", err)
	}
	if err := boottree.Check(f.x, dir, "tree", seal); err != nil {
		t.Fatalf("checking a tree just sealed: %v", err)
	}
	return dir, seal
}

type tamper struct {
	name string
	do   func(dir string) error
}

// tampering are what a container that can write the cache volume does to
// another image's tree: plant or change a file, or steer the overlay to
// hide or swap the lazy mount's files.
var tampering = []tamper{
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
	{"setuid a file", func(dir string) error { return os.Chmod(filepath.Join(dir, "random"), 0o4755) }},
	{"add an xattr", func(dir string) error {
		return unix.Setxattr(filepath.Join(dir, "small"), "user.evil", []byte("1"), 0)
	}},
	{"replace a file by rename", func(dir string) error {
		p := filepath.Join(dir, "new")
		if err := os.WriteFile(p, []byte("evil"), 0o755); err != nil {
			return err
		}
		return os.Rename(p, filepath.Join(dir, "small"))
	}},
	{"plant a setuid binary", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "sh"), []byte("#!/bin/sh\n"), 0o4755)
	}},
	{"plant an image's name", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "text"), []byte("evil"), 0o444)
	}},
	{"plant a symlink", func(dir string) error {
		return os.Symlink("/etc/shadow", filepath.Join(dir, "abs-link"))
	}},
	{"plant a whiteout", func(dir string) error {
		return unix.Mknod(filepath.Join(dir, "zeros"), unix.S_IFCHR|0o600, 0)
	}},
	{"make a directory opaque", func(dir string) error {
		return unix.Setxattr(dir, "trusted.overlay.opaque", []byte("y"), 0)
	}},
	{"redirect a file", func(dir string) error {
		return unix.Setxattr(filepath.Join(dir, "small"), "trusted.overlay.redirect", []byte("/setuid"), 0)
	}},
	{"link a file", func(dir string) error {
		return os.Link(filepath.Join(dir, "small"), filepath.Join(dir, "empty"))
	}},
}

// TestCheck: a sealed tree checks; every tampering after the seal fails
// the check.
func TestCheck(t *testing.T) {
	f := newFixture(t)
	for _, tc := range tampering {
		t.Run(tc.name, func(t *testing.T) {
			dir, seal := f.seal(t)
			if err := tc.do(dir); err != nil {
				t.Fatal(err)
			}
			if err := boottree.Check(f.x, dir, "tree", seal); err == nil {
				t.Fatal("the check passed a tree changed after its seal")
			}
		})
	}
}

// TestSealRefuses: a tree tampered with before it is sealed is not sealed.
func TestSealRefuses(t *testing.T) {
	f := newFixture(t)
	for _, tc := range tampering {
		t.Run(tc.name, func(t *testing.T) {
			dir, seal := f.make(t)
			if err := tc.do(dir); err != nil {
				t.Fatal(err)
			}
			if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
				t.Fatalf("sealing a tampered tree: %v, want ErrChanged", err)
			}
			if err := boottree.Check(f.x, dir, "tree", seal); !errors.Is(err, boottree.ErrUnsealed) {
				t.Fatalf("check of a tree whose seal was refused: %v, want ErrUnsealed", err)
			}
		})
	}
}

// TestSealIsTheTreesOwn: a seal moved to another name, or removed, seals
// nothing.
func TestSealIsTheTreesOwn(t *testing.T) {
	f := newFixture(t)
	dir, seal := f.seal(t)
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
	dir, seal := f.seal(t)
	os.Chmod(filepath.Join(dir, "setuid"), 0o755)
	err := boottree.Check(f.x, dir, "tree", seal)
	if err == nil || !strings.Contains(err.Error(), "/setuid") || !strings.Contains(err.Error(), "changed at") {
		t.Fatalf("check of a tree whose /setuid was chmodded: %v, want it named", err)
	}
}

// TestSealResumes: a check cut short, here in the middle of a big file,
// goes on from the bytes it reached, with the T0 it began with; a
// change to that file after the cut fails it all the same.
func TestSealResumes(t *testing.T) {
	f := newFixture(t)
	cut := func(dir, seal string, loads int) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		s := &cancelAfter{Store: f.s, n: loads, cancel: cancel}
		if err := boottree.Seal(ctx, f.x, s, dir, "tree", seal); !errors.Is(err, context.Canceled) {
			t.Fatalf("a check cut short: %v", err)
		}
	}
	dir, seal := f.make(t)
	// Twice: /random is 3 MB, tens of chunks, and a third cut of 20
	// loads may find the check's rest shorter and let it end.
	for range 2 {
		cut(dir, seal, 20)
		time.Sleep(25 * time.Millisecond)
	}
	if v := progress(t, seal); !strings.Contains(v, " +") {
		t.Logf("progress %q names no offset: the machine checked faster than the cut", v)
	}
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); err != nil {
		t.Fatalf("going on with the check: %v", err)
	}
	if err := boottree.Check(f.x, dir, "tree", seal); err != nil {
		t.Fatal(err)
	}

	dir, seal = f.make(t)
	cut(dir, seal, 20)
	p := filepath.Join(dir, "random")
	fh, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("X"), 0) // bytes the cut check had passed
	fh.Close()
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
		t.Fatalf("a check gone on with after a change: %v, want ErrChanged", err)
	}
}

// cancelAfter cancels its reader's context after n reads.
type cancelAfter struct {
	store.Store
	n      int
	cancel func()
}

func (c *cancelAfter) Get(ctx context.Context, id store.ID) ([]byte, error) {
	if c.n == 0 {
		c.cancel()
		return nil, context.Canceled
	}
	c.n--
	return c.Store.Get(ctx, id)
}

func progress(t *testing.T, seal string) string {
	buf := make([]byte, 128)
	n, err := unix.Getxattr(seal, "trusted.mkbootfs.checking", buf)
	if err != nil {
		return ""
	}
	return string(buf[:n])
}
