package converter

import (
	"archive/tar"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"
	"syscall"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
)

// spool holds a layer's uncompressed tar on local disk, so the data of the
// files that survive flattening can be read back by offset.
type spool struct {
	f *os.File
}

func (s *spool) Close() error {
	s.f.Close()
	return os.Remove(s.f.Name())
}

// section is a file's data inside a spooled layer.
type section struct {
	f        *os.File
	off, len int64
}

func (s section) open() (readerCloser, error) {
	return struct {
		io.Reader
		io.Closer
	}{io.NewSectionReader(s.f, s.off, s.len), io.NopCloser(nil)}, nil
}

// flattenImage applies img's layers in order to t. Each layer is spooled
// uncompressed into tmpDir; the returned spools must be closed once the
// data has been chunked.
func flattenImage(ctx context.Context, img v1.Image, t *tree, tmpDir string, p *progress) ([]*spool, error) {
	layers, err := img.Layers()
	if err != nil {
		return nil, fmt.Errorf("reading the image's layers: %w", err)
	}
	var spools []*spool
	fail := func(err error) ([]*spool, error) {
		for _, s := range spools {
			s.Close()
		}
		return nil, err
	}
	for i, l := range layers {
		if err := ctx.Err(); err != nil {
			return fail(err)
		}
		s, err := spoolLayer(l, tmpDir)
		if err != nil {
			return fail(fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err))
		}
		spools = append(spools, s)
		if err := applyLayer(t, s.f, i); err != nil {
			return fail(fmt.Errorf("layer %d of %d: %w", i+1, len(layers), err))
		}
		p.layerDone(i+1, len(layers))
	}
	return spools, nil
}

func spoolLayer(l v1.Layer, tmpDir string) (*spool, error) {
	rc, err := l.Uncompressed()
	if err != nil {
		return nil, err
	}
	defer rc.Close()
	f, err := os.CreateTemp(tmpDir, "mkbootfs-layer-*.tar")
	if err != nil {
		return nil, fmt.Errorf("spooling the layer: %w", err)
	}
	if _, err := io.Copy(f, rc); err != nil {
		f.Close()
		os.Remove(f.Name())
		if errors.Is(err, syscall.ENOSPC) {
			return nil, fmt.Errorf("spooling the layer into %s: %w (set TMPDIR to a disk with room)", tmpDir, err)
		}
		return nil, fmt.Errorf("reading the layer: %w", err)
	}
	return &spool{f: f}, nil
}

// offsetReader tracks the position in the spool, so that after tar's Next
// the offset of the entry's data is known. It seeks, so tar skips data
// without reading it.
type offsetReader struct {
	f   *os.File
	pos int64
}

func (r *offsetReader) Read(p []byte) (int, error) {
	n, err := r.f.ReadAt(p, r.pos)
	r.pos += int64(n)
	if err == io.EOF && n > 0 {
		err = nil
	}
	return n, err
}

func (r *offsetReader) Seek(off int64, whence int) (int64, error) {
	switch whence {
	case io.SeekStart:
		r.pos = off
	case io.SeekCurrent:
		r.pos += off
	default:
		return 0, errors.New("offsetReader: unsupported whence")
	}
	return r.pos, nil
}

// applyLayer applies one layer's tar stream to the tree.
func applyLayer(t *tree, f *os.File, layer int) error {
	r := &offsetReader{f: f}
	tr := tar.NewReader(r)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("bad tar stream: %w", err)
		}
		if err := applyEntry(t, hdr, section{f: f, off: r.pos, len: hdr.Size}, layer); err != nil {
			return err
		}
	}
}

func applyEntry(t *tree, hdr *tar.Header, data section, layer int) error {
	if hdr.Typeflag == tar.TypeXGlobalHeader {
		return nil
	}
	p, err := cleanPath(hdr.Name)
	if err != nil {
		return err
	}
	if skip, err := checkWhiteoutName(p, hdr.Typeflag); err != nil {
		return fmt.Errorf("entry %q: %w; rebuild the layer without it", hdr.Name, err)
	} else if skip {
		return nil
	}
	if t.whiteout(p, layer) {
		return nil
	}
	if hdr.Typeflag == tar.TypeLink {
		target, err := cleanPath(hdr.Linkname)
		if err != nil {
			return err
		}
		return t.link(p, target, layer)
	}
	meta, err := tarInode(hdr)
	if err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	var src dataSource
	if meta.IsRegular() && meta.Size > 0 {
		src = data
	}
	if err := t.put(p, meta, src, layer); err != nil {
		return fmt.Errorf("entry %q: %w", hdr.Name, err)
	}
	return nil
}

func tarInode(hdr *tar.Header) (index.Inode, error) {
	n := index.Inode{
		Mode:  uint32(hdr.Mode) & 0o7777,
		UID:   uint32(hdr.Uid),
		GID:   uint32(hdr.Gid),
		Mtime: hdr.ModTime.UnixNano(),
	}
	if hdr.Uid < 0 || hdr.Gid < 0 || hdr.Uid > 1<<32-1 || hdr.Gid > 1<<32-1 {
		return n, fmt.Errorf("owner %d:%d is out of range", hdr.Uid, hdr.Gid)
	}
	switch hdr.Typeflag {
	case tar.TypeReg: // the reader gives TypeReg for old-style entries too
		for k := range hdr.PAXRecords {
			if strings.HasPrefix(k, "GNU.sparse.") {
				return n, errors.New("sparse tar entries are not supported: rebuild the layer without --sparse")
			}
		}
		n.Mode |= syscall.S_IFREG
		n.Size = hdr.Size
	case tar.TypeDir:
		n.Mode |= syscall.S_IFDIR
	case tar.TypeSymlink:
		if hdr.Linkname == "" {
			return n, errors.New("symlink with an empty target")
		}
		n.Mode |= syscall.S_IFLNK
		n.Target = hdr.Linkname
		n.Size = int64(len(hdr.Linkname))
	case tar.TypeChar, tar.TypeBlock:
		n.Mode |= syscall.S_IFCHR
		if hdr.Typeflag == tar.TypeBlock {
			n.Mode = n.Mode&^syscall.S_IFMT | syscall.S_IFBLK
		}
		n.Rdev = unix.Mkdev(uint32(hdr.Devmajor), uint32(hdr.Devminor))
	case tar.TypeFifo:
		n.Mode |= syscall.S_IFIFO
	case tar.TypeGNUSparse:
		return n, errors.New("sparse tar entries are not supported: rebuild the layer without --sparse")
	default:
		return n, fmt.Errorf("unsupported tar entry type %q", hdr.Typeflag)
	}
	const xattrPrefix = "SCHILY.xattr."
	for k, v := range hdr.PAXRecords {
		if name, ok := strings.CutPrefix(k, xattrPrefix); ok && name != "" {
			n.Xattrs = append(n.Xattrs, index.Xattr{Name: name, Value: []byte(v)})
		}
	}
	sort.Slice(n.Xattrs, func(i, j int) bool { return n.Xattrs[i].Name < n.Xattrs[j].Name })
	return n, nil
}
