package lazyfs

import (
	"syscall"

	"github.com/hanwen/go-fuse/v2/fuse"
)

// rawFS adjusts go-fuse's node bridge to an immutable tree. It declines
// OPEN, OPENDIR and FLUSH with ENOSYS, so the kernel stops sending them (and
// RELEASE and RELEASEDIR) and keeps file pages and directory listings
// cached (FUSE's no_open and no_opendir, Linux 5.1 and later): a warm walk
// of the tree then costs no round trip per file or directory. Measured with
// a tar of the warm Debian minbase tree: answering OPEN with
// FOPEN_KEEP_CACHE takes 2.5x as long (a round trip per file), and without
// it 10x (the page cache is dropped at each open). Without an
// open directory handle go-fuse cannot list a directory, so rawFS lists it,
// straight from the index; the kernel's node IDs are the inode numbers
// (Options.ExternalNodeID).
type rawFS struct {
	fuse.RawFileSystem
	f *FS
}

func (r *rawFS) Open(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawFS) OpenDir(cancel <-chan struct{}, in *fuse.OpenIn, out *fuse.OpenOut) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawFS) Flush(cancel <-chan struct{}, in *fuse.FlushIn) fuse.Status {
	return fuse.ENOSYS
}

func (r *rawFS) ReadDir(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.list(cancel, in, out, false)
}

// ReadDirPlus lists a directory with its entries' attributes; each entry
// is looked up through the bridge, which counts it as the kernel does.
func (r *rawFS) ReadDirPlus(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList) fuse.Status {
	return r.list(cancel, in, out, true)
}

// list lists ".", ".." and the directory's entries from position in.Offset:
// an entry's offset is its position plus one.
func (r *rawFS) list(cancel <-chan struct{}, in *fuse.ReadIn, out *fuse.DirEntryList, plus bool) fuse.Status {
	f, x := r.f, r.f.x
	i, ok := f.inode(in.NodeId)
	if !ok || !x.Inodes[i].IsDir() {
		return fuse.Status(syscall.ENOTDIR)
	}
	dir := f.dirEntry[i]
	first, count := x.Children(dir)
	for pos := in.Offset; pos < uint64(count)+2; pos++ {
		de := fuse.DirEntry{Name: ".", Mode: syscall.S_IFDIR, Ino: in.NodeId, Off: pos + 1}
		switch pos {
		case 0:
		case 1:
			de.Name, de.Ino = "..", f.ino(x.Entries[x.Entries[dir].Parent].Inode)
		default:
			e := &x.Entries[first+uint32(pos-2)]
			de.Name, de.Mode, de.Ino = e.Name, x.Inodes[e.Inode].Type(), f.ino(e.Inode)
		}
		if !plus {
			if !out.AddDirEntry(de) {
				break
			}
			continue
		}
		eo := out.AddDirLookupEntry(de)
		if eo == nil {
			break
		}
		// The kernel ignores the attributes of "." and "..", and of an
		// entry whose lookup failed (node ID 0).
		if pos >= 2 {
			r.RawFileSystem.Lookup(cancel, &in.InHeader, de.Name, eo)
		}
	}
	return fuse.OK
}
