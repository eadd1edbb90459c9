// Package extract materializes an index's tree as real files in a
// directory: all of it (mkbootfs extract), or the files a boot reads and
// the directories above them (bootinit's boot tree in the node cache).
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

	resume bool // go on from what is in dir (Files)
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
	return extract(ctx, x, s, dir, nil, opt)
}

// Files materializes in dir the regular files of entries, with their
// bytes, and the directories that hold them, and nothing else: a boot tree
// that overlayfs stacks over the lazy mount as a lower layer of its own,
// so that lookups of what it lacks fall through to the lazy mount. A short
// start reads a few dozen files: this is a tree of that many entries, made
// and checked in a few ms. Files of more than one name are left out (a
// copy would have one), and so are entries that are not regular files.
// The image's own trusted.overlay.* xattrs are not set: they would steer
// the overlay.
//
// Files goes on from what an earlier call, killed or cancelled, left in
// dir: an entry that is there is kept as it is, but a regular file that
// lacks the image's mtime (set last: one that has it was made whole) is
// finished, and a directory's attributes are set again. A caller that does
// not trust dir checks it after. It needs CAP_SYS_ADMIN only to keep the
// image's trusted xattrs.
func Files(ctx context.Context, x *index.Index, s store.Store, dir string, entries []uint32) error {
	keep := make([]bool, len(x.Entries))
	for _, e := range entries {
		if int(e) >= len(x.Entries) || e == index.Root {
			continue
		}
		n := &x.Inodes[x.Entries[e].Inode]
		if !n.IsRegular() || n.Nlink != 1 {
			continue
		}
		for keep[e] = true; e != index.Root; {
			e = x.Entries[e].Parent
			if keep[e] {
				break
			}
			keep[e] = true
		}
	}
	_, err := extract(ctx, x, s, dir, keep, Options{Devices: true, SamePermissions: true, resume: true})
	return err
}

// overlayXattrs is the prefix of overlayfs's own xattrs.
const overlayXattrs = "trusted.overlay."

// extract materializes the tree of x; with keep, only the entries it
// marks.
func extract(ctx context.Context, x *index.Index, s store.Store, dir string, keep []bool, opt Options) (Result, error) {
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
		chunks: newChunkLoader(ctx, x, s, dataChunks(x, keep)),
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
		return e.regular(dirfd, ent, n)
	case unix.S_IFLNK:
		if err := unix.Symlinkat(n.Target, dirfd, name); err != nil && !exists {
			return err
		}
	default: // devices, FIFOs, sockets
		if t := n.Type(); !e.opt.Devices && (t == unix.S_IFCHR || t == unix.S_IFBLK) {
			e.res.Devices++
			return nil
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

// regular makes regular file ent with its data.
func (e *extractor) regular(dirfd int, ent *index.Entry, n *index.Inode) error {
	fd, err := unix.Openat(dirfd, ent.Name, unix.O_WRONLY|unix.O_CREAT|unix.O_EXCL|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0o600)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	if err := e.dataFrom(fd, ent.Inode, n, 0); err != nil {
		return err
	}
	if e.keep != nil {
		// A boot tree's check writes its files back first: begun now, it
		// has less to wait for.
		unix.SyncFileRange(fd, 0, 0, unix.SYNC_FILE_RANGE_WRITE)
	}
	return e.attrs(fd, "", n, true)
}

// dataFrom writes a regular file's bytes from offset from on, holes
// staying holes: the bytes before from are there, written in order by an
// extraction cut short.
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

// goOn finishes regular file ent, there with size bytes, whose data an
// extraction cut short was writing; false if it cannot be (it is bigger
// than the image's) and is to be made again. A big file would otherwise
// be written again from its start by every resumed extraction, and one cut
// short each time would never be finished.
func (e *extractor) goOn(dirfd int, ent *index.Entry, n *index.Inode, size int64) (bool, error) {
	if size > n.Size {
		return false, nil
	}
	fd, err := unix.Openat(dirfd, ent.Name, unix.O_WRONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return false, nil
	}
	defer unix.Close(fd)
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
		if e.keep != nil && strings.HasPrefix(a.Name, overlayXattrs) {
			continue // a boot tree's: the image's own would steer the overlay
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
// keep marks; nil, all, when keep is nil.
func dataChunks(x *index.Index, keep []bool) []bool {
	if keep == nil {
		return nil
	}
	needed := make([]bool, len(x.Chunks))
	for e, kept := range keep {
		ino := x.Entries[e].Inode
		if !kept || !x.Inodes[ino].IsRegular() {
			continue
		}
		if first, last, ok := x.ChunkSpan(ino); ok {
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
			l.start(j) // not a file's left out: it is never read
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
