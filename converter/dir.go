package converter

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/internal/xattrs"
)

// readDir builds the tree from a root directory on this machine: every
// entry's lstat attributes and xattrs, hard links by device and inode,
// sparse files' data runs by SEEK_DATA/SEEK_HOLE.
func readDir(ctx context.Context, root string, t *tree) error {
	var st unix.Stat_t
	if err := unix.Lstat(root, &st); err != nil {
		return fmt.Errorf("source directory: %w", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return fmt.Errorf("source %s is not a directory", root)
	}
	meta, err := statInode(root, &st)
	if err != nil {
		return err
	}
	t.root.ino.meta = meta
	w := &dirWalker{ctx: ctx, links: map[[2]uint64]*inode{}}
	return w.walk(root, t.root)
}

type dirWalker struct {
	ctx   context.Context
	links map[[2]uint64]*inode // (dev, ino) of files with more than one link
}

func (w *dirWalker) walk(dir string, n *node) error {
	if err := w.ctx.Err(); err != nil {
		return err
	}
	f, err := os.Open(dir)
	if err != nil {
		return err
	}
	names, err := f.Readdirnames(-1)
	f.Close()
	if err != nil {
		return fmt.Errorf("reading %s: %w", dir, err)
	}
	sort.Strings(names)
	for _, name := range names {
		p := filepath.Join(dir, name)
		var st unix.Stat_t
		if err := unix.Lstat(p, &st); err != nil {
			return err
		}
		if st.Nlink > 1 && st.Mode&unix.S_IFMT != unix.S_IFDIR {
			key := [2]uint64{st.Dev, st.Ino}
			if ino := w.links[key]; ino != nil {
				n.children[name] = &node{name: name, ino: ino}
				continue
			}
		}
		meta, err := statInode(p, &st)
		if err != nil {
			return err
		}
		if meta.IsDir() {
			c := newDir(name, meta, 0)
			n.children[name] = c
			if err := w.walk(p, c); err != nil {
				return err
			}
			continue
		}
		c := &node{name: name, ino: &inode{meta: meta}}
		if meta.IsRegular() && meta.Size > 0 {
			src := &dirFile{path: p, size: meta.Size}
			if st.Blocks*512 < st.Size {
				if src.extents, err = dataExtents(p, st.Size); err != nil {
					return err
				}
				c.ino.meta.Extents = src.extents
			}
			c.ino.src = src
		}
		if st.Nlink > 1 {
			w.links[[2]uint64{st.Dev, st.Ino}] = c.ino
		}
		n.children[name] = c
	}
	return nil
}

// statInode turns lstat results and xattrs into index attributes.
func statInode(p string, st *unix.Stat_t) (index.Inode, error) {
	n := index.Inode{
		Mode:  st.Mode,
		UID:   st.Uid,
		GID:   st.Gid,
		Mtime: st.Mtim.Nano(),
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFREG:
		n.Size = st.Size
	case unix.S_IFLNK:
		target, err := os.Readlink(p)
		if err != nil {
			return n, err
		}
		n.Target, n.Size = target, int64(len(target))
	case unix.S_IFCHR, unix.S_IFBLK:
		n.Rdev = st.Rdev
	}
	xattrs, err := xattrs.Read(p)
	if err != nil {
		return n, fmt.Errorf("xattrs of %s: %w", p, err)
	}
	n.Xattrs = xattrs
	return n, nil
}

// dataExtents finds a sparse file's data runs.
func dataExtents(p string, size int64) ([]index.Extent, error) {
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	extents := []index.Extent{}
	for off := int64(0); off < size; {
		start, err := unix.Seek(int(f.Fd()), off, unix.SEEK_DATA)
		if errors.Is(err, unix.ENXIO) {
			break // only a hole remains
		}
		if err != nil {
			return nil, fmt.Errorf("finding data in sparse file %s: %w", p, err)
		}
		end, err := unix.Seek(int(f.Fd()), start, unix.SEEK_HOLE)
		if err != nil {
			return nil, fmt.Errorf("finding holes in sparse file %s: %w", p, err)
		}
		end = min(end, size)
		if end > start {
			extents = append(extents, index.Extent{Off: start, Len: end - start})
		}
		off = end
	}
	return extents, nil
}

// dirFile is a regular file's data on this machine.
type dirFile struct {
	path    string
	size    int64
	extents []index.Extent // nil: the whole file
}

func (d *dirFile) open() (readerCloser, error) {
	f, err := os.Open(d.path)
	if err != nil {
		return nil, err
	}
	runs := []index.Extent{{Off: 0, Len: d.size}}
	if d.extents != nil {
		runs = slices.Clone(d.extents) // the reader consumes its copy
	}
	return &extentReader{f: f, path: d.path, runs: runs}, nil
}

// extentReader reads a file's data runs back to back and fails if the file
// changed size under it.
type extentReader struct {
	f    *os.File
	path string
	runs []index.Extent
}

func (r *extentReader) Read(p []byte) (int, error) {
	for len(r.runs) > 0 && r.runs[0].Len == 0 {
		r.runs = r.runs[1:]
	}
	if len(r.runs) == 0 {
		return 0, io.EOF
	}
	run := &r.runs[0]
	if int64(len(p)) > run.Len {
		p = p[:run.Len]
	}
	n, err := r.f.ReadAt(p, run.Off)
	run.Off += int64(n)
	run.Len -= int64(n)
	if err == io.EOF {
		if n == 0 {
			return 0, fmt.Errorf("%s shrank while it was being converted", r.path)
		}
		err = nil
	}
	return n, err
}

func (r *extentReader) Close() error { return r.f.Close() }
