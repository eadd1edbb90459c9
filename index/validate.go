package index

import (
	"fmt"
	"strings"
	"syscall"
)

// validate checks every invariant readers rely on and derives the lookup
// tables (chunk offsets, children ranges, link counts). Reading an index
// that passes it never goes out of range.
func (x *Index) validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: "+format, append([]any{ErrCorrupt}, args...)...)
	}

	x.chunkEnd = make([]int64, len(x.Chunks))
	var end int64
	for i, c := range x.Chunks {
		if c.Size == 0 || c.Size > MaxChunkSize {
			return bad("chunk %d has size %d", i, c.Size)
		}
		end += int64(c.Size)
		x.chunkEnd[i] = end
	}

	for i := range x.Inodes {
		n := &x.Inodes[i]
		n.Nlink = 0
		switch n.Type() {
		case syscall.S_IFREG:
			if err := n.checkData(end); err != nil {
				return bad("inode %d: %v", i, err)
			}
		case syscall.S_IFLNK:
			if n.Target == "" || strings.IndexByte(n.Target, 0) >= 0 {
				return bad("inode %d: bad symlink target %q", i, n.Target)
			}
		case syscall.S_IFDIR, syscall.S_IFCHR, syscall.S_IFBLK, syscall.S_IFIFO, syscall.S_IFSOCK:
		default:
			return bad("inode %d: unknown file type %#o", i, n.Type())
		}
		if err := n.checkFields(); err != nil {
			return bad("inode %d: %v", i, err)
		}
		if n.Mode&^(syscall.S_IFMT|0o7777) != 0 {
			return bad("inode %d: mode %#o has unknown bits", i, n.Mode)
		}
		for j, a := range n.Xattrs {
			if a.Name == "" || strings.IndexByte(a.Name, 0) >= 0 || (j > 0 && n.Xattrs[j-1].Name >= a.Name) {
				return bad("inode %d: xattrs not sorted or badly named", i)
			}
		}
	}

	if len(x.Entries) == 0 {
		return bad("no root directory")
	}
	for i := range x.Entries {
		e := &x.Entries[i]
		e.first, e.count = 0, 0
		if int(e.Inode) >= len(x.Inodes) {
			return bad("entry %d names inode %d of %d", i, e.Inode, len(x.Inodes))
		}
		n := &x.Inodes[e.Inode]
		n.Nlink++
		if n.IsDir() && n.Nlink > 1 {
			return bad("directory inode %d is linked twice", e.Inode)
		}
		if i == Root {
			if e.Parent != Root || e.Name != "" || !n.IsDir() {
				return bad("entry 0 is not a root directory")
			}
			continue
		}
		if err := checkName(e.Name); err != nil {
			return bad("entry %d: %v", i, err)
		}
		prev := &x.Entries[i-1]
		switch {
		case int(e.Parent) >= i:
			return bad("entry %d: parent %d comes after it", i, e.Parent)
		case !x.Inodes[x.Entries[e.Parent].Inode].IsDir():
			return bad("entry %d: parent %d is not a directory", i, e.Parent)
		case i > 1 && e.Parent < prev.Parent:
			return bad("entry %d: entries are not in breadth-first order", i)
		case i > 1 && e.Parent == prev.Parent && e.Name <= prev.Name:
			return bad("entry %d: names in a directory are not sorted and unique", i)
		}
		p := &x.Entries[e.Parent]
		if p.count == 0 {
			p.first = uint32(i)
		}
		p.count++
	}
	for i := range x.Inodes {
		n := &x.Inodes[i]
		if n.Nlink == 0 {
			return bad("inode %d is not linked from any entry", i)
		}
		if n.IsDir() {
			n.Nlink = 2
		}
	}
	for i := 1; i < len(x.Entries); i++ {
		if x.Inodes[x.Entries[i].Inode].IsDir() {
			x.Inodes[x.Entries[x.Entries[i].Parent].Inode].Nlink++
		}
	}
	return nil
}

func (n *Inode) checkData(streamSize int64) error {
	if n.Size < 0 || n.Offset < 0 {
		return fmt.Errorf("negative size or offset")
	}
	var data, pos int64
	for _, e := range n.Extents {
		if e.Len <= 0 || e.Off < pos || e.Off > n.Size-e.Len {
			return fmt.Errorf("extents overlap, are empty or pass the file's end")
		}
		pos = e.Off + e.Len
		data += e.Len
	}
	if n.Extents == nil {
		data = n.Size
	}
	if n.Offset > streamSize-data {
		return fmt.Errorf("data [%d, +%d) is past the data stream (%d bytes)", n.Offset, data, streamSize)
	}
	return nil
}

// checkFields refuses a field the inode's type does not have: it would not
// be encoded, so the index would not decode to what was marshalled.
func (n *Inode) checkFields() error {
	t := n.Type()
	switch {
	case t == syscall.S_IFLNK && n.Size != int64(len(n.Target)):
		return fmt.Errorf("symlink size %d is not its target's length %d", n.Size, len(n.Target))
	case t != syscall.S_IFREG && (n.Offset != 0 || n.Extents != nil),
		t != syscall.S_IFREG && t != syscall.S_IFLNK && n.Size != 0,
		t != syscall.S_IFLNK && n.Target != "",
		t != syscall.S_IFCHR && t != syscall.S_IFBLK && n.Rdev != 0:
		return fmt.Errorf("file type %#o does not have the size, target, device number or data offset set", t)
	}
	return nil
}

func checkName(name string) error {
	switch {
	case name == "" || name == "." || name == "..":
		return fmt.Errorf("bad name %q", name)
	case len(name) > 255:
		return fmt.Errorf("name longer than 255 bytes")
	case strings.ContainsAny(name, "/\x00"):
		return fmt.Errorf("name %q holds a slash or NUL", name)
	}
	return nil
}
