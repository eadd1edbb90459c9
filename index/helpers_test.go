package index_test

import (
	"crypto/sha256"
	"math/rand/v2"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
)

// builder assembles a tree, its inodes and its data stream for tests, and
// remembers each regular file's logical content to check reads against.
type builder struct {
	rnd     *rand.Rand
	root    *index.Node
	inodes  []index.Inode
	stream  []byte
	content map[uint32][]byte
}

func newBuilder(seed uint64) *builder {
	b := &builder{rnd: rand.New(rand.NewPCG(seed, 0)), content: map[uint32][]byte{}}
	b.root = &index.Node{Inode: b.inode(index.Inode{Mode: syscall.S_IFDIR | 0o755})}
	return b
}

func (b *builder) inode(n index.Inode) uint32 {
	b.inodes = append(b.inodes, n)
	return uint32(len(b.inodes) - 1)
}

// link names inode ino in dir.
func (b *builder) link(dir *index.Node, name string, ino uint32) *index.Node {
	c := &index.Node{Name: name, Inode: ino}
	dir.Children = append(dir.Children, c)
	return c
}

// add names a new inode n in dir.
func (b *builder) add(dir *index.Node, name string, n index.Inode) *index.Node {
	return b.link(dir, name, b.inode(n))
}

func (b *builder) dir(parent *index.Node, name string) *index.Node {
	return b.add(parent, name, index.Inode{Mode: syscall.S_IFDIR | 0o755})
}

// file adds a regular file of size random bytes.
func (b *builder) file(dir *index.Node, name string, size int) *index.Node {
	data := b.bytes(size)
	c := b.add(dir, name, index.Inode{Mode: syscall.S_IFREG | 0o644, Size: int64(size), Offset: int64(len(b.stream))})
	b.stream = append(b.stream, data...)
	b.content[c.Inode] = data
	return c
}

// sparse adds a sparse file: random bytes in the extents, holes elsewhere.
func (b *builder) sparse(dir *index.Node, name string, size int64, extents []index.Extent) *index.Node {
	data := make([]byte, size)
	c := b.add(dir, name, index.Inode{Mode: syscall.S_IFREG | 0o600, Size: size, Offset: int64(len(b.stream)), Extents: extents})
	for _, e := range extents {
		run := b.bytes(int(e.Len))
		copy(data[e.Off:], run)
		b.stream = append(b.stream, run...)
	}
	b.content[c.Inode] = data
	return c
}

func (b *builder) symlink(dir *index.Node, name, target string) *index.Node {
	return b.add(dir, name, index.Inode{Mode: syscall.S_IFLNK | 0o777, Target: target, Size: int64(len(target))})
}

func (b *builder) bytes(n int) []byte {
	p := make([]byte, n)
	for i := range p {
		p[i] = byte(b.rnd.Uint32())
	}
	return p
}

// build cuts the stream into chunks of random sizes in [1, maxChunk] and
// builds the index.
func (b *builder) build(t testing.TB, maxChunk int, meta map[string]string) *index.Index {
	t.Helper()
	x, err := index.Build(b.root, b.inodes, b.chunks(maxChunk), meta)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func (b *builder) chunks(maxChunk int) []index.Chunk {
	var chunks []index.Chunk
	for off := 0; off < len(b.stream); {
		n := min(1+b.rnd.IntN(maxChunk), len(b.stream)-off)
		chunks = append(chunks, index.Chunk{ID: sha256.Sum256(b.stream[off : off+n]), Size: uint32(n)})
		off += n
	}
	return chunks
}

// fetcher serves x's chunks from stream and records which it served.
type fetcher struct {
	x      *index.Index
	stream []byte
	got    []int
}

func (f *fetcher) chunk(i int) ([]byte, error) {
	f.got = append(f.got, i)
	return f.stream[f.x.ChunkStart(i) : f.x.ChunkStart(i)+int64(f.x.Chunks[i].Size)], nil
}

// capability is a security.capability value (VFS_CAP_REVISION_2 granting
// CAP_NET_BIND_SERVICE): binary, with NUL bytes.
var capability = []byte{0, 0, 0, 2, 0, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}

// fixture is a tree with every file type and attribute the format carries.
type fixture struct {
	*builder
	x    *index.Index
	deep string // path of a file 100 directories down
}

func newFixture(t testing.TB) *fixture {
	b := newBuilder(1)
	f := &fixture{builder: b}
	b.inodes[0].Xattrs = []index.Xattr{{Name: "trusted.overlay.opaque", Value: []byte("y")}}

	bin := b.dir(b.root, "bin")
	busybox := b.file(bin, "busybox", 3000)
	b.inodes[busybox.Inode].Mode = syscall.S_IFREG | 0o4755
	b.inodes[busybox.Inode].Xattrs = []index.Xattr{
		{Name: "security.capability", Value: capability},
		{Name: "user.empty", Value: []byte{}},
	}
	b.link(b.dir(b.root, "sbin"), "init", busybox.Inode)

	dev := b.dir(b.root, "dev")
	b.add(dev, "null", index.Inode{Mode: syscall.S_IFCHR | 0o666, Rdev: unix.Mkdev(1, 3)})
	b.add(dev, "sda", index.Inode{Mode: syscall.S_IFBLK | 0o660, GID: 6, Rdev: unix.Mkdev(8, 0)})
	b.add(dev, "huge", index.Inode{Mode: syscall.S_IFCHR | 0o600, Rdev: unix.Mkdev(1<<32-1, 1<<32-1)})

	run := b.dir(b.root, "run")
	b.add(run, "initctl", index.Inode{Mode: syscall.S_IFIFO | 0o600, Mtime: -1_500_000_000_123_456_789})
	b.add(run, "sock", index.Inode{Mode: syscall.S_IFSOCK | 0o777, UID: 1<<32 - 1, GID: 65534})

	tmp := b.dir(b.root, "tmp")
	b.inodes[tmp.Inode].Mode = syscall.S_IFDIR | 0o1777

	b.add(b.root, "empty", index.Inode{Mode: syscall.S_IFREG | 0o644, Mtime: 1_700_000_000_999_999_999})
	b.sparse(b.root, "sparse", 1<<20, []index.Extent{{Off: 4096, Len: 5000}, {Off: 500_000, Len: 3000}, {Off: 1<<20 - 100, Len: 100}})
	b.sparse(b.root, "holes", 70_000, []index.Extent{})

	usr := b.dir(b.root, "usr")
	lib := b.dir(usr, "lib")
	b.file(lib, "libc.so.6", 9000)
	lnk := b.symlink(b.root, "lib", "usr/lib")
	b.inodes[lnk.Inode].Xattrs = []index.Xattr{{Name: "security.selinux", Value: []byte("system_u:object_r:lib_t:s0\x00")}}

	x := b.file(b.root, "x", 10)
	b.link(b.root, "y", x.Inode)
	b.link(usr, "x", x.Inode)

	b.file(b.root, strings.Repeat("n", 255), 7)
	b.file(b.root, "\xff\xfe\x80-not-utf8", 5)

	d := b.root
	for range 100 {
		d = b.dir(d, "d")
	}
	b.file(d, "leaf", 1)
	f.deep = strings.Repeat("/d", 100) + "/leaf"

	f.x = b.build(t, 4096, map[string]string{"source": "dir:/fixture", "empty": "", "\x00\xff": "binary\x00meta"})
	return f
}

// seal appends the SHA-256 trailer to an index body, so a test's damage
// reaches the decoder rather than the checksum.
func seal(body []byte) []byte {
	sum := sha256.Sum256(body)
	return append(body[:len(body):len(body)], sum[:]...)
}
