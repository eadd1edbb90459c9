// Package extract materializes an index's tree as real files in a
// directory: with all its data (mkbootfs extract), or with the data of the
// files a boot reads and metacopy stubs for the rest (bootinit's boot tree
// in the node cache).
// Every entry is created relative to a directory descriptor of a directory
// it made itself, with O_NOFOLLOW, so no name in the index can reach
// outside the directory.
package extract

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/mkbootfs/mkbootfs/index"
	"github.com/mkbootfs/mkbootfs/store"
)

// Options choose what Extract keeps of what lets a tree give a local user
// more than its files: an untrusted image's /dev/mem, or its setuid-root
// shell, made by root on the host, would serve every user who reaches dir.
type Options struct {
	// Devices creates the block and character devices; without it they are
	// skipped (rsync's --devices). FIFOs and sockets are always made.
	Devices bool
	// SamePermissions keeps the setuid and setgid bits and the file
	// capabilities (security.capability) of non-directories; without it they
	// are cleared (tar's --same-permissions).
	SamePermissions bool

	resume bool // go on from what is in dir (Metadata)
}

// Result counts what Extract left out by its Options.
type Result struct {
	// Devices is how many device nodes were skipped.
	Devices int
	// Privileged is how many files lost setuid, setgid or capabilities.
	Privileged int
}

// Extract materializes the tree of x into dir, which must be empty or not
// exist, reading file data from s. Owners are kept when run as root, as
// tar keeps them; opt says what else is kept.
func Extract(ctx context.Context, x *index.Index, s store.Store, dir string, opt Options) (Result, error) {
	return extract(ctx, x, s, dir, nil, nil, opt)
}

// Metadata materializes the whole tree of x into dir as the layer an
// overlayfs stacks over a data-only lower layer that holds the tree too
// (the lazy mount): the regular files of the entries data with their
// bytes, every other regular file as a metacopy stub (its size and
// attributes, no data, and trusted.overlay.redirect to its own path), whose
// reads overlayfs sends to the data-only layer (Linux 6.5: lowerdir=
// DIR::DATA, metacopy=on). Lookups, listings and attributes then never
// reach the data-only layer. It needs CAP_SYS_ADMIN for the trusted xattrs.
// It keeps devices, setuid and setgid bits and capabilities: the tree is a
// container's root.
//
// Metadata goes on from what an earlier call, killed or cancelled, left in
// dir: an entry that is there is kept as it is, but a regular file that
// lacks the image's mtime (set last: one that has it was made whole) is
// made again, and the attributes of directories, symlinks and devices are
// set again. What
// an earlier call made differently (a stub where data was asked for now) is
// kept: both read the same. A caller that does not trust dir checks it after.
func Metadata(ctx context.Context, x *index.Index, s store.Store, dir string, data []uint32) error {
	stub := make([]bool, len(x.Inodes))
	for i := range x.Inodes {
		stub[i] = x.Inodes[i].IsRegular()
	}
	for _, e := range data {
		stub[x.Entries[e].Inode] = false
	}
	_, err := extract(ctx, x, s, dir, stub, nil, Options{Devices: true, SamePermissions: true, resume: true})
	return err
}

