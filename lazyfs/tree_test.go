package lazyfs_test

import (
	"context"
	"math/rand/v2"
	"path"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
	"github.com/mkbootfs/mkbootfs/store/local"
)

// tfile is a file of a test tree. Directories on the way to a path are
// made 0755 root:root unless listed.
type tfile struct {
	path    string
	mode    uint32 // with the type bits
	uid     uint32
	gid     uint32
	mtime   int64
	data    []byte // regular files: the data runs, end to end
	size    int64  // sparse files: the size; else len(data)
	extents []index.Extent
	target  string // symlinks
	rdev    uint64
	link    string // a hard link to this earlier path
	xattrs  []index.Xattr
}

// testChunk is the fixed chunk size of test trees: small, so that files
// span chunks and small files share them.
const testChunk = 16 << 10

// buildTree makes the index of files and puts its chunks in the store in
// dir. Two trees built into one store share the chunks of equal data.
func buildTree(t testing.TB, storeDir string, files []tfile) *index.Index {
	t.Helper()
	type dnode struct {
		n    *index.Node
		kids map[string]*dnode
	}
	var inodes []index.Inode
	root := &dnode{n: &index.Node{Inode: 0}, kids: map[string]*dnode{}}
	inodes = append(inodes, index.Inode{Mode: syscall.S_IFDIR | 0o755})
	byPath := map[string]uint32{"/": 0}
	var dir func(p string) *dnode
	dir = func(p string) *dnode {
		if p == "/" {
			return root
		}
		parent := dir(path.Dir(p))
		name := path.Base(p)
		d, ok := parent.kids[name]
		if !ok {
			inodes = append(inodes, index.Inode{Mode: syscall.S_IFDIR | 0o755})
			d = &dnode{n: &index.Node{Name: name, Inode: uint32(len(inodes) - 1)}, kids: map[string]*dnode{}}
			parent.kids[name] = d
			parent.n.Children = append(parent.n.Children, d.n)
			byPath[p] = d.n.Inode
		}
		return d
	}
	var stream []byte
	for _, f := range files {
		if f.link != "" {
			parent := dir(path.Dir(f.path))
			parent.n.Children = append(parent.n.Children, &index.Node{Name: path.Base(f.path), Inode: byPath[f.link]})
			continue
		}
		in := index.Inode{Mode: f.mode, UID: f.uid, GID: f.gid, Mtime: f.mtime, Target: f.target, Rdev: f.rdev, Xattrs: f.xattrs}
		if f.mode&syscall.S_IFMT == syscall.S_IFREG {
			in.Offset, in.Size, in.Extents = int64(len(stream)), int64(len(f.data)), f.extents
			if f.extents != nil {
				in.Size = f.size
			}
			stream = append(stream, f.data...)
		}
		if f.mode&syscall.S_IFMT == syscall.S_IFLNK {
			in.Size = int64(len(f.target))
		}
		if f.mode&syscall.S_IFMT == syscall.S_IFDIR {
			d := dir(f.path)
			inodes[d.n.Inode] = in
			continue
		}
		parent := dir(path.Dir(f.path))
		inodes = append(inodes, in)
		ino := uint32(len(inodes) - 1)
		parent.n.Children = append(parent.n.Children, &index.Node{Name: path.Base(f.path), Inode: ino})
		byPath[f.path] = ino
	}

	s, err := local.Open(storeDir, true)
	if err != nil {
		t.Fatal(err)
	}
	var chunks []index.Chunk
	for off := 0; off < len(stream); off += testChunk {
		data := stream[off:min(off+testChunk, len(stream))]
		id, _, err := store.Save(context.Background(), s, data)
		if err != nil {
			t.Fatal(err)
		}
		chunks = append(chunks, index.Chunk{ID: id, Size: uint32(len(data))})
	}
	x, err := index.Build(root.n, inodes, chunks, nil)
	if err != nil {
		t.Fatal(err)
	}
	return x
}

func randomBytes(seed uint64, n int) []byte {
	rng := rand.New(rand.NewPCG(seed, 7))
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(rng.Uint32())
	}
	return b
}

// edgeTree is a tree with every kind of entry and attribute lazyfs serves.
func edgeTree() []tfile {
	long := strings.Repeat("a-long-symlink-target/", 5)
	return []tfile{
		{path: "/etc", mode: syscall.S_IFDIR | 0o755, mtime: 1700000000_123456789},
		{path: "/etc/hostname", mode: syscall.S_IFREG | 0o644, data: []byte("lazy\n"), mtime: 1600000000_000000001},
		{path: "/etc/empty", mode: syscall.S_IFREG | 0o600, uid: 1000, gid: 1000},
		{path: "/etc/shadow", mode: syscall.S_IFREG, data: []byte("root:*:19000::::::\n")}, // mode 000
		{path: "/bin/big", mode: syscall.S_IFREG | 0o755, data: randomBytes(1, 300<<10), mtime: -1_500000000},
		{path: "/bin/big-hardlink", link: "/bin/big"},
		{path: "/bin/su", mode: syscall.S_IFREG | syscall.S_ISUID | 0o755, data: []byte("#!/bin/sh\nsetuid\n")},
		{path: "/bin/ping", mode: syscall.S_IFREG | 0o755, data: []byte("ping"), xattrs: []index.Xattr{
			{Name: "security.capability", Value: []byte{1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0}},
			{Name: "user.comment", Value: []byte("a value")},
		}},
		{path: "/lib/short", mode: syscall.S_IFLNK | 0o777, target: "../bin/big"},
		{path: "/lib/long", mode: syscall.S_IFLNK | 0o777, target: long},
		{path: "/dev/null", mode: syscall.S_IFCHR | 0o666, rdev: 1<<8 | 3},
		{path: "/dev/sda", mode: syscall.S_IFBLK | 0o660, gid: 6, rdev: 8 << 8},
		{path: "/dev/nvme0n1p5", mode: syscall.S_IFBLK | 0o600, rdev: unix.Mkdev(259, 1<<16|5)}, // a minor above 255
		{path: "/run/fifo", mode: syscall.S_IFIFO | 0o644},
		{path: "/tmp", mode: syscall.S_IFDIR | syscall.S_ISVTX | 0o777},
		{path: "/root", mode: syscall.S_IFDIR | 0o700, uid: 0, gid: 0, xattrs: []index.Xattr{{Name: "user.dir", Value: []byte("d")}}},
		{path: "/var/sparse", mode: syscall.S_IFREG | 0o644, size: 1 << 20, data: randomBytes(2, 12<<10),
			extents: []index.Extent{{Off: 4096, Len: 8 << 10}, {Off: 600 << 10, Len: 4 << 10}}},
		{path: "/var/small-1", mode: syscall.S_IFREG | 0o644, data: []byte("one")},
		{path: "/var/small-2", mode: syscall.S_IFREG | 0o644, data: []byte("two")},
	}
}
