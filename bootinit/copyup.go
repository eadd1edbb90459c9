package bootinit

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/bootinit/bootconfig"
	"github.com/mkbootfs/mkbootfs/internal/xattrs"
)

// Docker fills an empty volume with the image's files at its mount point
// when it creates a container (copy-up), unless the volume is mounted with
// nocopy. Of a boot image it copies the skeleton, which holds none of the
// files, so bootinit copies them from the lazy image, before the volume
// moves into the new root.

// isDockerVolume reports whether a mount's root within its file system is
// a docker volume's directory, DOCKER_ROOT/volumes/NAME/_data; a bind
// mount's is the host directory's own path.
func isDockerVolume(root string) bool {
	return path.Base(root) == "_data" && path.Base(path.Dir(path.Dir(root))) == "volumes"
}

// copyUp copies the image's files into each volume that docker filled from
// the skeleton.
func (s *switcher) copyUp(mounts []mountEntry) error {
	var image *os.Root
	for _, m := range mounts {
		if !isDockerVolume(m.root) || isUnder(m.point, bootconfig.Dir) {
			continue
		}
		if image == nil {
			var err error
			if image, err = os.OpenRoot(bootconfig.LowerDir); err != nil {
				return err
			}
			defer image.Close()
		}
		copied, err := copyUpVolume(image, m, nestedMounts(mounts, m.point))
		if err != nil {
			return fmt.Errorf("copying the image's %s into its volume as docker does: %w", m.point, err)
		}
		if copied {
			s.log.Printf("copied the image's %s into its volume", m.point)
		}
	}
	return nil
}

// nestedMounts returns the mount points inside dir, relative to it: docker
// made them after its copy-up, so the copy leaves them alone.
func nestedMounts(mounts []mountEntry, dir string) map[string]bool {
	nested := map[string]bool{}
	for _, m := range mounts {
		if m.point != dir && isUnder(m.point, dir) {
			nested[strings.TrimPrefix(m.point, strings.TrimSuffix(dir, "/")+"/")] = true
		}
	}
	return nested
}

// copyUpVolume copies the image's directory at m.point into the volume
// mounted there, if docker filled it from the skeleton.
func copyUpVolume(image *os.Root, m mountEntry, nested map[string]bool) (bool, error) {
	src, err := image.Open(strings.TrimPrefix(m.point, "/"))
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENOTDIR) {
		return false, nil // docker copies nothing either
	}
	if err != nil {
		return false, err
	}
	defer src.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(src.Fd()), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		return false, err
	}
	// A clone of the volume's mount alone shows the volume as docker
	// filled it: without the mounts made inside it since, and writable
	// even when mounted read-only (docker copies into those too).
	tree, dir := unix.AT_FDCWD, m.point // before Linux 5.2: the mount itself
	if clone, err := unix.OpenTree(unix.AT_FDCWD, m.point, unix.OPEN_TREE_CLONE|unix.OPEN_TREE_CLOEXEC); err == nil {
		defer unix.Close(clone)
		tree, dir = clone, "."
	}
	fd, err := unix.Openat(tree, dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, err
	}
	vol := os.NewFile(uintptr(fd), m.point)
	defer vol.Close()
	if ok, err := holdsSkeleton(vol, src, "", nested); !ok || err != nil {
		return false, err
	}
	if m.readOnly {
		if tree == unix.AT_FDCWD {
			return false, errors.New("the volume is mounted read-only and this kernel cannot make a writable clone of its mount (open_tree, Linux 5.2): mount it writable, or with nocopy")
		}
		if err := unix.MountSetattr(tree, "", unix.AT_EMPTY_PATH, &unix.MountAttr{Attr_clr: unix.MOUNT_ATTR_RDONLY}); err != nil {
			return false, fmt.Errorf("making a clone of the read-only mount writable (mount_setattr, Linux 5.12): %w", err)
		}
	}
	c := copier{vol: vol, nested: nested, links: map[uint64]string{}}
	// The volume takes the directory's owner, mode and times, as docker's
	// copy gives it the skeleton's.
	if err := setMetadata(vol, src, ".", &st); err != nil {
		return false, err
	}
	return true, c.copyDir(vol, src, "")
}

