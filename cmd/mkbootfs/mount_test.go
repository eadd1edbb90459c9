package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/converter"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/lazyfs"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// TestMount converts a small tree, mounts it with `mkbootfs mount` through
// a cache, reads it, interrupts the command and checks the mount is gone
// and the stats were written.
func TestMount(t *testing.T) {
	testenv.FUSE(t)
	src, storeDir, cacheDir, mnt := t.TempDir(), t.TempDir(), t.TempDir(), t.TempDir()
	os.MkdirAll(filepath.Join(src, "etc"), 0o755)
	os.WriteFile(filepath.Join(src, "etc", "motd"), []byte("lazy hello\n"), 0o644)
	s, err := local.Open(storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	res, err := converter.Convert(context.Background(), converter.Options{Source: "dir:" + src, Store: s, StoreURLs: []string{storeDir}})
	if err != nil {
		t.Fatal(err)
	}
	b, err := res.Index.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	idx := filepath.Join(t.TempDir(), "tree.idx")
	os.WriteFile(idx, b, 0o644)
	statsFile := filepath.Join(t.TempDir(), "stats.json")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := newRootCmd()
	var stdout, stderr bytes.Buffer
	cmd.SetOut(&stdout)
	cmd.SetErr(&stderr)
	// The stores come from the index.
	cmd.SetArgs([]string{"mount", "--cache", cacheDir, "--stats", "--stats-file", statsFile, idx, mnt})
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()

	var got []byte
	for deadline := time.Now().Add(10 * time.Second); ; {
		if got, err = os.ReadFile(filepath.Join(mnt, "etc", "motd")); err == nil || time.Now().After(deadline) {
			break
		}
		select {
		case err := <-done:
			t.Fatalf("mount ended early: %v\n%s", err, &stderr)
		case <-time.After(20 * time.Millisecond):
		}
	}
	if string(got) != "lazy hello\n" {
		t.Fatalf("reading through the mount: %q, %v\n%s", got, err, &stderr)
	}

	cancel()
	if err := <-done; err != nil {
		t.Fatalf("mount: %v\n%s", err, &stderr)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(mnt, &st); err != nil || st.Type == unix.FUSE_SUPER_MAGIC {
		t.Errorf("%s is still a FUSE mount after the command ended (%v)", mnt, err)
	}
	var stats lazyfs.Stats
	if b, err := os.ReadFile(statsFile); err != nil || json.Unmarshal(b, &stats) != nil || stats.Cache == nil || stats.Cache.Misses == 0 {
		t.Errorf("stats file: %s, %v", b, err)
	}
	if !strings.Contains(stdout.String(), "cache hits") {
		t.Errorf("--stats printed %q", &stdout)
	}
}
