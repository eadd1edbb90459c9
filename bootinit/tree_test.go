package bootinit

import (
	"bytes"
	"context"
	"errors"
	"io"
	"log"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// convertFiles converts a tree of files.
func convertFiles(t *testing.T, files map[string][]byte) (*index.Index, *local.Store) {
	t.Helper()
	src := t.TempDir()
	for name, body := range files {
		p := filepath.Join(src, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, body, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return testtree.Convert(t, "dir:"+src)
}

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

// TestMakeTree: starts making the same tree at once end with one tree,
// sealed, and no temporary left; the files whose chunks the cache lacks
// are stubs.
func TestMakeTree(t *testing.T) {
	x, s, entries := treeSource(t)
	cache := t.TempDir()
	trees := filepath.Join(cache, "trees")
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			if err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30); err != nil && !errors.Is(err, errBusy) {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	for !isDir(nodecache.TreeDir(cache, treeName)) {
		if err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30); err != nil && !errors.Is(err, errBusy) {
			t.Fatal(err)
		}
	}
	assertEntries(t, trees, treeName, treeName+".info", treeName+".lock")
	if !checkTree(log.New(io.Discard, "", 0), x, cache, treeName) {
		t.Fatal("the tree made does not pass its check")
	}
	dir := nodecache.TreeDir(cache, treeName)
	if b, err := os.ReadFile(filepath.Join(dir, "usr/lib/libx.so")); err != nil || string(b) != "ELF" {
		t.Errorf("usr/lib/libx.so: %q, %v", b, err)
	}
	// A file the profile does not read, and a directory that holds none
	// it reads, are not in it: the lazy mount below shows them.
	for _, p := range []string{"etc/other", "etc"} {
		if _, err := os.Lstat(filepath.Join(dir, p)); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("%s is in the tree (%v), though the profile reads nothing of it", p, err)
		}
	}
}

// TestTreeFromTheCacheAlone: a tree is made of the cache alone, and only
// once every file of the profile is whole there: making it fetches
// nothing, and a tree is sealed as it is made, so one made without a file
// would never hold it.
func TestTreeFromTheCacheAlone(t *testing.T) {
	defer func(d time.Duration) { chunkWait = d }(chunkWait)
	chunkWait = 10 * time.Millisecond
	big := make([]byte, 1<<20) // several chunks
	rand.NewChaCha8([32]byte{1}).Read(big)
	x, s := convertFiles(t, map[string][]byte{"usr/bin/app": []byte("#!/bin/sh\n"), "usr/lib/big": big})
	var ents []uint32
	for _, p := range []string{"/usr/bin/app", "/usr/lib/big"} {
		e, err := x.Resolve(p)
		if err != nil {
			t.Fatal(err)
		}
		ents = append(ents, e)
	}
	e, _ := x.Resolve("/usr/lib/big")
	_, last, _ := x.ChunkSpan(x.Entries[e].Inode)
	p := s.Path(store.ID(x.Chunks[last].ID))
	chunk, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(p); err != nil {
		t.Fatal(err)
	}
	cache := t.TempDir()
	if err := makeTree(context.Background(), x, s, cache, treeName, "src", ents, 1<<30); !errors.Is(err, errNotYet) {
		t.Fatalf("a file of the profile not whole in the cache: %v, want errNotYet", err)
	}
	if isDir(nodecache.TreeDir(cache, treeName)) {
		t.Fatal("a tree was made without a file of the profile")
	}
	if err := os.WriteFile(p, chunk, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := makeTree(context.Background(), x, s, cache, treeName, "src", ents, 1<<30); err != nil {
		t.Fatal(err)
	}
	dir := nodecache.TreeDir(cache, treeName)
	if b, err := os.ReadFile(filepath.Join(dir, "usr/lib/big")); err != nil || !bytes.Equal(b, big) {
		t.Errorf("usr/lib/big in the tree: %d bytes (%v), want the file's %d", len(b), err, len(big))
	}
}

// TestTreeResumes: a tree maker killed (here: cancelled) at any point
// leaves trees/.tmp-NAME, which the next goes on with; no half tree is
// ever in place, and the tree in the end passes its check.
func TestTreeResumes(t *testing.T) {
	x, s, entries := treeSource(t)
	for n := range 8 {
		cache := t.TempDir()
		ctx, cancel := context.WithCancel(context.Background())
		cut := &cancelAfter{Store: s, n: n, cancel: cancel}
		err := makeTree(ctx, x, cut, cache, treeName, "src", entries, 1<<30)
		cancel()
		if err == nil {
			break // the tree needs fewer reads
		}
		if isDir(nodecache.TreeDir(cache, treeName)) && checkTree(log.New(io.Discard, "", 0), x, cache, treeName) {
			t.Fatalf("cut after %d reads (%v), the tree is in place", n, err)
		}
		if err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30); err != nil {
			t.Fatalf("going on after %d reads: %v", n, err)
		}
		if !checkTree(log.New(io.Discard, "", 0), x, cache, treeName) {
			t.Fatalf("the tree made on after %d reads does not pass its check", n)
		}
	}
}

// cancelAfter cancels its context once n reads went through.
type cancelAfter struct {
	store.Store
	mu     sync.Mutex
	n      int
	cancel func()
}

func (c *cancelAfter) Get(ctx context.Context, id store.ID) ([]byte, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == 0 {
		c.cancel()
		return nil, context.Canceled
	}
	c.n--
	return c.Store.Get(ctx, id)
}

// TestTamperedTreeIsSetAside: a sealed tree that another container
// changed is set aside by the next start's check, and made again.
func TestTamperedTreeIsSetAside(t *testing.T) {
	x, s, entries := treeSource(t)
	cache := t.TempDir()
	if err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30); err != nil {
		t.Fatal(err)
	}
	dir := nodecache.TreeDir(cache, treeName)
	if err := os.WriteFile(filepath.Join(dir, "usr/bin/sh"), []byte("#!/bin/evil\n"), 0o4755); err != nil {
		t.Fatal(err)
	}
	if checkTree(log.New(io.Discard, "", 0), x, cache, treeName) {
		t.Fatal("a tree with a planted setuid file passes its check")
	}
	if isDir(dir) {
		t.Fatal("the tampered tree is still in place")
	}
	aside, _ := filepath.Glob(filepath.Join(cache, "trees", ".aside-"+treeName+"-*", "usr/bin/sh"))
	if len(aside) != 1 {
		t.Errorf("the tampered tree is not set aside whole: %q", aside)
	}
	if err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30); err != nil {
		t.Fatal(err)
	}
	if !checkTree(log.New(io.Discard, "", 0), x, cache, treeName) {
		t.Fatal("the tree made again does not pass its check")
	}
}

