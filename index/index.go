// Package index owns the rootfs index: the whole tree of an image (names,
// modes, owners, times, xattrs, links, devices) and, for each regular file,
// where its bytes sit in the image's chunked data stream.
//
// The data stream is every regular file's data (holes left out) laid end to
// end and cut into chunks; a file is an offset into it. Small files share
// chunks, so a boot that reads many small files fetches few chunks.
//
// An Index is loaded whole into memory: lookups, listings and attributes
// never touch the chunk store. It knows nothing of how chunks are fetched.
package index

import (
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strings"
	"syscall"
)

// Version is the format version this package writes and reads.
const Version = 1

// MaxChunkSize bounds a chunk's size in a valid index.
const MaxChunkSize = 16 << 20

// Index is a decoded rootfs index.
type Index struct {
	// Meta holds free-form facts about the conversion (source, stores,
	// counts), for people and tools; readers must not depend on it.
	Meta map[string]string
	// Chunks are the data stream's chunks, in stream order.
	Chunks []Chunk
	// Inodes are the files; several entries share one for hard links.
	Inodes []Inode
	// Entries are the directory entries in breadth-first order, so that the
	// children of a directory are contiguous and sorted by name. Entries[0]
	// is the root, its own parent, named "".
	Entries []Entry

	chunkEnd []int64  // chunkEnd[i] = stream offset just past chunk i
	digest   [32]byte // SHA-256 of the encoding decoded or marshalled
}

// Chunk is one chunk of the data stream.
type Chunk struct {
	ID   [32]byte // SHA-256 of the uncompressed bytes
	Size uint32   // uncompressed size
}

// Entry is a name in a directory.
type Entry struct {
	Name   string
	Parent uint32 // index in Entries of the directory holding it
	Inode  uint32 // index in Inodes

	first, count uint32 // children, for directories
}

// Inode holds a file's attributes and where its data is.
type Inode struct {
	Mode   uint32 // st_mode: file type and permission bits, as in syscall.S_IF*
	UID    uint32
	GID    uint32
	Mtime  int64  // nanoseconds since the Unix epoch
	Size   int64  // regular files: the file's size; symlinks: the target's length
	Rdev   uint64 // character and block devices: the Linux dev_t
	Target string // symlinks: the link's target

	Xattrs []Xattr // sorted by name

	// Offset is where a regular file's data starts in the data stream.
	Offset int64
	// Extents are a sparse file's data runs, sorted; the rest is holes. Nil
	// means the whole file is data.
	Extents []Extent

	Nlink uint32 // derived on decode: entries naming it, or 2 + subdirectories
}

// Xattr is an extended attribute.
type Xattr struct {
	Name  string
	Value []byte
}

// Extent is a run of data in a sparse file.
type Extent struct {
	Off, Len int64 // in the file
}

// Type returns the file type bits of the mode.
func (n *Inode) Type() uint32 { return n.Mode & syscall.S_IFMT }

// IsDir reports whether the inode is a directory.
func (n *Inode) IsDir() bool { return n.Type() == syscall.S_IFDIR }

// IsRegular reports whether the inode is a regular file.
func (n *Inode) IsRegular() bool { return n.Type() == syscall.S_IFREG }

// DataLen is how many bytes of the data stream the inode's data takes: its
// size less its holes.
func (n *Inode) DataLen() int64 {
	if !n.IsRegular() {
		return 0
	}
	if n.Extents == nil {
		return n.Size
	}
	var t int64
	for _, e := range n.Extents {
		t += e.Len
	}
	return t
}

// FileMode converts the mode to an io/fs.FileMode.
func (n *Inode) FileMode() fs.FileMode {
	m := fs.FileMode(n.Mode & 0o777)
	switch n.Type() {
	case syscall.S_IFDIR:
		m |= fs.ModeDir
	case syscall.S_IFLNK:
		m |= fs.ModeSymlink
	case syscall.S_IFCHR:
		m |= fs.ModeDevice | fs.ModeCharDevice
	case syscall.S_IFBLK:
		m |= fs.ModeDevice
	case syscall.S_IFIFO:
		m |= fs.ModeNamedPipe
	case syscall.S_IFSOCK:
		m |= fs.ModeSocket
	}
	if n.Mode&syscall.S_ISUID != 0 {
		m |= fs.ModeSetuid
	}
	if n.Mode&syscall.S_ISGID != 0 {
		m |= fs.ModeSetgid
	}
	if n.Mode&syscall.S_ISVTX != 0 {
		m |= fs.ModeSticky
	}
	return m
}

// Root is the entry number of the root directory.
const Root = 0

// Children returns the entry numbers of a directory's children: [first, first+count).
func (x *Index) Children(e uint32) (first, count uint32) {
	return x.Entries[e].first, x.Entries[e].count
}

// Lookup finds name in directory entry dir.
func (x *Index) Lookup(dir uint32, name string) (uint32, bool) {
	d := &x.Entries[dir]
	kids := x.Entries[d.first : d.first+d.count]
	i := sort.Search(len(kids), func(i int) bool { return kids[i].Name >= name })
	if i < len(kids) && kids[i].Name == name {
		return d.first + uint32(i), true
	}
	return 0, false
}

