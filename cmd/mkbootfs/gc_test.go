package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/testenv"
	"github.com/mkbootfs/mkbootfs/internal/testtree"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// chunkFiles returns the number and bytes of the chunk files in dir.
func chunkFiles(t *testing.T, dir string) (n int, bytes int64) {
	t.Helper()
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && strings.HasSuffix(p, ".cacnk") {
			fi, err := d.Info()
			if err != nil {
				return err
			}
			n, bytes = n+1, bytes+fi.Size()
		}
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return n, bytes
}

// TestGCTenImages converts ten related Debian trees into one store in
// turn, and collects it keeping five of them while an eleventh conversion,
// of a tree related to a dropped one, runs in another process: the store
// shrinks, the dropped images' own chunks go, and the five kept images and
// the eleventh extract whole (rsync -naHAXc finds no difference).
func TestGCTenImages(t *testing.T) {
	testenv.Root(t)
	base := testenv.DebianRootfs(t)
	work := t.TempDir()
	dir := filepath.Join(work, "store")
	trees := make([]string, 11)
	idxs := make([]string, 11)
	for i := range 10 {
		trees[i] = testtree.Related(t, base, filepath.Join(work, fmt.Sprintf("tree%d", i)), uint64(i))
		idxs[i] = filepath.Join(work, fmt.Sprintf("image%d.idx", i))
		runBuilt(t, "convert", "--store", dir, "--index", idxs[i], "dir:"+trees[i])
	}
	// The ten are old: only an index or a conversion now keeps a chunk.
	then := time.Now().Add(-2 * time.Hour)
	s, err := local.Open(dir, false)
	if err != nil {
		t.Fatal(err)
	}
	s.Walk(func(id store.ID) error { return os.Chtimes(s.Path(id), then, then) })
	chunksBefore, bytesBefore := chunkFiles(t, dir)

	// The eleventh is image 1's next version; image 1 is dropped.
	trees[10] = testtree.Related(t, trees[1], filepath.Join(work, "tree10"), 10)
	idxs[10] = filepath.Join(work, "image10.idx")
	var convertOut bytes.Buffer
	conv := exec.Command(os.Args[0], "convert", "--store", dir, "--index", idxs[10], "dir:"+trees[10])
	conv.Env = append(os.Environ(), envRunMain+"=1")
	conv.Stdout, conv.Stderr = &convertOut, &convertOut
	if err := conv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- conv.Wait() }()
	t.Cleanup(func() { conv.Process.Kill() })
	// Collect once the conversion writes its first new chunk, image 1's
	// and its own /opt: it has found /bin to /lib present, and /usr, most
	// of the tree, is still to come.
	for deadline := time.Now().Add(time.Minute); time.Now().Before(deadline) && len(exited) == 0; time.Sleep(10 * time.Millisecond) {
		if tmp, _ := filepath.Glob(filepath.Join(dir, "*", "*.tmp")); len(tmp) > 0 {
			break
		}
	}
	kept := []string{"gc", "--store", dir, "--json"}
	for i := 0; i < 10; i += 2 {
		kept = append(kept, idxs[i])
	}
	out := runCLI(t, kept...)
	overlapped := len(exited) == 0
	var st local.GCStats
	if err := json.Unmarshal([]byte(out), &st); err != nil {
		t.Fatalf("gc --json: %v\n%s", err, out)
	}
	select {
	case err := <-exited:
		if err != nil {
			t.Fatalf("the conversion that ran during the collection failed: %v\n%s", err, &convertOut)
		}
	case <-time.After(5 * time.Minute):
		t.Fatal("the conversion that ran during the collection did not end in 5 minutes")
	}
	if !overlapped {
		t.Error("the conversion ended before the collection did: they did not run at the same time")
	}
	chunksAfter, bytesAfter := chunkFiles(t, dir)
	t.Logf("gc: %+v", st)
	t.Logf("store: %d chunks, %.1f MB before; %d chunks, %.1f MB after, the eleventh image's new chunks included (%s)",
		chunksBefore, float64(bytesBefore)/1e6, chunksAfter, float64(bytesAfter)/1e6, strings.TrimSpace(convertOut.String()))
	if st.Removed == 0 || bytesAfter >= bytesBefore {
		t.Errorf("the store did not shrink: %d chunk files removed, %d -> %d bytes", st.Removed, bytesBefore, bytesAfter)
	}

	// The dropped images' own chunks are gone.
	live := map[store.ID]bool{}
	for _, i := range []int{0, 2, 4, 6, 8, 10} {
		for _, c := range readIndex(t, idxs[i]).Chunks {
			live[c.ID] = true
		}
	}
	for _, i := range []int{3, 5, 7, 9} {
		for _, c := range readIndex(t, idxs[i]).Chunks {
			if _, err := os.Stat(s.Path(c.ID)); !live[c.ID] && err == nil {
				t.Fatalf("chunk %s, only dropped images', is still in the store", store.ID(c.ID).Short())
			}
		}
	}
	for _, i := range []int{0, 2, 4, 6, 8, 10} {
		got := filepath.Join(work, fmt.Sprintf("out%d", i))
		runBuilt(t, "extract", "--devices", "--same-permissions", "--store", dir, idxs[i], got)
		if diff := testtree.Diff(t, trees[i], got); diff != "" {
			t.Fatalf("image %d extracted after the collection differs from its tree:\n%s", i, diff)
		}
		os.RemoveAll(got)
	}
}

