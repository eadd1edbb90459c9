package bootinit

import (
	"context"
	"io"
	"log"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// treeSource converts a small tree and returns its index, its store and
// the entries of two of its files.
func treeSource(t *testing.T) (*index.Index, *local.Store, []uint32) {
	t.Helper()
	src := t.TempDir()
	for name, body := range map[string]string{"usr/bin/app": "#!/bin/sh\n", "usr/lib/libx.so": "ELF", "etc/other": "not in the tree"} {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	x, s := testtree.Convert(t, "dir:"+src)
	var entries []uint32
	for _, p := range []string{"/usr/bin/app", "/usr/lib/libx.so"} {
		e, err := x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		entries = append(entries, e)
	}
	return x, s, entries
}

// TestMakeTree: starts making the same tree at once end with one tree and
// no temporary left; a cancelled one leaves nothing.
func TestMakeTree(t *testing.T) {
	x, s, entries := treeSource(t)
	trees := filepath.Join(t.TempDir(), "trees")
	dir := filepath.Join(trees, "name")

	if err := makeTree(canceled(), x, s, dir, entries); err == nil {
		t.Error("a cancelled tree was made")
	}
	assertEntries(t, trees)

	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := makeTree(context.Background(), x, s, dir, entries); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	assertEntries(t, trees, "name")
	if b, err := os.ReadFile(filepath.Join(dir, "usr/lib/libx.so")); err != nil || string(b) != "ELF" {
		t.Errorf("usr/lib/libx.so: %q, %v", b, err)
	}
	// A file the profile does not read is a stub: its size, no data, and
	// where overlayfs finds the data.
	stub := filepath.Join(dir, "etc/other")
	var st unix.Stat_t
	redirect := make([]byte, 64)
	n, err := unix.Getxattr(stub, "trusted.overlay.redirect", redirect)
	if err != nil || string(redirect[:n]) != "/etc/other" || unix.Stat(stub, &st) != nil || st.Size != 15 || st.Blocks != 0 {
		t.Errorf("etc/other: redirect %q (%v), size %d, blocks %d; want a 15-byte stub to /etc/other", redirect[:max(n, 0)], err, st.Size, st.Blocks)
	}
}

func TestRemoveStaleTemps(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{treeTempPrefix + "killed", "kept"} {
		if err := os.MkdirAll(filepath.Join(dir, name, "usr"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	removeStaleTemps(dir, staleTemp)
	assertEntries(t, dir, treeTempPrefix+"killed", "kept")
	removeStaleTemps(dir, 0)
	assertEntries(t, dir, "kept")
}

func canceled() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}

// assertEntries checks that dir holds exactly the names want.
func assertEntries(t *testing.T, dir string, want ...string) {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range ents {
		got = append(got, e.Name())
	}
	if len(got) != len(want) {
		t.Fatalf("%s holds %q, want %q", dir, got, want)
	}
	for i := range got {
		if got[i] != want[i] {
			t.Fatalf("%s holds %q, want %q", dir, got, want)
		}
	}
}

// TestFailureHoldsOff: a tree the node cannot hold is not tried again by
// every start; one the app's exit or the store cut short is.
func TestFailureHoldsOff(t *testing.T) {
	x, s, entries := treeSource(t)
	trees := t.TempDir()
	dir := filepath.Join(trees, "cut-short")
	err := makeTree(canceled(), x, s, dir, entries)
	noteFailure(dir, err)
	if err == nil || heldOff(dir) {
		t.Errorf("a cancelled tree (%v) holds off the next", err)
	}

	// The trees directory is a file: the node cannot hold a tree.
	notDir := filepath.Join(trees, "file")
	if err := os.WriteFile(notDir, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	dir = filepath.Join(notDir, "name")
	err = makeTree(context.Background(), x, s, dir, entries)
	if err == nil {
		t.Fatal("a tree was made under a file")
	}
	dir = filepath.Join(trees, "refused") // where the note can go
	noteFailure(dir, err)
	if !heldOff(dir) {
		t.Errorf("after %v, the next start tries again", err)
	}
}

// TestFinishTreeIsBounded: an exit does not wait for a tree stuck where
// its context cannot reach (a syncfs on a busy disk).
func TestFinishTreeIsBounded(t *testing.T) {
	b := &boot{log: log.New(io.Discard, "", 0), treeDone: make(chan struct{})}
	canceled := make(chan struct{})
	b.treeCancel = func() {
		select {
		case <-canceled:
		default:
			close(canceled)
		}
	}
	b.finishTree() // returns, though treeDone never closes
	select {
	case <-canceled:
	default:
		t.Error("the tree was not cancelled")
	}
}
