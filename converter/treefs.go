package converter

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path"
	"syscall"
	"time"
)

// treeFS shows the flattened tree as an fs.FS that does not follow
// symlinks (fs.ReadLinkFS), for package execdeps to read the image's
// programs and libraries before the data is chunked.
type treeFS struct{ t *tree }

func (f treeFS) node(op, name string) (*node, error) {
	if !fs.ValidPath(name) {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	if name == "." {
		name = ""
	}
	n := f.t.lookup(name)
	if n == nil {
		return nil, &fs.PathError{Op: op, Path: name, Err: fs.ErrNotExist}
	}
	return n, nil
}

func (f treeFS) Lstat(name string) (fs.FileInfo, error) {
	n, err := f.node("lstat", name)
	if err != nil {
		return nil, err
	}
	return nodeInfo{n}, nil
}

func (f treeFS) ReadLink(name string) (string, error) {
	n, err := f.node("readlink", name)
	if err != nil {
		return "", err
	}
	if n.ino.meta.Type() != syscall.S_IFLNK {
		return "", &fs.PathError{Op: "readlink", Path: name, Err: fs.ErrInvalid}
	}
	return n.ino.meta.Target, nil
}

// Open opens a regular file or directory; a name through or at a symlink
// is not followed (execdeps resolves symlinks itself). A sparse file is
// not opened: its source reads its data runs back to back, not its
// content, and no program or library is sparse.
func (f treeFS) Open(name string) (fs.File, error) {
	n, err := f.node("open", name)
	if err != nil {
		return nil, err
	}
	m := &n.ino.meta
	ra, _ := n.ino.src.(randomAccess)
	switch {
	case n.isDir():
		return &treeFile{info: nodeInfo{n}}, nil
	case !m.IsRegular():
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("not a regular file or directory")}
	case n.ino.src == nil: // empty
		return &treeFile{info: nodeInfo{n}, r: io.NewSectionReader(emptyReader{}, 0, 0)}, nil
	case ra == nil || m.Extents != nil:
		return nil, &fs.PathError{Op: "open", Path: name, Err: errors.New("a sparse file")}
	}
	r, c, err := ra.openAt()
	if err != nil {
		return nil, err
	}
	return &treeFile{info: nodeInfo{n}, r: io.NewSectionReader(r, 0, m.Size), c: c}, nil
}

// randomAccess is a data source that reads its file at any offset: for a
// file with no holes, its data is its content.
type randomAccess interface {
	openAt() (io.ReaderAt, io.Closer, error)
}

func (s section) openAt() (io.ReaderAt, io.Closer, error) {
	return io.NewSectionReader(s.f, s.off, s.len), io.NopCloser(nil), nil
}

func (d *dirFile) openAt() (io.ReaderAt, io.Closer, error) {
	f, err := os.Open(d.path)
	return f, f, err
}

type emptyReader struct{}

func (emptyReader) ReadAt([]byte, int64) (int, error) { return 0, io.EOF }

// treeFile is an open file of a treeFS: a directory (not listed), or a
// regular file, read at any offset.
type treeFile struct {
	info nodeInfo
	r    *io.SectionReader // nil: a directory
	c    io.Closer
}

func (f *treeFile) Stat() (fs.FileInfo, error) { return f.info, nil }

func (f *treeFile) Read(p []byte) (int, error) {
	if f.r == nil {
		return 0, &fs.PathError{Op: "read", Path: f.info.Name(), Err: errors.New("is a directory")}
	}
	return f.r.Read(p)
}

func (f *treeFile) ReadAt(p []byte, off int64) (int, error) {
	if f.r == nil {
		return 0, &fs.PathError{Op: "read", Path: f.info.Name(), Err: errors.New("is a directory")}
	}
	return f.r.ReadAt(p, off)
}

func (f *treeFile) Close() error {
	if f.c != nil {
		return f.c.Close()
	}
	return nil
}

// nodeInfo is a tree node's fs.FileInfo.
type nodeInfo struct{ n *node }

func (i nodeInfo) Name() string {
	if i.n.name == "" {
		return "."
	}
	return path.Base(i.n.name)
}
func (i nodeInfo) Size() int64        { return i.n.ino.meta.Size }
func (i nodeInfo) Mode() fs.FileMode  { return i.n.ino.meta.FileMode() }
func (i nodeInfo) ModTime() time.Time { return time.Unix(0, i.n.ino.meta.Mtime) }
func (i nodeInfo) IsDir() bool        { return i.n.isDir() }
func (i nodeInfo) Sys() any           { return nil }

var _ fs.ReadLinkFS = treeFS{}