func readIndex(t *testing.T, path string) *index.Index {
	t.Helper()
	x, err := index.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

// gc refuses bad input in one line and removes nothing.
func TestGCUsage(t *testing.T) {
	idx, _ := convertSmallTree(t)
	x := readIndex(t, idx)
	dir := strings.SplitN(x.Meta["stores"], ",", 2)[0]
	garbage := filepath.Join(t.TempDir(), "garbage.idx")
	os.WriteFile(garbage, []byte("not an index"), 0o644)
	notStore := t.TempDir()
	os.WriteFile(filepath.Join(notStore, "notes.txt"), []byte("x"), 0o644)
	other := t.TempDir()
	os.MkdirAll(filepath.Join(other, "0000"), 0o755)
	checkUsage(t, []usage{
		{[]string{"gc", "--store", dir}, "requires at least 1 arg"},
		{[]string{"gc", "--store", dir, idx, garbage}, "garbage.idx: corrupt index: not an mkbootfs index; nothing was removed"},
		{[]string{"gc", "--store", dir, idx, filepath.Join(t.TempDir(), "gone.idx")}, "want an index file or a boot image); nothing was removed"},
		{[]string{"gc", "--store", "oci://127.0.0.1:5000/app", idx}, "gc collects a directory store"},
		{[]string{"gc", "--store", "http://127.0.0.1:1/store", idx}, "gc collects a directory store"},
		{[]string{"gc", "--store", notStore, idx}, "is not a chunk store"},
		{[]string{"gc", "--store", other, idx}, "holds none of the 1 chunks of " + idx},
		{[]string{"gc", "--store", filepath.Join(t.TempDir(), "nowhere"), idx}, "no such file or directory"},
		{[]string{"gc", "--store", dir, "--keep-newer", "-1h", idx}, "--keep-newer -1h0m0s: want a duration of 0 or more"},
	})
	if n, _ := chunkFiles(t, dir); n != 1 {
		t.Errorf("the store holds %d chunks after refused collections, want 1", n)
	}
	if out := runCLI(t, "gc", "--store", dir, "--keep-newer", "0", idx); !strings.Contains(out, "1 images keep 1 chunks") || !strings.Contains(out, "removed 0 chunks") {
		t.Errorf("gc of a store that holds only the image's chunk:\n%s", out)
	}
}
