package index_test

import (
	"errors"
	"strings"
	"syscall"
	"testing"

	"github.com/mkbootfs/mkbootfs/index"
)

// small returns a valid index for a test to damage. Its entries are
// 0 "/", 1 "/a" (directory), 2 "/b" (20 bytes), 3 "/l" (symlink to a),
// 4 "/a/f" (10 bytes), in chunks of at most 8 bytes.
func small(t testing.TB) *index.Index {
	b := newBuilder(3)
	b.file(b.dir(b.root, "a"), "f", 10)
	b.file(b.root, "b", 20)
	b.symlink(b.root, "l", "a")
	return b.build(t, 8, map[string]string{"k": "v"})
}

// lossy marks a defect the encoding cannot carry: Decode of the raw bytes
// sees a valid index.
const lossy = "(lossy)"

// TestValidate feeds damaged Index values to MarshalBinary, and their raw
// encoding to Decode: each must be refused with an error that wraps
// ErrCorrupt and says what is wrong.
func TestValidate(t *testing.T) {
	const a, b, l, f = 1, 2, 3, 4 // entries of small
	ino := func(x *index.Index, e int) *index.Inode { return &x.Inodes[x.Entries[e].Inode] }
	tests := []struct {
		name   string
		damage func(x *index.Index)
		want   string // in MarshalBinary's error
		raw    string // in Decode's error, if not want
	}{
		{"no entries", func(x *index.Index) { x.Entries = nil }, "no root directory", ""},
		{"root is a file", func(x *index.Index) { *ino(x, 0) = index.Inode{Mode: syscall.S_IFREG | 0o644} }, "entry 0 is not a root directory", ""},
		{"root has a name", func(x *index.Index) { x.Entries[0].Name = "r" }, "entry 0 is not a root directory", lossy},
		{"root has a parent", func(x *index.Index) { x.Entries[0].Parent = 2 }, "entry 0 is not a root directory", lossy},
		{"root inode out of range", func(x *index.Index) { x.Entries[0].Inode = 99 }, "names inode 99", ""},
		{"own parent", func(x *index.Index) { x.Entries[b].Parent = b }, "comes after it", ""},
		{"parent after", func(x *index.Index) { x.Entries[b].Parent = l }, "comes after it", "out of range"},
		{"not breadth-first", func(x *index.Index) {
			e := x.Entries
			e[b], e[l], e[f] = e[f], e[b], e[l]
			e[b].Parent = a
		}, "entry 3: entries are not in breadth-first order", ""},
		{"unsorted names", func(x *index.Index) { x.Entries[b], x.Entries[l] = x.Entries[l], x.Entries[b] }, "not sorted and unique", ""},
		{"duplicate names", func(x *index.Index) { x.Entries[l].Name = "b" }, "not sorted and unique", ""},
		{"empty name", func(x *index.Index) { x.Entries[l].Name = "" }, `bad name ""`, ""},
		{"name .", func(x *index.Index) { x.Entries[l].Name = "." }, `bad name "."`, ""},
		{"name ..", func(x *index.Index) { x.Entries[l].Name = ".." }, `bad name ".."`, ""},
		{"name with slash", func(x *index.Index) { x.Entries[l].Name = "x/y" }, "slash or NUL", ""},
		{"name with NUL", func(x *index.Index) { x.Entries[l].Name = "x\x00y" }, "slash or NUL", ""},
		{"name of 256 bytes", func(x *index.Index) { x.Entries[l].Name = strings.Repeat("n", 256) }, "longer than 255 bytes", ""},
		{"parent not a directory", func(x *index.Index) { x.Entries[f].Parent = b }, "parent 2 is not a directory", ""},
		{"parent a symlink", func(x *index.Index) { x.Entries[f].Parent = l }, "parent 3 is not a directory", ""},
		{"inode out of range", func(x *index.Index) { x.Entries[b].Inode = uint32(len(x.Inodes)) }, "names inode 5 of 5", ""},
		{"unreferenced inode", func(x *index.Index) {
			x.Inodes = append(x.Inodes, index.Inode{Mode: syscall.S_IFIFO | 0o644})
		}, "inode 5 is not linked from any entry", ""},
		{"hardlinked directory", func(x *index.Index) { x.Entries[l].Inode = x.Entries[a].Inode }, "is linked twice", ""},
		{"hardlinked root", func(x *index.Index) { x.Entries[b].Inode = x.Entries[0].Inode }, "is linked twice", ""},
		{"extents overlap", func(x *index.Index) { ino(x, b).Extents = []index.Extent{{Off: 0, Len: 5}, {Off: 3, Len: 5}} }, "extents overlap", ""},
		{"extents unsorted", func(x *index.Index) { ino(x, b).Extents = []index.Extent{{Off: 10, Len: 5}, {Off: 0, Len: 5}} }, "extents overlap", ""},
		{"extent past the end", func(x *index.Index) { ino(x, b).Extents = []index.Extent{{Off: 15, Len: 10}} }, "pass the file's end", ""},
		{"empty extent", func(x *index.Index) { ino(x, b).Extents = []index.Extent{{Off: 0, Len: 0}} }, "are empty", ""},
		{"negative extent", func(x *index.Index) { ino(x, b).Extents = []index.Extent{{Off: -1, Len: 5}} }, "extents overlap", "out of range"},
		{"data past the stream", func(x *index.Index) { ino(x, b).Offset = x.StreamSize() - 5 }, "past the data stream", ""},
		{"sparse data past the stream", func(x *index.Index) {
			n := ino(x, b)
			n.Size, n.Extents = 1000, []index.Extent{{Off: 100, Len: 25}, {Off: 900, Len: 100}}
		}, "past the data stream", ""},
		{"offset past the stream", func(x *index.Index) { ino(x, b).Offset = 1 << 62 }, "past the data stream", "out of range"},
		{"negative size", func(x *index.Index) { ino(x, b).Size = -1 }, "negative size", "out of range"},
		{"zero-size chunk", func(x *index.Index) { x.Chunks[0].Size = 0 }, "chunk 0 has size 0", ""},
		{"oversized chunk", func(x *index.Index) { x.Chunks[1].Size = index.MaxChunkSize + 1 }, "chunk 1 has size 16777217", "out of range"},
		{"file type 0", func(x *index.Index) { ino(x, b).Mode = 0o644 }, "unknown file type 0", ""},
		{"file type 030000", func(x *index.Index) { ino(x, b).Mode = 0o030644 }, "unknown file type 030000", ""},
		{"mode bits", func(x *index.Index) { ino(x, b).Mode |= 1 << 16 }, "has unknown bits", ""},
		{"symlink without target", func(x *index.Index) { n := ino(x, l); n.Target, n.Size = "", 0 }, "bad symlink target", ""},
		{"symlink target with NUL", func(x *index.Index) { n := ino(x, l); n.Target, n.Size = "a\x00b", 3 }, "bad symlink target", ""},
		{"symlink size", func(x *index.Index) { ino(x, l).Size = 99 }, "symlink size 99 is not its target's length 1", lossy},
		{"directory size", func(x *index.Index) { ino(x, a).Size = 4096 }, "does not have the size", lossy},
		{"directory extents", func(x *index.Index) { ino(x, a).Extents = []index.Extent{} }, "does not have the size", lossy},
		{"symlink offset", func(x *index.Index) { ino(x, l).Offset = 3 }, "does not have the size", lossy},
		{"file target", func(x *index.Index) { ino(x, b).Target = "x" }, "does not have the size", lossy},
		{"file rdev", func(x *index.Index) { ino(x, b).Rdev = 1 }, "does not have the size", lossy},
		{"xattrs unsorted", func(x *index.Index) {
			ino(x, b).Xattrs = []index.Xattr{{Name: "user.b"}, {Name: "user.a"}}
		}, "xattrs not sorted", ""},
		{"xattr twice", func(x *index.Index) {
			ino(x, b).Xattrs = []index.Xattr{{Name: "user.a"}, {Name: "user.a"}}
		}, "xattrs not sorted", ""},
		{"xattr without name", func(x *index.Index) { ino(x, b).Xattrs = []index.Xattr{{Value: []byte("v")}} }, "badly named", ""},
		{"xattr name with NUL", func(x *index.Index) { ino(x, b).Xattrs = []index.Xattr{{Name: "user.\x00"}} }, "badly named", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			x := small(t)
			tt.damage(x)
			_, err := x.MarshalBinary()
			if !errors.Is(err, index.ErrCorrupt) || !strings.Contains(err.Error(), tt.want) {
				t.Errorf("MarshalBinary: %v; want an error wrapping ErrCorrupt and saying %q", err, tt.want)
			}
			raw := tt.raw
			if raw == "" {
				raw = tt.want
			}
			y, err := index.Decode(index.EncodeUnchecked(x))
			switch {
			case raw == lossy && err != nil:
				t.Errorf("Decode of a defect the encoding drops: %v", err)
			case raw != lossy && (!errors.Is(err, index.ErrCorrupt) || !strings.Contains(err.Error(), raw) || y != nil):
				t.Errorf("Decode = %v, %v; want an error wrapping ErrCorrupt and saying %q", y, err, raw)
			}
		})
	}
}

func TestBuildRefuses(t *testing.T) {
	inodes := []index.Inode{{Mode: syscall.S_IFDIR | 0o755}, {Mode: syscall.S_IFIFO | 0o644}}
	root := &index.Node{Children: []*index.Node{{Name: "p", Inode: 1}, {Name: "p", Inode: 1}}}
	_, err := index.Build(root, inodes, nil, nil)
	if !errors.Is(err, index.ErrCorrupt) || !strings.Contains(err.Error(), "building the index") {
		t.Errorf("Build of a directory naming p twice: %v; want a build error wrapping ErrCorrupt", err)
	}
}
