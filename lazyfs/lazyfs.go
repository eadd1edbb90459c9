// Package lazyfs owns the read-only FUSE filesystem over a rootfs index and
// a chunk store: every lookup, getattr, readdir, readlink and xattr is
// answered from the index in memory; a read fetches only the chunks it
// needs, through the store (normally a store.Cache shared by the node), and
// streaming reads fetch the next chunks ahead: of the file, or of the whole
// tree when it is read file after file in tree order.
//
// The tree is immutable, so the mount tells the kernel to cache everything
// (long entry and attribute timeouts, page cache kept across opens, cached
// directory listings, no OPEN or OPENDIR round trips: Linux 5.1 or later);
// setuid binaries and device nodes work (no nosuid, nodev), and the kernel
// checks permissions (default_permissions, POSIX ACLs).
//
// A chunk that cannot be fetched fails the read that needs it with EIO and
// one log line naming the file, the chunk and the store; everything else
// keeps working and a later read tries again.
//
// # Stale mounts
//
// A server killed with SIGKILL leaves its mount point dead: accesses fail
// with ENOTCONN ("transport endpoint is not connected"), though a stat may
// still be answered from the kernel's attribute cache. Mount detects a dead
// mount (statfs fails with ENOTCONN) and detaches it lazily (umount -l)
// before mounting again; by hand, `fusermount3 -uz DIR` or `umount -l DIR`
// does the same.
package lazyfs

