package nodecache

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/store/local"
)

// aCache makes a cache at dir with 64 chunks (last used one a minute
// apart, two days ago), three trees ("old" and "used" three days ago,
// "used" held in use until the test ends, "new" now), a profile, a
// foreign file, a stale temporary chunk and a stale temporary profile.
func aCache(t *testing.T, dir string) {
	t.Helper()
	ids := cached(t, dir, 64)
	l, _ := local.Open(dir, false)
	base := time.Now().Add(-48 * time.Hour)
	for i, id := range ids {
		mt := base.Add(time.Duration(i) * time.Minute)
		os.Chtimes(l.Path(id), mt, mt)
	}
	old := time.Now().Add(-72 * time.Hour)
	bigTree(t, dir, "old", 1<<20, old)
	bigTree(t, dir, "used", 1<<20, old)
	bigTree(t, dir, "new", 1<<20, time.Now())
	release, ok := UseTree(dir, "used")
	if !ok {
		t.Fatal("UseTree")
	}
	t.Cleanup(release)
	os.Chtimes(TreeDir(dir, "used")+lockSuffix, old, old)
	os.MkdirAll(filepath.Join(dir, profilesDir), 0o755)
	os.WriteFile(ProfilePath(dir, "img"), []byte("mkbootfs profile 1\n"), 0o644)
	prefix := l.Path(ids[0])[len(dir)+1 : len(dir)+5]
	os.WriteFile(filepath.Join(dir, prefix, "notes.txt"), []byte("mine"), 0o644)
	tmp := l.Path(ids[1]) + ".0123456789abcdef.tmp"
	os.WriteFile(tmp, []byte("half"), 0o644)
	os.Chtimes(tmp, old, old)
	// A learned profile a killed start left half written (atomicfile's
	// temporary name).
	ptmp := ProfilePath(dir, ".img.tmp123456")
	os.WriteFile(ptmp, []byte("mkbootfs prof"), 0o644)
	os.Chtimes(ptmp, old, old)
}

func TestDu(t *testing.T) {
	dir := t.TempDir()
	aCache(t, dir)
	u, err := Du(context.Background(), dir)
	if err != nil {
		t.Fatal(err)
	}
	if u.Chunks.Files != 64 || u.Chunks.Bytes < 64*chunkSize || len(u.Trees) != 3 || len(u.Profiles) != 1 ||
		u.Foreign.Files != 1 || u.Temp.Files != 2 || u.Profiles[0].Name != "img" {
		t.Fatalf("du: %+v", u)
	}
	byName := map[string]Tree{}
	for _, tr := range u.Trees {
		byName[tr.Name] = tr
	}
	if !byName["used"].InUse || byName["old"].InUse || byName["new"].Source != "example.com/new:1" || byName["old"].Bytes < 1<<20 {
		t.Errorf("trees: %+v", u.Trees)
	}
	if u.Trees[0].Name != "new" {
		t.Errorf("trees not most recently used first: %+v", u.Trees)
	}
	// Du changes nothing: the stale temporary chunk and profile are still
	// there.
	if u2, _ := Du(context.Background(), dir); u2.Temp.Files != 2 {
		t.Error("du removed a temporary file")
	}
}

func TestDuNotACache(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "photo.jpg"), []byte("x"), 0o644)
	os.MkdirAll(filepath.Join(dir, "abcd"), 0o755)
	os.WriteFile(filepath.Join(dir, "abcd", "abcd.txt"), []byte("x"), 0o644)
	if _, err := Du(context.Background(), dir); !errors.Is(err, ErrNotCache) {
		t.Errorf("Du of a directory of photos: %v", err)
	}
	if _, err := Prune(context.Background(), dir, PruneOptions{}); !errors.Is(err, ErrNotCache) {
		t.Errorf("Prune of a directory of photos: %v", err)
	}
	if _, err := os.Stat(filepath.Join(dir, "photo.jpg")); err != nil {
		t.Error("prune of a directory that is not a cache lost a file")
	}
	if u, err := Du(context.Background(), t.TempDir()); err != nil || u.Total != 0 {
		t.Errorf("Du of an empty directory: %+v, %v", u, err)
	}
	if _, err := Du(context.Background(), filepath.Join(dir, "photo.jpg")); err == nil {
		t.Error("Du of a file: no error")
	}
}

