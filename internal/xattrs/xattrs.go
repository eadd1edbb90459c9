// Package xattrs reads the extended attributes of a file, a symlink's own
// included, as the converter records them and bootinit's copy-up copies
// them.
package xattrs

import (
	"errors"
	"sort"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
)

// Read returns the extended attributes of the file at p, sorted by name;
// none on a file system without them.
func Read(p string) ([]index.Xattr, error) {
	names, err := get(func(b []byte) (int, error) { return unix.Llistxattr(p, b) })
	if errors.Is(err, unix.ENOTSUP) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	var xattrs []index.Xattr
	for _, name := range strings.Split(string(names), "\x00") {
		if name == "" {
			continue
		}
		value, err := get(func(b []byte) (int, error) { return unix.Lgetxattr(p, name, b) })
		if err != nil {
			return nil, err
		}
		xattrs = append(xattrs, index.Xattr{Name: name, Value: value})
	}
	sort.Slice(xattrs, func(i, j int) bool { return xattrs[i].Name < xattrs[j].Name })
	return xattrs, nil
}

// get calls an xattr getter once for the size and once for the value.
func get(call func([]byte) (int, error)) ([]byte, error) {
	n, err := call(nil)
	if err != nil || n == 0 {
		return []byte{}, err
	}
	b := make([]byte, n)
	n, err = call(b)
	return b[:n], err
}