// holdsSkeleton reports whether the volume directory vol holds what docker
// copied into it from the boot image's skeleton, whose every entry mirrors
// the image directory img: directories, the image's symlinks, symlinks to
// bootinit for its executables and the boot layer's own copies of a few
// files. The skeleton is dated bootconfig.LayerTime,
// which docker's copy keeps on all but the directories it copied entries
// into; that tells a copy of the skeleton from a volume that docker left
// empty (nocopy) or the app wrote to.
func holdsSkeleton(vol, img *os.File, rel string, nested map[string]bool) (bool, error) {
	names, err := vol.Readdirnames(-1)
	if err != nil {
		return false, err
	}
	names = slices.DeleteFunc(names, func(name string) bool { return nested[path.Join(rel, name)] })
	if len(names) == 0 {
		var st unix.Stat_t
		if err := unix.Fstat(int(vol.Fd()), &st); err != nil {
			return false, err
		}
		return isLayerTime(st.Mtim), nil
	}
	for _, name := range names {
		var v, i unix.Stat_t
		if err := unix.Fstatat(int(vol.Fd()), name, &v, unix.AT_SYMLINK_NOFOLLOW); err != nil {
			return false, pathError("lstat", vol, name, err)
		}
		if err := unix.Fstatat(int(img.Fd()), name, &i, unix.AT_SYMLINK_NOFOLLOW); errors.Is(err, unix.ENOENT) {
			return false, nil
		} else if err != nil {
			return false, pathError("lstat", img, name, err)
		}
		vType, iType := v.Mode&unix.S_IFMT, i.Mode&unix.S_IFMT
		if vType == unix.S_IFDIR {
			if iType != unix.S_IFDIR {
				return false, nil
			}
			var ok bool
			err := inSubdirs(vol, img, name, func(subVol, subImg *os.File) (err error) {
				ok, err = holdsSkeleton(subVol, subImg, path.Join(rel, name), nested)
				return err
			})
			if !ok || err != nil {
				return false, err
			}
			continue
		}
		if !isLayerTime(v.Mtim) {
			return false, nil
		}
		switch vType {
		case unix.S_IFLNK:
			target, err := readlinkAt(vol, name)
			if err != nil {
				return false, err
			}
			if target == bootconfig.Bootinit && iType == unix.S_IFREG && i.Mode&0o111 != 0 {
				continue // a shim
			}
			if iType != unix.S_IFLNK {
				return false, nil
			}
			if imgTarget, err := readlinkAt(img, name); err != nil || imgTarget != target {
				return false, err
			}
		case unix.S_IFREG:
			if iType != unix.S_IFREG || i.Size != v.Size {
				return false, nil
			}
		default:
			return false, nil
		}
	}
	return true, nil
}

// isLayerTime reports whether ts is the date of every entry of the boot
// image's layers.
func isLayerTime(ts unix.Timespec) bool {
	return time.Unix(ts.Unix()).Equal(bootconfig.LayerTime)
}

// copier copies an image directory into a volume as docker's copy-up
// does: every entry with its owner, mode, times and xattrs, hard links
// within the directory as hard links.
type copier struct {
	vol    *os.File
	nested map[string]bool
	links  map[uint64]string // an image inode's first copy, relative to vol
}

// copyDir copies the entries of the image directory src into dst, which
// is at rel in the volume. What the skeleton put there gives way.
func (c *copier) copyDir(dst, src *os.File, rel string) error {
	names, err := src.Readdirnames(-1)
	if err != nil {
		return err
	}
	for _, name := range names {
		if err := c.copyEntry(dst, src, name, path.Join(rel, name)); err != nil {
			return err
		}
	}
	return nil
}

