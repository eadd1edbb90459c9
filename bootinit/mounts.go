package bootinit

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mountEntry is a mount of this mount namespace, from mountinfo.
type mountEntry struct {
	point    string // where it is mounted
	root     string // the directory of its file system that is mounted there
	readOnly bool
}

// readMountinfo returns the mounts of this mount namespace from
// mountinfo, in mount order.
func readMountinfo(mountinfo string) ([]mountEntry, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var mounts []mountEntry
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 {
			return nil, fmt.Errorf("%s: short line %q", mountinfo, sc.Text())
		}
		mounts = append(mounts, mountEntry{
			point:    unescapeMountinfo(fields[4]),
			root:     unescapeMountinfo(fields[3]),
			readOnly: slices.Contains(strings.Split(fields[5], ","), "ro"),
		})
	}
	return mounts, sc.Err()
}

// unescapeMountinfo undoes the kernel's octal escapes (\040 for a space).
func unescapeMountinfo(s string) string {
	if !strings.Contains(s, `\`) {
		return s
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] == '\\' && i+3 < len(s) {
			if v, err := strconv.ParseUint(s[i+1:i+4], 8, 8); err == nil {
				b.WriteByte(byte(v))
				i += 3
				continue
			}
		}
		b.WriteByte(s[i])
	}
	return b.String()
}

// toCarry picks the mounts docker made that the new root must show: every
// mount but the root and bootinit's own, and only the topmost of nested
// ones, since a moved mount takes its submounts along.
func toCarry(mounts []mountEntry, own string) []string {
	var out []string
	for _, m := range mounts {
		p := m.point
		if p == "/" || isUnder(p, own) {
			continue
		}
		nested := false
		for _, q := range out {
			if isUnder(p, q) {
				nested = true
				break
			}
		}
		if nested {
			continue
		}
		// A later mount on an ancestor hides this one; keep the ancestor.
		kept := out[:0]
		for _, q := range out {
			if !isUnder(q, p) {
				kept = append(kept, q)
			}
		}
		out = append(kept, p)
	}
	return out
}

// isUnder reports whether path p is dir or inside it.
func isUnder(p, dir string) bool {
	return p == dir || strings.HasPrefix(p, strings.TrimSuffix(dir, "/")+"/")
}

// carry moves the mount at p to the same path in the new root. The mount
// point is made (a directory, or an empty file for a file bind mount) and
// opened through root, which resolves the image's symlinks inside the
// image; the move then targets the opened descriptor, so a symlink such as
// /etc/resolv.conf -> /run/... can never send a mount outside the image.
func carry(p string, root *os.Root) error {
	var st unix.Stat_t
	if err := unix.Stat(p, &st); err != nil {
		return fmt.Errorf("mount %s: %w", p, err)
	}
	rel := strings.TrimPrefix(p, "/")
	var target *os.File
	var err error
	if st.Mode&unix.S_IFMT == unix.S_IFDIR {
		if err = root.MkdirAll(rel, 0o755); err == nil {
			target, err = root.Open(rel)
		}
	} else {
		if dir := filepath.Dir(rel); dir != "." {
			err = root.MkdirAll(dir, 0o755)
		}
		if err == nil {
			// Opened first without O_CREAT: overlayfs refuses O_CREAT of
			// an image file to a root without its capabilities (EPERM).
			if target, err = root.Open(rel); errors.Is(err, os.ErrNotExist) {
				target, err = root.OpenFile(rel, os.O_CREATE|os.O_RDONLY, 0o644)
			}
		}
	}
	if err != nil {
		return fmt.Errorf("making the mount point %s in the image: %w", p, err)
	}
	defer target.Close()
	if err := unix.Mount(p, "/proc/self/fd/"+strconv.Itoa(int(target.Fd())), "", unix.MS_MOVE, ""); err != nil {
		return fmt.Errorf("moving the mount %s into the image: %w", p, err)
	}
	return nil
}
