package lazyfs

import (
	"context"
	"errors"
	"sync/atomic"
	"syscall"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"

	"github.com/mkbootfs/mkbootfs/index"
)

// node is a file, directory, link or device of the tree. Hard links share
// one node: the kernel sees one inode number, and go-fuse keeps one node
// per number.
type node struct {
	fs.Inode
	fs    *FS
	entry uint32 // the entry it was first found by, for its path in messages
	ino   uint32 // index in the index's Inodes

	next   atomic.Int64 // where the last read ended, to spot sequential reads
	streak atomic.Int64 // bytes read sequentially up to next
}

// The read-only operations, and nothing else; opening files and listing
// directories are rawFS's.
var (
	_ fs.NodeLookuper    = (*node)(nil)
	_ fs.NodeGetattrer   = (*node)(nil)
	_ fs.NodeReader      = (*node)(nil)
	_ fs.NodeReadlinker  = (*node)(nil)
	_ fs.NodeGetxattrer  = (*node)(nil)
	_ fs.NodeListxattrer = (*node)(nil)
	_ fs.NodeStatfser    = (*node)(nil)
)

func (n *node) inode() *index.Inode { return &n.fs.x.Inodes[n.ino] }

// Lookup implements fs.NodeLookuper.
func (n *node) Lookup(ctx context.Context, name string, out *fuse.EntryOut) (*fs.Inode, syscall.Errno) {
	x := n.fs.x
	e, ok := x.Lookup(n.entry, name)
	if !ok {
		return nil, syscall.ENOENT
	}
	ino := x.Entries[e].Inode
	n.fs.attr(ino, &out.Attr)
	child := &node{fs: n.fs, entry: e, ino: ino}
	return n.NewInode(ctx, child, fs.StableAttr{Mode: x.Inodes[ino].Type(), Ino: n.fs.ino(ino)}), 0
}

// Getattr implements fs.NodeGetattrer.
func (n *node) Getattr(ctx context.Context, _ fs.FileHandle, out *fuse.AttrOut) syscall.Errno {
	n.fs.attr(n.ino, &out.Attr)
	return 0
}

// Read implements fs.NodeReader: it loads the chunks the range needs and,
// when the file is read sequentially, starts loading the ones after them.
func (n *node) Read(ctx context.Context, _ fs.FileHandle, dest []byte, off int64) (fuse.ReadResult, syscall.Errno) {
	f := n.fs
	first, last := -1, -1
	k, err := f.x.ReadAt(n.ino, dest, off, func(i int) ([]byte, error) {
		if first < 0 {
			first = i
		}
		last = i
		return f.chunks.get(ctx, i)
	})
	if err != nil {
		if errors.Is(err, context.Canceled) {
			return nil, syscall.EINTR
		}
		f.readErrs.Add(1)
		f.log.Printf("lazyfs: %s: read of %d bytes at %d failed (EIO): stream chunk %d: %v",
			f.x.Path(n.entry), len(dest), off, last, err)
		return nil, syscall.EIO
	}
	f.reads.Add(1)
	f.readBytes.Add(int64(k))
	if f.onRead != nil {
		f.onRead(n.ino, n.entry, off, k)
	}
	if last >= 0 && !f.quietReader(ctx) {
		f.readAhead(n, off, k, first, last)
	}
	return fuse.ReadResultData(dest[:k]), 0
}

// Readlink implements fs.NodeReadlinker.
func (n *node) Readlink(ctx context.Context) ([]byte, syscall.Errno) {
	if n.inode().Type() != syscall.S_IFLNK {
		return nil, syscall.EINVAL
	}
	return []byte(n.inode().Target), 0
}

