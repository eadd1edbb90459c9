package execdeps

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
)

// The loader's cache, /etc/ld.so.cache, as glibc's ldconfig writes it: a
// table of (soname, path) entries with flags saying which ABI each
// library is for. glibc 2.32 and later write the new format alone; older
// ones wrote the libc5-era format and then the new one after it, aligned
// to 8 bytes. In the new format string offsets count from the start of its
// header; in the old, from the end of its table.
const (
	oldMagic       = "ld.so-1.7.0"
	newMagic       = "glibc-ld.so.cache1.1"
	oldHeaderSize  = 16 // magic padded to 12, then nlibs
	oldEntrySize   = 12 // flags, key, value
	newHeaderSize  = 48 // magic and version, nlibs, len_strings, flags, padding, extension offset, unused
	newEntrySize   = 24 // flags, key, value, osversion, hwcap
	flagTypeMask   = 0xff
	flagELF        = 1
	flagELFLibc6   = 3
	maxCacheSize   = 64 << 20
	maxCacheString = 4096
)

// cacheEntry is one library of the cache.
type cacheEntry struct {
	path  string
	hwcap uint64 // non-zero: a library for particular CPU features
}

// ldCache maps a soname to the libraries the cache lists for it, in the
// cache's order: for each ABI the loader knows, there may be one.
type ldCache map[string][]cacheEntry

// parseLDCache reads a loader cache. Entries that are not ELF libraries,
// or whose strings fall outside the file, are left out.
func parseLDCache(b []byte) (ldCache, error) {
	if len(b) > maxCacheSize {
		return nil, fmt.Errorf("ld.so.cache: %d bytes, more than any cache holds", len(b))
	}
	le := binary.LittleEndian
	if bytes.HasPrefix(b, []byte(oldMagic)) {
		if len(b) < oldHeaderSize {
			return nil, errors.New("ld.so.cache: truncated header")
		}
		n := uint64(le.Uint32(b[12:]))
		end := uint64(oldHeaderSize) + n*oldEntrySize
		if end > uint64(len(b)) {
			return nil, fmt.Errorf("ld.so.cache: %d entries, more than the file holds", n)
		}
		// glibc 2.2 to 2.31 follow the old table with a new one, which
		// has the ABI flags of every entry right; prefer it.
		if at := (end + 7) &^ 7; at < uint64(len(b)) && bytes.HasPrefix(b[at:], []byte(newMagic)) {
			return parseNew(b[at:])
		}
		c := ldCache{}
		strs := b[end:]
		for i := range n {
			e := b[oldHeaderSize+i*oldEntrySize:]
			c.add(int32(le.Uint32(e)), strs, le.Uint32(e[4:]), le.Uint32(e[8:]), 0)
		}
		return c, nil
	}
	if bytes.HasPrefix(b, []byte(newMagic)) {
		return parseNew(b)
	}
	return nil, errors.New("ld.so.cache: not a loader cache (unknown magic)")
}

func parseNew(b []byte) (ldCache, error) {
	le := binary.LittleEndian
	if len(b) < newHeaderSize {
		return nil, errors.New("ld.so.cache: truncated header")
	}
	n := uint64(le.Uint32(b[20:]))
	if uint64(newHeaderSize)+n*newEntrySize > uint64(len(b)) {
		return nil, fmt.Errorf("ld.so.cache: %d entries, more than the file holds", n)
	}
	c := ldCache{}
	for i := range n {
		e := b[newHeaderSize+i*newEntrySize:]
		c.add(int32(le.Uint32(e)), b, le.Uint32(e[4:]), le.Uint32(e[8:]), le.Uint64(e[16:]))
	}
	return c, nil
}

func (c ldCache) add(flags int32, strs []byte, key, value uint32, hwcap uint64) {
	if t := flags & flagTypeMask; t != flagELF && t != flagELFLibc6 {
		return
	}
	name, ok1 := cString(strs, key)
	path, ok2 := cString(strs, value)
	if !ok1 || !ok2 || name == "" || path == "" {
		return
	}
	c[name] = append(c[name], cacheEntry{path: path, hwcap: hwcap})
}

// cString is the NUL-terminated string at off in b.
func cString(b []byte, off uint32) (string, bool) {
	if uint64(off) >= uint64(len(b)) {
		return "", false
	}
	s := b[off:]
	s = s[:min(len(s), maxCacheString)]
	i := bytes.IndexByte(s, 0)
	if i < 0 {
		return "", false
	}
	return string(s[:i]), true
}

// lookup returns the paths the cache gives for soname, those for any CPU
// first: which of the others the loader takes depends on the CPU it runs
// on, and a library for particular features is an extra, never the only
// build of a library.
func (c ldCache) lookup(soname string) []string {
	var out, extra []string
	for _, e := range c[soname] {
		if e.hwcap == 0 {
			out = append(out, e.path)
		} else {
			extra = append(extra, e.path)
		}
	}
	return append(out, extra...)
}