// Prune removes chunks and trees in one order of last use, keeps a tree
// in use and foreign files, and leaves the account exact.
func TestPrune(t *testing.T) {
	dir := t.TempDir()
	aCache(t, dir)
	before, _ := Du(context.Background(), dir)
	// A tree and half the chunks must go.
	var oldTree int64
	for _, tr := range before.Trees {
		if tr.Name == "old" {
			oldTree = tr.Bytes
		}
	}
	limit := before.Total - before.Foreign.Bytes - before.Temp.Bytes - oldTree - before.Chunks.Bytes/2
	p, err := Prune(context.Background(), dir, PruneOptions{MaxSize: limit})
	if err != nil {
		t.Fatal(err)
	}
	after, _ := Du(context.Background(), dir)
	if after.Total-after.Foreign.Bytes > limit {
		t.Errorf("after prune to %d the cache holds %d", limit, after.Total-after.Foreign.Bytes)
	}
	names := map[string]bool{}
	for _, tr := range after.Trees {
		names[tr.Name] = true
	}
	// "old" (3 days) goes before every chunk (2 days), "used" is in use,
	// "new" is newer than every chunk.
	if names["old"] || !names["used"] || !names["new"] || len(p.InUse) != 1 || p.InUse[0] != "used" {
		t.Errorf("trees left: %v, kept in use: %v", names, p.InUse)
	}
	if after.Chunks.Files > 40 || after.Chunks.Files < 24 || after.Foreign.Files != 1 || after.Temp.Files != 0 || p.StaleTemps != 2 {
		t.Errorf("after: %+v; pruned %+v", after, p)
	}
	r := readAccount(t, dir)
	if got := r.total(); got != after.Total-after.Foreign.Bytes {
		t.Errorf("account %d after prune, du %d", got, after.Total-after.Foreign.Bytes)
	}
	checkChunks(t, dir, 1)

	// By age: the profile and the tree of "new" stay, "used" is in use.
	p, err = Prune(context.Background(), dir, PruneOptions{MaxSize: 1 << 40, MaxAge: 24 * time.Hour})
	if err != nil || len(p.Trees) != 0 || len(p.Profiles) != 0 || len(p.InUse) != 1 {
		t.Errorf("prune by age: %+v, %v", p, err)
	}
	// Everything no container uses.
	if p, err = Prune(context.Background(), dir, PruneOptions{MaxSize: 0}); err != nil {
		t.Fatal(err)
	}
	after, _ = Du(context.Background(), dir)
	if after.Chunks.Files != 0 || len(after.Trees) != 1 || after.Foreign.Files != 1 || p.After != after.Total-after.Foreign.Bytes {
		t.Errorf("after prune to 0: %+v; prune says %d bytes left", after, p.After)
	}
}

func TestPruneReadOnly(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("a read-only bind mount takes root")
	}
	dir := t.TempDir()
	aCache(t, dir)
	ro := t.TempDir()
	if out, err := exec.Command("mount", "--bind", "-o", "ro", dir, ro).CombinedOutput(); err != nil {
		t.Skipf("mount: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", ro).Run() })
	exec.Command("mount", "-o", "remount,bind,ro", ro).Run()
	_, err := Prune(context.Background(), ro, PruneOptions{})
	if err == nil || !errors.Is(err, unix.EROFS) {
		t.Fatalf("Prune of a read-only cache: %v", err)
	}
	if u, err := Du(context.Background(), ro); err != nil || u.Chunks.Files != 64 {
		t.Fatalf("Du of a read-only cache: %+v, %v", u, err)
	}
}

// A full volume is pruned all the same.
func TestPruneFull(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounting a small tmpfs takes root")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("mount tmpfs: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", "-l", dir).Run() })
	makeTree(t, dir, "t")
	f, _ := os.Create(filepath.Join(dir, "trees", "t", "fill"))
	f.Write(make([]byte, 4<<20)) // ENOSPC past 2 MiB
	f.Close()
	if err := os.WriteFile(filepath.Join(dir, "x"), []byte("y"), 0o644); err == nil {
		t.Fatal("the volume is not full")
	}
	p, err := Prune(context.Background(), dir, PruneOptions{MaxSize: 0})
	if err != nil || len(p.Trees) != 1 {
		t.Fatalf("Prune of a full volume: %+v, %v", p, err)
	}
}
