package index_test

import (
	"bytes"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/mkbootfs/mkbootfs/index"
)

// readTree has plain and sparse files cut into chunks of 1 to 17 bytes, so
// every read of every file crosses chunk boundaries at every alignment.
func readTree(t testing.TB, seed uint64) (*builder, *index.Index) {
	b := newBuilder(seed)
	for i, size := range []int{0, 1, 2, 17, 64, 150} {
		b.file(b.root, "plain"+string(rune('a'+i)), size)
	}
	for i, ext := range [][]index.Extent{
		{},                                     // all hole
		{{Off: 0, Len: 10}, {Off: 10, Len: 5}}, // adjacent runs, hole at the end
		{{Off: 20, Len: 30}, {Off: 100, Len: 50}}, // data at the end
		{{Off: 149, Len: 1}},
		{{Off: 0, Len: 1}, {Off: 2, Len: 1}, {Off: 4, Len: 40}, {Off: 60, Len: 17}},
	} {
		b.sparse(b.root, "sparse"+string(rune('a'+i)), 150, ext)
	}
	return b, decoded(t, b.build(t, 17, map[string]string{}))
}

// TestReadAt reads every file at every offset with every length against
// its content, and checks only the chunks a read needs are fetched.
func TestReadAt(t *testing.T) {
	for seed := range uint64(3) {
		b, x := readTree(t, seed)
		f := &fetcher{x: x, stream: b.stream}
		for ino, want := range b.content {
			n := &x.Inodes[ino]
			size := int(n.Size)
			first, last, hasData := x.ChunkSpan(ino)
			for off := 0; off <= size+2; off++ {
				for l := 0; off+l <= size+3; l++ {
					p := bytes.Repeat([]byte{0xa5}, l)
					f.got = f.got[:0]
					got, err := x.ReadAt(ino, p, int64(off), f.chunk)
					wantN := max(0, min(l, size-off))
					if err != nil || got != wantN {
						t.Fatalf("inode %d: ReadAt(%d bytes at %d) = %d, %v; want %d", ino, l, off, got, err, wantN)
					}
					if w := want[min(off, size):][:got]; !bytes.Equal(p[:got], w) {
						t.Fatalf("inode %d: ReadAt(%d bytes at %d) read %x, want %x", ino, l, off, p[:got], w)
					}
					if bytes.Count(p[got:], []byte{0xa5}) != len(p)-got {
						t.Fatalf("inode %d: ReadAt(%d bytes at %d) wrote past what it returned", ino, l, off)
					}
					for _, c := range f.got {
						if !hasData || c < first || c > last {
							t.Fatalf("inode %d: ReadAt(%d bytes at %d) fetched chunk %d, outside its chunks", ino, l, off, c)
						}
					}
					if n.Extents == nil && got > 0 {
						start := n.Offset + int64(off)
						if need := x.ChunkAt(start+int64(got)-1) - x.ChunkAt(start) + 1; len(f.got) != need {
							t.Fatalf("inode %d: ReadAt(%d bytes at %d) fetched %d chunks, want %d", ino, l, off, len(f.got), need)
						}
					}
				}
			}
		}
	}
}

func TestReadAtErrors(t *testing.T) {
	b, x := readTree(t, 7)
	f := &fetcher{x: x, stream: b.stream}
	plain, _ := x.Resolve("/plainf")
	sparse, _ := x.Resolve("/sparsee")
	errFetch := errors.New("store unreachable")
	tests := []struct {
		name  string
		chunk index.ChunkFunc
		want  string
	}{
		{"fetch error", func(int) ([]byte, error) { return nil, errFetch }, errFetch.Error()},
		{"short chunk", func(i int) ([]byte, error) {
			c, _ := f.chunk(i)
			return c[:len(c)-1], nil
		}, "the index says"},
		{"long chunk", func(i int) ([]byte, error) {
			c, _ := f.chunk(i)
			return append(c[:len(c):len(c)], 0), nil
		}, "the index says"},
		{"nil chunk", func(int) ([]byte, error) { return nil, nil }, "the index says"},
	}
	for _, tt := range tests {
		for _, e := range []uint32{plain, sparse} {
			ino := x.Entries[e].Inode
			got, err := x.ReadAt(ino, make([]byte, 150), 0, tt.chunk)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("%s: %s: ReadAt = %d, %v; want an error saying %q", tt.name, x.Path(e), got, err, tt.want)
			}
			if tt.name == "fetch error" && !errors.Is(err, errFetch) {
				t.Errorf("%s: ReadAt error %v does not wrap the fetch error", x.Path(e), err)
			}
		}
	}
	for _, e := range []uint32{index.Root} {
		if _, err := x.ReadAt(x.Entries[e].Inode, make([]byte, 10), 0, f.chunk); err == nil {
			t.Errorf("ReadAt of directory %s succeeded", x.Path(e))
		}
	}
}

// TestConcurrentReads runs readers on one index at once, as FUSE does: with
// -race it shows reading never writes to the index.
func TestConcurrentReads(t *testing.T) {
	b, x := readTree(t, 11)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			f := &fetcher{x: x, stream: b.stream}
			p := make([]byte, 40)
			for e := range uint32(len(x.Entries)) {
				if _, err := x.Resolve(x.Path(e)); err != nil {
					t.Error(err)
				}
				ino := x.Entries[e].Inode
				if x.Inodes[ino].IsRegular() {
					x.ChunkSpan(ino)
					if _, err := x.ReadAt(ino, p, 3, f.chunk); err != nil {
						t.Error(err)
					}
				}
			}
		})
	}
	wg.Wait()
}
