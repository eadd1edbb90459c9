package profile

import (
	"fmt"

	"github.com/mkbootfs/mkbootfs/index"
)

// Limits bound a profile, as a Recorder records it and as Limits.Parse
// reads it: a profile kept where other containers write (a node's cache)
// is untrusted input, and one recorded from a long run must stay small. A
// zero field bounds nothing.
type Limits struct {
	Files  int   // files it names
	Ranges int   // ranges, of all its files
	Bytes  int64 // bytes its ranges cover, of all its files
	Size   int64 // bytes of its text
}

// exceeded says which bound the counts pass, "" when none.
func (l Limits) exceeded(files, ranges int, bytes, size int64) string {
	switch {
	case l.Files > 0 && files > l.Files:
		return fmt.Sprintf("more than %d files", l.Files)
	case l.Ranges > 0 && ranges > l.Ranges:
		return fmt.Sprintf("more than %d ranges", l.Ranges)
	case l.Bytes > 0 && bytes > l.Bytes:
		return fmt.Sprintf("ranges of more than %d bytes", l.Bytes)
	case l.Size > 0 && size > l.Size:
		return fmt.Sprintf("longer than %d bytes", l.Size)
	}
	return ""
}

// Check fails unless every file p names is a regular file of x, named
// without symlinks, and every range lies within it: p was then recorded
// from x, and names nothing else.
func (p *Profile) Check(x *index.Index) error {
	for _, f := range p.Files {
		e, err := x.Resolve(f.Path)
		if err != nil {
			return fmt.Errorf("%q is not in the image", f.Path)
		}
		n := &x.Inodes[x.Entries[e].Inode]
		if !n.IsRegular() {
			return fmt.Errorf("%q is not a regular file of the image", f.Path)
		}
		for _, r := range f.Ranges {
			if r.Off < 0 || r.Len < 0 || r.Off > n.Size-r.Len {
				return fmt.Errorf("%q is read at %d+%d, past its end (%d bytes)", f.Path, r.Off, r.Len, n.Size)
			}
		}
	}
	return nil
}
