package nodecache

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// bigTree makes tree name of about n bytes, last used at lastUse, and
// records it.
func bigTree(t *testing.T, dir, name string, n int, lastUse time.Time) {
	t.Helper()
	p := makeTree(t, dir, name)
	if err := os.WriteFile(filepath.Join(p, "usr/bin/big"), make([]byte, n), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := TreeMade(dir, name, "example.com/"+name+":1"); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(p+lockSuffix, nil, 0o644)
	os.Chtimes(p+lockSuffix, lastUse, lastUse)
}

// Trees and chunks are evicted by one order, least recently used first;
// a tree in use is never removed.
func TestEvictTrees(t *testing.T) {
	dir := t.TempDir()
	ids := cached(t, dir, 64) // 3 MiB
	day := time.Now().Add(-24 * time.Hour)
	l, _ := local.Open(dir, false)
	for _, id := range ids {
		os.Chtimes(l.Path(id), day, day)
	}
	bigTree(t, dir, "old", 1<<20, day.Add(-48*time.Hour))
	bigTree(t, dir, "used", 1<<20, day.Add(-48*time.Hour))
	bigTree(t, dir, "new", 1<<20, time.Now())
	release, ok := UseTree(dir, "used")
	if !ok {
		t.Fatal("UseTree")
	}
	defer release()
	a, _ := openAccount(dir)
	defer a.Close()
	for s := range shards {
		evictShard(context.Background(), dir, a, nil, s, nil)
	}
	r, _ := a.read()
	if r.TreeCount != 3 || r.Trees < 3<<20 {
		t.Fatalf("account: %d trees, %d bytes; want 3 trees of 1 MiB", r.TreeCount, r.Trees)
	}
	target := r.total() - 2<<20 // a tree and a MiB of chunks
	if _, err := evict(context.Background(), dir, a, target); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]bool{"old": false, "used": true, "new": true} {
		if _, err := os.Stat(filepath.Join(TreeDir(dir, name), "usr/bin/big")); (err == nil) != want {
			t.Errorf("tree %s there: %v, want %v", name, err == nil, want)
		}
	}
	w := onDisk(t, dir)
	r, _ = a.read()
	if r.total() > target || len(w.chunks) >= len(ids) || len(w.chunks) < len(ids)/2 {
		t.Errorf("after evicting to %d: account %d, %d of %d chunks left", target, r.total(), len(w.chunks), len(ids))
	}
}

// The sweep removes trees and profiles unused for the maximum age, and
// what dead processes left, and counts the rest.
func TestSweep(t *testing.T) {
	dir := t.TempDir()
	old := time.Now().Add(-10 * 24 * time.Hour)
	bigTree(t, dir, "old", 1<<16, old)
	bigTree(t, dir, "used", 1<<16, old)
	bigTree(t, dir, "new", 1<<16, time.Now())
	release, _ := UseTree(dir, "used")
	defer release()
	os.Chtimes(TreeDir(dir, "used")+lockSuffix, old, old)
	trees := filepath.Join(dir, treesDir)
	os.MkdirAll(filepath.Join(trees, ".trash-gone-1234/usr"), 0o755)
	os.WriteFile(filepath.Join(trees, "gone.failed"), []byte("no room\n"), 0o644)
	os.Chtimes(filepath.Join(trees, "gone.failed"), old, old)
	os.WriteFile(filepath.Join(trees, "orphan.lock"), nil, 0o644)
	os.Chtimes(filepath.Join(trees, "orphan.lock"), old, old)
	os.WriteFile(filepath.Join(trees, "new.failed"), []byte("recent\n"), 0o644)
	os.MkdirAll(ProfilePath(dir, ""), 0o755)
	os.WriteFile(ProfilePath(dir, "p-old"), []byte("mkbootfs profile 1\n"), 0o644)
	os.Chtimes(ProfilePath(dir, "p-old"), old, old)
	os.WriteFile(ProfilePath(dir, "p-new"), []byte("mkbootfs profile 1\n"), 0o644)
	for _, tmp := range []string{".p-killed.tmp1", ".p-writing.tmp2"} {
		os.WriteFile(ProfilePath(dir, tmp), []byte("mkbootfs prof"), 0o644)
	}
	os.Chtimes(ProfilePath(dir, ".p-killed.tmp1"), old, old)
	a, _ := openAccount(dir)
	defer a.Close()
	if err := sweep(context.Background(), dir, a, DefaultMaxAge); err != nil {
		t.Fatal(err)
	}
	var left []string
	ents, _ := os.ReadDir(trees)
	for _, e := range ents {
		left = append(left, e.Name())
	}
	want := "new new.failed new.info new.lock used used.info used.lock"
	if strings.Join(left, " ") != want {
		t.Errorf("trees/ holds %q, want %q", strings.Join(left, " "), want)
	}
	if ents, _ := os.ReadDir(ProfilePath(dir, "")); len(ents) != 2 || ents[0].Name() != ".p-writing.tmp2" || ents[1].Name() != "p-new" {
		t.Errorf("profiles/ holds %v, want .p-writing.tmp2 (being written) and p-new: not p-old, unused for 10 days, nor the temporary file a killed start left", ents)
	}
	r, _ := a.read()
	if r.TreeCount != 2 || r.ProfileCount != 1 || r.Trees < 2<<16 || r.SweptAt == 0 {
		t.Errorf("account after the sweep: %+v", r)
	}
}

// A volume that fills up below the bound evicts (and says so once), so
// that chunks fetched later are kept.
func TestFullVolume(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a small tmpfs takes root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	remoteDir := t.TempDir()
	ids := remoteWith(t, remoteDir, 0, 150) // 7 MiB
	var mu sync.Mutex
	var logs []string
	c, err := Open(dir, openRemote(t, remoteDir), Options{MaxSize: 1 << 30, Log: func(s string) {
		mu.Lock()
		logs = append(logs, s)
		mu.Unlock()
	}})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := store.Load(context.Background(), c, id); err != nil {
			t.Fatal(err)
		}
		time.Sleep(2 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	c.Close()
	l, _ := local.Open(dir, false)
	kept := 0
	for _, id := range ids[len(ids)-10:] {
		if ok, _ := l.Has(context.Background(), id); ok {
			kept++
		}
	}
	if kept < 5 {
		t.Errorf("%d of the last 10 chunks fetched were kept: a full volume does not make room", kept)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(logs) != 1 || !strings.Contains(logs[0], "full") {
		t.Errorf("logged %q; want one line saying the volume is full", logs)
	}
	checkChunks(t, dir, 0)
	t.Logf("%d of the last 10 kept; %s", kept, fmt.Sprint(c.Stats()))
}

// A tree made by two starts at once is counted once.
func TestTreeMadeTwice(t *testing.T) {
	dir := t.TempDir()
	makeTree(t, dir, "a")
	for range 2 {
		if err := TreeMade(dir, "a", "img:1"); err != nil {
			t.Fatal(err)
		}
	}
	if r := readAccount(t, dir); r.TreeCount != 1 {
		t.Fatalf("%d trees counted, want 1", r.TreeCount)
	}
	if left, _ := filepath.Glob(filepath.Join(dir, treesDir, ".*")); len(left) != 0 {
		t.Fatalf("left behind: %v", left)
	}
}