import (
	"context"
	"log"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/hanwen/go-fuse/v2/fs"
	"github.com/hanwen/go-fuse/v2/fuse"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// Options configure a filesystem. The zero value of a field picks its default.
type Options struct {
	// MemCache bounds the decoded chunks kept in memory, in bytes; default
	// 4 MiB. The kernel's page cache holds file data once read, so this
	// only serves chunks shared by several files and readahead.
	MemCache int64
	// Readahead is how many chunks past a sequential read, up to the end
	// of the file, are fetched in the background; default 16, negative: none.
	Readahead int
	// ReadaheadWithinFiles keeps readahead within the file being read,
	// even when files are read one after another in tree order: a boot's
	// reads are a program's, and what follows a file it reads whole (a
	// config file, laid out by a profile next to the next one it reads)
	// is seldom wanted.
	ReadaheadWithinFiles bool
	// Fetchers bounds the readahead fetches under way; default 8: a fetch
	// mostly waits (for a disk or a network), so more than the CPUs.
	Fetchers int
	// FetchTimeout bounds one chunk fetch; default 30s.
	FetchTimeout time.Duration
	// Log receives one line per failed read; default log.Default().
	Log *log.Logger
	// OnRead, when set, is told of every read served: n bytes at off of
	// inode ino, opened through entry (a profile.Recorder's Read).
	OnRead func(ino, entry uint32, off int64, n int)
}

func (o *Options) setDefaults() {
	if o.MemCache == 0 {
		o.MemCache = 4 << 20
	}
	if o.Readahead == 0 {
		o.Readahead = 16
	}
	if o.Readahead < 0 {
		o.Readahead = 0
	}
	if o.Fetchers <= 0 {
		o.Fetchers = 8
	}
	if o.FetchTimeout <= 0 {
		o.FetchTimeout = 30 * time.Second
	}
	if o.Log == nil {
		o.Log = log.Default()
	}
}

// FS is the filesystem of one index over one store.
type FS struct {
	x      *index.Index
	st     store.Store
	log    *log.Logger
	onRead func(ino, entry uint32, off int64, n int)
	chunks *chunks
	// withinFiles is Options.ReadaheadWithinFiles.
	withinFiles bool
	root        uint32 // the root directory's inode
	// dirEntry[i] is the entry of directory inode i (directories have one).
	dirEntry []uint32
	// noXattrs is set when no file has an xattr: Getxattr then answers
	// ENOSYS, which the kernel remembers for the mount, so ls and exec stop
	// asking (for security.selinux and security.capability) once per file.
	noXattrs bool

	reads, readBytes, readErrs atomic.Int64

	// quietTID is the thread whose reads start no readahead (NoReadaheadFor).
	quietTID atomic.Int64

	// lastIno, lastChunk, treeStreak and treeFiles follow reads through
	// the data stream, file after file, for readahead.
	lastIno, lastChunk, treeStreak, treeFiles atomic.Int64
}

// New returns the filesystem of x whose chunks come from st.
func New(x *index.Index, st store.Store, o Options) *FS {
	o.setDefaults()
	f := &FS{
		x:           x,
		st:          st,
		log:         o.Log,
		onRead:      o.OnRead,
		withinFiles: o.ReadaheadWithinFiles,
		chunks:      newChunks(x, st, &o),
		root:        x.Entries[index.Root].Inode,
		dirEntry:    make([]uint32, len(x.Inodes)),
	}
	for e, ent := range x.Entries {
		if x.Inodes[ent.Inode].IsDir() {
			f.dirEntry[ent.Inode] = uint32(e)
		}
	}
	f.noXattrs = true
	for i := range x.Inodes {
		if len(x.Inodes[i].Xattrs) > 0 {
			f.noXattrs = false
			break
		}
	}
	return f
}

// NoReadaheadFor makes the reads of thread tid (as the mount's pid
// namespace numbers it) start no readahead, nor count in the streams that
// do: bootinit's page-cache warming reads the profile's ranges and nothing
// else is wanted, yet its runs of reads through a file looked like a
// stream, and each warm start fetched a few chunks past them.
func (f *FS) NoReadaheadFor(tid int) { f.quietTID.Store(int64(tid)) }

func (f *FS) quietReader(ctx context.Context) bool {
	tid := f.quietTID.Load()
	if tid == 0 {
		return false
	}
	c, ok := fuse.FromContext(ctx)
	return ok && int64(c.Pid) == tid
}

// Root returns the root directory's node, for fs.Mount.
func (f *FS) Root() fs.InodeEmbedder { return &node{fs: f, entry: index.Root, ino: f.root} }

// Stats count what a filesystem did since it was made.
type Stats struct {
	Reads         int64 `json:"reads"`          // read requests served
	ReadBytes     int64 `json:"read_bytes"`     // bytes returned by reads
	ReadErrors    int64 `json:"read_errors"`    // reads failed with EIO
	ChunksLoaded  int64 `json:"chunks_loaded"`  // chunks loaded through the store
	BytesLoaded   int64 `json:"bytes_loaded"`   // their decoded bytes
	MemHits       int64 `json:"mem_hits"`       // chunk reads served from memory
	Readaheads    int64 `json:"readaheads"`     // chunk loads started ahead of reads
	ChunkFailures int64 `json:"chunk_failures"` // chunk loads that failed
	// Cache is the cache store's counters when the store is a *store.Cache:
	// hits, misses, and bytes fetched from the remote.
	Cache *store.CacheStats `json:"cache,omitempty"`
}

// Stats returns the counters.
func (f *FS) Stats() Stats {
	c := f.chunks
	s := Stats{
		Reads:         f.reads.Load(),
		ReadBytes:     f.readBytes.Load(),
		ReadErrors:    f.readErrs.Load(),
		ChunksLoaded:  c.loaded.Load(),
		BytesLoaded:   c.loadedBytes.Load(),
		MemHits:       c.memHits.Load(),
		Readaheads:    c.aheadStarted.Load(),
		ChunkFailures: c.fetchErrs.Load(),
	}
	if cs, ok := f.st.(*store.Cache); ok {
		cst := cs.Stats()
		s.Cache = &cst
	}
	return s
}

// ino is the inode number the kernel sees for inode i: i+1, except that
// the root is 1 (FUSE's root ID), swapped with inode 0.
func (f *FS) ino(i uint32) uint64 {
	switch i {
	case f.root:
		return 1
	case 0:
		return uint64(f.root) + 1
	}
	return uint64(i) + 1
}

// inode is the inode whose number the kernel knows as n; ok is false for
// a number that is none of them.
func (f *FS) inode(n uint64) (i uint32, ok bool) {
	switch {
	case n == 1:
		return f.root, true
	case n == uint64(f.root)+1:
		return 0, true
	case n == 0 || n > uint64(len(f.x.Inodes)):
		return 0, false
	}
	return uint32(n - 1), true
}

// blockSize is the unit of st_blocks accounting of the filesystems images
// are built on (ext4, xfs, overlayfs over them): a file's data takes whole
// 4 KiB blocks and its holes none.
const blockSize = 4096

// fastSymlinkMax is the longest symlink target ext4 keeps in the inode
// itself, taking no block.
const fastSymlinkMax = 59

// attr fills a with inode i's attributes.
func (f *FS) attr(i uint32, a *fuse.Attr) {
	n := &f.x.Inodes[i]
	a.Ino = f.ino(i)
	a.Mode = n.Mode
	a.Nlink = n.Nlink
	a.Uid, a.Gid = n.UID, n.GID
	sec, nsec := uint64(n.Mtime/1e9), uint32(n.Mtime%1e9)
	if n.Mtime < 0 && nsec != 0 {
		sec, nsec = uint64(n.Mtime/1e9-1), uint32(n.Mtime%1e9+1e9)
	}
	a.Mtime, a.Mtimensec = sec, nsec
	a.Atime, a.Atimensec = sec, nsec
	a.Ctime, a.Ctimensec = sec, nsec
	a.Blksize = blockSize
	a.Size, a.Blocks = 0, 0
	switch n.Type() {
	case syscall.S_IFREG:
		a.Size = uint64(n.Size)
		a.Blocks = dataBlocks(n)
	case syscall.S_IFLNK:
		a.Size = uint64(len(n.Target))
		if len(n.Target) > fastSymlinkMax {
			a.Blocks = blockSize / 512
		}
	case syscall.S_IFDIR:
		// The index keeps no directory sizes; one block is what most
		// directories of a rootfs take.
		a.Size, a.Blocks = blockSize, blockSize/512
	case syscall.S_IFCHR, syscall.S_IFBLK:
		// FUSE carries a 32-bit dev_t in the kernel's encoding.
		maj, min := unix.Major(n.Rdev), unix.Minor(n.Rdev)
		a.Rdev = min&0xff | maj<<8 | (min&^0xff)<<12
	}
}

// dataBlocks is st_blocks of a regular file: the 4 KiB blocks its data
// touches, in 512-byte units.
func dataBlocks(n *index.Inode) uint64 {
	if n.Extents == nil {
		return uint64((n.Size+blockSize-1)/blockSize) * (blockSize / 512)
	}
	var blocks, next int64 // next: the first block not yet counted
	for _, e := range n.Extents {
		lo, hi := max(e.Off/blockSize, next), (e.Off+e.Len+blockSize-1)/blockSize
		if hi > lo {
			blocks += hi - lo
			next = hi
		}
	}
	return uint64(blocks) * (blockSize / 512)
}
