package lazyfs_test

import (
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/lazyfs"
)

// TestReadahead reads a file of many chunks: a first read fetches nothing
// ahead; a stream of reads fetches the rest of the file ahead, and none of
// the file after it in the stream.
func TestReadahead(t *testing.T) {
	storeDir := t.TempDir()
	big := randomBytes(1, 64*testChunk)
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
	time.Sleep(50 * time.Millisecond)
	if st := srv.Stats(); st.Readaheads != 0 {
		t.Errorf("after a first read of 4 KiB: %d chunks loaded, %d of them ahead; want none ahead", st.ChunksLoaded, st.Readaheads)
	}
	// Then a stream of reads, past the kernel's own readahead of the first.
	stream := make([]byte, 128<<10)
	for off := int64(2 * testChunk); off < 58*testChunk; off += int64(len(stream)) {
		if _, err := f.ReadAt(stream, off); err != nil {
			t.Fatal(err)
		}
	}
	// Readahead runs in the background: wait for it to settle.
	for range 100 {
		if srv.Stats().ChunksLoaded >= 64 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	st := srv.Stats()
	// Readahead goes up to 16 chunks past the reads, not past the file.
	if st.Readaheads == 0 || st.ChunksLoaded > 64 {
		t.Errorf("after sequential reads of a 64-chunk file: %d chunks loaded, %d ahead; want some ahead and nothing of the next file", st.ChunksLoaded, st.Readaheads)
	}
	mu.Lock()
	defer mu.Unlock()
	e, _ := x.Resolve("big")
	if len(reads) == 0 || reads[0].ino != x.Entries[e].Inode || reads[0].entry != e || reads[0].off != 0 || reads[0].n < 4096 {
		t.Errorf("OnRead saw %+v, want a first read of inode %d through entry %d at 0", reads, x.Entries[e].Inode, e)
	}
}

// TestNoReadaheadFor streams through half a file from a thread whose reads start
// no readahead, then through another from any other thread: only that one
// is read ahead.
func TestNoReadaheadFor(t *testing.T) {
	storeDir := t.TempDir()
	x := buildTree(t, storeDir, []tfile{
		{path: "/quiet", mode: syscall.S_IFREG | 0o644, data: randomBytes(3, 128*testChunk)},
		{path: "/loud", mode: syscall.S_IFREG | 0o644, data: randomBytes(4, 128*testChunk)},
	})
	srv, mnt := mountFS(t, x, openLocal(t, storeDir), lazyfs.Options{Readahead: 16})
	stream := func(name string) error {
		f, err := os.Open(filepath.Join(mnt, name))
		if err != nil {
			return err
		}
		defer f.Close()
		buf := make([]byte, 128<<10)
		for off := int64(0); off < 64*testChunk; off += int64(len(buf)) {
			if _, err := f.ReadAt(buf, off); err != nil {
				return err
			}
		}
		return nil
	}
	errs := make(chan error)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		srv.NoReadaheadFor(unix.Gettid())
		defer srv.NoReadaheadFor(0)
		errs <- stream("quiet")
	}()
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Readaheads != 0 {
		t.Errorf("a stream through half a 128-chunk file by the quiet thread: %d chunks read ahead, want none", st.Readaheads)
	}
	if err := stream("loud"); err != nil {
		t.Fatal(err)
	}
	if st := srv.Stats(); st.Readaheads == 0 {
		t.Errorf("a stream through half a 128-chunk file by another thread: nothing read ahead")
	}
}

// TestTreeReadahead reads small files one after another in tree order, as
// tar does: the chunks of the files after them are fetched ahead, unless
// readahead is kept within files.
func TestTreeReadahead(t *testing.T) {
	storeDir := t.TempDir()
	var files []tfile
	for i := range 12 {
		files = append(files, tfile{path: fmt.Sprintf("/f%02d", i), mode: syscall.S_IFREG | 0o644, data: randomBytes(uint64(i), 2*testChunk)})
	}
	x := buildTree(t, storeDir, files)
	for _, within := range []bool{false, true} {
		srv, mnt := mountFS(t, x, openLocal(t, storeDir), lazyfs.Options{ReadaheadWithinFiles: within})
		for i := range 6 {
			if _, err := os.ReadFile(filepath.Join(mnt, fmt.Sprintf("f%02d", i))); err != nil {
				t.Fatal(err)
			}
		}
		// Readaheads counts the fetches as they start: no waiting.
		st := srv.Stats()
		if ahead := st.Readaheads > 0; ahead == within {
			t.Errorf("within files %v: reading 6 files of 2 chunks in tree order loaded %d chunks (%d ahead)", within, st.ChunksLoaded, st.Readaheads)
		}
	}
}
