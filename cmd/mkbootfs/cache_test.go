package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/nodecache"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
	"github.com/mkbootfs/mkbootfs/store/storetest"
)

// nodeCache fills a node cache at dir with n chunks and a boot tree.
func nodeCache(t *testing.T, dir string, n int) {
	t.Helper()
	remote, err := local.Open(t.TempDir(), true)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	var ids []store.ID
	for i := range n {
		id, _, err := store.Save(ctx, remote, storetest.Chunk(uint64(i), 40<<10))
		if err != nil {
			t.Fatal(err)
		}
		ids = append(ids, id)
	}
	c, err := nodecache.Open(dir, remote, nodecache.Options{})
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if _, err := store.Load(ctx, c, id); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	tree := nodecache.TreeDir(dir, "3f2a")
	os.MkdirAll(filepath.Join(tree, "usr/bin"), 0o755)
	os.WriteFile(filepath.Join(tree, "usr/bin/app"), make([]byte, 100<<10), 0o755)
	if err := nodecache.TreeMade(dir, "3f2a", "127.0.0.1:5000/app:1"); err != nil {
		t.Fatal(err)
	}
}

func TestCacheDuPrune(t *testing.T) {
	dir := t.TempDir()
	nodeCache(t, dir, 20)
	out := runCLI(t, "cache", "du", dir)
	for _, want := range []string{"chunks  20", "trees   1", "3f2a", "127.0.0.1:5000/app:1", "total"} {
		if !strings.Contains(strings.Join(strings.Fields(out), "  "), strings.Join(strings.Fields(want), "  ")) {
			t.Errorf("du does not say %q:\n%s", want, out)
		}
	}
	var u nodecache.Usage
	if err := json.Unmarshal([]byte(runCLI(t, "cache", "du", "--json", dir)), &u); err != nil || u.Chunks.Files != 20 || len(u.Trees) != 1 {
		t.Fatalf("du --json: %+v, %v", u, err)
	}
	out = runCLI(t, "cache", "prune", "--max-size", "500K", dir)
	if !strings.Contains(out, "removed 1") || !strings.Contains(out, " 0 trees") { // the tree is the most recently used
		t.Errorf("prune to 500K:\n%s", out)
	}
	var p nodecache.Pruned
	if err := json.Unmarshal([]byte(runCLI(t, "cache", "prune", "--json", "--max-size", "0", dir)), &p); err != nil || p.After != 0 {
		t.Fatalf("prune --json to 0: %+v, %v", p, err)
	}
	if err := json.Unmarshal([]byte(runCLI(t, "cache", "du", "--json", dir)), &u); err != nil || u.Total != 0 {
		t.Fatalf("du after prune to 0: %+v, %v", u, err)
	}
}

func TestCacheUsage(t *testing.T) {
	dir := t.TempDir()
	nodeCache(t, dir, 2)
	photos := t.TempDir()
	os.WriteFile(filepath.Join(photos, "a.jpg"), []byte("x"), 0o644)
	checkUsage(t, []usage{
		{[]string{"cache", "prune", dir}, "--max-size SIZE is required"},
		{[]string{"cache", "prune", "--max-size", "lots", dir}, `--max-size: size "lots": want bytes`},
		{[]string{"cache", "prune", "--max-size", "1G", "--max-age", "-1h", dir}, "--max-age -1h0m0s: want a duration of 0 or more"},
		{[]string{"cache", "du", photos}, "not a mkbootfs cache"},
		{[]string{"cache", "prune", "--max-size", "0", photos}, "not a mkbootfs cache"},
		{[]string{"cache", "du", "no-such-volume-" + fmt.Sprint(os.Getpid())}, "no such directory, nor a docker volume of that name"},
		{[]string{"cache", "du", filepath.Join(dir, "nowhere")}, "no such file or directory"},
		{[]string{"cache", "du"}, "accepts 1 arg"},
		{[]string{"mount", "--cache", dir, "--cache-max-age", "7d", "x.idx", dir}, `--cache-max-age: max age "7d": want a duration above 0`},
	})
	if _, err := os.Stat(filepath.Join(photos, "a.jpg")); err != nil {
		t.Error("a refused prune lost a file")
	}
}

// A docker volume is named as itself.
func TestCacheVolumeName(t *testing.T) {
	testenv.Docker(t)
	vol := fmt.Sprintf("mkbootfs-test-cache-du-%d", os.Getpid())
	if out, err := exec.Command("docker", "volume", "create", vol).CombinedOutput(); err != nil {
		t.Fatalf("docker volume create: %v: %s", err, out)
	}
	t.Cleanup(func() { exec.Command("docker", "volume", "rm", "-f", vol).Run() })
	mnt, err := exec.Command("docker", "volume", "inspect", "-f", "{{.Mountpoint}}", vol).Output()
	if err != nil {
		t.Fatal(err)
	}
	nodeCache(t, strings.TrimSpace(string(mnt)), 3)
	if out := runCLI(t, "cache", "du", vol); !strings.Contains(out, strings.TrimSpace(string(mnt))) || !strings.Contains(strings.Join(strings.Fields(out), " "), "chunks 3") {
		t.Errorf("du %s:\n%s", vol, out)
	}
}
