package index_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"io/fs"
	"reflect"
	"strings"
	"syscall"
	"testing"

	"github.com/mkbootfs/mkbootfs/index"
)

func TestRoundTrip(t *testing.T) {
	f := newFixture(t)
	b, err := f.x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	y, err := index.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(f.x, y) {
		t.Errorf("decoded index differs from the one encoded:\n got %+v\nwant %+v", y, f.x)
	}
	if y.Digest() != sha256.Sum256(b) {
		t.Errorf("the decoded index's digest %x is not its encoding's", y.Digest())
	}
	again, err := y.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(b, again) {
		t.Error("re-encoding a decoded index changed its bytes")
	}
}

func TestEmptyRoot(t *testing.T) {
	x, err := index.Build(&index.Node{}, []index.Inode{{Mode: syscall.S_IFDIR | 0o700}}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	y, err := index.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	if len(y.Entries) != 1 || y.StreamSize() != 0 || y.Inodes[0].Nlink != 2 || len(y.Meta) != 0 {
		t.Errorf("decoded %+v, want a lone root", y)
	}
	if e, err := y.Resolve("/"); err != nil || e != index.Root {
		t.Errorf(`Resolve("/") = %d, %v`, e, err)
	}
}

func TestInodes(t *testing.T) {
	f := newFixture(t)
	y := decoded(t, f.x)
	tests := []struct {
		path    string
		mode    fs.FileMode
		nlink   uint32
		dataLen int64
	}{
		{"/", fs.ModeDir | 0o755, 2 + 7, 0}, // bin sbin dev run tmp usr d
		{"/usr", fs.ModeDir | 0o755, 3, 0},
		{"/tmp", fs.ModeDir | fs.ModeSticky | 0o777, 2, 0},
		{"/bin/busybox", fs.ModeSetuid | 0o755, 2, 3000},
		{"/sbin/init", fs.ModeSetuid | 0o755, 2, 3000},
		{"/x", 0o644, 3, 10},
		{"/usr/x", 0o644, 3, 10},
		{"/empty", 0o644, 1, 0},
		{"/sparse", 0o600, 1, 8100},
		{"/holes", 0o600, 1, 0},
		{"/dev/null", fs.ModeDevice | fs.ModeCharDevice | 0o666, 1, 0},
		{"/dev/sda", fs.ModeDevice | 0o660, 1, 0},
		{"/run/initctl", fs.ModeNamedPipe | 0o600, 1, 0},
		{"/run/sock", fs.ModeSocket | 0o777, 1, 0},
		{"/lib", fs.ModeSymlink | 0o777, 1, 0},
		{"/d", fs.ModeDir | 0o755, 3, 0},
		{f.deep[:len(f.deep)-len("/leaf")], fs.ModeDir | 0o755, 2, 0},
		{f.deep, 0o644, 1, 1},
	}
	for _, x := range []*index.Index{f.x, y} {
		for _, tt := range tests {
			e, err := x.Resolve(tt.path)
			if err != nil {
				t.Fatal(err)
			}
			n := &x.Inodes[x.Entries[e].Inode]
			if n.FileMode() != tt.mode || n.Nlink != tt.nlink || n.DataLen() != tt.dataLen {
				t.Errorf("%s: mode %v, nlink %d, data %d; want %v, %d, %d", tt.path, n.FileMode(), n.Nlink, n.DataLen(), tt.mode, tt.nlink, tt.dataLen)
			}
		}
	}
	for _, p := range []string{"/bin/busybox", "/lib", "/"} {
		e, _ := y.Resolve(p)
		want := f.inodes[f.x.Entries[e].Inode].Xattrs
		if got := y.Inodes[y.Entries[e].Inode].Xattrs; len(got) == 0 || !reflect.DeepEqual(got, want) {
			t.Errorf("%s: xattrs %q, want %q", p, got, want)
		}
	}
	if e, _ := y.Resolve("/lib"); y.Inodes[y.Entries[e].Inode].Target != "usr/lib" || y.Inodes[y.Entries[e].Inode].Size != 7 {
		t.Errorf("/lib: %+v", y.Inodes[y.Entries[e].Inode])
	}
	if e, _ := y.Resolve("/dev/huge"); y.Inodes[y.Entries[e].Inode].Rdev != 0xffffffff_ffffffff {
		t.Errorf("/dev/huge: rdev %#x", y.Inodes[y.Entries[e].Inode].Rdev)
	}
}

func TestResolve(t *testing.T) {
	f := newFixture(t)
	x := decoded(t, f.x)
	long := strings.Repeat("n", 255)
	tests := []struct {
		path string
		want string // Path of the entry found
		err  error
	}{
		{"/", "/", nil},
		{"", "/", nil},
		{".", "/", nil},
		{"bin/busybox", "/bin/busybox", nil},
		{"//bin/./busybox", "/bin/busybox", nil},
		{"/usr/lib/", "/usr/lib", nil},
		{"/" + long, "/" + long, nil},
		{"/\xff\xfe\x80-not-utf8", "/\xff\xfe\x80-not-utf8", nil},
		{f.deep, f.deep, nil},
		{"/nope", "", fs.ErrNotExist},
		{"/bin/nope", "", fs.ErrNotExist},
		{"/bin/..", "", fs.ErrNotExist}, // no ".." in the index: callers resolve it
		{"/" + long + "n", "", fs.ErrNotExist},
		{"/bin/busybox/x", "", syscall.ENOTDIR},
		{"/dev/null/x/y", "", syscall.ENOTDIR},
		{"/lib/libc.so.6", "", syscall.ENOTDIR}, // symlinks are not followed
	}
	for _, tt := range tests {
		e, err := x.Resolve(tt.path)
		if tt.err != nil {
			if !errors.Is(err, tt.err) || !strings.Contains(err.Error(), tt.path) {
				t.Errorf("Resolve(%q) = %d, %v; want an error naming the path and wrapping %v", tt.path, e, err, tt.err)
			}
			continue
		}
		if err != nil || x.Path(e) != tt.want {
			t.Errorf("Resolve(%q) = %q, %v; want %q", tt.path, x.Path(e), err, tt.want)
		}
	}
}

// TestTree checks Path, Resolve, Children and Lookup agree on every entry.
func TestTree(t *testing.T) {
	f := newFixture(t)
	x := decoded(t, f.x)
	var kids uint32
	for e := range uint32(len(x.Entries)) {
		if got, err := x.Resolve(x.Path(e)); err != nil || got != e {
			t.Errorf("Resolve(Path(%d) = %q) = %d, %v", e, x.Path(e), got, err)
		}
		first, count := x.Children(e)
		if !x.Inodes[x.Entries[e].Inode].IsDir() {
			if count != 0 {
				t.Errorf("%s: not a directory, yet %d children", x.Path(e), count)
			}
			if _, ok := x.Lookup(e, "x"); ok {
				t.Errorf("%s: Lookup in a non-directory found something", x.Path(e))
			}
			continue
		}
		kids += count
		for c := first; c < first+count; c++ {
			ent := x.Entries[c]
			if ent.Parent != e || (c > first && x.Entries[c-1].Name >= ent.Name) {
				t.Errorf("%s: child %d (%q) has parent %d or is out of order", x.Path(e), c, ent.Name, ent.Parent)
			}
			if got, ok := x.Lookup(e, ent.Name); !ok || got != c {
				t.Errorf("%s: Lookup(%q) = %d, %v; want %d", x.Path(e), ent.Name, got, ok, c)
			}
			for _, miss := range []string{ent.Name + "\x00", ent.Name[:len(ent.Name)-1]} {
				if got, ok := x.Lookup(e, miss); ok && x.Entries[got].Name != miss {
					t.Errorf("%s: Lookup(%q) found %q", x.Path(e), miss, x.Entries[got].Name)
				}
			}
		}
		for _, miss := range []string{"", "\x00", "~~~~"} {
			if _, ok := x.Lookup(e, miss); ok {
				t.Errorf("%s: Lookup(%q) found something", x.Path(e), miss)
			}
		}
	}
	if int(kids) != len(x.Entries)-1 {
		t.Errorf("children of all directories: %d entries, want %d", kids, len(x.Entries)-1)
	}
}

func TestChunks(t *testing.T) {
	f := newFixture(t)
	x := decoded(t, f.x)
	if x.StreamSize() != int64(len(f.stream)) {
		t.Fatalf("StreamSize = %d, want %d", x.StreamSize(), len(f.stream))
	}
	var start int64
	for i, c := range x.Chunks {
		if x.ChunkStart(i) != start {
			t.Fatalf("ChunkStart(%d) = %d, want %d", i, x.ChunkStart(i), start)
		}
		for off := start; off < start+int64(c.Size); off++ {
			if x.ChunkAt(off) != i {
				t.Fatalf("ChunkAt(%d) = %d, want %d", off, x.ChunkAt(off), i)
			}
		}
		start += int64(c.Size)
	}
	if got := x.ChunkAt(x.StreamSize()); got != len(x.Chunks) {
		t.Errorf("ChunkAt(end of stream) = %d, want %d", got, len(x.Chunks))
	}
	for ino := range uint32(len(x.Inodes)) {
		n := &x.Inodes[ino]
		first, last, ok := x.ChunkSpan(ino)
		if l := n.DataLen(); l == 0 {
			if ok {
				t.Errorf("inode %d has no data, yet ChunkSpan = %d, %d", ino, first, last)
			}
			continue
		}
		// Brute force: the chunks overlapping the inode's data.
		wantFirst, wantLast := -1, -1
		for i, c := range x.Chunks {
			if s := x.ChunkStart(i); s < n.Offset+n.DataLen() && s+int64(c.Size) > n.Offset {
				if wantFirst < 0 {
					wantFirst = i
				}
				wantLast = i
			}
		}
		if !ok || first != wantFirst || last != wantLast {
			t.Errorf("inode %d: ChunkSpan = %d, %d, %v; want %d, %d", ino, first, last, ok, wantFirst, wantLast)
		}
	}
}

// decoded returns x after a trip through its encoding.
func decoded(t testing.TB, x *index.Index) *index.Index {
	t.Helper()
	b, err := x.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	y, err := index.Decode(b)
	if err != nil {
		t.Fatal(err)
	}
	return y
}