// Resolve finds the entry at a slash-separated path from the root, without
// following symlinks.
func (x *Index) Resolve(path string) (uint32, error) {
	e := uint32(Root)
	for rest := path; rest != ""; {
		var name string
		name, rest, _ = strings.Cut(rest, "/")
		if name == "" || name == "." {
			continue
		}
		if !x.Inodes[x.Entries[e].Inode].IsDir() {
			return 0, fmt.Errorf("%s: %w", path, syscall.ENOTDIR)
		}
		var ok bool
		if e, ok = x.Lookup(e, name); !ok {
			return 0, fmt.Errorf("%s: %w", path, fs.ErrNotExist)
		}
	}
	return e, nil
}

// Path returns the slash-separated path of entry e, "/" for the root.
func (x *Index) Path(e uint32) string {
	if e == Root {
		return "/"
	}
	var parts []string
	for ; e != Root; e = x.Entries[e].Parent {
		parts = append(parts, x.Entries[e].Name)
	}
	var b strings.Builder
	for i := len(parts) - 1; i >= 0; i-- {
		b.WriteByte('/')
		b.WriteString(parts[i])
	}
	return b.String()
}

// Digest is the SHA-256 of the index's encoding (the index file's), which
// names it: the one it was decoded from, or last marshalled to; zero for
// an index that was neither.
func (x *Index) Digest() [32]byte { return x.digest }

// StreamSize is the length of the data stream.
func (x *Index) StreamSize() int64 {
	if len(x.chunkEnd) == 0 {
		return 0
	}
	return x.chunkEnd[len(x.chunkEnd)-1]
}

// ChunkStart is the stream offset of chunk i.
func (x *Index) ChunkStart(i int) int64 {
	if i == 0 {
		return 0
	}
	return x.chunkEnd[i-1]
}

// ChunkAt returns the chunk holding stream offset off.
func (x *Index) ChunkAt(off int64) int {
	return sort.Search(len(x.chunkEnd), func(i int) bool { return x.chunkEnd[i] > off })
}

// ChunkSpan returns the chunks [first, last] holding the inode's data.
// ok is false for an inode without data.
func (x *Index) ChunkSpan(ino uint32) (first, last int, ok bool) {
	n := &x.Inodes[ino]
	l := n.DataLen()
	if l == 0 {
		return 0, 0, false
	}
	return x.ChunkAt(n.Offset), x.ChunkAt(n.Offset + l - 1), true
}

// FileChunks calls fn, in order, for each chunk holding data of the
// regular file ino in [off, off+n); holes hold none.
func (x *Index) FileChunks(ino uint32, off, n int64, fn func(i int)) {
	x.Inodes[ino].StreamSpans(off, n, func(stream, l int64) {
		for i := x.ChunkAt(stream); i <= x.ChunkAt(stream+l-1); i++ {
			fn(i)
		}
	})
}

// StreamSpans calls fn with where the data of the file's bytes off..off+size
// lie in the data stream, in order: one span, or one per extent the range
// meets in a sparse file. Holes and bytes past the end have no span.
func (n *Inode) StreamSpans(off, size int64, fn func(stream, length int64)) {
	if !n.IsRegular() || off < 0 || size <= 0 || off >= n.Size {
		return
	}
	end := min(off+size, n.Size)
	if n.Extents == nil {
		fn(n.Offset+off, end-off)
		return
	}
	stream := n.Offset
	for _, e := range n.Extents {
		if lo, hi := max(e.Off, off), min(e.Off+e.Len, end); lo < hi {
			fn(stream+lo-e.Off, hi-lo)
		}
		stream += e.Len
	}
}

// ChunkFunc returns the uncompressed bytes of chunk i of the index.
type ChunkFunc func(i int) ([]byte, error)

// ReadAt reads a regular file's bytes at off into p, fetching chunks through
// chunk; holes read as zeros. It returns fewer bytes than len(p) only at the
// end of the file.
func (x *Index) ReadAt(ino uint32, p []byte, off int64, chunk ChunkFunc) (int, error) {
	n := &x.Inodes[ino]
	if !n.IsRegular() {
		return 0, fmt.Errorf("index: reading inode %d: not a regular file", ino)
	}
	if off >= n.Size || off < 0 {
		return 0, nil
	}
	if rest := n.Size - off; int64(len(p)) > rest {
		p = p[:rest]
	}
	if n.Extents == nil {
		return len(p), x.readStream(p, n.Offset+off, chunk)
	}
	clear(p)
	stream := n.Offset
	for _, e := range n.Extents {
		lo, hi := max(e.Off, off), min(e.Off+e.Len, off+int64(len(p)))
		if lo < hi {
			if err := x.readStream(p[lo-off:hi-off], stream+(lo-e.Off), chunk); err != nil {
				return 0, err
			}
		}
		stream += e.Len
	}
	return len(p), nil
}

func (x *Index) readStream(p []byte, off int64, chunk ChunkFunc) error {
	for i := x.ChunkAt(off); len(p) > 0; i++ {
		if i >= len(x.Chunks) {
			return errors.New("index: read past the data stream")
		}
		data, err := chunk(i)
		if err != nil {
			return err
		}
		if len(data) != int(x.Chunks[i].Size) {
			return fmt.Errorf("index: chunk %d is %d bytes, the index says %d", i, len(data), x.Chunks[i].Size)
		}
		c := copy(p, data[off-x.ChunkStart(i):])
		p, off = p[c:], off+int64(c)
	}
	return nil
}