// TestRemoveDeadTemps: a temporary tree no maker holds and none goes on
// with is removed; one a maker holds, and one of a tree name, are kept.
func TestRemoveDeadTemps(t *testing.T) {
	dir := t.TempDir()
	for _, name := range []string{nodecache.TempPrefix + "1234567", nodecache.TempPrefix + "7654321", nodecache.TempPrefix + treeName, "kept"} {
		if err := os.MkdirAll(filepath.Join(dir, name, "usr"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	unlock, err := lockDir(filepath.Join(dir, nodecache.TempPrefix+"7654321"))
	if err != nil {
		t.Fatal(err)
	}
	defer unlock()
	removeDeadTemps(dir)
	assertEntries(t, dir, nodecache.TempPrefix+treeName, nodecache.TempPrefix+"7654321", "kept")
}

// treeName is a name the converter could give a tree.
const treeName = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

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
// every start; one the app's exit cut short is.
func TestFailureHoldsOff(t *testing.T) {
	x, s, entries := treeSource(t)
	cache := t.TempDir()
	dir := nodecache.TreeDir(cache, treeName)
	err := makeTree(canceled(), x, s, cache, treeName, "src", entries, 1<<30)
	noteFailure(dir, err)
	if err == nil || heldOff(dir) {
		t.Errorf("a cancelled tree (%v) holds off the next", err)
	}

	// The trees directory is a file: the node cannot hold a tree.
	notDir := t.TempDir()
	if err := os.WriteFile(filepath.Join(notDir, "trees"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	err = makeTree(context.Background(), x, s, notDir, treeName, "src", entries, 1<<30)
	if err == nil {
		t.Fatal("a tree was made under a file")
	}
	noteFailure(dir, err)
	if !heldOff(dir) {
		t.Errorf("after %v, the next start tries again", err)
	}
}

// TestFullVolume: a tree the volume has no room for leaves a note of why
// and nothing half made, neither in place nor to go on with.
func TestFullVolume(t *testing.T) {
	x, s, entries := treeSource(t)
	cache := t.TempDir()
	// Room for the trees directory and a few entries, not the whole tree.
	if err := unix.Mount("tmpfs", cache, "tmpfs", 0, "nr_inodes=5"); err != nil {
		t.Fatal(err)
	}
	defer unix.Unmount(cache, unix.MNT_DETACH)
	dir := nodecache.TreeDir(cache, treeName)
	err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 1<<30)
	if err == nil {
		t.Fatal("a tree was made on a full volume")
	}
	noteFailure(dir, err)
	if !heldOff(dir) {
		t.Errorf("after %v, the next start tries again", err)
	}
	assertEntries(t, filepath.Join(cache, "trees"), treeName+".failed")
}

// TestTreeTooBig: a tree that would take more of the node cache than its
// bound allows (an eviction batch) is not made, and leaves nothing.
func TestTreeTooBig(t *testing.T) {
	x, s, entries := treeSource(t)
	cache := t.TempDir()
	err := makeTree(context.Background(), x, s, cache, treeName, "src", entries, 8<<10)
	if !errors.Is(err, errTooBig) {
		t.Fatalf("a tree of %d bytes at most: %v, want errTooBig", 8<<10, err)
	}
	assertEntries(t, filepath.Join(cache, "trees"))
}

// TestStopper: the exit's stop of the tree maker waits for it to end, at
// most as long as it is told, then kills it.
func TestStopper(t *testing.T) {
	start := func(seconds string) *os.Process {
		t.Helper()
		proc, err := os.StartProcess("/bin/sleep", []string{"sleep", seconds}, &os.ProcAttr{})
		if err != nil {
			t.Fatal(err)
		}
		return proc
	}
	ends := start("0.05")
	begin := time.Now()
	stopper(ends)(10 * time.Second)
	if took := time.Since(begin); took > 5*time.Second {
		t.Errorf("stopping a maker that ends in 50 ms took %v", took)
	}

	hangs := start("60")
	begin = time.Now()
	stopper(hangs)(100 * time.Millisecond)
	if took := time.Since(begin); took < 100*time.Millisecond || took > 5*time.Second {
		t.Errorf("stopping a maker that would run a minute, given 100 ms, took %v", took)
	}
	for deadline := time.Now().Add(5 * time.Second); hangs.Signal(unix.Signal(0)) == nil; time.Sleep(10 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the maker given 100 ms still runs 5 s after")
		}
	}
}
