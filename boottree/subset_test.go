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
	"github.com/mkbootfs/mkbootfs/store"
)

// subsetTampering are what a container that can write the cache volume
// does to another image's subset tree: all of tampering that applies, and
// what would steer the overlay to hide or swap the lazy mount's files.
var subsetTampering = append([]tamper{
	{"plant a setuid binary", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "sh"), []byte("#!/bin/sh\n"), 0o4755)
	}},
	{"plant an image's name", func(dir string) error {
		return os.WriteFile(filepath.Join(dir, "text"), []byte("evil"), 0o444)
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
}, rewrites...)

// TestSubsetTree: a subset tree holds the files asked for, of one name, and
// the directories above them, nothing else; sealed, it checks.
func TestSubsetTree(t *testing.T) {
	f := newFixture(t)
	dir, _ := f.seal(t, subset)
	var got []string
	filepath.Walk(dir, func(p string, fi os.FileInfo, err error) error {
		if err == nil && p != dir {
			got = append(got, strings.TrimPrefix(p, dir))
		}
		return err
	})
	want := "/capable /random /setuid /small"
	if strings.Join(got, " ") != want {
		t.Errorf("the subset tree holds %q, want %q", got, want)
	}
}

// TestSubsetIsNotWhole: a subset tree is no whole tree, and a whole tree
// no subset one (it holds stubs, symlinks, devices).
func TestSubsetIsNotWhole(t *testing.T) {
	f := newFixture(t)
	dir, seal := f.make(t, subset)
	if err := boottree.Seal(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
		t.Errorf("a subset tree sealed as a whole one: %v, want ErrChanged", err)
	}
	dir, seal = f.make(t, whole)
	if err := boottree.SealSubset(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
		t.Errorf("a whole tree sealed as a subset one: %v, want ErrChanged", err)
	}
}

// TestSubsetSealResumesInAFile: a check cut short in the middle of a big
// file goes on from the bytes it reached, with the T0 it began with; a
// change to that file after the cut fails it all the same.
func TestSubsetSealResumesInAFile(t *testing.T) {
	f := newFixture(t)
	cut := func(dir, seal string, loads int) {
		t.Helper()
		ctx, cancel := context.WithCancel(context.Background())
		s := &cancelAfter{Store: f.s, n: loads, cancel: cancel}
		if err := boottree.SealSubset(ctx, f.x, s, dir, "tree", seal); !errors.Is(err, context.Canceled) {
			t.Fatalf("a check cut short: %v", err)
		}
	}
	dir, seal := f.make(t, subset)
	// Twice: /random is 3 MB, tens of chunks, and a third cut of 20
	// loads may find the check's rest shorter and let it end.
	for range 2 {
		cut(dir, seal, 20)
		time.Sleep(25 * time.Millisecond)
	}
	if v := progress(t, seal); !strings.Contains(v, " +") {
		t.Logf("progress %q names no offset: the machine checked faster than the cut", v)
	}
	if err := boottree.SealSubset(context.Background(), f.x, f.s, dir, "tree", seal); err != nil {
		t.Fatalf("going on with the check: %v", err)
	}
	if err := boottree.CheckSubset(f.x, dir, "tree", seal); err != nil {
		t.Fatal(err)
	}

	dir, seal = f.make(t, subset)
	cut(dir, seal, 20)
	p := filepath.Join(dir, "random")
	fh, err := os.OpenFile(p, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	fh.WriteAt([]byte("X"), 0) // bytes the cut check had passed
	fh.Close()
	if err := boottree.SealSubset(context.Background(), f.x, f.s, dir, "tree", seal); !errors.Is(err, boottree.ErrChanged) {
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
