package converter

import (
	"archive/tar"
	"fmt"
	"path"
	"strings"
	"syscall"

	"github.com/mkbootfs/mkbootfs/index"
)

// tree is the flattened rootfs being built: metadata in memory, file data
// referred to by where it can be read, never copied.
type tree struct {
	root *node
}

type node struct {
	name     string
	children map[string]*node // directories only
	ino      *inode
	layer    int // the layer that made this name, for whiteouts of lower layers only
}

type inode struct {
	meta     index.Inode // attributes; Offset and Nlink are filled in later
	src      dataSource  // regular files
	id       uint32      // position in the index's inode table, once numbered
	numbered bool
}

// dataSource reads a regular file's data runs (the file less its holes).
type dataSource interface {
	open() (readerCloser, error)
}

type readerCloser interface {
	Read([]byte) (int, error)
	Close() error
}

func newTree() *tree {
	return &tree{root: newDir("", index.Inode{Mode: syscall.S_IFDIR | 0o755}, -1)}
}

func newDir(name string, meta index.Inode, layer int) *node {
	return &node{name: name, children: map[string]*node{}, ino: &inode{meta: meta}, layer: layer}
}

func (n *node) isDir() bool { return n.children != nil }

// cleanPath turns a tar entry name into a slash path relative to the root,
// "" for the root itself. Absolute names are taken relative to the root, as
// docker does; a name that climbs out of the root is an error.
func cleanPath(name string) (string, error) {
	p := path.Clean("/" + name)
	if strings.Contains(name, "\x00") {
		return "", fmt.Errorf("entry name %q holds a NUL byte", name)
	}
	for _, part := range strings.Split(name, "/") {
		if part == ".." {
			return "", fmt.Errorf("entry %q climbs out of the root with \"..\"", name)
		}
	}
	return strings.TrimPrefix(p, "/"), nil
}

// parent returns the directory that holds p, creating missing directories
// (and replacing non-directories in the way) as extraction would.
func (t *tree) parent(p string, layer int) *node {
	dir := t.root
	if d := dirOf(p); d != "" {
		for _, name := range strings.Split(d, "/") {
			next := dir.children[name]
			if next == nil || !next.isDir() {
				next = newDir(name, index.Inode{Mode: syscall.S_IFDIR | 0o755}, layer)
				dir.children[name] = next
			}
			dir = next
		}
	}
	return dir
}

// lookup finds the node at p, or nil.
func (t *tree) lookup(p string) *node {
	n := t.root
	if p == "" {
		return n
	}
	for _, name := range strings.Split(p, "/") {
		if !n.isDir() {
			return nil
		}
		if n = n.children[name]; n == nil {
			return nil
		}
	}
	return n
}

const (
	whiteoutPrefix = ".wh."
	metaPrefix     = ".wh..wh." // overlay's and aufs's own names, not whiteouts of a file
	opaqueMarker   = ".wh..wh..opq"
)

// aufsMeta are the directories at a layer's root where aufs keeps its own
// state; docker skips them and what is in them, and so do we.
var aufsMeta = map[string]bool{".wh..wh.aufs": true, ".wh..wh.plnk": true, ".wh..wh.orph": true}

