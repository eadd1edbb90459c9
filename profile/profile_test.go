package profile

import (
	"bytes"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/mkbootfs/mkbootfs/index"
)

// testIndex is a tree of three files over a stream of four 100-byte chunks:
// /a (150 bytes at 0), /dir/b (100 bytes at 150), /dir/sparse (200000 bytes
// with data at 100000..100150, stream 250..400).
func testIndex(t *testing.T) *index.Index {
	t.Helper()
	inodes := []index.Inode{
		{Mode: syscall.S_IFDIR | 0o755},
		{Mode: syscall.S_IFREG | 0o644, Size: 150, Offset: 0},
		{Mode: syscall.S_IFDIR | 0o755},
		{Mode: syscall.S_IFREG | 0o644, Size: 100, Offset: 150},
		{Mode: syscall.S_IFREG | 0o644, Size: 200000, Offset: 250, Extents: []index.Extent{{Off: 100000, Len: 150}}},
	}
	root := &index.Node{Inode: 0, Children: []*index.Node{
		{Name: "a", Inode: 1},
		{Name: "dir", Inode: 2, Children: []*index.Node{{Name: "b", Inode: 3}, {Name: "sparse", Inode: 4}}},
	}}
	chunks := make([]index.Chunk, 4)
	for i := range chunks {
		chunks[i] = index.Chunk{ID: [32]byte{byte(i + 1)}, Size: 100}
	}
	x, err := index.Build(root, inodes, chunks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func TestRoundTrip(t *testing.T) {
	p := &Profile{Files: []File{
		{Path: "/usr/bin/apt-get", Ranges: []Range{{0, 20480}, {196608, 4096}}},
		{Path: "/odd name\xff\n", Ranges: []Range{{4096, 8192}}},
		{Path: "/empty-read"},
	}}
	var buf bytes.Buffer
	if _, err := p.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(buf.String(), "mkbootfs profile 1\n\"/usr/bin/apt-get\" 0+20480 196608+4096\n") {
		t.Errorf("format:\n%s", buf.String())
	}
	q, err := Parse(&buf, "test")
	if err != nil {
		t.Fatal(err)
	}
	var again bytes.Buffer
	q.WriteTo(&again)
	var want bytes.Buffer
	p.WriteTo(&want)
	if again.String() != want.String() {
		t.Errorf("round trip:\n%s\nwant\n%s", again.String(), want.String())
	}
	if p.Bytes() != 20480+4096+8192 {
		t.Errorf("Bytes() = %d", p.Bytes())
	}
}

func TestParseMerges(t *testing.T) {
	p, err := Parse(strings.NewReader("mkbootfs profile 1\n\"/f\" 100+50 0+100 300+10 120+10\n\n"), "t")
	if err != nil {
		t.Fatal(err)
	}
	want := []Range{{0, 150}, {300, 10}}
	if len(p.Files) != 1 || !slices.Equal(p.Files[0].Ranges, want) {
		t.Errorf("got %+v, want one file with %v", p.Files, want)
	}
}

func TestParseRejects(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "is empty"},
		{"ELF\x7f", "line 1: starts with"},
		{"mkbootfs profile 2\n", "line 1: starts with"},
		{"mkbootfs profile 1\nusr/bin/x 0+1\n", "line 2: a path must be a quoted string"},
		{"mkbootfs profile 1\n\"usr/bin/x\" 0+1\n", "not a path in the image"},
		{"mkbootfs profile 1\n\"/a/../../etc\" 0+1\n", "not a path in the image"},
		{"mkbootfs profile 1\n\"/a\" 0+1\n\"/a\" 5+1\n", "line 3: \"/a\" appears twice"},
		{"mkbootfs profile 1\n\"/a\" 0-1\n", "range \"0-1\" is not OFFSET+LENGTH"},
		{"mkbootfs profile 1\n\"/a\" -5+1\n", "is not OFFSET+LENGTH"},
		{"mkbootfs profile 1\n\"/a\" 5+0\n", "is not OFFSET+LENGTH"},
		{"mkbootfs profile 1\n\"/a\" 9223372036854775807+9223372036854775807\n", "is not OFFSET+LENGTH"},
	} {
		_, err := Parse(strings.NewReader(tc.in), "p.txt")
		if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), "profile p.txt") {
			t.Errorf("Parse(%q): %v, want an error naming p.txt with %q", tc.in, err, tc.want)
		}
	}
}