// Files materializes in dir the regular files of entries, with their
// bytes, and the directories that hold them, and nothing else: a boot tree
// that overlayfs stacks over the lazy mount as a lower layer of its own,
// so that lookups of what it lacks fall through to the lazy mount. A short
// start reads a few dozen files: this is a tree of that many entries, made
// and checked in a few ms, where the whole tree (Metadata) holds every
// entry of the image and took a short command's starts dozens of times
// longer. Files of more than one name are left out (a copy would have
// one), and so are entries that are not regular files. It goes on from
// what an earlier call, killed or cancelled, left in dir, as Metadata does.
// It needs CAP_SYS_ADMIN only to keep the image's trusted xattrs.
func Files(ctx context.Context, x *index.Index, s store.Store, dir string, entries []uint32) error {
	keep := make([]bool, len(x.Entries))
	stub := make([]bool, len(x.Inodes))
	for i := range x.Inodes {
		stub[i] = x.Inodes[i].IsRegular()
	}
	for _, e := range entries {
		if int(e) >= len(x.Entries) || e == index.Root {
			continue
		}
		n := &x.Inodes[x.Entries[e].Inode]
		if !n.IsRegular() || n.Nlink != 1 {
			continue
		}
		stub[x.Entries[e].Inode] = false
		for keep[e] = true; e != index.Root; {
			e = x.Entries[e].Parent
			if keep[e] {
				break
			}
			keep[e] = true
		}
	}
	_, err := extract(ctx, x, s, dir, stub, keep, Options{Devices: true, SamePermissions: true, resume: true})
	return err
}

// Overlayfs's xattrs of a metacopy stub.
const (
	xattrMetacopy = "trusted.overlay.metacopy"
	xattrRedirect = "trusted.overlay.redirect"
	overlayXattrs = "trusted.overlay."
)

// extract materializes the tree of x, the regular files whose inodes stub
// marks as metacopy stubs; with keep, only the entries it marks.
func extract(ctx context.Context, x *index.Index, s store.Store, dir string, stub, keep []bool, opt Options) (Result, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return Result{}, err
	}
	if empty, err := isEmptyDir(dir); err != nil {
		return Result{}, err
	} else if !empty && !opt.resume {
		return Result{}, fmt.Errorf("extract: %s is not empty", dir)
	}
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return Result{}, fmt.Errorf("extract: %s: %w", dir, err)
	}
	defer unix.Close(fd)
	e := &extractor{
		ctx:    ctx,
		x:      x,
		dir:    dir,
		chunks: newChunkLoader(ctx, x, s, dataChunks(x, stub)),
		stub:   stub,
		keep:   keep,
		links:  map[uint32]string{},
		root:   os.Geteuid() == 0,
		opt:    opt,
	}
	if err := e.dirContents(fd, index.Root, dir); err != nil {
		return e.res, err
	}
	return e.res, e.attrs(fd, "", &x.Inodes[x.Entries[index.Root].Inode], true)
}

func isEmptyDir(dir string) (bool, error) {
	f, err := os.Open(dir)
	if err != nil {
		return false, err
	}
	defer f.Close()
	_, err = f.Readdirnames(1)
	if err == io.EOF {
		return true, nil
	}
	return false, err
}

type extractor struct {
	ctx    context.Context
	x      *index.Index
	dir    string
	chunks *chunkLoader
	stub   []bool            // the inodes to make as metacopy stubs; nil: none
	keep   []bool            // the entries to make; nil: all
	links  map[uint32]string // inode -> path of its first name, for hard links
	root   bool
	opt    Options
	res    Result
}

// dirContents creates the children of directory entry e inside dirfd.
func (e *extractor) dirContents(dirfd int, de uint32, path string) error {
	first, count := e.x.Children(de)
	for c := first; c < first+count; c++ {
		if err := e.ctx.Err(); err != nil {
			return err
		}
		if e.keep != nil && !e.keep[c] {
			continue
		}
		ent := &e.x.Entries[c]
		n := &e.x.Inodes[ent.Inode]
		p := filepath.Join(path, ent.Name)
		if err := e.entry(dirfd, c, ent, n, p); err != nil {
			return fmt.Errorf("extract %s: %w", e.x.Path(c), err)
		}
	}
	return nil
}