// Getxattr implements fs.NodeGetxattrer.
func (n *node) Getxattr(ctx context.Context, attr string, dest []byte) (uint32, syscall.Errno) {
	if n.fs.noXattrs {
		return 0, syscall.ENOSYS
	}
	for _, a := range n.inode().Xattrs {
		if a.Name == attr {
			if len(dest) < len(a.Value) {
				return uint32(len(a.Value)), syscall.ERANGE
			}
			return uint32(copy(dest, a.Value)), 0
		}
	}
	return 0, syscall.ENODATA
}

// Listxattr implements fs.NodeListxattrer: the names, each ended by a NUL.
func (n *node) Listxattr(ctx context.Context, dest []byte) (uint32, syscall.Errno) {
	size := 0
	for _, a := range n.inode().Xattrs {
		size += len(a.Name) + 1
	}
	if len(dest) < size {
		return uint32(size), syscall.ERANGE
	}
	dest = dest[:0]
	for _, a := range n.inode().Xattrs {
		dest = append(append(dest, a.Name...), 0)
	}
	return uint32(size), 0
}

// Statfs implements fs.NodeStatfser: a full, read-only filesystem the
// size of the data stream.
func (n *node) Statfs(ctx context.Context, out *fuse.StatfsOut) syscall.Errno {
	x := n.fs.x
	*out = fuse.StatfsOut{
		Blocks:  uint64((x.StreamSize() + blockSize - 1) / blockSize),
		Files:   uint64(len(x.Inodes)),
		Bsize:   blockSize,
		Frsize:  blockSize,
		NameLen: 255,
	}
	return 0
}

// readaheadAfter is how many bytes must be read in sequence before lazyfs
// fetches ahead of the reads.
const readaheadAfter = 512 << 10

// A read of the tree file after file is read ahead once it has gone
// through treeReadaheadFiles files and treeReadaheadAfter bytes in stream
// order: most files are small, and each costs a fetch when not ahead.
const (
	treeReadaheadFiles = 3
	treeReadaheadAfter = 128 << 10
)

// streamSlack is how far from where the last read of a file ended a read
// may start and still continue a stream: a few of the kernel's largest
// reads, which it sends a few at a time, served in any order.
const streamSlack = 4 * MaxRead

// readAhead starts fetching the chunks after a read of k bytes at off of
// n, which took chunks first to last, once reads have streamed through
// readaheadAfter bytes; a program loader or a reader of headers reads in
// a few short runs, which the kernel's own readahead serves.
//
// A stream within one file is read ahead up to the file's end: past it is
// another file, which the reader may never want (at a boot, most of them).
// A stream through the data stream itself, file after file in stream
// order (tar, cp -a, a checksum of the tree: the stream is in tree order),
// is read ahead across files, unless Options.ReadaheadWithinFiles.
func (f *FS) readAhead(n *node, off int64, k, first, last int) {
	if f.chunks.ahead == 0 {
		return
	}
	streak := int64(k)
	if prev := n.next.Swap(off + int64(k)); off > 0 && off >= prev-streamSlack && off <= prev+streamSlack {
		streak = n.streak.Add(int64(k))
	} else {
		n.streak.Store(streak)
	}
	treeStreak, treeFiles := int64(k), int64(0)
	prevIno := uint32(f.lastIno.Swap(int64(n.ino)))
	if prev := int(f.lastChunk.Swap(int64(last))); first >= prev && first <= prev+1 {
		treeStreak = f.treeStreak.Add(int64(k))
		treeFiles = f.treeFiles.Load()
		if n.ino != prevIno {
			treeFiles = f.treeFiles.Add(1)
		}
	} else {
		f.treeStreak.Store(treeStreak)
		f.treeFiles.Store(0)
	}
	switch {
	case !f.withinFiles && treeFiles >= treeReadaheadFiles && treeStreak >= treeReadaheadAfter:
		f.chunks.readahead(last, len(f.x.Chunks)-1)
	case streak >= readaheadAfter:
		if _, end, ok := f.x.ChunkSpan(n.ino); ok {
			f.chunks.readahead(last, end)
		}
	}
}