func TestRecorder(t *testing.T) {
	x := testIndex(t)
	r := NewRecorder(x, Limits{})
	b, _ := x.Resolve("dir/b")
	a, _ := x.Resolve("a")
	ino := func(e uint32) uint32 { return x.Entries[e].Inode }
	r.Read(ino(b), b, 0, 10)
	r.Read(ino(a), a, 100, 50)
	r.Read(ino(b), b, 10, 20) // sequential: extends
	r.Read(ino(a), a, 0, 4)
	r.Read(ino(a), a, 0, 0) // nothing read: not recorded
	p := r.Profile()
	want := []File{{"/dir/b", []Range{{0, 30}}}, {"/a", []Range{{0, 4}, {100, 50}}}}
	if len(p.Files) != len(want) {
		t.Fatalf("got %+v, want %+v", p.Files, want)
	}
	for i := range want {
		if p.Files[i].Path != want[i].Path || !slices.Equal(p.Files[i].Ranges, want[i].Ranges) {
			t.Errorf("file %d: got %+v, want %+v", i, p.Files[i], want[i])
		}
	}
}

func TestAround(t *testing.T) {
	for _, tc := range []struct {
		r    Range
		size int64
		want Range
	}{
		{Range{0, 10}, 1 << 20, Range{0, 10 + ReadAround}},
		{Range{100 << 10, 4096}, 1 << 20, Range{100<<10 - ReadAround, 4096 + 2*ReadAround}},
		{Range{100, 10}, 500, Range{0, 500}},
		{Range{1 << 20, 10}, 1000, Range{1000, 0}},
	} {
		if got := tc.r.Around(tc.size); got != tc.want {
			t.Errorf("%+v.Around(%d) = %+v, want %+v", tc.r, tc.size, got, tc.want)
		}
	}
}

func TestChunks(t *testing.T) {
	x := testIndex(t)
	// Each range is widened by ReadAround: a small file is taken whole.
	p := &Profile{Files: []File{
		{Path: "/dir/b", Ranges: []Range{{0, 10}}},                          // all of b, stream 150..250: chunks 1 and 2
		{Path: "/gone", Ranges: []Range{{0, 10}}},                           // not in the image: passed over
		{Path: "/dir", Ranges: []Range{{0, 10}}},                            // not a file: passed over
		{Path: "/a", Ranges: []Range{{0, 10}, {120, 30}}},                   // all of a: chunks 0 and 1 (already)
		{Path: "/dir/sparse", Ranges: []Range{{0, 100}}},                    // a hole, ReadAround away from the data: nothing
		{Path: "/dir/sparse", Ranges: []Range{{100150 + ReadAround/2, 10}}}, // the data, stream 250..400, within ReadAround: chunks 2 and 3
		{Path: "/dir/sparse", Ranges: []Range{{300000, 10}}},                // past the end: nothing
	}}
	got := p.Chunks(x)
	if want := []int{1, 2, 0, 3}; !slices.Equal(got, want) {
		t.Errorf("Chunks = %v, want %v", got, want)
	}
}

// TestStatic round-trips a static profile's mark, and Merge keeps a
// recorded profile first, with its ranges, and its kind.
func TestStatic(t *testing.T) {
	static := &Profile{Static: true, Files: []File{{Path: "/bin/app", Ranges: []Range{{0, 1000}}}, {Path: "/lib/libc.so.6", Ranges: []Range{{0, 2000}}}}}
	var buf bytes.Buffer
	static.WriteTo(&buf)
	if !strings.HasPrefix(buf.String(), "mkbootfs profile 1 static\n") {
		t.Errorf("a static profile's text:\n%s", &buf)
	}
	if p, err := Parse(&buf, "t"); err != nil || !p.Static || len(p.Files) != 2 {
		t.Errorf("Parse of a static profile: %+v, %v", p, err)
	}
	if p, err := Parse(strings.NewReader("mkbootfs profile 1 dynamic\n"), "t"); err == nil {
		t.Errorf("Parse took another mark: %+v", p)
	}

	recorded := &Profile{Files: []File{{Path: "/bin/app", Ranges: []Range{{0, 10}}}, {Path: "/etc/conf", Ranges: []Range{{0, 5}}}}}
	m, added := Merge(recorded, static)
	want := []File{recorded.Files[0], recorded.Files[1], static.Files[1]}
	if added != 1 || m.Static || !slices.EqualFunc(m.Files, want, func(a, b File) bool { return a.Path == b.Path && slices.Equal(a.Ranges, b.Ranges) }) {
		t.Errorf("Merge(recorded, static) = %+v, %d added", m, added)
	}
	if m, added := Merge(nil, static); m != static || added != 2 {
		t.Errorf("Merge(nil, static) = %+v, %d", m, added)
	}
	if m, added := Merge(recorded, nil); m != recorded || added != 0 {
		t.Errorf("Merge(recorded, nil) = %+v, %d", m, added)
	}
	if len(recorded.Files) != 2 {
		t.Errorf("Merge changed its first profile: %+v", recorded)
	}
}