func (c *copier) copyEntry(dst, src *os.File, name, rel string) error {
	if c.nested[rel] {
		return nil
	}
	var st unix.Stat_t
	if err := unix.Fstatat(int(src.Fd()), name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathError("lstat", src, name, err)
	}
	d := int(dst.Fd())
	typ := st.Mode & unix.S_IFMT
	if typ != unix.S_IFDIR {
		if err := unix.Unlinkat(d, name, 0); err != nil && !errors.Is(err, unix.ENOENT) {
			return pathError("unlink", dst, name, err)
		}
	}
	switch typ {
	case unix.S_IFDIR:
		if err := unix.Mkdirat(d, name, 0o700); err != nil && !errors.Is(err, unix.EEXIST) {
			return pathError("mkdir", dst, name, err)
		}
		// A directory's metadata comes first and its entries then date
		// it, as in docker's copy.
		if err := setMetadata(dst, src, name, &st); err != nil {
			return err
		}
		return inSubdirs(dst, src, name, func(subDst, subSrc *os.File) error { return c.copyDir(subDst, subSrc, rel) })
	case unix.S_IFREG:
		if st.Nlink > 1 {
			if first, ok := c.links[st.Ino]; ok {
				if err := unix.Linkat(int(c.vol.Fd()), first, d, name, 0); err != nil {
					return pathError("link", dst, name, err)
				}
				return nil
			}
			c.links[st.Ino] = rel
		}
		if err := copyFile(dst, src, name); err != nil {
			return err
		}
	case unix.S_IFLNK:
		target, err := readlinkAt(src, name)
		if err != nil {
			return err
		}
		if err := unix.Symlinkat(target, d, name); err != nil {
			return pathError("symlink", dst, name, err)
		}
	default: // devices, pipes and sockets
		if err := unix.Mknodat(d, name, st.Mode, int(st.Rdev)); err != nil {
			return pathError("mknod", dst, name, err)
		}
	}
	return setMetadata(dst, src, name, &st)
}

// inSubdirs calls fn with the directories name of a and of b, open.
func inSubdirs(a, b *os.File, name string, fn func(subA, subB *os.File) error) error {
	subA, err := openAt(a, name, unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer subA.Close()
	subB, err := openAt(b, name, unix.O_DIRECTORY)
	if err != nil {
		return err
	}
	defer subB.Close()
	return fn(subA, subB)
}

func copyFile(dst, src *os.File, name string) error {
	in, err := openAt(src, name, 0)
	if err != nil {
		return err
	}
	defer in.Close()
	fd, err := unix.Openat(int(dst.Fd()), name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return pathError("create", dst, name, err)
	}
	out := os.NewFile(uintptr(fd), path.Join(dst.Name(), name))
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// setMetadata gives the entry name of dst the owner, mode, times and
// xattrs of st, the entry name of src.
func setMetadata(dst, src *os.File, name string, st *unix.Stat_t) error {
	d := int(dst.Fd())
	if err := unix.Fchownat(d, name, int(st.Uid), int(st.Gid), unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathError("chown", dst, name, err)
	}
	// After the chown, which clears the setuid and setgid bits.
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		if err := unix.Fchmodat(d, name, st.Mode&0o7777, 0); err != nil {
			return pathError("chmod", dst, name, err)
		}
	}
	if err := unix.UtimesNanoAt(d, name, []unix.Timespec{st.Atim, st.Mtim}, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return pathError("set times of", dst, name, err)
	}
	// After the chown too, which drops security.capability.
	if err := copyXattrs(procPath(dst, name), procPath(src, name)); err != nil {
		return pathError("copy xattrs of", dst, name, err)
	}
	return nil
}

func copyXattrs(dst, src string) error {
	attrs, err := xattrs.Read(src)
	if err != nil {
		return err
	}
	for _, a := range attrs {
		if err := unix.Lsetxattr(dst, a.Name, a.Value, 0); err != nil {
			return fmt.Errorf("%s: %w", a.Name, err)
		}
	}
	return nil
}

// procPath names the entry name of dir for the calls that take only a
// path: through the descriptor, as the *at calls do.
func procPath(dir *os.File, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(int(dir.Fd())) + "/" + name
}

func openAt(dir *os.File, name string, flags int) (*os.File, error) {
	fd, err := unix.Openat(int(dir.Fd()), name, flags|unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, pathError("open", dir, name, err)
	}
	return os.NewFile(uintptr(fd), path.Join(dir.Name(), name)), nil
}

func readlinkAt(dir *os.File, name string) (string, error) {
	b := make([]byte, unix.PathMax)
	n, err := unix.Readlinkat(int(dir.Fd()), name, b)
	if err != nil {
		return "", pathError("readlink", dir, name, err)
	}
	return string(b[:n]), nil
}

func pathError(op string, dir *os.File, name string, err error) error {
	return &os.PathError{Op: op, Path: path.Join(dir.Name(), name), Err: err}
}
