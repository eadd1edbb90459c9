package lazyfs_test

import (
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mkbootfs/mkbootfs/lazyfs"
)

// TestReadahead reads a file of many chunks sequentially: its later chunks
// are fetched ahead, and none of the file after it in the stream.
func TestReadahead(t *testing.T) {
	storeDir := t.TempDir()
	big := randomBytes(1, 8*testChunk)
	next := randomBytes(2, 4*testChunk)
	x := buildTree(t, storeDir, []tfile{
		{path: "/big", mode: syscall.S_IFREG | 0o644, data: big},
		{path: "/next", mode: syscall.S_IFREG | 0o644, data: next},
	})
	type read struct {
		ino, entry uint32
		off        int64
		n          int
	}
	var mu sync.Mutex
	var reads []read
	srv, mnt := mountFS(t, x, openLocal(t, storeDir), lazyfs.Options{Readahead: 16, OnRead: func(ino, entry uint32, off int64, n int) {
		mu.Lock()
		reads = append(reads, read{ino, entry, off, n})
		mu.Unlock()
	}})
	f, err := os.Open(filepath.Join(mnt, "big"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 4096)
	if _, err := f.Read(buf); err != nil {
		t.Fatal(err)
	}
	// Readahead runs in the background: wait for it to settle.
	for range 100 {
		if srv.Stats().ChunksLoaded >= 8 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	st := srv.Stats()
	if st.Readaheads == 0 || st.ChunksLoaded != 8 {
		t.Errorf("after one read at the start of an 8-chunk file: %d chunks loaded, %d ahead; want all 8 of the file and none of the next", st.ChunksLoaded, st.Readaheads)
	}
	mu.Lock()
	defer mu.Unlock()
	e, _ := x.Resolve("big")
	if len(reads) == 0 || reads[0].ino != x.Entries[e].Inode || reads[0].entry != e || reads[0].off != 0 || reads[0].n < 4096 {
		t.Errorf("OnRead saw %+v, want a first read of inode %d through entry %d at 0", reads, x.Entries[e].Inode, e)
	}
}