// checkWhiteoutName sorts out an entry with a .wh. name on its path: it
// reports whether the entry is aufs metadata to skip, and refuses one that
// no runtime would read the same way (docker as a whiteout, overlayfs and
// the boot image's own layer as a file): ".wh." and ".wh.." alone, a
// whiteout that is not a file, a .wh. name with entries under it, and .wh..wh.
// names other than the opaque marker.
func checkWhiteoutName(p string, typ byte) (skip bool, err error) {
	names := strings.Split(p, "/")
	if aufsMeta[names[0]] {
		return true, nil
	}
	for i, name := range names {
		if !strings.HasPrefix(name, whiteoutPrefix) {
			continue
		}
		last := i == len(names)-1
		switch {
		case !last:
			return false, fmt.Errorf("%q holds entries, but a name starting with %s is a whiteout, which is a file", strings.Join(names[:i+1], "/"), whiteoutPrefix)
		case typ != tar.TypeReg && typ != tar.TypeLink:
			return false, fmt.Errorf("a whiteout (a name starting with %s) must be a file, not a %s", whiteoutPrefix, tarTypeName(typ))
		case name == opaqueMarker:
		case strings.HasPrefix(name, metaPrefix):
			return false, fmt.Errorf("%q is no whiteout: of the names starting with %s, only %s (an opaque directory) is", name, metaPrefix, opaqueMarker)
		case name == whiteoutPrefix || name == whiteoutPrefix+"." || name == whiteoutPrefix+"..":
			return false, fmt.Errorf("%q is no whiteout: it names no file", name)
		}
	}
	return false, nil
}

// tarTypeName says what a tar entry type is, for messages.
func tarTypeName(typ byte) string {
	switch typ {
	case tar.TypeDir:
		return "directory"
	case tar.TypeSymlink:
		return "symlink"
	case tar.TypeChar:
		return "character device"
	case tar.TypeBlock:
		return "block device"
	case tar.TypeFifo:
		return "FIFO"
	}
	return fmt.Sprintf("tar entry of type %q", typ)
}

// whiteout applies an OCI whiteout entry at p. It reports whether p was one.
// Whiteouts hide what lower layers made; what the same layer makes stays.
func (t *tree) whiteout(p string, layer int) bool {
	base := path.Base(p)
	if !strings.HasPrefix(base, whiteoutPrefix) {
		return false
	}
	dir := t.lookup(dirOf(p))
	if dir == nil || !dir.isDir() {
		return true // nothing below to hide
	}
	if base == opaqueMarker {
		for name, c := range dir.children {
			if c.layer < layer {
				delete(dir.children, name)
			}
		}
		return true
	}
	name := base[len(whiteoutPrefix):]
	if c := dir.children[name]; c != nil && c.layer < layer {
		delete(dir.children, name)
	}
	return true
}

// put places an entry at p: a directory keeps its children when p already
// is one; anything else replaces what was there.
func (t *tree) put(p string, meta index.Inode, src dataSource, layer int) error {
	if p == "" {
		if meta.Type() != syscall.S_IFDIR {
			return fmt.Errorf("the root entry is not a directory")
		}
		t.root.ino.meta = meta
		return nil
	}
	if err := checkName(path.Base(p)); err != nil {
		return err
	}
	dir := t.parent(p, layer)
	name := path.Base(p)
	if meta.Type() == syscall.S_IFDIR {
		if old := dir.children[name]; old != nil && old.isDir() {
			old.ino.meta = meta
			old.layer = layer
			return nil
		}
		dir.children[name] = newDir(name, meta, layer)
		return nil
	}
	dir.children[name] = &node{name: name, ino: &inode{meta: meta, src: src}, layer: layer}
	return nil
}

// link makes p another name of the file at target.
func (t *tree) link(p, target string, layer int) error {
	tn := t.lookup(target)
	if tn == nil {
		return fmt.Errorf("hard link %q points to %q, which does not exist", p, target)
	}
	if tn.isDir() {
		return fmt.Errorf("hard link %q points to directory %q", p, target)
	}
	if p == "" || p == target {
		return fmt.Errorf("hard link %q to %q is not a link", p, target)
	}
	if err := checkName(path.Base(p)); err != nil {
		return err
	}
	dir := t.parent(p, layer)
	dir.children[path.Base(p)] = &node{name: path.Base(p), ino: tn.ino, layer: layer}
	return nil
}

// dirOf returns the directory part of a clean relative path, "" at the top.
func dirOf(p string) string {
	if i := strings.LastIndexByte(p, '/'); i >= 0 {
		return p[:i]
	}
	return ""
}

func checkName(name string) error {
	if len(name) > 255 {
		return fmt.Errorf("name %.40q... is longer than 255 bytes", name)
	}
	return nil
}