func (e *extractor) entry(dirfd int, c uint32, ent *index.Entry, n *index.Inode, p string) error {
	name := ent.Name
	var there unix.Stat_t
	exists := e.opt.resume && unix.Fstatat(dirfd, name, &there, unix.AT_SYMLINK_NOFOLLOW) == nil
	if first, ok := e.links[ent.Inode]; ok {
		if exists {
			return nil
		}
		return unix.Linkat(unix.AT_FDCWD, first, dirfd, name, 0)
	}
	if exists && there.Mode&unix.S_IFMT != n.Type() {
		return fmt.Errorf("%s is there, of another type", p)
	}
	switch n.Type() {
	case unix.S_IFDIR:
		// Its times are set last, after its contents: one that has the
		// image's was made whole, and a resumed extraction passes it by.
		if exists && there.Mtim.Nano() == n.Mtime && there.Mode&0o7777 == n.Mode&0o7777 {
			e.madeLinks(c, p)
			return nil
		}
		if err := unix.Mkdirat(dirfd, name, 0o700); err != nil && !exists {
			return err
		}
		fd, err := unix.Openat(dirfd, name, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
		if err != nil {
			return err
		}
		defer unix.Close(fd)
		if err := e.dirContents(fd, c, p); err != nil {
			return err
		}
		return e.attrs(fd, "", n, true)
	case unix.S_IFREG:
		e.links[ent.Inode] = p
		if exists {
			// Its times are set last: one that has the image's was made whole.
			if there.Size == n.Size && there.Mtim.Nano() == n.Mtime {
				return nil
			}
			if done, err := e.goOn(dirfd, ent, n, there.Size); done || err != nil {
				return err
			}
			if err := unix.Unlinkat(dirfd, name, 0); err != nil {
				return err
			}
		}
		return e.regular(dirfd, c, ent, n)
	case unix.S_IFLNK:
		if err := unix.Symlinkat(n.Target, dirfd, name); err != nil && !exists {
			return err
		}
	default: // devices, FIFOs, sockets
		if t := n.Type(); !e.opt.Devices && (t == unix.S_IFCHR || t == unix.S_IFBLK) {
			e.res.Devices++
			return nil
		}
		if e.stub != nil && n.Type() == unix.S_IFCHR && n.Rdev == 0 {
			return errors.New("a 0/0 character device would be a whiteout to overlayfs")
		}
		if err := unix.Mknodat(dirfd, name, n.Mode&unix.S_IFMT|0o600, int(n.Rdev)); err != nil && !exists {
			return err
		}
	}
	e.links[ent.Inode] = p
	return e.attrs(dirfd, name, n, false)
}

// madeLinks notes, for the hard links still to make, the names that
// directory entry de, made earlier, gives files of more than one name.
func (e *extractor) madeLinks(de uint32, path string) {
	first, count := e.x.Children(de)
	for c := first; c < first+count; c++ {
		ent := &e.x.Entries[c]
		n := &e.x.Inodes[ent.Inode]
		p := filepath.Join(path, ent.Name)
		if n.IsDir() {
			e.madeLinks(c, p)
		} else if _, ok := e.links[ent.Inode]; !ok && n.Nlink > 1 {
			e.links[ent.Inode] = p
		}
	}
}

// regular makes regular file entry c, with its data or as a stub.
func (e *extractor) regular(dirfd int, c uint32, ent *index.Entry, n *index.Inode) error {
	fd, err := unix.Openat(dirfd, ent.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if e.stub != nil && e.stub[ent.Inode] {
		err = e.metacopy(fd, c, n)
	} else {
		err = e.data(fd, ent.Inode, n)
	}
	if err != nil {
		return err
	}
	if e.keep != nil {
		// A boot tree's check writes its files back first: begun now, it
		// has less to wait for.
		unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	return e.attrs(fd, "", n, true)
}

// data writes a regular file's bytes; holes stay holes.
func (e *extractor) data(fd int, ino uint32, n *index.Inode) error {
	return e.dataFrom(fd, ino, n, 0)
}

// dataFrom writes a regular file's bytes from offset from on: the bytes
// before it are there, written in order by an extraction cut short.
func (e *extractor) dataFrom(fd int, ino uint32, n *index.Inode, from int64) error {
	runs := n.Extents
	if runs == nil {
		runs = []index.Extent{{Off: 0, Len: n.Size}}
	}
	buf := make([]byte, 1<<20)
	for _, r := range runs {
		for off := max(r.Off, min(from, r.Off+r.Len)); off < r.Off+r.Len; {
			b := buf[:min(int64(len(buf)), r.Off+r.Len-off)]
			if _, err := e.x.ReadAt(ino, b, off, e.chunks.get); err != nil {
				return err
			}
			if _, err := unix.Pwrite(fd, b, off); err != nil {
				return err
			}
			off += int64(len(b))
		}
	}
	return unix.Ftruncate(fd, n.Size)
}

// metacopy makes fd the metacopy stub of regular file entry c: its size,
// and where overlayfs finds its data.
// The xattrs come first: a stub cut short before its size is not taken
// for a file whose data was being written (see goOn).
func (e *extractor) metacopy(fd int, c uint32, n *index.Inode) error {
	if err := unix.Fsetxattr(fd, xattrMetacopy, nil, 0); err != nil {
		return fmt.Errorf("xattr %s: %w", xattrMetacopy, err)
	}
	if err := unix.Fsetxattr(fd, xattrRedirect, []byte(e.x.Path(c)), 0); err != nil {
		return fmt.Errorf("xattr %s: %w", xattrRedirect, err)
	}
	return unix.Ftruncate(fd, n.Size)
}

// goOn finishes regular file ent, there with size bytes, whose data an
// extraction cut short was writing; false if it is not such a file (a stub
// cut short) and is to be made again. A big file would otherwise be
// written again from its start by every resumed extraction, and one cut
// short each time would never be finished.
func (e *extractor) goOn(dirfd int, ent *index.Entry, n *index.Inode, size int64) (bool, error) {
	if e.stub != nil && e.stub[ent.Inode] || size > n.Size {
		return false, nil
	}
	fd, err := unix.Openat(dirfd, ent.Name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(fd)
	if _, err := unix.Fgetxattr(fd, xattrMetacopy, nil); !errors.Is(err, unix.ENODATA) {
		return false, nil
	}
	if err := e.dataFrom(fd, ent.Inode, n, size); err != nil {
		return true, err
	}
	return true, e.attrs(fd, "", n, true)
}

// attrs sets owner, mode, xattrs and times, in that order: chown clears
// setuid bits and file capabilities, so they come after it. With name
// empty, fd is the file itself; else name is a non-directory in fd.
func (e *extractor) attrs(fd int, name string, n *index.Inode, own bool) error {
	var err error
	if own {
		err = unix.Fchown(fd, int(n.UID), int(n.GID))
	} else {
		err = unix.Fchownat(fd, name, int(n.UID), int(n.GID), unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil && (e.root || !errors.Is(err, unix.EPERM)) {
		return fmt.Errorf("chown: %w", err)
	}
	mode, xattrs := n.Mode&0o7777, n.Xattrs
	if !e.opt.SamePermissions && n.Type() != unix.S_IFDIR {
		mode, xattrs = e.unprivileged(mode, xattrs)
	}
	isLink := n.Type() == unix.S_IFLNK
	if !isLink {
		if own {
			err = unix.Fchmod(fd, mode)
		} else {
			err = unix.Fchmodat(fd, name, mode, 0)
		}
		if err != nil {
			return fmt.Errorf("chmod: %w", err)
		}
	}
	for _, a := range xattrs {
		if e.stub != nil && strings.HasPrefix(a.Name, overlayXattrs) {
			continue // the image's own would steer the overlay
		}
		if own {
			err = unix.Fsetxattr(fd, a.Name, a.Value, 0)
		} else {
			err = unix.Lsetxattr(procPath(fd, name), a.Name, a.Value, 0)
		}
		if err != nil {
			return fmt.Errorf("xattr %s: %w", a.Name, err)
		}
	}
	ts := []unix.Timespec{unix.NsecToTimespec(n.Mtime), unix.NsecToTimespec(n.Mtime)}
	if own {
		err = unix.UtimesNanoAt(fd, "", ts, unix.AT_EMPTY_PATH)
	} else {
		err = unix.UtimesNanoAt(fd, name, ts, unix.AT_SYMLINK_NOFOLLOW)
	}
	if err != nil {
		return fmt.Errorf("times: %w", err)
	}
	return nil
}

// xattrCapability holds a file's capabilities: a setuid bit by another name.
const xattrCapability = "security.capability"

// unprivileged returns mode without setuid and setgid, and xattrs without
// capabilities, and counts the file if that took anything away.
func (e *extractor) unprivileged(mode uint32, xattrs []index.Xattr) (uint32, []index.Xattr) {
	cleared := mode&(unix.S_ISUID|unix.S_ISGID) != 0
	mode &^= unix.S_ISUID | unix.S_ISGID
	if i := slices.IndexFunc(xattrs, func(a index.Xattr) bool { return a.Name == xattrCapability }); i >= 0 {
		xattrs = slices.Delete(slices.Clone(xattrs), i, i+1)
		cleared = true
	}
	if cleared {
		e.res.Privileged++
	}
	return mode, xattrs
}

// procPath names a file in a directory descriptor for the calls that have
// no *at form, without resolving the directory's path again.
func procPath(dirfd int, name string) string {
	return "/proc/self/fd/" + strconv.Itoa(dirfd) + "/" + name
}

// dataChunks marks the chunks holding the data of the regular files that
// stub does not mark; nil, all, when stub is nil.
func dataChunks(x *index.Index, stub []bool) []bool {
	if stub == nil {
		return nil
	}
	needed := make([]bool, len(x.Chunks))
	for i := range x.Inodes {
		if stub[i] || !x.Inodes[i].IsRegular() {
			continue
		}
		if first, last, ok := x.ChunkSpan(uint32(i)); ok {
			for c := first; c <= last; c++ {
				needed[c] = true
			}
		}
	}
	return needed
}

// chunkLoader serves chunks to a reader that moves forward through the
// stream, loading the next few it will need in parallel ahead of it.
type chunkLoader struct {
	ctx     context.Context
	x       *index.Index
	s       store.Store
	needed  []bool // the chunks the reader will read; nil: all
	mu      sync.Mutex
	pending map[int]*loadingChunk
	sem     chan struct{}
}

type loadingChunk struct {
	done chan struct{}
	data []byte
	err  error
}

const readAhead = 8

func newChunkLoader(ctx context.Context, x *index.Index, s store.Store, needed []bool) *chunkLoader {
	return &chunkLoader{ctx: ctx, x: x, s: s, needed: needed, pending: map[int]*loadingChunk{}, sem: make(chan struct{}, readAhead)}
}

func (l *chunkLoader) get(i int) ([]byte, error) {
	l.mu.Lock()
	l.start(i)
	for j := i + 1; j < min(i+readAhead, len(l.x.Chunks)); j++ {
		if l.needed == nil || l.needed[j] {
			l.start(j) // not a stub's: they are never read
		}
	}
	c := l.pending[i]
	for j := range l.pending {
		if j < i-1 {
			delete(l.pending, j) // the reader has moved past it
		}
	}
	l.mu.Unlock()
	<-c.done
	return c.data, c.err
}

// start begins loading chunk i unless it is loading or loaded; l.mu is held.
func (l *chunkLoader) start(i int) {
	if l.pending[i] != nil {
		return
	}
	c := &loadingChunk{done: make(chan struct{})}
	l.pending[i] = c
	go func() {
		defer close(c.done)
		select {
		case l.sem <- struct{}{}:
			defer func() { <-l.sem }()
		case <-l.ctx.Done():
			c.err = l.ctx.Err()
			return
		}
		c.data, c.err = store.Load(l.ctx, l.s, store.ID(l.x.Chunks[i].ID))
	}()
}
