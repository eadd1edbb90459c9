package index

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"sort"
	"syscall"
)

// The encoding: magic, version, then meta, chunks, inodes and entries as
// varint-prefixed records, then the SHA-256 of everything before it.
var magic = [8]byte{'m', 'k', 'b', 'f', 'i', 'd', 'x', 0}

const headerLen = len(magic) + 4

// ErrCorrupt is wrapped by every decoding error.
var ErrCorrupt = errors.New("corrupt index")

// MarshalBinary checks and encodes the index. It refreshes the tables
// validation derives, and the digest, so it must not run while other
// goroutines read x.
func (x *Index) MarshalBinary() ([]byte, error) {
	if err := x.validate(); err != nil {
		return nil, err
	}
	b := x.encode()
	x.digest = sha256.Sum256(b)
	return b, nil
}

// encode writes x as is; MarshalBinary validates first.
func (x *Index) encode() []byte {
	w := &writer{buf: make([]byte, 0, 64*len(x.Entries)+40*len(x.Chunks)+1024)}
	w.buf = append(w.buf, magic[:]...)
	w.buf = binary.LittleEndian.AppendUint32(w.buf, Version)

	keys := make([]string, 0, len(x.Meta))
	for k := range x.Meta {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	w.uvarint(uint64(len(keys)))
	for _, k := range keys {
		w.string(k)
		w.string(x.Meta[k])
	}

	w.uvarint(uint64(len(x.Chunks)))
	for _, c := range x.Chunks {
		w.buf = append(w.buf, c.ID[:]...)
		w.uvarint(uint64(c.Size))
	}

	w.uvarint(uint64(len(x.Inodes)))
	for i := range x.Inodes {
		n := &x.Inodes[i]
		w.uvarint(uint64(n.Mode))
		w.uvarint(uint64(n.UID))
		w.uvarint(uint64(n.GID))
		w.varint(n.Mtime)
		switch n.Type() {
		case syscall.S_IFREG:
			w.uvarint(uint64(n.Size))
			w.uvarint(uint64(n.Offset))
			if n.Extents == nil {
				w.uvarint(0)
			} else {
				w.uvarint(uint64(len(n.Extents)) + 1)
				for _, e := range n.Extents {
					w.uvarint(uint64(e.Off))
					w.uvarint(uint64(e.Len))
				}
			}
		case syscall.S_IFLNK:
			w.string(n.Target)
		case syscall.S_IFCHR, syscall.S_IFBLK:
			w.uvarint(n.Rdev)
		}
		w.uvarint(uint64(len(n.Xattrs)))
		for _, a := range n.Xattrs {
			w.string(a.Name)
			w.bytes(a.Value)
		}
	}

	w.uvarint(uint64(len(x.Entries)))
	for i, e := range x.Entries {
		if i > 0 {
			w.uvarint(uint64(i) - uint64(e.Parent)) // parents trail closely in BFS order
			w.string(e.Name)
		}
		w.uvarint(uint64(e.Inode))
	}

	sum := sha256.Sum256(w.buf)
	return append(w.buf, sum[:]...)
}

type writer struct{ buf []byte }

func (w *writer) uvarint(v uint64) { w.buf = binary.AppendUvarint(w.buf, v) }
func (w *writer) varint(v int64)   { w.buf = binary.AppendVarint(w.buf, v) }
func (w *writer) string(s string)  { w.uvarint(uint64(len(s))); w.buf = append(w.buf, s...) }
func (w *writer) bytes(b []byte)   { w.uvarint(uint64(len(b))); w.buf = append(w.buf, b...) }

// ReadFile reads and decodes the index file at path; errors name it.
func ReadFile(path string) (*Index, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	x, err := Decode(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return x, nil
}

// Decode parses and validates an encoded index. Any damage is an error
// wrapping ErrCorrupt; Decode never panics on bad input.
func Decode(b []byte) (*Index, error) {
	if len(b) < headerLen+sha256.Size || !bytes.Equal(b[:len(magic)], magic[:]) {
		return nil, fmt.Errorf("%w: not an mkbootfs index", ErrCorrupt)
	}
	if v := binary.LittleEndian.Uint32(b[len(magic):]); v != Version {
		return nil, fmt.Errorf("%w: format version %d, this build reads version %d: use a matching mkbootfs", ErrCorrupt, v, Version)
	}
	body, sum := b[:len(b)-sha256.Size], b[len(b)-sha256.Size:]
	h := sha256.New()
	h.Write(body)
	if got := h.Sum(nil); !bytes.Equal(got, sum) {
		return nil, fmt.Errorf("%w: checksum mismatch (truncated or damaged)", ErrCorrupt)
	}
	r := &reader{buf: body[headerLen:], text: string(body[headerLen:])}
	x := &Index{Meta: map[string]string{}}
	// The file's own digest, for the price of its last block.
	h.Write(sum)
	h.Sum(x.digest[:0])

	for n := r.count(2); n > 0 && r.err == nil; n-- {
		k := r.string()
		x.Meta[k] = r.string()
	}

	x.Chunks = make([]Chunk, r.count(33))
	for i := range x.Chunks {
		copy(x.Chunks[i].ID[:], r.take(32))
		x.Chunks[i].Size = uint32(r.uvarint(MaxChunkSize))
	}

	x.Inodes = make([]Inode, r.count(5))
	for i := range x.Inodes {
		n := &x.Inodes[i]
		n.Mode = uint32(r.uvarint(1<<32 - 1))
		n.UID = uint32(r.uvarint(1<<32 - 1))
		n.GID = uint32(r.uvarint(1<<32 - 1))
		n.Mtime = r.varint()
		switch n.Type() {
		case syscall.S_IFREG:
			n.Size = int64(r.uvarint(1<<62 - 1))
			n.Offset = int64(r.uvarint(1<<62 - 1))
			if ne := r.uvarint(uint64(len(r.buf))); ne > 0 {
				n.Extents = make([]Extent, ne-1)
				for j := range n.Extents {
					n.Extents[j] = Extent{Off: int64(r.uvarint(1<<62 - 1)), Len: int64(r.uvarint(1<<62 - 1))}
				}
			}
		case syscall.S_IFLNK:
			n.Target = r.string()
			n.Size = int64(len(n.Target))
		case syscall.S_IFCHR, syscall.S_IFBLK:
			n.Rdev = r.uvarint(1<<64 - 1)
		}
		if na := r.count(2); na > 0 {
			n.Xattrs = make([]Xattr, na)
			for j := range n.Xattrs {
				n.Xattrs[j] = Xattr{Name: r.string(), Value: r.bytes()}
			}
		}
		if r.err != nil {
			break
		}
	}

	x.Entries = make([]Entry, r.count(1))
	for i := range x.Entries {
		e := &x.Entries[i]
		if i > 0 {
			e.Parent = uint32(uint64(i) - r.uvarint(uint64(i)))
			e.Name = r.string()
		}
		e.Inode = uint32(r.uvarint(1<<32 - 1))
		if r.err != nil {
			break
		}
	}
	if r.err != nil {
		return nil, r.err
	}
	if len(r.buf) != 0 {
		return nil, fmt.Errorf("%w: %d unexpected bytes after the entries", ErrCorrupt, len(r.buf))
	}
	if err := x.validate(); err != nil {
		return nil, err
	}
	return x, nil
}

type reader struct {
	buf []byte
	err error
	// text is buf as it started, as a string: names and link targets are
	// slices of it, not an allocation each (a fifth of Decode's time).
	text string
}

func (r *reader) fail(what string) {
	if r.err == nil {
		r.err = fmt.Errorf("%w: %s", ErrCorrupt, what)
	}
	r.buf = nil
}

func (r *reader) uvarint(limit uint64) uint64 {
	v, n := binary.Uvarint(r.buf)
	if n <= 0 {
		r.fail("truncated number")
		return 0
	}
	r.buf = r.buf[n:]
	if v > limit {
		r.fail(fmt.Sprintf("number %d out of range", v))
		return 0
	}
	return v
}

func (r *reader) varint() int64 {
	v, n := binary.Varint(r.buf)
	if n <= 0 {
		r.fail("truncated number")
		return 0
	}
	r.buf = r.buf[n:]
	return v
}

// count reads a record count, bounded by what the remaining bytes can hold
// at minSize bytes per record, so a forged count cannot allocate much.
func (r *reader) count(minSize int) int {
	return int(r.uvarint(uint64(len(r.buf) / minSize)))
}

func (r *reader) take(n int) []byte {
	if n > len(r.buf) {
		r.fail("truncated record")
		return nil
	}
	b := r.buf[:n:n]
	r.buf = r.buf[n:]
	return b
}

func (r *reader) bytes() []byte { return bytes.Clone(r.take(int(r.uvarint(uint64(len(r.buf)))))) }

func (r *reader) string() string {
	n := int(r.uvarint(uint64(len(r.buf))))
	at := len(r.text) - len(r.buf)
	if r.take(n) == nil {
		return ""
	}
	return r.text[at : at+n]
}
